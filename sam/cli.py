"""`sam` command line: train, distill, tune, evaluate, predict, tokenizer train. Every command that writes or reads a
model directory defaults to the same one, so train -> evaluate -> serve needs no path."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from contextlib import nullcontext

from sam import SamError
from sam.config import CARVED, DEFAULT_MODEL_DIR, HOLDOUT, VALIDATION, Config, add_config_arguments, given_knobs
from sam.locations import local_model_dir
from sam.rollout import DEFAULT_STEPS, Checks
from sam.runtimes import RUNTIMES
from sam.storage import exists, join, redact, resolve

log = logging.getLogger("sam")


def _init_ray(args: argparse.Namespace) -> None:
    """Joins the cluster named by RAY_ADDRESS, or starts a local one (unless this process already has Ray)."""
    import ray

    from sam.console import quiet_ray, ray_init_options

    quiet_ray(args.verbose)
    if not ray.is_initialized():
        ray.init(**ray_init_options(args.verbose))


def _tracker(args: argparse.Namespace):
    """The command's MLflow handle, or None; its URI also goes to every Ray process of the job (models:/ reads)."""
    from sam.tracking import URI_ENV, tracker

    tracked = tracker(args.tracking_uri, args.experiment)
    if tracked:
        os.environ[URI_ENV] = tracked.uri
    return tracked


def _printed(metrics: dict) -> str:
    return json.dumps({k: v for k, v in metrics.items() if k != "history"})


def cmd_train(args: argparse.Namespace) -> int:
    """`sam train`, and `sam distill`: the same run, on the transfer set a teacher scores first."""
    from sam.checkpoint import check_output
    from sam.distill import prepare_distilled
    from sam.prepare import prepare
    from sam.resolve import resolve_config
    from sam.train import train

    tracked = _tracker(args)  # first: resolving reads a models:/ init or teacher through its URI
    config = resolve_config(given_knobs(args))
    distilling = args.command == "distill"
    if distilling and not config.distill.teacher:
        raise SamError("--teacher is required: the model directory whose scores the student learns from")
    if distilling and any(resolve(args.output) == resolve(teacher) for teacher in config.distill.teachers):
        raise SamError(f"--output {redact(args.output)} is a teacher: the student would replace it")
    check_output(args.output)
    _init_ray(args)
    data = (prepare_distilled(config, args.transfer, args.storage, progress=True, **_scoring_args(args)) if distilling
            else prepare(config))
    metrics = train(config, args.output, storage=args.storage, name=args.name, max_failures=args.max_failures,
                    data=data, resume=args.resume, tracked=tracked, register=args.register)
    print(_printed(metrics))
    return 0


def search_config(args: argparse.Namespace) -> Config:
    """A search's base config from `sam train`'s flags and `--gpus-per-trial`."""
    from sam.resolve import resolve_config

    return resolve_config(given_knobs(args), gpus_per_trial=args.gpus_per_trial)


