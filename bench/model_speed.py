"""Two model directories' raw scoring speed side by side (e.g. a student against another student, or its teacher),
in interleaved rounds: texts/s of `Predictor.scores` at batch 1 and at batch 32 on one torch thread, as a Serve
replica on one CPU runs them.

    python bench/model_speed.py --model A --baseline B [--quantize] [--rounds 5] [--seconds 3]

Prints a table per batch size, then JSON on the last line: each size's median A / B ratio and its range.
"""

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from rounds import format_rounds, interleaved  # noqa: E402  (bench/ is on the path as the script's folder)
from serve_bench import DATA, load_texts, texts_per_s  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="candidate model directory")
    parser.add_argument("--baseline", required=True, help="baseline model directory")
    parser.add_argument("--data", type=Path, default=DATA, help="tweets to score, first 2,000 valid ones (default: the shared set)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=3.0, help="seconds measured per model, batch size and round")
    parser.add_argument("--quantize", action="store_true", help="dynamic int8 (CPU), as Serve's quantize=true")
    args = parser.parse_args()

    import ray
    import torch

    from sam.predict import Predictor

    torch.set_num_threads(1)
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)  # the project's reader is Ray Data
    try:
        texts = load_texts(args.data)
    finally:
        ray.shutdown()
    candidate, baseline = (Predictor(m, device="cpu", quantize=args.quantize) for m in (args.model, args.baseline))
    results = {}
    for batch_size in (1, 32):
        result = interleaved(lambda: texts_per_s(candidate, texts, batch_size, args.seconds),
                             lambda: texts_per_s(baseline, texts, batch_size, args.seconds), rounds=args.rounds)
        print(f"batch {batch_size}:")
        print(format_rounds(result, "model", "baseline", unit="texts/s"), flush=True)
        results[f"batch_{batch_size}"] = result
    print(json.dumps({"model": args.model, "baseline": args.baseline, "quantize": args.quantize, **results}))


if __name__ == "__main__":
    main()
