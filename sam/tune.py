"""Hyperparameter search on Ray Tune. Each trial is a Ray Train run of `sam train`'s trainer (so a trial can
be DDP on several workers), ASHA stops weak trials between epochs, and the best trial's best epoch is exported
as the standard model directory with the search's results beside it."""

from __future__ import annotations

import itertools
import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import ray
import ray.train
from ray import tune
from ray.tune.integration.ray_train import CHECKPOINT_PATH_KEY, TuneReportCallback
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search.sample import Categorical

from sam import SamError, checkpoint
from sam.config import Config
from sam.console import ProgressSettings
from sam.distill import prepare_distilled
from sam.onnx_export import export_onnx, labelled_rows
from sam.prepare import PREPARATION_KNOBS, PreparedData, prepare, preparation_key
from sam.resolve import resolve_config
from sam.storage import filesystem as uri_filesystem, join, redact, resolve
from sam.train import SELECT_METRIC, SELECT_MODE, checkpoint_config, make_trainer

log = logging.getLogger("sam")

METRIC, MODE = SELECT_METRIC, SELECT_MODE  # what training keeps and exports checkpoints by
_BETTER = 1 if MODE == "max" else -1  # METRIC times this grows as trials get better
SPEC_FILE = "sam_search.json"  # in the experiment directory: what `--resume` and the report need
RESULTS_FILE, CURVES_FILE = "search_results.json", "learning_curves.png"
TRIAL_DRIVER_MEMORY = 256 * 1024**2

# Every width is a multiple of every head count, so no sampled pair can fail `build_model`.
D_MODELS, NUM_HEADS = (64, 128, 192, 256), (2, 4, 8)


def search_space(pretrained: bool = False, distilling: bool = False) -> dict:
    """Keys are the typed config's bare knob names, applied with `Config.with_flat`. Fine-tuning a pretrained
    encoder (`init`), or a student that starts as its teacher's layers, searches the optimiser only: its shape is
    fixed. Distilling adds the teacher's weight, the temperature and the augmentation (each distinct augmentation is
    a transfer set scored once)."""
    space = {
        "lr": tune.loguniform(1e-5, 2e-4) if pretrained else tune.loguniform(1e-4, 2e-3),
        "warmup_steps": tune.choice([100, 300, 600]),
        "weight_decay": tune.loguniform(1e-3, 1e-1),
        "batch_size": tune.choice([16, 32, 64]),
    }
    if distilling:
        space.update(alpha=tune.uniform(0.3, 1.0), temperature=tune.choice([1.0, 2.0, 4.0]), augment=tune.choice([0, 1, 2]))
    if not pretrained:
        space.update(
            num_layers=tune.choice([2, 3, 4]),
            num_heads=tune.choice(list(NUM_HEADS)),
            d_model=tune.choice(list(D_MODELS)),
            dropout=tune.uniform(0.0, 0.3),
        )
    return space


def fitted_space(space: dict, base: Config, fixed: tuple[str, ...]) -> dict:
    """The space less the knobs given by hand, its widths and head counts kept to those that fit a hand-given one."""
    space = {k: v for k, v in space.items() if k not in fixed}
    if "d_model" in space and "num_heads" in fixed:
        space["d_model"] = tune.choice([d for d in D_MODELS if d % base.model.num_heads == 0] or [base.model.d_model])
    if "num_heads" in space and "d_model" in fixed:
        space["num_heads"] = tune.choice([h for h in NUM_HEADS if base.model.d_model % h == 0] or [base.model.num_heads])
    return space


