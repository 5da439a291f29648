"""How many tasks of each data stage run at once, on a local Ray of N logical CPUs (one fresh process per N).

    python bench/data_tasks.py --rows 300000 --cpus 2 6

Builds N rows as mixed shards (as bench/data_bench.py does), runs `prepare` and one pass over the tokenized training split, then reads every task's start and end from
Ray's state API: per stage, the tasks run and the most at once. A table, then JSON on the last line.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from data_bench import build_shards  # noqa: E402  (the same corpus as the data benchmark)


def measure(data: str, cpus: int) -> dict:
    import ray
    from ray.util.state import list_tasks

    from sam.config import Config
    from sam.data import data_tasks
    from sam.prepare import prepare

    ray.init(num_cpus=cpus, include_dashboard=True, log_to_driver=False)
    prepared = prepare(Config().with_flat(source=data))
    for _ in prepared.train.iter_batches(batch_size=4096):
        pass
    spans = defaultdict(list)
    for task in list_tasks(detail=True, limit=10_000, raise_on_missing_output=False):
        if task.start_time_ms and task.end_time_ms and ("MapBatches" in task.name or "Read" in task.name):
            spans[task.name].append((task.start_time_ms, task.end_time_ms))
    stages = {name: {"tasks": len(times), "most_at_once": max(sum(s <= t < e for s, e in times) for t, _ in times)}
              for name, times in spans.items()}
    result = {"cpus": cpus, "stage_cap": data_tasks(), "stages": stages}
    ray.shutdown()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=300_000)
    parser.add_argument("--cpus", type=int, nargs="+", default=[2, 6])
    parser.add_argument("--data", help=argparse.SUPPRESS)  # the child process: one measurement on these shards
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.data, args.one)))
        return
    results = []
    with tempfile.TemporaryDirectory() as directory:
        build_shards(Path(directory), args.rows)
        for cpus in args.cpus:
            child = subprocess.run([sys.executable, __file__, "--data", directory, "--one", str(cpus)],
                                   capture_output=True, text=True, check=True)
            results.append(json.loads(child.stdout.strip().splitlines()[-1]))
    print(f"{'stage':<100} " + " ".join(f"{r['cpus']:>2} CPUs (tasks, at once)" for r in results))
    for name in sorted({name for r in results for name in r["stages"]}):
        cells = [r["stages"].get(name, {"tasks": 0, "most_at_once": 0}) for r in results]
        print(f"{name[:100]:<100} " + " ".join(f"{c['tasks']:>10}, {c['most_at_once']:>10}" for c in cells))
    print(json.dumps(results))


if __name__ == "__main__":
    main()
