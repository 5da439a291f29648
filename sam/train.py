"""Ray Train: one `train_func` run by `TorchTrainer` on N DDP workers, and the best epoch exported as a
standard Hugging Face model directory."""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import ray
import ray.train
import ray.train.torch
import torch
from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
from ray.data.collate_fn import NumpyBatchCollateFn
from ray.train.torch import TorchTrainer
from transformers import AutoModelForSequenceClassification

from sam.config import Config
from sam.data import LoadReport, to_token_dataset, train_and_validation
from sam.batching import collate, length_bucketed
from sam.tokenizer import load_tokenizer, resolve_tokenizer
from sam.learner import (
    Predictions, class_weights, eval_step, make_averaged, make_loss, make_optimizer, make_scheduler, to_device, train_step,
)
from sam.models import build_model, load_pretrained, summary

log = logging.getLogger("sam")

PROGRESS_FILE = "progress.json"  # epoch, early-stopping state and history: what a restarted worker resumes
OPTIMIZER_FILE = "optimizer.pt"  # optimiser and scheduler state, tensors only (loaded with weights_only)
METRICS_FILE = "metrics.json"
# Early stopping watches validation loss (it moves before accuracy does); the exported epoch is the one with
# the best validation accuracy, the figure users judge the model by.
SELECT_METRIC, SELECT_MODE = "val_accuracy", "max"
# Fault injection for the reliability tests: the worker of this rank (default: the last) exits at this
# global step, in a run that did not start from a checkpoint.
FAULT_STEP_ENV, FAULT_RANK_ENV = "SAM_FAULT_AT_STEP", "SAM_FAULT_RANK"


@dataclass
class PreparedData:
    train: ray.data.Dataset
    val: ray.data.Dataset
    tokenizer: object
    class_weights: list[float]
    n_train: int
    n_val: int
    report: LoadReport


def split_and_tokenizer(config: Config) -> tuple[pd.DataFrame, pd.DataFrame, object, LoadReport]:
    """Validated rows split into shuffled train and validation frames, and the tokenizer for them."""
    train, val, report = train_and_validation(config)
    if config.data.init:
        tokenizer = load_tokenizer(config.data.init)
    else:
        tokenizer = resolve_tokenizer(config.data.tokenizer, train["text"].tolist(), config.model.vocab_size, config.model.lowercase)
    # One seeded shuffle here; each epoch adds a local shuffle in the workers.
    train = train.sample(frac=1.0, random_state=config.train.seed).reset_index(drop=True)
    return train, val, tokenizer, report


def prepare_data(config: Config) -> PreparedData:
    """Read, validate and split on the driver; tokenization streams in Ray Data tasks during training."""
    ray.data.DataContext.get_current().enable_progress_bars = False  # one bar per epoch per worker drowns the log
    train, val, tokenizer, report = split_and_tokenizer(config)
    return PreparedData(
        train=to_token_dataset(train, tokenizer, config.model.max_length),
        val=to_token_dataset(val, tokenizer, config.model.max_length),
        tokenizer=tokenizer,
        class_weights=class_weights(train["label"].to_numpy()),
        n_train=len(train),
        n_val=len(val),
        report=report,
    )


class PadCollate(NumpyBatchCollateFn):
    """Dynamic padding of each validation batch, in Ray Data's prefetch threads."""

    def __init__(self, pad_id: int):
        super().__init__()
        self.pad_id = pad_id

    def __call__(self, batch: dict) -> dict:
        return collate(batch, self.pad_id)


