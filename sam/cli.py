"""`sam` command line: train, tune, evaluate, predict, tokenizer train. Every command that writes or reads a
model directory defaults to the same one, so train -> evaluate -> serve needs no path."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time

from sam.config import DEFAULT_MODEL_DIR, Config, add_config_arguments, config_from_args

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


def search_config(args: argparse.Namespace) -> Config:
    """`sam train`'s config from the flags; `--gpus-per-trial` is shorthand for GPUs split over a trial's workers."""
    config = config_from_args(args)
    if args.gpus_per_trial is not None:
        config = config.with_flat(use_gpu=args.gpus_per_trial > 0,
                                  gpus_per_worker=args.gpus_per_trial / config.scale.num_workers or 1.0)
    return config


def cmd_tune(args: argparse.Namespace) -> int:
    from sam.tune import export_best, format_leaderboard, is_complete, resume_search, run_search, summarize

    knobs = {name for section in Config().to_dict().values() for name in section}
    fixed = tuple(name for name in vars(args) if name in knobs)  # given by hand: left out of the search space
    config = search_config(args)
    name = args.name or f"sam-search-{time.strftime('%Y%m%d-%H%M%S')}"
    _init_ray()
    if args.resume:
        results, spec = resume_search(args.storage, name)
    else:
        results, spec = run_search(config, args.storage, name, args.num_samples, grace_period=args.grace_period,
                                   reduction_factor=args.reduction_factor, max_concurrent=args.max_concurrent, fixed=fixed)
    rows = summarize(results, spec)
    print(format_leaderboard(rows))
    if not is_complete(results, spec):
        print(f"search interrupted; continue it with: sam tune --storage {args.storage} --name {name} --resume", file=sys.stderr)
        return 130
    metrics = export_best(rows, args.output, args.storage, name)
    print(json.dumps({"output": args.output, "trial_id": metrics["trial_id"], "val_accuracy": metrics["val_accuracy"],
                      "val_macro_f1": metrics["val_macro_f1"], "best_epoch": metrics["best_epoch"]}))
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
    train.add_argument("--output", default=DEFAULT_MODEL_DIR, help=f"model directory to write (default: {DEFAULT_MODEL_DIR})")
    train.add_argument("--storage", default=None, help="Ray Train storage path or URI for checkpoints (default: ~/ray_results)")
    train.add_argument("--name", default=None, help="run name under the storage path")
    train.add_argument("--max-failures", type=int, default=1, help="worker failures survived by restarting from the last checkpoint")
    add_config_arguments(train)
    train.set_defaults(run=cmd_train)

    tune = commands.add_parser(
        "tune", help="ASHA search over Ray Train trials; the best trial's best epoch exported as a model directory",
        description="Every `sam train` option sets the search's base config; one given by hand leaves the search "
                    "space (layers, heads, width, dropout, lr, warm-up, weight decay, batch size). "
                    "`python tune/search.py` is the same command.")
    search = tune.add_argument_group("search")
    search.add_argument("--num-samples", type=int, default=8, help="trials to sample (default: 8)")
    search.add_argument("--grace-period", type=int, default=1, help="epochs every trial runs before ASHA may stop it (default: 1)")
    search.add_argument("--reduction-factor", type=int, default=2, help="ASHA keeps 1/N of the trials at each rung (default: 2)")
    search.add_argument("--max-concurrent", type=int, default=None, help="trials at once (default: as many as the free CPUs/GPUs hold)")
    search.add_argument("--gpus-per-trial", type=float, default=None,
                        help="GPUs per trial, split over its workers; a fraction packs trials on one GPU (0.25: four per GPU)")
    search.add_argument("--output", default=DEFAULT_MODEL_DIR, help=f"model directory for the best trial (default: {DEFAULT_MODEL_DIR})")
    search.add_argument("--storage", default="~/ray_results", help="local path or URI for trials and checkpoints (default: ~/ray_results)")
    search.add_argument("--name", default=None, help="experiment name under --storage (default: sam-search-<time>)")
    search.add_argument("--resume", action="store_true", help="continue the interrupted search --storage/--name with its stored settings")
    add_config_arguments(tune)
    tune.set_defaults(run=cmd_tune)

    evaluate = commands.add_parser("evaluate", help="accuracy, macro-F1, per-class report and confusion matrix")
    evaluate.add_argument("--model", default=DEFAULT_MODEL_DIR, help=f"model directory (default: {DEFAULT_MODEL_DIR})")
    evaluate.add_argument("--data", required=True, help="file, directory holding <split>.jsonl/.parquet/.csv, or hub name")
    evaluate.add_argument("--split", default="test",
                          help=f"split to read from a directory or the hub (default: test); '{VALIDATION}' re-carves "
                               "the model's own validation rows from the train split, with its saved fraction and seed")
    evaluate.add_argument("--quantize", action="store_true", help="evaluate the dynamic int8 model that Serve's quantize=true serves")
    evaluate.add_argument("--json", action="store_true", help="also print the results as JSON on the last line")
    evaluate.add_argument("--plot", default=None, metavar="FILE.png", help="write the confusion matrix as a picture")
    evaluate.set_defaults(run=cmd_evaluate)

    predict = commands.add_parser("predict", help="one JSON line per text (texts from arguments or stdin lines)")
    predict.add_argument("--model", default=DEFAULT_MODEL_DIR, help=f"model directory (default: {DEFAULT_MODEL_DIR})")
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

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # the tokenizer runs in Ray's processes, not forked ones
    logging.basicConfig(format="%(message)s", level=logging.INFO)
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "tune" and args.resume and not args.name:
        parser.error("--resume needs the --name of the search to continue")
    try:
        return args.run(args)
    except (DataError, ModelDirError, ValueError) as error:
        print(f"sam {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