def run_trial(sampled: dict, base: dict, fixed: list[str], experiment: str, display: ProgressSettings,
              prepared: dict[tuple, PreparedData]) -> None:
    """The function trainable: it only drives one Ray Train run, whose workers hold the compute, on the data the
    search prepared for it. The callback relays every epoch's metrics, with its checkpoint's path, to Tune, so ASHA
    can stop the run between epochs."""
    config = resolve_config(Config.from_dict(base), sampled, fixed=fixed)
    run_config = ray.train.RunConfig(
        # The same (storage, name) when a trial restarts makes Train resume from the trial's last checkpoint.
        name=tune.get_context().get_trial_id(),
        storage_path=join(experiment, "train_runs"),
        checkpoint_config=checkpoint_config(),
        callbacks=[TuneReportCallback()],
        logging_config=ray.train.LoggingConfig(log_level=display.train_log_level),
    )
    data = prepared.get(preparation_key(config))
    if data is None:  # a knob that changes the data, searched over values not known before the trials drew them
        log.info("trial %s prepares its own data: the search could not prepare its %s up front", tune.get_context().get_trial_id(),
                 ", ".join(knob for knob in PREPARATION_KNOBS if knob in sampled))
        data = prepare_search_data(config, experiment)
    make_trainer(config, data, run_config, display).fit()


def prepare_search_data(config: Config, experiment: str, budget_share: float = 1.0) -> PreparedData:
    # Transfer sets live with the search, where every node's trials find them (each is scored once).
    return (prepare_distilled(config, root=experiment, budget_share=budget_share) if config.distill.teacher
            else prepare(config, budget_share))


def preparation_samples(space: dict) -> Optional[list[dict]]:
    """The searched values of the knobs that change what a trial trains on, each combination once (`[{}]` when the
    space searches none); None when one is searched over a range, whose values only the trials draw."""
    values = {}
    for knob in PREPARATION_KNOBS:
        domain = space.get(knob)
        if domain is None:
            continue
        if isinstance(domain, Categorical):
            values[knob] = domain.categories
        elif isinstance(domain, dict) and "grid_search" in domain:
            values[knob] = domain["grid_search"]
        else:
            return None
    return [dict(zip(values, chosen)) for chosen in itertools.product(*values.values())]


def prepare_once(spec: "SearchSpec", experiment: str) -> dict[tuple, PreparedData]:
    """On the search's driver: each distinct preparation its trials will train on, made once (read, validated,
    split, tokenizer trained, transfer set scored, tokenized and materialized when it fits its share of the
    budget), for every trial to take from the object store instead of making its own."""
    if spec.preparations is None:
        log.info("search: the space searches a knob that changes the data over a range: each trial prepares its own")
        return {}
    base = Config.from_dict(spec.base)
    distinct = {}
    for sample in spec.preparations:
        config = resolve_config(base, sample, fixed=spec.fixed)
        distinct.setdefault(preparation_key(config), config)
    log.info("search: %d preparation%s of the data for every trial", len(distinct), "" if len(distinct) == 1 else "s")
    return {key: prepare_search_data(config, experiment, 1 / len(distinct)) for key, config in distinct.items()}


@dataclass
class SearchSpec:
    """What defines a search beyond Tune's own state; stored in the experiment so `resume` needs only its path."""

    base: dict  # Config.to_dict(); its `epochs` is ASHA's max_t
    num_samples: int
    fixed: list[str] = field(default_factory=list)  # knobs given by hand: out of the space, and d_ff stays as given
    # `preparation_samples` of the space (a spec written before it: the base's data alone)
    preparations: Optional[list[dict]] = field(default_factory=lambda: [{}])

    @property
    def max_epochs(self) -> int:
        return Config.from_dict(self.base).train.epochs


def _write_spec(experiment: str, spec: SearchSpec) -> None:
    fs, path = uri_filesystem(experiment)
    fs.create_dir(path, recursive=True)
    with fs.open_output_stream(f"{path}/{SPEC_FILE}") as stream:
        stream.write(json.dumps(spec.__dict__, indent=2).encode())


def read_spec(experiment: str) -> SearchSpec:
    fs, path = uri_filesystem(experiment)
    with fs.open_input_stream(f"{path}/{SPEC_FILE}") as stream:
        return SearchSpec(**json.loads(stream.read()))


def experiment_path(storage: str, name: str) -> str:
    return join(storage, name)