def cmd_tune(args: argparse.Namespace) -> int:
    from sam.checkpoint import check_output
    from sam.distill import check_teacher_split
    from sam.tracking import flat_params, record_decisions, run_tags, trial_logger
    from sam.train import check_run_name, finish_tracking, new_run_name
    from sam.tune import experiment_path, export_best, format_leaderboard, is_complete, leaderboard_rows, resume_search, run_search

    started = time.perf_counter()
    fixed = tuple(given_knobs(args))  # given by hand: left out of the search space
    tracked = _tracker(args)  # first: resolving reads a models:/ init or teacher through its URI
    config = search_config(args)
    check_output(args.output)
    if config.distill.teacher:
        check_teacher_split(config)
    name = args.name or new_run_name("search")
    check_run_name("search", name, args.storage, exists(experiment_path(args.storage, name)), args.resume)
    _init_ray(args)
    parent = tracked.start(name, flat_params(config), run_tags(config) | {"sam.kind": "search"}) if tracked else None
    callbacks = [trial_logger(tracked, parent)] if tracked else None
    with tracked.running(parent) if tracked else nullcontext():
        if args.resume:
            results, spec = resume_search(args.storage, name, given=config, fixed=fixed)
        else:
            results, spec = run_search(config, args.storage, name, args.num_samples, grace_period=args.grace_period,
                                       reduction_factor=args.reduction_factor, max_concurrent=args.max_concurrent, fixed=fixed,
                                       callbacks=callbacks)
        rows = leaderboard_rows(results, spec)
        print(format_leaderboard(rows))
        if tracked:
            record_decisions(tracked, parent, rows)
        if not is_complete(results, spec):
            print(f"search interrupted; continue it with: sam tune --storage {args.storage} --name {name} --resume", file=sys.stderr)
            return 130
        metrics = export_best(rows, args.output, args.storage, name)
        summary = {"output": redact(args.output), "trial_id": metrics["trial_id"], "val_accuracy": metrics["val_accuracy"],
                   "val_macro_f1": metrics["val_macro_f1"], "best_epoch": metrics["best_epoch"]}
        if tracked:
            metrics["wall_s"] = time.perf_counter() - started
            summary.update(finish_tracking(tracked, parent, metrics, args.output, args.register))
    print(json.dumps(summary))
    return 0


def _scoring_args(args: argparse.Namespace) -> dict:
    return {"actors": args.actors, "gpus_per_actor": args.gpus_per_actor, "runtime": _runtime(args)}


def _runtime(args: argparse.Namespace) -> str | None:
    return "onnx-int8" if args.quantize else args.runtime


def cmd_evaluate(args: argparse.Namespace) -> int:
    from sam.data import read_rows, survey_rows, train_and_validation, valid_only
    from sam.evaluate import format_table, metrics_from_confusion, plot_confusion
    from sam.predict import Predictor
    from sam.scoring import confusion, score_rows

    Predictor(args.model, runtime=_runtime(args))  # a broken model directory is one line here, before Ray starts, not an actor's traceback
    tracked = _tracker(args)
    _init_ray(args)
    if args.split in CARVED:  # the model's own split settings, over the data given here
        config = Config.load(local_model_dir(args.model)).with_flat(source=args.data)
        if args.split == HOLDOUT and not config.data.holdout_fraction:
            raise SamError(f"{args.model} was trained without a held-out part (--holdout-fraction): every row "
                           "outside its validation was trained on")
        split = train_and_validation(config, progress=True)
        rows, report = {VALIDATION: split.val, HOLDOUT: split.holdout}[args.split], split.report
    else:
        rows = read_rows(args.data, args.split, progress=True)
        report, _ = survey_rows(rows, args.data, seed=0)
        rows = valid_only(rows)
    results = metrics_from_confusion(confusion(score_rows(rows, args.model, progress=True, **_scoring_args(args))))
    results["dropped_rows"] = dict(report.dropped)
    print(format_table(results))
    if args.plot:
        plot_confusion(results, args.plot)
        print(f"confusion matrix written to {args.plot}")
    if tracked:
        results["mlflow_run_id"] = track_evaluation(tracked, args, results)
    if args.json:
        print(json.dumps(results))
    return 0


