"""The GPU checks, in one call: the project's own commands on CUDA through Ray, with a JSON and markdown summary.

    . .whl/activate.sh && python3 bench/gpu_ray_check.py $OUT/gpu --data .devdata/tweet_sentiment_extraction
    python3 bench/gpu_ray_check.py /tmp/gpu --dry-run      # prints the plan and checks every command parses

Steps (sized for about 8 minutes on one H100/H200; see docs/benchmarks.md for the figures):
  train fp32 and bf16      `sam train --use-gpu true` with the defaults: samples/s, wall, validation accuracy
  two workers, one GPU     `--num-workers 2 --gpus-per-worker 0.5` (gloo), a worker killed mid-run and restored
  search at 1, 0.5, 0.25   `sam tune --gpus-per-trial X`, same seed, sizes and epochs: trials per hour
  runtime on a GPU         `sam evaluate --gpus-per-actor 1`: the runtime a GPU actor picks, and its accuracy
  serving                  `bench/serve_bench.py --device cuda`: batched Serve vs plain FastAPI at 1, 32, 128 clients
Each step runs as its own process; a failed step is recorded with its log's tail and the rest still run.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SAM = [sys.executable, "-m", "sam.cli"]
SAM_WITH_FAULT = [sys.executable, "-m", "tests.faults"]  # then the step to fail at, then `sam`'s arguments
TRIALS = 4
SEARCH = ["--num-samples", str(TRIALS), "--epochs", "2", "--limit-train", "8000", "--grace-period", "1"]
GPU_SHARES = ("1", "0.5", "0.25")


@dataclass
class Step:
    name: str
    command: list[str]
    env: dict = field(default_factory=dict)


def plan(out: Path, data: str) -> list[Step]:
    train = [*SAM, "train", "--data", data, "--use-gpu", "true", "--storage", str(out / "runs")]
    steps = [
        Step("train_fp32", [*train, "--bf16", "false", "--output", str(out / "model_fp32")]),
        Step("train_bf16", [*train, "--bf16", "true", "--output", str(out / "model_bf16")]),
        # The last worker exits early in epoch 2: the run must resume from epoch 1's checkpoint on CUDA.
        Step("two_workers_one_gpu", [*SAM_WITH_FAULT, "70", *train[len(SAM):], "--num-workers", "2", "--gpus-per-worker", "0.5",
                                     "--epochs", "2", "--limit-train", "8000", "--output", str(out / "model_2w")]),
    ]
    steps += [Step(f"search_{share}_gpu", [*SAM, "tune", "--data", data, *SEARCH, "--gpus-per-trial", share,
                                          "--storage", str(out / "search"), "--name", f"share_{share}",
                                          "--output", str(out / f"search_{share}")])
              for share in GPU_SHARES]
    # The runtime a GPU scoring actor chooses (torch on CUDA, or ONNX Runtime's CUDA provider with onnxruntime-gpu),
    # and its validation accuracy: the same as the CPU's fp32 answers.
    steps.append(Step("runtime_on_gpu", [*SAM, "evaluate", "--model", str(out / "model_fp32"), "--data", data,
                                         "--split", "validation", "--gpus-per-actor", "1", "--json"]))
    steps.append(Step("serving", [sys.executable, "bench/serve_bench.py", "--model", str(out / "model_fp32"),
                                  "--device", "cuda", "--concurrency", "1,32,128", "--rounds", "3", "--duration", "3",
                                  "--json"]))
    return steps


def check_parses(steps: list[Step]) -> None:
    """Every `sam` command of the plan is valid for today's CLI: a renamed flag fails here, not on the GPU."""
    from sam.cli import build_parser

    parser = build_parser()
    for step in steps:
        if step.command[:3] == SAM:
            parser.parse_args(step.command[3:])
        elif step.command[:3] == SAM_WITH_FAULT:
            parser.parse_args(step.command[4:])


def run(step: Step, out: Path) -> dict:
    started = time.perf_counter()
    log = out / f"{step.name}.log"
    with log.open("w") as sink:
        completed = subprocess.run(step.command, cwd=ROOT, env={**os.environ, **step.env}, stdout=sink,
                                   stderr=subprocess.STDOUT, text=True)
    lines = log.read_text().strip().splitlines()
    result = {"step": step.name, "returncode": completed.returncode, "wall_s": round(time.perf_counter() - started, 1)}
    try:
        result["output"] = json.loads(lines[-1]) if lines else None
    except json.JSONDecodeError:
        result["output"] = None
    if completed.returncode:
        result["log_tail"] = lines[-15:]
    return result


def figures(result: dict, out: Path) -> dict:
    """The few numbers each step is run for."""
    name, output = result["step"], result.get("output") or {}
    if name.startswith("train") or name.startswith("two_workers"):
        model = out / {"train_fp32": "model_fp32", "train_bf16": "model_bf16"}.get(name, "model_2w")
        metrics = json.loads((model / "metrics.json").read_text()) if (model / "metrics.json").is_file() else {}
        history = metrics.get("history", [])
        return {"val_accuracy": metrics.get("val_accuracy"), "epochs": len(history),
                "samples_per_s": [round(h["samples_per_s"]) for h in history],
                "restored_from_epoch": [h["restored_from_epoch"] for h in history]}
    if name.startswith("search"):
        return {"trials_per_hour": round(TRIALS * 3600 / result["wall_s"], 1), "best_val_accuracy": output.get("val_accuracy")}
    return {k: output.get(k) for k in ("median_ratio", "ratios", "rows", "accuracy") if k in output}


def markdown(results: list[dict], device: str) -> str:
    lines = [f"# GPU check on {device}", "", "| step | exit | wall s | figures |", "|---|---|---|---|"]
    for result in results:
        lines.append(f"| {result['step']} | {result['returncode']} | {result['wall_s']} | "
                     f"{json.dumps(result.get('figures', {}))} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path, help="folder for the logs, models and summary.{json,md}")
    parser.add_argument("--data", default=str(ROOT.parent / "shared/data/tweet_sentiment_extraction"))
    parser.add_argument("--dry-run", action="store_true", help="print the plan and check that every command parses")
    parser.add_argument("--only", default=None, help="comma list of step names to run (default: all)")
    args = parser.parse_args(argv)
    steps = plan(args.out.resolve(), args.data)
    if args.only:
        steps = [s for s in steps if s.name in args.only.split(",")]
    check_parses(steps)
    if args.dry_run:
        for step in steps:
            print(f"{step.name}: {' '.join(f'{k}={v} ' for k, v in step.env.items())}{shlex.join(step.command)}")
        return 0

    import torch

    if not torch.cuda.is_available():
        print("gpu_ray_check: no CUDA device here; --dry-run checks the plan on CPU", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    device = torch.cuda.get_device_name(0)
    results = []
    for step in steps:
        result = run(step, args.out.resolve())
        result["figures"] = figures(result, args.out.resolve())
        results.append(result)
        print(json.dumps(result), flush=True)
    summary = {"device": device, "torch": torch.__version__, "commit": subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip() or None,
        "steps": results}
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    (args.out / "summary.md").write_text(markdown(results, device))
    print((args.out / "summary.md").read_text())
    print(json.dumps({"device": device, "failed": [r["step"] for r in results if r["returncode"]]}))
    return 1 if any(r["returncode"] for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