def _trainable(experiment: str, spec: SearchSpec, prepared: dict[tuple, PreparedData]):
    # No CPU for the trial's own actor: it only drives its Train run, whose worker group asks for the CPUs/GPUs
    # in a placement group of its own. That request is what the autoscaler sees: trials beyond the cluster's
    # room wait for it, or for nodes it adds. Tune needs some resource, so the actor books the memory it holds
    # (the data report, class counts and tokenizer). `prepared` goes to the object store once, for every trial.
    trainable = tune.with_parameters(run_trial, base=spec.base, fixed=spec.fixed, experiment=experiment,
                                     display=ProgressSettings.here(), prepared=prepared)
    return tune.with_resources(trainable, {"cpu": 0, "memory": TRIAL_DRIVER_MEMORY})


def run_search(
    base: Config, storage: str, name: str, num_samples: int, grace_period: int = 1, reduction_factor: int = 2,
    max_concurrent: Optional[int] = None, fixed: tuple[str, ...] = (), space: Optional[dict] = None,
    callbacks: Optional[list] = None,
) -> tuple[tune.ResultGrid, SearchSpec]:
    """A new search of `space` (default: `search_space`, less the `fixed` knobs given by hand) around `base`;
    `callbacks` (Tune's, such as its MLflow logger) are stored with the search and come back on `resume`."""
    experiment = experiment_path(storage, name)
    base = resolve_config(base, search=True)
    if space is None:
        space = fitted_space(search_space(bool(base.start.init or base.start.init_layers), bool(base.distill.teacher)), base, fixed)
    spec = SearchSpec(base=base.to_dict(), num_samples=num_samples, fixed=list(fixed), preparations=preparation_samples(space))
    _write_spec(experiment, spec)
    tuner = tune.Tuner(
        _trainable(experiment, spec, prepare_once(spec, experiment)),
        param_space=space,
        tune_config=tune.TuneConfig(
            metric=METRIC, mode=MODE, num_samples=num_samples,
            # time_attr "epoch" (not Tune's iteration count) stays right when a restored trial resumes mid-run.
            scheduler=ASHAScheduler(time_attr="epoch", max_t=base.train.epochs, grace_period=grace_period,
                                    reduction_factor=reduction_factor),
            # Seeded: the same search draws the same trials. Tune ignores max_concurrent_trials for a searcher
            # instance, so the limit (none unless given: trials queue for resources) is given to the searcher.
            search_alg=tune.search.BasicVariantGenerator(random_state=base.train.seed, max_concurrent=max_concurrent or 0),
        ),
        run_config=tune.RunConfig(name=name, storage_path=resolve(storage), callbacks=callbacks),
    )
    return tuner.fit(), spec


def resume_search(storage: str, name: str, given: Optional[Config] = None, fixed: tuple[str, ...] = ()) -> tuple[tune.ResultGrid, SearchSpec]:
    """Continues an interrupted search: finished trials are kept, unfinished and errored ones run again (an
    interrupted Train run from its last checkpoint), and samples not yet started are drawn. Knobs given again
    (`fixed` of `given`) must be what the search was started with."""
    experiment = experiment_path(storage, name)
    spec = read_spec(experiment)
    if given is not None:
        changed = Config.from_dict(spec.base).differences(given.with_absolute_paths(), sections=tuple(Config.model_fields), only=fixed)
        if changed:
            raise SamError(f"--resume: search {name!r} was started with other settings ({'; '.join(changed)})")
    tuner = tune.Tuner.restore(experiment, trainable=_trainable(experiment, spec, prepare_once(spec, experiment)), resume_errored=True)
    return tuner.fit(), spec


def is_complete(results: tune.ResultGrid, spec: SearchSpec) -> bool:
    """False after an interrupt (Ctrl-C): Tune then returns the trials so far, and the search is resumable."""
    return len(results) >= spec.num_samples and results.num_terminated + results.num_errors == len(results)