def track_evaluation(tracked, args: argparse.Namespace, results: dict) -> str:
    """A run of its own: the split's metrics, per class too, with the confusion matrix as a picture."""
    import tempfile

    from sam.evaluate import plot_confusion

    name = f"evaluate-{time.strftime('%Y%m%d-%H%M%S')}"
    run_id = tracked.start(name, {"model": redact(args.model), "data": args.data, "split": args.split},
                           {"sam.kind": "evaluate", "sam.model": redact(args.model), "sam.source": args.data})
    with tracked.running(run_id):
        per_class = {f"{args.split}_{label}_{k.replace('-score', '')}": row[k]
                     for label, row in results["per_class"].items() for k in ("precision", "recall", "f1-score")}
        tracked.log_metrics(run_id, {f"{args.split}_accuracy": results["accuracy"], f"{args.split}_macro_f1": results["macro_f1"],
                                     f"{args.split}_n": results["n"], **per_class})
        with tempfile.TemporaryDirectory() as directory:
            if args.plot:  # the picture already drawn, under its own name
                tracked.client.log_artifact(run_id, args.plot)
            else:
                plot_confusion(results, f"{directory}/confusion_matrix.png")
            with open(f"{directory}/results.json", "w") as file:
                json.dump(results, file, indent=2)
            tracked.client.log_artifacts(run_id, directory)
    return run_id


def cmd_predict(args: argparse.Namespace) -> int:
    if args.data:
        return predict_dataset(args)
    from sam.predict import Predictor

    predictor = Predictor(args.model, runtime=_runtime(args))
    texts = args.texts or [line.rstrip("\n") for line in sys.stdin]
    blank = [i for i, text in enumerate(texts) if not text.strip()]
    for i, prediction in enumerate(predictor.predict([t if t.strip() else "." for t in texts])):
        print(json.dumps({"text": texts[i], "error": "blank text"} if i in blank else {"text": texts[i], **prediction}))
    return 0


def cmd_export_onnx(args: argparse.Namespace) -> int:
    from sam.onnx_export import add_onnx

    _init_ray(args)  # the check reads its rows with Ray Data
    print(json.dumps(add_onnx(args.model, args.data)))
    return 0


def cmd_profile(args: argparse.Namespace) -> int:
    from sam.monitor import add_profile

    _init_ray(args)  # its rows come through Ray Data
    print(json.dumps(add_profile(args.model, args.data)))
    return 0


def cmd_monitor(args: argparse.Namespace) -> int:
    from sam.monitor import monitor, report_table

    tracked = _tracker(args)
    _init_ray(args)
    summary = monitor(args.log, args.since, args.model, args.max_psi, args.min_confidence, args.plot)
    print(report_table(summary))
    if tracked:
        run_id = tracked.start(f"sam-monitor-{time.strftime('%Y%m%d-%H%M%S')}", {"log": summary["log"], "model": summary["model"],
                               "since": args.since, "max_psi": args.max_psi}, {"sam.kind": "monitor"})
        with tracked.running(run_id):
            tracked.log_metrics(run_id, {f"psi_{name}": value for name, value in summary["psi"].items() if value is not None}
                                | {"rows": summary["rows"], "below_confidence": summary["below_confidence"]})
            tracked.client.log_artifact(run_id, args.plot)
        summary["mlflow_run_id"] = run_id
    print(json.dumps({k: v for k, v in summary.items() if k != "signals"}))
    if summary["drifted"]:
        drifted = ", ".join(f"{name} (PSI {summary['psi'][name]:.3f})" for name in summary["drifted"])
        print(f"sam monitor: drift: {drifted} above --max-psi {args.max_psi}", file=sys.stderr)
        return 1
    return 0


def cmd_rollout(args: argparse.Namespace) -> int:
    from sam.console import parse_duration
    from sam.rollout import Checks, Rollout, parse_steps

    steps, hold = parse_steps(args.steps), parse_duration(args.hold, "--hold").total_seconds()
    checks = Checks(args.max_error_rate, args.max_p99_ms, args.min_agreement, args.min_requests)
    summary = Rollout(args.config, args.challenger, args.address, args.url, args.app).run(steps, hold, checks)
    print(json.dumps(summary))
    if summary["result"] == "rolled_back":
        print(f"sam rollout: rolled back: {summary['why']}", file=sys.stderr)
        return 1
    return 0


