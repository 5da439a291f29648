"""`sam` command line: train, evaluate, predict, tokenizer train."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from sam.config import add_config_arguments, config_from_args

log = logging.getLogger("sam")

VALIDATION = "validation"  # not a split on disk: the one carved from train when the model was trained


def _init_ray() -> None:
    """Joins the cluster named by RAY_ADDRESS, or starts a local one (unless this process already has Ray)."""
    import ray

    if not ray.is_initialized():
        ray.init()


def cmd_train(args: argparse.Namespace) -> int:
    from sam.train import train

    config = config_from_args(args)
    _init_ray()
    metrics = train(config, args.output, storage=args.storage, name=args.name, max_failures=args.max_failures)
    print(json.dumps({k: v for k, v in metrics.items() if k != "history"}))
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from sam.evaluate import evaluate, format_table, plot_confusion
    from sam.predict import Predictor

    predictor = Predictor(args.model, quantize=args.quantize)  # checks the directory before Ray starts
    from sam.data import load_frame, train_and_validation

    _init_ray()
    if args.split == VALIDATION:  # the model's own split settings, over the data given here
        _, frame, report = train_and_validation(predictor.config.with_flat(data=args.data))
    else:
        frame, report = load_frame(args.data, args.split)
    results = evaluate(predictor, frame["text"].tolist(), frame["label"].to_numpy())
    results["dropped_rows"] = dict(report.dropped)
    print(format_table(results))
    if args.plot:
        plot_confusion(results, args.plot)
        print(f"confusion matrix written to {args.plot}")
    if args.json:
        print(json.dumps(results))
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from sam.predict import Predictor

    predictor = Predictor(args.model)
    texts = args.texts or [line.rstrip("\n") for line in sys.stdin]
    blank = [i for i, text in enumerate(texts) if not text.strip()]
    for i, prediction in enumerate(predictor.predict([t if t.strip() else "." for t in texts])):
        print(json.dumps({"text": texts[i], "error": "blank text"} if i in blank else {"text": texts[i], **prediction}))
    return 0


def cmd_tokenizer_train(args: argparse.Namespace) -> int:
    from sam.data import load_frame
    from sam.tokenizer import train_wordpiece

    _init_ray()
    frame, _ = load_frame(args.data, "train")
    model = config_from_args(args).model
    tokenizer = train_wordpiece(frame["text"].tolist(), model.vocab_size, lowercase=model.lowercase)
    tokenizer.save_pretrained(args.output)
    print(f"{len(tokenizer)}-word WordPiece tokenizer from {len(frame)} texts written to {args.output}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sam", description="Tweet sentiment on Ray: train, evaluate, predict.")
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="train on Ray Train and export the best epoch as a model directory")
    train.add_argument("--output", default="models/latest", help="model directory to write (default: models/latest)")
    train.add_argument("--storage", default=None, help="Ray Train storage path or URI for checkpoints (default: ~/ray_results)")
    train.add_argument("--name", default=None, help="run name under the storage path")
    train.add_argument("--max-failures", type=int, default=1, help="worker failures survived by restarting from the last checkpoint")
    add_config_arguments(train)
    train.set_defaults(run=cmd_train)

    evaluate = commands.add_parser("evaluate", help="accuracy, macro-F1, per-class report and confusion matrix")
    evaluate.add_argument("--model", required=True, help="model directory")
    evaluate.add_argument("--data", required=True, help="file, directory holding <split>.jsonl/.parquet/.csv, or hub name")
    evaluate.add_argument("--split", default="test",
                          help=f"split to read from a directory or the hub (default: test); '{VALIDATION}' re-carves "
                               "the model's own validation rows from the train split, with its saved fraction and seed")
    evaluate.add_argument("--quantize", action="store_true", help="evaluate the dynamic int8 model that Serve's quantize=true serves")
    evaluate.add_argument("--json", action="store_true", help="also print the results as JSON on the last line")
    evaluate.add_argument("--plot", default=None, metavar="FILE.png", help="write the confusion matrix as a picture")
    evaluate.set_defaults(run=cmd_evaluate)

    predict = commands.add_parser("predict", help="one JSON line per text (texts from arguments or stdin lines)")
    predict.add_argument("--model", required=True, help="model directory")
    predict.add_argument("texts", nargs="*", help="texts to classify")
    predict.set_defaults(run=cmd_predict)

    tokenizer = commands.add_parser("tokenizer", help="tokenizer tools").add_subparsers(dest="action", required=True)
    tokenizer_train = tokenizer.add_parser("train", help="train a WordPiece tokenizer on the train texts")
    tokenizer_train.add_argument("--data", required=True, help="as for sam train --data")
    add_config_arguments(tokenizer_train, sections=("model",), only=("vocab_size", "lowercase"))
    tokenizer_train.add_argument("--output", required=True, help="directory for the HF tokenizer files")
    tokenizer_train.set_defaults(run=cmd_tokenizer_train)
    return parser


def main(argv: list[str] | None = None) -> int:
    from sam.data import DataError
    from sam.predict import ModelDirError

    logging.basicConfig(format="%(message)s", level=logging.INFO)
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except (DataError, ModelDirError, ValueError) as error:
        print(f"sam {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
