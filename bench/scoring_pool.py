"""Batch scoring's default pool against one actor: `sam predict --data` as users run it, each run a process of
its own (Ray starting, actors loading the model, the whole pass), in interleaved rounds.

    python bench/scoring_pool.py --model DIR [--rows 10000] [--files 3] [--rounds 5] [--runtime onnx-int8]

The candidate is the default (`--actors` unset: a pool from one actor up to the machine's CPUs), the baseline
`--actors 1`, the old default and what `sam distill` scored its transfer set with. Rows are the first --rows lines
of the shared train split, written to --files jsonl shards. Rates are rows per second of wall time, start to
finish. Prints a table, then JSON on the last line.
"""

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from rounds import format_rounds, interleaved  # noqa: E402  (bench/ is on the path as the script's folder)

SHARED = Path(__file__).resolve().parents[2] / "shared/data/tweet_sentiment_extraction/train.jsonl"


def first_rows(source: Path, rows: int, files: int, target: Path) -> Path:
    """The first `rows` lines of `source`, in `files` copies: Ray Data reads a file as one block, and a pool has
    only as many blocks to share as there are files (a real corpus comes in shards)."""
    target.mkdir()
    with source.open() as lines:
        head = "".join(line for _, line in zip(range(rows), lines))
    for i in range(files):
        (target / f"part-{i}.jsonl").write_text(head)
    return target


def scoring_rate(data: Path, model: str, output: Path, extra: list[str]):
    def run() -> float:
        started = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "sam.cli", "predict", "--data", str(data), "--model", model,
                               "--output", str(output), *extra], capture_output=True, text=True)
        if done.returncode:
            raise SystemExit(f"sam predict failed:\n{done.stderr[-3000:]}")
        return json.loads(done.stdout.strip().splitlines()[-1])["rows"] / (time.perf_counter() - started)
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True)
    parser.add_argument("--data", type=Path, default=SHARED)
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--files", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--runtime", default=None, help="both sides' runtime (default: the CPU's, onnx)")
    args = parser.parse_args()
    runtime = ["--runtime", args.runtime] if args.runtime else []
    with tempfile.TemporaryDirectory() as scratch:
        data = first_rows(args.data, args.rows, args.files, Path(scratch) / "rows")
        result = interleaved(scoring_rate(data, args.model, Path(scratch) / "pool", runtime),
                             scoring_rate(data, args.model, Path(scratch) / "one", ["--actors", "1", *runtime]),
                             args.rounds, on_round=lambda i, r: print(f"round {i + 1}: {r}", flush=True))
    print(format_rounds(result, "default pool", "--actors 1", unit="rows/s, wall"))
    print(json.dumps({"rows": args.rows, "files": args.files, "runtime": args.runtime or "onnx", **result}))


if __name__ == "__main__":
    main()
