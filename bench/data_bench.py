"""Ray Data at scale: the training data path and batch scoring on N rows, with the driver's peak memory.

    python bench/data_bench.py --rows 1000000 [--score-rows 100000] [--model models/latest] [--json]

Builds N rows by repeating the shared train split into shards of mixed sizes and formats (jsonl, jsonl.gz,
parquet) in a temporary directory, then runs, each in a fresh driver process so each peak memory is its own:
  data     `prepare` (read, validate, split, tokenizer sample), streamed (`materialize_mb=0`: the path
           that scales past memory), and one epoch of padded training batches (`epoch_batches`), no model
  scoring  `sam predict --data` on the first --score-rows rows (default: all), one int8 model actor per CPU:
           its wait for the first scored batch, its steady rows/s after it, and rows per actor
  raw      the same model in this process on all CPUs, batches of 256: the texts/s scoring can at best reach
Memory is the driver's peak anonymous RSS (its own heap, sampled from /proc every 50 ms) beside its peak total
RSS (`ru_maxrss`, which also counts the shared object-store pages it mapped). A table, then JSON on the last line.
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import io
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared/data/tweet_sentiment_extraction/train.jsonl"
SHARD_ROWS = (50_000, 120_000, 200_000)  # mixed sizes, cycled
SCORE_BATCH = 256


class PeakMemory:
    """The process's peak anonymous RSS, sampled in a thread, beside its peak total RSS."""

    def __init__(self, every_s: float = 0.05):
        self.anon_kb, self.phase_kb, self.every_s, self.stop = 0, 0, every_s, threading.Event()
        threading.Thread(target=self._sample, daemon=True).start()

    def _sample(self) -> None:
        while not self.stop.is_set():
            with open("/proc/self/status") as status:
                line = next(line for line in status if line.startswith("RssAnon:"))
            self.phase_kb = max(self.phase_kb, int(line.split()[1]))
            self.anon_kb = max(self.anon_kb, self.phase_kb)
            self.stop.wait(self.every_s)

    def phase_peak_mb(self) -> float:
        """The peak anonymous RSS since the last call, in MB."""
        peak, self.phase_kb = self.phase_kb, 0
        return round(peak / 1024, 1)

    def result(self) -> dict:
        self.stop.set()
        return {"driver_peak_anon_mb": round(self.anon_kb / 1024, 1),
                "driver_peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}


def build_shards(directory: Path, rows: int) -> None:
    """`rows` lines of the shared split, repeated, as shards cycling through jsonl, jsonl.gz and parquet."""
    import pandas as pd

    lines = SHARED.read_text().splitlines()
    written, index = 0, 0
    while written < rows:
        size = min(SHARD_ROWS[index % len(SHARD_ROWS)], rows - written)
        chunk = [lines[(written + i) % len(lines)] for i in range(size)]
        kind = ("jsonl", "jsonl.gz", "parquet")[index % 3]
        path = directory / f"part-{index:05d}.{kind}"
        if kind == "parquet":
            pd.DataFrame([json.loads(line) for line in chunk]).to_parquet(path, index=False)
        else:
            body = ("\n".join(chunk) + "\n").encode()
            path.write_bytes(gzip.compress(body, compresslevel=1) if kind.endswith("gz") else body)
        written, index = written + size, index + 1


def data_phase(directory: str) -> dict:
    import ray

    from sam.batching import epoch_batches
    from sam.config import Config
    from sam.prepare import prepare

    memory = PeakMemory()
    ray.init(include_dashboard=False, log_to_driver=False)
    config = Config().with_flat(source=directory, materialize_mb=0)
    started = time.perf_counter()
    data = prepare(config)
    prepared, prepare_anon_mb = time.perf_counter(), memory.phase_peak_mb()
    rows = sum(len(batch["labels"]) for batch in epoch_batches(data.train, config.train, 0, data.tokenizer.pad_token_id))
    epoch_s = time.perf_counter() - prepared
    ray.shutdown()
    return {"prepare_s": round(prepared - started, 1), "epoch_s": round(epoch_s, 1), "epoch_rows": rows,
            "rows_per_s": round(rows / epoch_s), "prepare_peak_anon_mb": prepare_anon_mb,
            "epoch_peak_anon_mb": memory.phase_peak_mb(), **memory.result()}


def scoring_phase(directory: str, model: str, limit: int | None) -> dict:
    import ray

    from sam.cli import main

    memory = PeakMemory()
    ray.init(include_dashboard=False, log_to_driver=False)
    source = directory
    with tempfile.TemporaryDirectory() as scratch:
        if limit:  # the first shards holding `limit` rows
            source = str(Path(scratch) / "in")
            os.mkdir(source)
            build_shards(Path(source), limit)
        printed = io.StringIO()
        started = time.perf_counter()
        with contextlib.redirect_stdout(printed):
            status = main(["predict", "--model", model, "--data", source, "--output", str(Path(scratch) / "out"),
                           "--actors", str(os.cpu_count() or 1), "--quantize"])
        if status:
            raise RuntimeError(f"sam predict exited {status}")
        seconds = time.perf_counter() - started
    ray.shutdown()
    summary = json.loads(printed.getvalue().strip().splitlines()[-1])
    return {"rows": summary["rows"], "seconds": round(seconds, 1), "first_batch_s": summary["first_batch_s"],
            "steady_rows_per_s": summary["steady_rows_per_s"], "rows_per_actor": summary["rows_per_actor"],
            **memory.result()}


def raw_model(model: str, texts: int = 4096) -> float:
    from sam.predict import Predictor

    predictor = Predictor(model, quantize=True, threads=os.cpu_count() or 1)
    sample = [json.loads(line)["text"] or "." for line in SHARED.read_text().splitlines()[:texts]]
    predictor.scores(sample[:SCORE_BATCH])
    started = time.perf_counter()
    for start in range(0, len(sample), SCORE_BATCH):
        predictor.scores(sample[start : start + SCORE_BATCH])
    return len(sample) / (time.perf_counter() - started)


def in_child(phase: str, *args: str) -> dict:
    """A phase in a fresh process: its peak RSS is its own, not the builder's or another phase's."""
    completed = subprocess.run([sys.executable, __file__, "--phase", phase, *args], capture_output=True, text=True)
    if completed.returncode:
        raise RuntimeError(f"{phase} phase failed:\n{completed.stderr[-3000:]}")
    return json.loads(completed.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--score-rows", type=int, default=None, help="rows batch scoring runs on (default: --rows)")
    parser.add_argument("--model", default=str(ROOT / "models/latest"))
    parser.add_argument("--skip-scoring", action="store_true")
    parser.add_argument("--json", action="store_true", help="print only the JSON line")
    parser.add_argument("--phase", choices=("data", "scoring"), help=argparse.SUPPRESS)
    parser.add_argument("--dir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.phase == "data":
        print(json.dumps(data_phase(args.dir)))
        return
    if args.phase == "scoring":
        print(json.dumps(scoring_phase(args.dir, args.model, args.score_rows)))
        return

    with tempfile.TemporaryDirectory() as scratch:
        started = time.perf_counter()
        build_shards(Path(scratch), args.rows)
        build_s = time.perf_counter() - started
        data = in_child("data", "--dir", scratch)
        scoring = None
        if not args.skip_scoring:
            score_rows = min(args.score_rows or args.rows, args.rows)
            scoring = in_child("scoring", "--dir", scratch, "--model", args.model, "--score-rows", str(score_rows))
            scoring["rows_per_s"] = round(score_rows / scoring["seconds"])
    raw = None if args.skip_scoring else round(raw_model(args.model))
    result = {
        "rows": args.rows, "cpus": os.cpu_count(), "build_s": round(build_s, 1),
        **{f"data_{key}": value for key, value in data.items()},
        **{f"scoring_{key}": value for key, value in (scoring or {}).items()}, "raw_model_texts_per_s": raw,
        "scoring_share_of_raw": scoring and raw and round(scoring["rows_per_s"] / raw, 2),
        "scoring_steady_share_of_raw": scoring and raw and round(scoring["steady_rows_per_s"] / raw, 2),
    }
    if not args.json:
        print(f"{args.rows:,} rows in shards, {os.cpu_count()} CPUs")
        print(f"{'phase':<10}{'rows/s':>10}{'peak anon MB':>14}{'peak RSS MB':>13}{'seconds':>10}")
        print(f"{'data':<10}{data['rows_per_s']:>10,}{data['driver_peak_anon_mb']:>14}{data['driver_peak_rss_mb']:>13}"
              f"{data['prepare_s'] + data['epoch_s']:>10.1f}   (prepare {data['prepare_s']} s, epoch {data['epoch_s']} s over "
              f"{data['epoch_rows']:,} training rows; peak anon MB {data['prepare_peak_anon_mb']} preparing, "
              f"{data['epoch_peak_anon_mb']} in the epoch)")
        if scoring:
            print(f"{'scoring':<10}{scoring['rows_per_s']:>10,}{scoring['driver_peak_anon_mb']:>14}{scoring['driver_peak_rss_mb']:>13}"
                  f"{scoring['seconds']:>10}   ({scoring['rows']:,} rows; first batch at {scoring['first_batch_s']} s, then "
                  f"{scoring['steady_rows_per_s']:,} rows/s; rows per actor {list(scoring['rows_per_actor'].values())})")
            print(f"{'raw':<10}{raw:>10,}   share of raw: {result['scoring_share_of_raw']} overall, "
                  f"{result['scoring_steady_share_of_raw']} steady")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
