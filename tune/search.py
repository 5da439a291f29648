"""Hyperparameter search: ASHA over Ray Train trials, the best model exported as a standard model directory.

    python tune/search.py --data ../shared/data/tweet_sentiment_extraction --num-samples 8 --max-epochs 4
    python tune/search.py --storage ray_results --name sam-search --resume   # after an interrupt

Any `sam train` knob (--max-length, --tokenizer, ...) sets the base config; a knob given by hand is left out
of the search space.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time

from sam.config import Config, add_config_arguments, config_from_args
from sam.tune import SEARCH_ALGS, export_best, format_leaderboard, is_complete, summarize

KNOBS = {name for section in Config().to_dict().values() for name in section}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    search = parser.add_argument_group("search")
    # Defaults fit one 2-core machine in under an hour on the full data (44 minutes measured, see README).
    search.add_argument("--num-samples", type=int, default=8, help="trials to sample (default: 8)")
    search.add_argument("--max-epochs", dest="epochs", type=int, default=argparse.SUPPRESS,
                        help="epochs of the longest trial: ASHA's max_t and the schedule's budget (default: 4)")
    search.add_argument("--grace-period", type=int, default=1, help="epochs every trial runs before ASHA may stop it")
    search.add_argument("--reduction-factor", type=int, default=2, help="ASHA keeps 1/N of the trials at each rung")
    search.add_argument("--search-alg", choices=SEARCH_ALGS, default="random",
                        help="random (default), or optuna / hyperopt when installed")
    search.add_argument("--storage", default="~/ray_results", help="local path or URI for trials, checkpoints and TensorBoard logs")
    search.add_argument("--name", default=None, help="experiment name under --storage (default: sam-search-<time>)")
    search.add_argument("--resume", action="store_true", help="continue the interrupted search --storage/--name with its stored settings")
    search.add_argument("--export", default="models/best", help="model directory for the best trial (default: models/best)")
    search.add_argument("--workers-per-trial", type=int, default=None, help="Ray Train (DDP) workers per trial (default: 1, or one per GPU)")
    search.add_argument("--cpus-per-trial", type=int, default=1, help="CPUs a trial's workers reserve, split between them")
    search.add_argument("--gpus-per-trial", type=int, default=0, help="1 or more: train on GPUs, one per worker (a trial of W workers holds W GPUs)")
    search.add_argument("--max-concurrent", type=int, default=None, help="trials at once (default: as the free CPUs/GPUs allow)")
    add_config_arguments(parser, sections=("model", "train", "data"))
    return parser


def scale_knobs(args: argparse.Namespace) -> dict:
    workers = args.workers_per_trial or max(1, args.gpus_per_trial)
    return {"num_workers": workers, "use_gpu": args.gpus_per_trial > 0,
            "cpus_per_worker": max(1, args.cpus_per_trial // workers)}


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    logging.basicConfig(format="%(message)s", level=logging.INFO)
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.resume and not args.name:
        parser.error("--resume needs the --name of the search to continue")
    # Knobs given by hand (options default to "not given") are fixed: they leave the search space.
    fixed = tuple(k for k in vars(args) if k in KNOBS)
    args.epochs = getattr(args, "epochs", 4)
    config = config_from_args(args).with_flat(**scale_knobs(args))
    name = args.name or f"sam-search-{time.strftime('%Y%m%d-%H%M%S')}"

    import ray

    from sam.tune import resume_search, run_search

    ray.init()  # joins the cluster named by RAY_ADDRESS, or starts a local one
    try:
        if args.resume:
            results, spec = resume_search(args.storage, name)
        else:
            results, spec = run_search(
                config, args.storage, name, args.num_samples, grace_period=args.grace_period,
                reduction_factor=args.reduction_factor, search_alg=args.search_alg, max_concurrent=args.max_concurrent,
                fixed=fixed,
            )
        rows = summarize(results, spec)
        print(format_leaderboard(rows))
        if not is_complete(results, spec):
            print(f"search interrupted; continue it with: python tune/search.py --storage {args.storage} --name {name} --resume",
                  file=sys.stderr)
            return 130
        metrics = export_best(rows, args.export, args.storage, name)
    finally:
        ray.shutdown()
    print(json.dumps({"export": args.export, "trial_id": metrics["trial_id"], "val_accuracy": metrics["val_accuracy"],
                      "val_macro_f1": metrics["val_macro_f1"], "best_epoch": metrics["best_epoch"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