def leaderboard_rows(results: tune.ResultGrid, spec: SearchSpec) -> list[dict]:
    """One row per trial, best (highest best val_accuracy) first; `stopped_by` says whether ASHA or the trainer's
    own patience ended it before max_epochs."""
    rows = []
    for result in results:
        frame = result.metrics_dataframe
        history = [] if frame is None or "epoch" not in frame else frame.dropna(subset=["epoch"]).to_dict("records")
        row = {
            "trial_id": result.metrics.get("trial_id") or Path(result.path).name,
            "config": result.config or {},  # None for a trial interrupted before its first report
            "status": "ERROR" if result.error else "TERMINATED",
            "epochs": 0, "stopped_early": False, "stopped_by": None,
            "val_loss": None, "val_accuracy": None, "val_macro_f1": None, "best_epoch": None,
            "best_val_accuracy": None, "checkpoint_path": None, "latest_checkpoint_path": None, "path": result.path,
            "curve": [[int(h["epoch"]), h["val_accuracy"]] for h in history],
        }
        if history:
            # On a tie Ray keeps the later checkpoint, so the later epoch wins here too.
            best = max(history, key=lambda h: (_BETTER * h[METRIC], h["epoch"]))
            last = history[-1]
            epochs = int(max(h["epoch"] for h in history))
            stopped_by = None
            if result.error is None and epochs < spec.max_epochs:
                stopped_by = "patience" if last.get("stopping") else "asha"
            row.update(
                epochs=epochs, stopped_early=stopped_by is not None, stopped_by=stopped_by,
                val_loss=best["val_loss"], val_accuracy=best["val_accuracy"], val_macro_f1=best["val_macro_f1"],
                best_epoch=int(best["epoch"]), best_val_accuracy=max(h["val_accuracy"] for h in history),
                checkpoint_path=best.get(CHECKPOINT_PATH_KEY), latest_checkpoint_path=last.get(CHECKPOINT_PATH_KEY),
            )
        rows.append(row)
    return sorted(rows, key=lambda r: math.inf if r[METRIC] is None else -_BETTER * r[METRIC])


def format_leaderboard(rows: list[dict]) -> str:
    def knobs(config: dict) -> str:
        return " ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in sorted(config.items()))

    def num(value) -> str:
        return "-" if value is None else f"{value:.4f}"

    lines = [f"{'trial':<12} {'status':<10} {'epochs':>6} {'val_loss':>8} {'val_acc':>7} {'val_f1':>7} "
             f"{'stopped':<8}  config"]
    for row in rows:
        lines.append(
            f"{row['trial_id']:<12} {row['status']:<10} {row['epochs']:>6} {num(row['val_loss']):>8} "
            f"{num(row['val_accuracy']):>7} {num(row['val_macro_f1']):>7} {row['stopped_by'] or 'no':<8}  "
            f"{knobs(row['config'])}"
        )
    return "\n".join(lines)


def plot_curves(rows: list[dict], path: str | Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(8, 5))
    for rank, row in enumerate(rows):
        if row["curve"]:
            epochs, accuracy = zip(*row["curve"])
            axes.plot(epochs, accuracy, marker="o", lw=2.5 if rank == 0 else 1, label=row["trial_id"])
    axes.set(xlabel="epoch", ylabel="validation accuracy", title="Search: validation accuracy by epoch")
    axes.grid(alpha=0.3)
    if len(rows) <= 20:
        axes.legend(fontsize="small")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def export_best(rows: list[dict], output: str | Path, storage: str, name: str) -> dict:
    """The best trial's best epoch as the standard model directory, the leaderboard and curves beside it."""
    best = next((row for row in rows if row["checkpoint_path"]), None)
    if best is None:
        raise SamError("no trial reported a checkpoint; nothing to export")
    filesystem, _ = uri_filesystem(experiment_path(storage, name))
    best_checkpoint, latest = (ray.train.Checkpoint(best[key], filesystem=filesystem) for key in ("checkpoint_path", "latest_checkpoint_path"))

    def leaderboard(directory: Path) -> None:
        Path(directory, RESULTS_FILE).write_text(json.dumps([{k: v for k, v in row.items() if k != "curve"} | {
            "val_accuracy_by_epoch": [acc for _, acc in row["curve"]]} for row in rows], indent=2, default=str) + "\n")
        plot_curves(rows, Path(directory, CURVES_FILE))
        export_onnx(directory, *labelled_rows(directory))

    return checkpoint.export(best_checkpoint, output, {"trial_id": best["trial_id"], "search": redact(experiment_path(storage, name)),
                                                       "search_config": best["config"]}, latest=latest, extras=leaderboard)
