"""`sam monitor` on shifts built from a model's own validation split, logged as Serve logs them (`PredictionLog`,
the model's predictor and token counts), then compared with the model's profile.json:

    python bench/monitor_shift.py --model DIR [--out /tmp/monitor_shift]

  validation   the validation split itself: what the profile was made from, no shift
  new words    its tweets holding a word that no training tweet holds (lowercased, split on spaces)
  negative     its tweets labelled Negative only: a label shift

Writes each log and its PNG under --out; prints a table of PSIs and exit codes, then JSON on the last line.
"""

import argparse
import contextlib
import io
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True)
    parser.add_argument("--out", type=Path, default=Path("/tmp/monitor_shift"))
    args = parser.parse_args()

    import ray

    from sam.cli import main as sam
    from sam.config import Config
    from sam.data import train_and_validation
    from sam.predict import Predictor
    from sam.prediction_log import LogSettings, PredictionLog

    ray.init(include_dashboard=False, log_to_driver=False)
    split = train_and_validation(Config.load(Path(args.model)))
    seen = {word for row in split.train.select_columns(["text"]).iter_rows() for word in row["text"].lower().split()}
    validation = [(row["text"], row["label"]) for row in split.val.select_columns(["text", "label"]).iter_rows()]
    shifts = {"validation": [text for text, _ in validation],
              "new words": [text for text, _ in validation if any(word not in seen for word in text.lower().split())],
              "negative": [text for text, label in validation if label == 0]}
    predictor = Predictor(args.model)
    results = {}
    for name, texts in shifts.items():
        log_dir = args.out / name.replace(" ", "_")
        log = PredictionLog(LogSettings(log_dir=str(log_dir), log_flush_s=3600), str(Path(args.model).resolve()), "bench",
                            count_tokens=predictor.token_counter())
        for start in range(0, len(texts), 32):
            chunk = texts[start:start + 32]
            log.add(f"{name}-{start}", chunk, predictor.predict(chunk), 0.0)
        log.close()
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            code = sam(["monitor", "--log", str(log_dir), "--plot", str(log_dir) + ".png"])
        print(printed.getvalue())
        results[name] = {"rows": len(texts), "exit": code, **json.loads(printed.getvalue().strip().splitlines()[-1])}
    ray.shutdown()
    print(f"{'log':<12}{'rows':>6}{'exit':>6}" + "".join(f"{signal:>14}" for signal in ("label_mix", "confidence", "token_length", "unknown_rate")))
    for name, result in results.items():
        psis = result.get("psi", {})
        print(f"{name:<12}{result['rows']:>6}{result['exit']:>6}" + "".join(f"{psis.get(s, float('nan')):>14.3f}" for s in
                                                                          ("label_mix", "confidence", "token_length", "unknown_rate")))
    print(json.dumps({name: {k: result[k] for k in ("rows", "exit", "psi", "drifted", "plot") if k in result} for name, result in results.items()}))


if __name__ == "__main__":
    main()