def predict_dataset(args: argparse.Namespace) -> int:
    """Batch scoring as one Ray Data pass: predictions to OUTPUT/predictions, unusable rows to OUTPUT/rejects,
    and a summary with rows per scoring actor, the wait for the first scored batch and the steady rate."""
    from sam.data import DataError, read_rows
    from sam.predict import Predictor
    from sam.scoring import ScoredSink, score_rows

    if not args.output:
        raise SamError("--data needs --output, the directory to write the predictions to")
    Predictor(args.model, runtime=_runtime(args))  # a broken model directory is one line here, before Ray starts, not an actor's traceback
    _init_ray(args)
    started = time.time()
    predictions, rejects = join(args.output, "predictions"), join(args.output, "rejects")
    sink = ScoredSink(args.data, predictions, rejects, args.format)
    rows = read_rows(args.data, args.split, require_label=False, progress=True)
    # Writes hold no CPU, so they go on beside the scoring actors that hold them all.
    score_rows(rows, args.model, progress=True, **_scoring_args(args)).write_datasink(sink, ray_remote_args={"num_cpus": 0})
    report, rows = sink.report, sink.report.rows
    if not rows.kept:
        raise DataError(f"{args.data}: no valid rows ({rows})")
    print(json.dumps({"predictions": redact(predictions), "rows": rows.kept,
                      "rejects": redact(rejects) if rows.dropped else None, "rejected": dict(rows.dropped),
                      "rows_per_actor": dict(report.per_actor), **report.timing(started)}))
    return 0


def cmd_tokenizer_train(args: argparse.Namespace) -> int:
    from sam.data import read_rows, survey_rows, text_sample, valid_only
    from sam.tokenizer import train_wordpiece

    _init_ray(args)
    rows = read_rows(args.data, "train")
    survey_rows(rows, args.data, seed=0)  # the data report, and an error naming a source without valid rows
    model = Config().with_flat(**given_knobs(args)).model
    tokenizer = train_wordpiece(text_sample(valid_only(rows)), model.vocab_size, lowercase=model.lowercase)
    tokenizer.save_pretrained(args.output)
    print(f"{len(tokenizer)}-word WordPiece tokenizer written to {args.output}")
    return 0


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--output", default=DEFAULT_MODEL_DIR,
                        help=f"model directory to write, a local path or a URI (default: {DEFAULT_MODEL_DIR})")
    parser.add_argument("--storage", default=None,
                        help="path or URI for checkpoints, which every node must reach on a cluster (default: ~/ray_results)")
    parser.add_argument("--name", default=None, help="run name under the storage path (default: sam-train-<time>-<random>)")
    parser.add_argument("--resume", action="store_true", help="continue the run --name from its last checkpoint, "
                        "with the config it was started with")
    parser.add_argument("--max-failures", type=int, default=1, help="worker failures survived by restarting from the last checkpoint")


def add_scoring_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--actors", type=int, help="model replicas scoring in parallel, one CPU (or --gpus-per-actor) each "
                        "(default: from one up to the cluster's CPUs or GPUs, as the job needs)")
    parser.add_argument("--gpus-per-actor", type=float, default=0.0, help="GPUs per replica; a fraction packs several on one GPU (default: 0, CPU)")
    parser.add_argument("--runtime", choices=RUNTIMES, default=None,
                        help="what predicts: torch, onnx (ONNX Runtime fp32) or onnx-int8 (default: onnx on a CPU, as Serve)")
    parser.add_argument("--quantize", action="store_true", help="the same as --runtime onnx-int8, as Serve's quantize=true")


