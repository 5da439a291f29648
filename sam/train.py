"""Ray Train: one `train_func` run by `TorchTrainer` on N DDP workers, and the best epoch exported as a
standard Hugging Face model directory."""

from __future__ import annotations

import json
import logging
import math
import os
import secrets
import tempfile
import time
from contextlib import nullcontext
from functools import cached_property
from pathlib import Path

import ray
import ray.train
import ray.train.torch
import torch
from ray.data.collate_fn import NumpyBatchCollateFn
from ray.train import CheckpointConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchConfig, TorchTrainer

from sam import SamError, checkpoint
from sam.batching import collate, epoch_batches
from sam.console import EpochProgress, ProgressSettings
from sam.config import CONFIG_FILE, Config, ScaleConfig
from sam.onnx_export import export_onnx, tokenized_rows
from sam.prepare import PreparedData, prepare
from sam.learner import EpochStats, Learner, Predictions, autocast, to_device, warmup_steps
from sam.locations import local_model_dir
from sam.models import build_model, check_embeddings_source, load_pretrained, start_from_embeddings, summary
from sam.tracking import Tracker, flat_params, run_tags
from sam.storage import exists, is_uri, join, read_text, redact, resolve, write_text

log = logging.getLogger("sam")

# Early stopping watches validation loss (it moves before accuracy does); the exported epoch is the one with
# the best validation accuracy, the figure users judge the model by.
SELECT_METRIC, SELECT_MODE = "val_accuracy", "max"
VAL_BATCH_SIZE = 256
DEFAULT_STORAGE = "~/ray_results"  # Ray's own default


class PadCollate(NumpyBatchCollateFn):
    """Dynamic padding of each validation batch, in Ray Data's prefetch threads."""

    def __init__(self, pad_id: int):
        super().__init__()
        self.pad_id = pad_id

    def __call__(self, batch: dict) -> dict:
        return collate(batch, self.pad_id)


