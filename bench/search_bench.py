"""What a search pays to prepare its data: the same search (a tiny encoder, one epoch per trial, lr searched) with
the data prepared once on the driver, as `sam tune` does, against every trial preparing its own, as it did before
(issue 44), in interleaved rounds: the search's wall time and the object store's peak while it runs. Each search
runs in a process and a Ray of its own: a search's prepared data stays pinned for the life of the process that
made it, and would weigh on the next round.

    python bench/search_bench.py [--data D] [--limit-train 8000] [--trials 4] [--rounds 5] [--cpus 2]

Prints a table, then JSON on the last line: each round's figures and the median time ratio with its range.
"""

import argparse
import json
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from rounds import format_rounds, interleaved  # noqa: E402  (bench/ is on the path as the script's folder)
from serve_bench import DATA  # noqa: E402

TINY = dict(num_layers=1, num_heads=2, d_model=64, d_ff=256, max_length=64, epochs=1, batch_size=32, warmup_steps=10)


class StorePeak:
    """The object store's largest use while it runs, polled from Ray's memory summary of this node."""

    def __init__(self, every_s: float = 0.5):
        self.every_s, self.peak_mib, self._stop = every_s, 0.0, threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self) -> None:
        from ray._private.internal_api import memory_summary

        while not self._stop.wait(self.every_s):
            used = re.search(r"Plasma memory usage (\d+) MiB", memory_summary(stats_only=True))
            self.peak_mib = max(self.peak_mib, float(used[1]) if used else 0.0)

    def __enter__(self) -> "StorePeak":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def search(args, once: bool) -> dict:
    """One search in this process: its wall time and the object store's peak."""
    import ray
    from ray import tune

    import sam.tune
    from sam.config import Config

    if not once:  # no preparation up front: each trial falls back to making its own, as every trial did before
        sam.tune.prepare_once = lambda spec, experiment: {}
    base = Config().with_flat(source=str(args.data), limit_train=args.limit_train, **TINY)
    # With its dashboard, as `sam tune` starts Ray: Train removes an ended trial's placement group through it.
    ray.init(num_cpus=args.cpus, log_to_driver=False)
    try:
        with tempfile.TemporaryDirectory() as storage, StorePeak() as peak:
            started = time.perf_counter()
            results, _ = sam.tune.run_search(base, storage, "bench", num_samples=args.trials, fixed=tuple(TINY), max_concurrent=args.cpus,
                                             space={"lr": tune.loguniform(1e-4, 2e-3)})
            seconds = time.perf_counter() - started
    finally:
        ray.shutdown()
    assert not results.errors, results.errors
    return {"once": once, "seconds": round(seconds, 1), "store_peak_mib": peak.peak_mib}


def searched(args, once: bool, runs: list) -> float:
    """One search in a fresh process; a rate for `interleaved` (higher is better): searches per hour."""
    command = [sys.executable, __file__, "--one", "once" if once else "per-trial", "--data", str(args.data),
               "--limit-train", str(args.limit_train), "--trials", str(args.trials), "--cpus", str(args.cpus)]
    run = json.loads(subprocess.run(command, check=True, capture_output=True, text=True).stdout.splitlines()[-1])
    runs.append(run)
    print(f"  {'prepared once' if once else 'per trial':>13}: {run['seconds']:6.1f} s, "
          f"object store peak {run['store_peak_mib']:.0f} MiB", flush=True)
    return 3600 / run["seconds"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DATA, help="the corpus (default: the shared train split)")
    parser.add_argument("--limit-train", type=int, default=8000)
    parser.add_argument("--trials", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--cpus", type=int, default=2, help="Ray's CPUs: trials at once (--max-concurrent), one worker each")
    parser.add_argument("--one", choices=["once", "per-trial"], help=argparse.SUPPRESS)  # one round's side
    args = parser.parse_args()
    if args.one:
        print(json.dumps(search(args, args.one == "once")))
        return

    figures: list[dict] = []
    result = interleaved(lambda: searched(args, True, figures), lambda: searched(args, False, figures), rounds=args.rounds)
    print(format_rounds(result, "once", "per trial", unit="searches/hour; ratio = speed-up of preparing once"))
    print(json.dumps({"trials": args.trials, "limit_train": args.limit_train, "cpus": args.cpus, "runs": figures, **result}))


if __name__ == "__main__":
    main()