def add_monitoring_arguments(parser: argparse.ArgumentParser, tracking: bool = True, register: bool = False) -> None:
    parser.add_argument("-v", "--verbose", action="store_true", help="also show Ray's and the libraries' own log lines")
    if tracking:
        group = parser.add_argument_group("tracking (MLflow)")
        group.add_argument("--tracking-uri", default=None, help="MLflow tracking URI, e.g. sqlite:///mlruns.db or http://host:5000 "
                           "(default: $MLFLOW_TRACKING_URI; unset: no tracking)")
        group.add_argument("--experiment", default="sam", help="MLflow experiment for the run (default: sam)")
    if register:
        group.add_argument("--register", default=None, metavar="NAME",
                           help="register the exported model as a new version of NAME (serve it as models:/NAME/VERSION)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sam", description="Tweet sentiment on Ray: train, evaluate, predict.")
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="train on Ray Train and export the best epoch as a model directory")
    add_run_arguments(train)
    add_config_arguments(train)
    add_monitoring_arguments(train, register=True)
    train.set_defaults(run=cmd_train)

    distill = commands.add_parser(
        "distill", help="train on a teacher model's softened scores over an augmented transfer set",
        description="The teacher (a model directory, e.g. a fine-tuned MiniLM) scores the training rows and --augment "
                    "augmented copies of each in a Ray Data actor pool, once; the student (every `sam train` knob) "
                    "trains on alpha * the softened scores + (1 - alpha) * the gold labels and is exported as a model "
                    "directory. By default the student starts as the teacher with layers left out (--student layers); "
                    "--student scratch trains the configured encoder from scratch. Validation rows are never scored or "
                    "trained on.")
    add_run_arguments(distill)
    distill.add_argument("--transfer", default=None,
                         help="parquet directory or URI of the scored transfer set: reused when complete (default: one named "
                              "for the teacher, data, split and augmentation under --storage, else ~/ray_results)")
    add_scoring_arguments(distill)
    add_config_arguments(distill, sections=("distill", "model", "start", "train", "data", "scale"))
    add_monitoring_arguments(distill, register=True)
    distill.set_defaults(run=cmd_train)

    tune = commands.add_parser(
        "tune", help="ASHA search over Ray Train trials; the best trial's best epoch exported as a model directory",
        description="Every `sam train` option sets the search's base config; one given by hand leaves the search "
                    "space (layers, heads, width, dropout, lr, warm-up, weight decay, batch size; with --teacher also "
                    "alpha, temperature, augment). "
                    "`python tune/search.py` is the same command.")
    search = tune.add_argument_group("search")
    search.add_argument("--num-samples", type=int, default=8, help="trials to sample (default: 8)")
    search.add_argument("--grace-period", type=int, default=1, help="epochs every trial runs before ASHA may stop it (default: 1)")
    search.add_argument("--reduction-factor", type=int, default=2, help="ASHA keeps 1/N of the trials at each rung (default: 2)")
    search.add_argument("--max-concurrent", type=int, default=None, help="trials at once (default: no cap; trials that do not fit wait for resources, which an autoscaler adds)")
    search.add_argument("--gpus-per-trial", type=float, default=None,
                        help="GPUs per trial, split over its workers; a fraction packs trials on one GPU (0.25: four per GPU)")
    search.add_argument("--output", default=DEFAULT_MODEL_DIR, help=f"model directory for the best trial (default: {DEFAULT_MODEL_DIR})")
    search.add_argument("--storage", default="~/ray_results", help="local path or URI for trials and checkpoints (default: ~/ray_results)")
    search.add_argument("--name", default=None, help="experiment name under --storage (default: sam-search-<time>)")
    search.add_argument("--resume", action="store_true", help="continue the interrupted search --storage/--name with its stored settings")
    add_config_arguments(tune, sections=("model", "start", "train", "data", "distill", "scale"))
    add_monitoring_arguments(tune, register=True)
    tune.set_defaults(run=cmd_tune)

    evaluate = commands.add_parser("evaluate", help="accuracy, macro-F1, per-class report and confusion matrix")
    evaluate.add_argument("--model", default=DEFAULT_MODEL_DIR, help=f"model directory (default: {DEFAULT_MODEL_DIR})")
    evaluate.add_argument("--data", required=True, help="as for sam train --data: file, directory, glob, URI or hub name")
    evaluate.add_argument("--split", default="test",
                          help=f"split to read from a directory or the hub (default: test); '{VALIDATION}' or '{HOLDOUT}' "
                               "re-carves the model's own validation or held-out rows from the train split, with its saved "
                               "fractions and seed")
    add_scoring_arguments(evaluate)
    evaluate.add_argument("--json", action="store_true", help="also print the results as JSON on the last line")
    evaluate.add_argument("--plot", default=None, metavar="FILE.png", help="write the confusion matrix as a picture")
    add_monitoring_arguments(evaluate)
    evaluate.set_defaults(run=cmd_evaluate)

    predict = commands.add_parser(
        "predict", help="texts from arguments or stdin: one JSON line each; --data: a Ray Data batch job to --output",
        description="With --data, every row of a file, directory of shards, glob or URI is scored by a pool of model "
                    "actors and written to OUTPUT/predictions (text, id, sentiment, label, confidence, scores); rows "
                    "without a usable text go to OUTPUT/rejects with their file, line and reason.")
    predict.add_argument("--model", default=DEFAULT_MODEL_DIR, help=f"model directory (default: {DEFAULT_MODEL_DIR})")
    predict.add_argument("texts", nargs="*", help="texts to classify")
    predict.add_argument("--data", default=None, help="score a data set instead: file, directory of shards, glob, URI or hub name")
    predict.add_argument("--split", default="train", help="split to read from a directory or the hub (default: train)")
    predict.add_argument("--output", default=None, help="directory for predictions/ and rejects/ (with --data)")
    predict.add_argument("--format", choices=("parquet", "jsonl"), default="parquet", help="predictions file format (default: parquet)")
    add_scoring_arguments(predict)
    add_monitoring_arguments(predict, tracking=False)
    predict.set_defaults(run=cmd_predict)

    export = commands.add_parser(
        "export-onnx", help="add ONNX files (fp32 and int8) to a model directory, checked against torch",
        description="Writes MODEL/onnx/model.onnx and, when it keeps at least 99 %% of fp32's labels and its accuracy "
                    "within half a point, onnx/model_int8.onnx; the check's figures go into metrics.json. SAM's own "
                    "exports carry them already; this adds them to an older or a plain Hugging Face directory.")
    export.add_argument("model", help="model directory: path, URI or models:/NAME/VERSION")
    export.add_argument("--data", default=None, help="labelled rows to check on (default: the model's own validation split)")
    add_monitoring_arguments(export, tracking=False)
    export.set_defaults(run=cmd_export_onnx)

    profile = commands.add_parser(
        "profile", help="write a model's profile.json (label mix, token lengths, unknown tokens, confidence) from labelled rows",
        description="SAM's exports carry profile.json, from their validation split; this writes one for another "
                    "directory, which `sam monitor` compares a prediction log with.")
    profile.add_argument("model", help="model directory: path or URI")
    profile.add_argument("--data", default=None, help="labelled rows (default: the model's own validation split)")
    add_monitoring_arguments(profile, tracking=False)
    profile.set_defaults(run=cmd_profile)

    monitor = commands.add_parser(
        "monitor", help="compare a prediction log with what its model learned; exit 1 on drift",
        description="A Ray Data job over LOG_DIR (Serve's log_dir=) against the model's profile.json: label mix, "
                    "confidence, token length and unknown-token rate, each with its population stability index "
                    "(PSI); rows per hour; the share answered below --min-confidence. Prints a table and a JSON "
                    "line, writes --plot, logs to MLflow when a tracking URI is set, and exits 1 when a PSI passes "
                    "--max-psi, naming the signal.")
    monitor.add_argument("--log", required=True, metavar="LOG_DIR", help="the prediction log: a path or URI")
    monitor.add_argument("--since", default=None, help="only rows this recent: 30m, 24h, 7d (default: all)")
    monitor.add_argument("--model", default=None, help="model whose profile to compare with (default: the one model the log names)")
    monitor.add_argument("--max-psi", type=float, default=0.2, help="drift above this PSI exits 1 (default: 0.2)")
    monitor.add_argument("--min-confidence", type=float, default=0.5, help="report the share answered below this (default: 0.5)")
    monitor.add_argument("--plot", default="monitor.png", metavar="FILE.png", help="the distributions side by side (default: monitor.png)")
    add_monitoring_arguments(monitor)
    monitor.set_defaults(run=cmd_monitor)

    rollout = commands.add_parser(
        "rollout", help="bring a challenger model into production in steps of live traffic; roll back on a failed check",
        description="Steps the challenger's share of a deployed SAM app through `serve deploy` (a step named "
                    "'shadow' scores every request with it unseen), holds each step while reading the app's own "
                    "counters, rolls back at the first failed check (exit 1, naming it) and promotes after the last "
                    "(the challenger becomes model_dir; a models:/NAME@ALIAS champion has its alias moved). One line "
                    "per step, then a JSON line.")
    rollout.add_argument("--config", required=True, help="the Serve config the app was deployed with (serve_config.yaml)")
    rollout.add_argument("--challenger", required=True, metavar="MODEL", help="model directory: path, URI or models:/")
    rollout.add_argument("--steps", default=DEFAULT_STEPS, help=f"percentages, 'shadow' allowed first (default: {DEFAULT_STEPS})")
    rollout.add_argument("--hold", default="60s", help="how long each step is watched: 30s, 5m (default: 60s)")
    checks = Checks()
    rollout.add_argument("--max-error-rate", type=float, default=checks.max_error_rate,
                         help=f"the challenger's errors per answer (default: {checks.max_error_rate})")
    rollout.add_argument("--max-p99-ms", type=float, default=checks.max_p99_ms, help="the challenger's p99 latency, as the ingress sees it")
    rollout.add_argument("--min-agreement", type=float, default=checks.min_agreement, help="agreement with the champion on shadow requests")
    rollout.add_argument("--min-requests", type=int, default=checks.min_requests,
                         help=f"answers a hold must see to judge (default: {checks.min_requests})")
    rollout.add_argument("--address", default=os.environ.get("RAY_DASHBOARD_ADDRESS", "http://127.0.0.1:8265"),
                         help="the Ray dashboard, as for serve deploy (default: RAY_DASHBOARD_ADDRESS or http://127.0.0.1:8265)")
    rollout.add_argument("--url", default=None, help="the app's HTTP address (default: from the config)")
    rollout.add_argument("--app", default=None, help="the application's name in the config (default: the one serving serve_app:app)")
    add_monitoring_arguments(rollout, tracking=False)
    rollout.set_defaults(run=cmd_rollout)

    tokenizer = commands.add_parser("tokenizer", help="tokenizer tools").add_subparsers(dest="action", required=True)
    tokenizer_train = tokenizer.add_parser("train", help="train a WordPiece tokenizer on the train texts")
    tokenizer_train.add_argument("--data", required=True, help="as for sam train --data")
    add_config_arguments(tokenizer_train, sections=("model",), only=("vocab_size", "lowercase"))
    tokenizer_train.add_argument("--output", required=True, help="directory for the HF tokenizer files")
    add_monitoring_arguments(tokenizer_train, tracking=False)
    tokenizer_train.set_defaults(run=cmd_tokenizer_train)
    return parser


def main(argv: list[str] | None = None) -> int:
    from sam.console import configure

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # the tokenizer runs in Ray's processes, not forked ones
    parser = build_parser()
    args = parser.parse_args(argv)
    configure(args.verbose)
    if getattr(args, "resume", False) and not args.name:
        parser.error("--resume needs the --name of the run to continue")
    try:
        return args.run(args)
    except SamError as error:  # the user's to fix: one line; anything else is a bug and keeps its traceback
        print(f"sam {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