def steps_per_epoch(config: Config, n_train: int) -> int:
    return max(1, math.ceil(n_train // config.scale.num_workers / config.train.batch_size))


def new_progress() -> dict:
    return {"epoch": 0, "step": 0, "best_val_loss": math.inf, "best_epoch": 0, "bad_epochs": 0,
            "peak_lr": 0.0, "history": [], "restored_from_epoch": 0}


def worker_device(config: Config) -> torch.device:
    """This worker's device; on CPU, its share of the node's cores as torch threads."""
    device = ray.train.torch.get_device()
    if device.type == "cpu":
        share = (os.cpu_count() or 1) // ray.train.get_context().get_local_world_size()
        torch.set_num_threads(config.scale.torch_threads or max(1, share))
    return device


def build_or_restore(config: Config, loop_config: dict, device: torch.device) -> tuple[Learner, dict]:
    """A fresh (or pretrained) model, or the last checkpoint's model and training state after a restart."""
    torch.manual_seed(config.train.seed)
    saved = ray.train.get_checkpoint()
    if saved:
        restored = checkpoint.restore(saved)
        model, progress = restored.model, restored.progress
        progress["restored_from_epoch"] = progress["epoch"]
    else:
        model = load_pretrained(config.start.init) if config.start.init else build_model(config.model, loop_config["tokenizer"])
        if config.start.init_embeddings:
            start_from_embeddings(model, config.start.init_embeddings, layers=config.start.init_layers)
        progress = new_progress()
    if ray.train.get_context().get_world_rank() == 0:
        log.info("%s", summary(model))  # logged, not printed: Ray Train tees and logs a print, showing it twice
    teacher = load_pretrained(config.distill.teacher) if config.distill.hidden_weight else None
    learner = Learner(ray.train.torch.prepare_model(model), config.train, loop_config["steps_per_epoch"] * config.train.epochs,
                      loop_config["class_weights"], device, config.scale.bf16, config.distill, teacher)
    if saved:
        learner.load_state_dict(restored.training_state)
    return learner, progress


def train_step(learner: Learner, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """One optimiser step on one padded batch, then the weight average's update; returns the batch loss, on the
    device (reading it back would make every GPU step wait)."""
    learner.model.train()
    loss = learner.loss(learner.forward(batch), batch)
    learner.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(learner.model.parameters(), learner.config.grad_clip)
    learner.optimizer.step()
    learner.scheduler.step()
    if learner.averaged is not None:
        learner.averaged.update_parameters(learner.module)
    return loss.detach()


@torch.inference_mode()
def eval_step(learner: Learner, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The evaluated model's (the weight average's, if any) logits for one padded batch."""
    model = learner.evaluated.eval()
    with autocast(learner.device, learner.bf16):
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits


def validate(learner: Learner, pad_id: int) -> dict:
    """Every worker scores its shard; the predictions are gathered so each computes the same metrics."""
    predictions = Predictions()
    for batch in ray.train.get_dataset_shard("val").iter_torch_batches(batch_size=VAL_BATCH_SIZE, collate_fn=PadCollate(pad_id)):
        batch = to_device(batch, learner.device)
        predictions.add(eval_step(learner, batch), batch["labels"])
    world_size = ray.train.get_context().get_world_size()
    if world_size > 1:
        parts = [None] * world_size
        torch.distributed.all_gather_object(parts, predictions)
        predictions = Predictions.merged(parts)
    return predictions.metrics()


def record_epoch(progress: dict, stats: EpochStats, val: dict, learner: Learner, config: Config) -> dict:
    """Early-stopping state and the epoch's metrics, appended to the progress a checkpoint carries."""
    epoch = progress["epoch"] + 1
    improved = val["loss"] < progress["best_val_loss"]
    progress.update(epoch=epoch, bad_epochs=0 if improved else progress["bad_epochs"] + 1)
    if improved:
        progress.update(best_val_loss=val["loss"], best_epoch=epoch)
    metrics = {
        "epoch": epoch, "train_loss": stats.loss,
        "val_loss": val["loss"], "val_accuracy": val["accuracy"], "val_macro_f1": val["macro_f1"],
        "lr": learner.lr, "peak_lr": progress["peak_lr"],
        "samples_per_s": stats.samples_per_s * ray.train.get_context().get_world_size(), "epoch_s": stats.seconds,
        "data_wait_s": stats.data_wait_s,
        "best_epoch": progress["best_epoch"], "restored_from_epoch": progress["restored_from_epoch"],
        "stopping": progress["bad_epochs"] >= config.train.patience or epoch == config.train.epochs,
    }
    progress["history"].append(metrics)
    return metrics


def epoch_summary(metrics: dict, epochs: int) -> str:
    return (f"epoch {metrics['epoch']}/{epochs}: train loss {metrics['train_loss']:.4f}, val loss {metrics['val_loss']:.4f}, "
            f"val accuracy {metrics['val_accuracy']:.4f}, macro-F1 {metrics['val_macro_f1']:.4f}, lr {metrics['lr']:.2e}, "
            f"{metrics['samples_per_s']:,.0f} samples/s, {metrics['epoch_s']:.1f} s ({metrics['data_wait_s']:.1f} s waiting for data)")


def report(metrics: dict, learner: Learner, tokenizer, config: Config, progress: dict) -> None:
    """Every worker reports; rank 0 alone writes the checkpoint."""
    rank = ray.train.get_context().get_world_rank()
    with tempfile.TemporaryDirectory() as directory:
        if rank == 0:
            checkpoint.save(directory, learner, tokenizer, config, progress)
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(directory) if rank == 0 else None)


def train_func(loop_config: dict) -> None:
    """Runs on every worker: build or restore, then per epoch train, validate, and report with a checkpoint."""
    config = Config.from_dict(loop_config["config"])
    tokenizer, per_epoch = loop_config["tokenizer"], loop_config["steps_per_epoch"]
    learner, progress = build_or_restore(config, loop_config, worker_device(config))
    rank_0 = ray.train.get_context().get_world_rank() == 0
    for epoch in range(progress["epoch"], config.train.epochs):
        batches = epoch_batches(ray.train.get_dataset_shard("train"), config.train, epoch, tokenizer.pad_token_id)
        stats = EpochStats()
        with EpochProgress(epoch + 1, config.train.epochs, per_epoch, loop_config["display"], shown=rank_0) as shown:
            for batch in stats.timed(batches):
                stats.add(train_step(learner, to_device(batch, learner.device)), len(batch["labels"]))
                progress["step"] += 1
                progress["peak_lr"] = max(progress["peak_lr"], learner.lr)
                shown.update(stats.steps, stats.samples, lambda: stats.loss)
        metrics = record_epoch(progress, stats, validate(learner, tokenizer.pad_token_id), learner, config)
        if rank_0:
            log.info("%s", epoch_summary(metrics, config.train.epochs))
        report(metrics, learner, tokenizer, config, progress)
        if metrics["stopping"]:
            break


def scaling_config(scale: ScaleConfig) -> ScalingConfig:
    """Workers and what each reserves; `gpus_per_worker` below 1 packs several workers (or trials) on one GPU."""
    resources = {"CPU": scale.cpus_per_worker, **({"GPU": scale.gpus_per_worker} if scale.use_gpu else {})}
    return ScalingConfig(num_workers=scale.num_workers, use_gpu=scale.use_gpu, resources_per_worker=resources,
                         placement_strategy=scale.placement_strategy)


class EpochLogger(ray.train.UserCallback):
    """Each epoch's report (rank 0's metrics) as one step of the run, logged from Ray Train's controller once the
    report and its checkpoint have landed. A worker restarted by `--max-failures` resumes after the last landed
    epoch, so no step is logged twice; an epoch already logged (a run resumed by `--resume`) is skipped."""

    def __init__(self, uri: str, run_id: str):
        self.uri, self.run_id, self.logged = uri, run_id, None

    @cached_property
    def tracked(self) -> Tracker:  # built on the controller, where the callback runs: an MLflow client does not pickle
        return Tracker(self.uri)

    def after_report(self, run_context, metrics: list[dict], checkpoint) -> None:
        tracked = self.tracked
        if self.logged is None:
            self.logged = {int(m.step) for m in tracked.client.get_metric_history(self.run_id, "epoch")}
        epoch = int(metrics[0]["epoch"])
        if epoch not in self.logged:
            tracked.log_metrics(self.run_id, metrics[0], step=epoch)
            self.logged.add(epoch)


def make_trainer(config: Config, data: PreparedData, run_config: RunConfig, display: ProgressSettings | None = None) -> TorchTrainer:
    """A trainer of `config` as `sam.resolve.resolve_config` gave it, over `data`; `display`: how rank 0 shows each
    epoch (default: as this process's console wants it)."""
    if config.start.init_embeddings:
        check_embeddings_source(config, len(data.tokenizer))
    return TorchTrainer(
        train_func,
        train_loop_config={
            "config": config.to_dict(),
            "tokenizer": data.tokenizer,
            "class_weights": data.class_weights,
            "steps_per_epoch": steps_per_epoch(config, data.n_train),
            "display": display or ProgressSettings.here(),
        },
        torch_config=TorchConfig(backend=config.scale.torch_backend),
        scaling_config=scaling_config(config.scale),
        datasets={"train": data.train, "val": data.val},
        run_config=run_config,
    )


def checkpoint_config() -> CheckpointConfig:
    """Keep the best epoch by validation accuracy; Ray also always keeps the latest, to resume from."""
    return CheckpointConfig(num_to_keep=1, checkpoint_score_attribute=SELECT_METRIC, checkpoint_score_order=SELECT_MODE)


def new_run_name(kind: str = "train") -> str:
    """Unique, so two runs started in the same second never share checkpoints."""
    return f"sam-{kind}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"


def check_run_name(kind: str, name: str, storage: str, found: bool, resume: bool) -> None:
    """Ray continues any run or search it finds under the same storage and name: an existing one is taken only
    with `resume`, and `resume` needs one."""
    if found and not resume:
        raise SamError(f"{kind} {name!r} exists under {redact(storage)}: pass --resume to continue it, or choose another --name")
    if resume and not found:
        raise SamError(f"--resume: no {kind} {name!r} under {redact(storage)} to continue")


def start_run(config: Config, storage: str | None, name: str, resume: bool = False) -> str:
    """The run's directory under `storage` (default ~/ray_results), checked by `check_run_name`; a resumed run
    must have the config it was started with (the scale may change), saved there for that check."""
    storage = storage or DEFAULT_STORAGE
    run = join(storage, name)
    saved = join(run, CONFIG_FILE)
    nodes = sum(node["Alive"] for node in ray.nodes()) if ray.is_initialized() else 1
    if not is_uri(run) and nodes > 1:
        log.warning("--storage %s is a local path on a cluster of %d nodes: workers elsewhere write their checkpoints "
                    "there only if every node mounts it; give a URI (s3://...) otherwise", run, nodes)
    found = exists(run)
    check_run_name("run", name, storage, found, resume)
    if not found:
        write_text(saved, json.dumps(config.to_dict(), indent=2) + "\n")
    elif exists(saved):
        changed = Config.from_dict(json.loads(read_text(saved))).differences(config)
        if changed:
            raise SamError(f"--resume: run {name!r} was started with another config ({'; '.join(changed)})")
    return run


def train(config: Config, output: str | Path, storage: str | None = None, name: str | None = None,
          max_failures: int = 0, data: PreparedData | None = None, resume: bool = False,
          tracked: Tracker | None = None, register: str | None = None) -> dict:
    """`sam train` (and `sam distill`, which brings its transfer set as `data`): data, trainer, fit, export of
    the best epoch. With `tracked`, one MLflow run holds the params, every epoch and the exported model (as a new
    version of `register`, when given). Returns the exported metrics."""
    started = time.perf_counter()
    name = name or new_run_name()
    start_run(config, storage, name, resume)
    data = data or prepare(config)
    per_epoch = steps_per_epoch(config, data.n_train)
    log.info("schedule: %d steps/epoch, warm-up %d steps to peak lr %.2e, then linear decay over %d steps",
             per_epoch, warmup_steps(config.train, per_epoch * config.train.epochs), config.train.lr,
             per_epoch * config.train.epochs)
    run_id = tracked.start(name, flat_params(config), run_tags(config, data.report)) if tracked else None
    display = ProgressSettings.here()
    run_config = RunConfig(
        name=name,
        storage_path=resolve(storage or DEFAULT_STORAGE),
        checkpoint_config=checkpoint_config(),
        failure_config=FailureConfig(max_failures=max_failures),
        callbacks=[EpochLogger(tracked.uri, run_id)] if tracked else None,
        logging_config=LoggingConfig(log_level=display.train_log_level),
    )
    with tracked.running(run_id) if tracked else nullcontext():
        result = make_trainer(config, data, run_config, display).fit()
        best = result.get_best_checkpoint(metric=SELECT_METRIC, mode=SELECT_MODE)
        metrics = checkpoint.export(best, output, {
            "n_train": data.n_train, "n_val": data.n_val, "dropped_rows": dict(data.report.dropped),
            "wall_s": time.perf_counter() - started,
        }, latest=result.checkpoint, extras=lambda directory: export_onnx(directory, *tokenized_rows(data.val)))
        if tracked:
            metrics.update(finish_tracking(tracked, run_id, metrics, output, register))
    log.info("best epoch %d of %d: val accuracy %.4f, macro-F1 %.4f; model directory %s",
             metrics["best_epoch"], metrics["epochs_run"], metrics["val_accuracy"], metrics["val_macro_f1"], redact(output))
    return metrics


def finish_tracking(tracked: Tracker, run_id: str, metrics: dict, output: str | Path, register: str | None) -> dict:
    """The exported epoch's figures and the model directory on the run; the model registered when asked. Returns
    where the run (and the version) can be found."""
    tracked.log_metrics(run_id, {f"best_{k}": metrics[k] for k in ("val_accuracy", "val_macro_f1", "val_loss")}
                        | {"best_epoch": metrics["best_epoch"], "wall_s": metrics["wall_s"]})
    tracked.log_model(run_id, str(local_model_dir(output)))
    found = {"mlflow_run_id": run_id}
    if register:
        found["registered"] = tracked.register(run_id, register)
        log.info("registered %s", found["registered"])
    return found