def steps_per_epoch(config: Config, n_train: int) -> int:
    return max(1, math.ceil(n_train // config.scale.num_workers / config.train.batch_size))


def _initial_model(config: Config, tokenizer):
    if config.data.init:
        return load_pretrained(config.data.init)
    return build_model(config.model, tokenizer)


def _save_checkpoint(directory: str, model, averaged, tokenizer, config: Config, optimizer, scheduler, progress: dict) -> None:
    """The weights evaluated and exported (the average, if any) as the model; the weights training resumes
    from, and the average's step count, beside the optimiser state."""
    (averaged.module if averaged is not None else model).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    config.save(directory)
    Path(directory, PROGRESS_FILE).write_text(json.dumps(progress))
    training = {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}
    if averaged is not None:
        training.update(weights=model.state_dict(), averaged_steps=averaged.n_averaged)
    torch.save(training, Path(directory, OPTIMIZER_FILE))


def _fault_plan() -> dict:
    """Read on the driver, where the tests set it; workers started earlier never see its environment."""
    return {"at_step": int(os.environ.get(FAULT_STEP_ENV, "0")), "rank": int(os.environ.get(FAULT_RANK_ENV, "-1"))}


def _maybe_inject_fault(plan: dict, step: int, rank: int, world_size: int, restored: bool) -> None:
    fault_rank = plan["rank"] if plan["rank"] >= 0 else world_size - 1
    if plan["at_step"] and step == plan["at_step"] and rank == fault_rank and not restored:
        # Like a real crash after the last report has landed: without this wait the controller can see the
        # death before it registers that checkpoint, and restart from scratch.
        ray.train.get_all_reported_checkpoints()
        log.warning("fault injection: worker %d exits at step %d", rank, step)
        os._exit(1)


def train_func(loop_config: dict) -> None:
    """Runs on every worker: build or restore, train epochs, evaluate, report with a checkpoint each epoch."""
    config = Config.from_dict(loop_config["config"])
    tokenizer = loop_config["tokenizer"]
    context = ray.train.get_context()
    rank, world_size = context.get_world_rank(), context.get_world_size()
    device = ray.train.torch.get_device()
    if device.type == "cpu":
        torch.set_num_threads(config.scale.torch_threads or max(1, (os.cpu_count() or 1) // context.get_local_world_size()))
    torch.manual_seed(config.train.seed)

    total_steps = loop_config["steps_per_epoch"] * config.train.epochs
    progress = {"epoch": 0, "step": 0, "best_val_loss": math.inf, "best_epoch": 0, "bad_epochs": 0,
                "peak_lr": 0.0, "history": [], "restored_from_epoch": 0}
    checkpoint = ray.train.get_checkpoint()
    if checkpoint:
        with checkpoint.as_directory() as directory:
            model = AutoModelForSequenceClassification.from_pretrained(directory)
            progress = json.loads(Path(directory, PROGRESS_FILE).read_text())
            # To CPU first: the saving worker's GPU index may not exist where the run resumes.
            states = torch.load(Path(directory, OPTIMIZER_FILE), map_location="cpu", weights_only=True)
        progress["restored_from_epoch"] = progress["epoch"]
    else:
        model = _initial_model(config, tokenizer)
    if rank == 0:  # the learner summary, logged where the model is built rather than building a spare one
        # Logged, not printed: Ray Train both tees and logs a worker's print, so the driver shows it twice.
        log.info("%s", summary(model))
    model = ray.train.torch.prepare_model(model)
    unwrapped = model.module if hasattr(model, "module") else model
    averaged = make_averaged(unwrapped, config.train.ema_decay)  # on restore: a copy of the saved average
    optimizer = make_optimizer(model, config.train)
    scheduler = make_scheduler(optimizer, config.train, total_steps)
    if checkpoint:
        optimizer.load_state_dict(states["optimizer"])
        scheduler.load_state_dict(states["scheduler"])
        if averaged is not None:
            unwrapped.load_state_dict(states["weights"])
            averaged.n_averaged.copy_(states["averaged_steps"])  # continues the saved average, bias correction included
    evaluated = averaged.module if averaged is not None else unwrapped
    loss_fn = make_loss(config.train, loop_config["class_weights"], device)
    to_tensors = PadCollate(tokenizer.pad_token_id)
    train_shard, val_shard = ray.train.get_dataset_shard("train"), ray.train.get_dataset_shard("val")
    log_every = max(1, loop_config["steps_per_epoch"] // 4)

    for epoch in range(progress["epoch"], config.train.epochs):
        started, samples, loss_sum = time.perf_counter(), 0, 0.0
        window = config.train.batch_size * config.train.bucket_batches
        windows = train_shard.iter_batches(
            batch_size=window, batch_format="numpy",
            local_shuffle_buffer_size=2 * window, local_shuffle_seed=config.train.seed + epoch,
        )
        rng = np.random.default_rng(config.train.seed + epoch)
        batches = (b for w in windows for b in length_bucketed(w, config.train.batch_size, tokenizer.pad_token_id, rng))
        data_wait = 0.0  # seconds the step loop sat waiting for Ray Data: input-bound when this is large
        while True:
            waited = time.perf_counter()
            batch = next(batches, None)
            data_wait += time.perf_counter() - waited
            if batch is None:
                break
            batch = to_device(batch, device)
            progress["step"] += 1
            _maybe_inject_fault(loop_config["fault"], progress["step"], rank, world_size, bool(checkpoint))
            loss_sum += train_step(model, batch, loss_fn, optimizer, scheduler, config.train.grad_clip, config.scale.bf16,
                                   averaged) * len(batch["labels"])
            samples += len(batch["labels"])
            progress["peak_lr"] = max(progress["peak_lr"], scheduler.get_last_lr()[0])
            if rank == 0 and progress["step"] % log_every == 0:
                log.info("epoch %d step %d: loss %.4f, lr %.2e, %.0f samples/s", epoch + 1, progress["step"],
                         loss_sum / samples, scheduler.get_last_lr()[0], samples / (time.perf_counter() - started))
        train_seconds = time.perf_counter() - started

        predictions = Predictions()
        for batch in val_shard.iter_torch_batches(batch_size=256, collate_fn=to_tensors):
            eval_step(evaluated, to_device(batch, device), predictions, config.scale.bf16)
        if world_size > 1:
            parts = [None] * world_size
            torch.distributed.all_gather_object(parts, predictions)
            predictions = Predictions.merged(parts)
        val = predictions.metrics()

        improved = val["loss"] < progress["best_val_loss"]
        progress.update(epoch=epoch + 1, bad_epochs=0 if improved else progress["bad_epochs"] + 1)
        if improved:
            progress.update(best_val_loss=val["loss"], best_epoch=epoch + 1)
        metrics = {
            "epoch": epoch + 1,
            "train_loss": loss_sum / max(samples, 1),
            "val_loss": val["loss"], "val_accuracy": val["accuracy"], "val_macro_f1": val["macro_f1"],
            "lr": scheduler.get_last_lr()[0], "peak_lr": progress["peak_lr"],
            "samples_per_s": samples * world_size / train_seconds, "epoch_s": train_seconds,
            "data_wait_s": data_wait,
            "best_epoch": progress["best_epoch"], "restored_from_epoch": progress["restored_from_epoch"],
            "stopping": progress["bad_epochs"] >= config.train.patience or epoch + 1 == config.train.epochs,
        }
        progress["history"].append(metrics)
        with tempfile.TemporaryDirectory() as directory:
            if rank == 0:
                _save_checkpoint(directory, unwrapped, averaged, tokenizer, config, optimizer, scheduler, progress)
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(directory) if rank == 0 else None)
        if metrics["stopping"]:
            break


def make_trainer(config: Config, data: PreparedData, run_config: RunConfig) -> TorchTrainer:
    return TorchTrainer(
        train_func,
        train_loop_config={
            "config": config.to_dict(),
            "tokenizer": data.tokenizer,
            "class_weights": data.class_weights,
            "steps_per_epoch": steps_per_epoch(config, data.n_train),
            "fault": _fault_plan(),
        },
        scaling_config=ScalingConfig(
            num_workers=config.scale.num_workers,
            use_gpu=config.scale.use_gpu,
            resources_per_worker={"CPU": config.scale.cpus_per_worker},
            placement_strategy=config.scale.placement_strategy,
        ),
        datasets={"train": data.train, "val": data.val},
        run_config=run_config,
    )


def checkpoint_config() -> CheckpointConfig:
    """Keep the best epoch by validation accuracy; Ray also always keeps the latest, to resume from."""
    return CheckpointConfig(num_to_keep=1, checkpoint_score_attribute=SELECT_METRIC, checkpoint_score_order=SELECT_MODE)


def _progress(checkpoint: ray.train.Checkpoint) -> dict:
    with checkpoint.as_directory() as directory:
        return json.loads(Path(directory, PROGRESS_FILE).read_text())


def export_model(checkpoint: ray.train.Checkpoint, output: str | Path, extra_metrics: dict,
                 latest: ray.train.Checkpoint | None = None) -> dict:
    """The checkpoint as a clean model directory (no optimiser state) with metrics.json beside it; the
    history comes from `latest` when given, since the best epoch's own record stops at that epoch."""
    output = Path(output)
    with checkpoint.as_directory() as directory:
        progress = json.loads(Path(directory, PROGRESS_FILE).read_text())
        if output.exists():
            shutil.rmtree(output)
        shutil.copytree(directory, output, ignore=shutil.ignore_patterns(PROGRESS_FILE, OPTIMIZER_FILE))
    exported = progress["epoch"]
    if latest is not None:
        progress = _progress(latest)
    best = progress["history"][exported - 1]
    metrics = {
        "val_accuracy": best["val_accuracy"], "val_macro_f1": best["val_macro_f1"], "val_loss": best["val_loss"],
        "best_epoch": exported, "epochs_run": progress["epoch"], "peak_lr": progress["peak_lr"],
        "history": progress["history"], **extra_metrics,
    }
    Path(output, METRICS_FILE).write_text(json.dumps(metrics, indent=2) + "\n")
    return metrics


def train(config: Config, output: str | Path, storage: str | None = None, name: str | None = None,
          max_failures: int = 0) -> dict:
    """`sam train`: data, trainer, fit, export of the best epoch. Returns the exported metrics."""
    started = time.perf_counter()
    data = prepare_data(config)
    per_epoch = steps_per_epoch(config, data.n_train)
    log.info(
        "schedule: %d steps/epoch, warm-up %d steps to peak lr %.2e, then %s over %d steps",
        per_epoch, min(config.train.warmup_steps, per_epoch * config.train.epochs - 1), config.train.lr,
        config.train.schedule, per_epoch * config.train.epochs,
    )
    run_config = RunConfig(
        name=name or f"sam-train-{time.strftime('%Y%m%d-%H%M%S')}",
        storage_path=storage,
        checkpoint_config=checkpoint_config(),
        failure_config=FailureConfig(max_failures=max_failures),
    )
    result = make_trainer(config, data, run_config).fit()
    best = result.get_best_checkpoint(metric=SELECT_METRIC, mode=SELECT_MODE)
    metrics = export_model(best, output, {
        "n_train": data.n_train, "n_val": data.n_val, "dropped_rows": dict(data.report.dropped),
        "wall_s": time.perf_counter() - started,
    }, latest=result.checkpoint)
    log.info("best epoch %d of %d: val accuracy %.4f, macro-F1 %.4f; model directory %s",
             metrics["best_epoch"], metrics["epochs_run"], metrics["val_accuracy"], metrics["val_macro_f1"], output)
    return metrics
