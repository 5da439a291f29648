"""What MLflow tracking costs a training run: `sam.train.train` with a sqlite tracking store against the same run
without, interleaved for several rounds, and the tracking calls timed on their own.

    python bench/tracking_bench.py --data ../shared/data/tweet_sentiment_extraction --limit-train 2000 [--rounds 5]

Each round trains the same short run both ways (default 2 epochs of the default model) in one Ray session; the
rate is epochs per second of the whole run, wall clock, data preparation and export included. Judge the median
ratio tracked / untracked. Then each epoch's logging (`EpochLogger.after_report`, what Ray Train's controller runs
after every report) and a run's one-off calls (start with params, the model artifact, registration) are timed
alone, as medians. A table, then JSON on the last line.
"""

import argparse
import json
import os
import statistics
import tempfile
import time

import ray

from rounds import format_rounds, interleaved
from sam.config import Config
from sam.tracking import Tracker, flat_params
from sam.train import EpochLogger
from sam.train import finish_tracking, train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True)
    parser.add_argument("--limit-train", type=int, default=2000, help="about N valid rows (default: 2000)")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (default: 5)")
    args = parser.parse_args()

    config = Config().with_flat(source=os.path.abspath(args.data), limit_train=args.limit_train, epochs=args.epochs, patience=args.epochs)
    scratch = tempfile.mkdtemp(prefix="tracking-bench-")
    os.chdir(scratch)  # MLflow puts a sqlite store's artifacts under ./mlruns
    tracked = Tracker(f"sqlite:///{scratch}/mlruns.db")
    ray.init(include_dashboard=False, log_to_driver=False)
    runs = []

    def run(tracking: bool) -> float:
        started, name = time.perf_counter(), f"{'tracked' if tracking else 'plain'}-{len(runs)}"
        metrics = train(config, os.path.join(scratch, name), storage=os.path.join(scratch, "runs"), name=name,
                        tracked=tracked if tracking else None)
        wall = time.perf_counter() - started
        runs.append({"tracked": tracking, "name": name, "wall_s": round(wall, 2), "epochs": metrics["epochs_run"]})
        return metrics["epochs_run"] * 60 / wall

    result = interleaved(lambda: run(True), lambda: run(False), rounds=args.rounds)

    # The tracking calls alone, on a run of their own: per epoch, and once per run.
    run_id = tracked.start("calls", flat_params(config), {})
    logger = EpochLogger(tracked.uri, run_id)
    epoch_ms = []
    for epoch in range(1, 31):
        started = time.perf_counter()
        logger.after_report(None, [{"epoch": epoch, "train_loss": 1.0, "val_loss": 1.0, "val_accuracy": 0.5, "val_macro_f1": 0.5,
                                    "lr": 1e-3, "peak_lr": 1e-3, "samples_per_s": 100.0, "epoch_s": 1.0, "data_wait_s": 0.1,
                                    "best_epoch": epoch, "restored_from_epoch": 0, "stopping": False}], None)
        epoch_ms.append((time.perf_counter() - started) * 1000)
    model_dir = os.path.join(scratch, runs[-1]["name"])
    started = time.perf_counter()
    once_id = tracked.start("once", flat_params(config), {})
    finish_tracking(tracked, once_id, json.load(open(os.path.join(model_dir, "metrics.json"))) | {"wall_s": 0.0}, model_dir, "bench")
    once_ms = (time.perf_counter() - started) * 1000
    ray.shutdown()

    print(format_rounds(result, "tracked", "untracked", unit="epochs/min"))
    walls = {side: [r["wall_s"] for r in runs if r["tracked"] == side] for side in (True, False)}
    print(f"run wall (s): tracked {walls[True]}, untracked {walls[False]}; {config.train.epochs} epochs, ~{args.limit_train} rows")
    print(f"per epoch (EpochLogger.after_report, 30 calls): median {statistics.median(epoch_ms):.1f} ms, "
          f"max {max(epoch_ms):.1f} ms; once per run (start with params, model artifact, registration): {once_ms:.0f} ms")
    print(json.dumps({**result, "runs": runs, "epoch_log_ms_median": round(statistics.median(epoch_ms), 2),
                      "epoch_log_ms_max": round(max(epoch_ms), 2), "once_per_run_ms": round(once_ms)}))


if __name__ == "__main__":
    main()
