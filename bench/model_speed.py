"""Raw scoring speed side by side, in interleaved rounds: texts/s of `Predictor.scores` at batch 1 and at Serve's
batch shape (32 texts in token-budget chunks) on one thread, as a Serve replica on one CPU runs them. Either one
model on each ONNX runtime against eager torch fp32, or two model directories on one runtime (a student against
its teacher).

    python bench/model_speed.py --model A [--rounds 5] [--seconds 3]                 # onnx, onnx-int8 vs torch
    python bench/model_speed.py --model A --baseline B [--runtime R] [--rounds 5]   # A vs B, both on R

Prints a table per pair and batch size, then JSON on the last line: each pair's median ratio and its range.
"""

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from rounds import format_rounds, interleaved  # noqa: E402  (bench/ is on the path as the script's folder)
from serve_bench import DATA, load_texts, texts_per_s  # noqa: E402

BATCH_SIZES = (1, 32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="candidate model directory")
    parser.add_argument("--baseline", default=None, help="baseline model directory (default: --model on torch fp32)")
    parser.add_argument("--runtime", default=None, help="both models' runtime, with --baseline (default: onnx)")
    parser.add_argument("--data", type=Path, default=DATA, help="tweets to score, first 2,000 valid ones (default: the shared set)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=3.0, help="seconds measured per side, batch size and round")
    args = parser.parse_args()

    import ray

    from sam.predict import Predictor

    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)  # the project's reader is Ray Data
    try:
        texts = load_texts(args.data)
    finally:
        ray.shutdown()
    if args.baseline:
        pairs = {f"{args.runtime or 'onnx'}: model vs baseline": (
            Predictor(args.model, runtime=args.runtime, threads=1), Predictor(args.baseline, runtime=args.runtime, threads=1))}
    else:
        torch_fp32 = Predictor(args.model, runtime="torch", threads=1)
        pairs = {f"{runtime} vs torch": (Predictor(args.model, runtime=runtime, threads=1), torch_fp32) for runtime in ("onnx", "onnx-int8")}
    results = {}
    for name, (candidate, baseline) in pairs.items():
        for batch_size in BATCH_SIZES:
            result = interleaved(lambda: texts_per_s(candidate, texts, batch_size, args.seconds),
                                 lambda: texts_per_s(baseline, texts, batch_size, args.seconds), rounds=args.rounds)
            print(f"{name}, batch {batch_size}:")
            print(format_rounds(result, candidate.runtime, baseline.runtime, unit="texts/s"), flush=True)
            results[f"{name}, batch {batch_size}"] = result
    print(json.dumps({"model": args.model, "baseline": args.baseline, "threads": 1, **results}))


if __name__ == "__main__":
    main()
