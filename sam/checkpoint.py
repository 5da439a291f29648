"""The checkpoint format, in one place: what each epoch saves, what a restarted worker resumes from, and the
export of a checkpoint as a standard Hugging Face model directory (what `sam train` and `sam tune` write)."""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pyarrow.fs
import ray.train
import torch
from transformers import AutoModelForSequenceClassification, PreTrainedModel

from sam import SamError, storage
from sam.config import CONFIG_FILE, Config
from sam.learner import Learner

PROGRESS_FILE = "progress.json"  # epoch, early-stopping state and history
TRAINING_STATE_FILE = "training_state.pt"  # Learner.state_dict(): tensors only, loaded with weights_only
METRICS_FILE = "metrics.json"  # beside an exported model: the best epoch's figures and the history


def save(directory: str | Path, learner: Learner, tokenizer, config: Config, progress: dict) -> None:
    """The evaluated weights (the average, if any) as a loadable model directory, with the training state beside."""
    learner.evaluated.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    config.save(directory)
    Path(directory, PROGRESS_FILE).write_text(json.dumps(progress))
    torch.save(learner.state_dict(), Path(directory, TRAINING_STATE_FILE))


@dataclass
class Restored:
    model: PreTrainedModel  # the evaluated weights; `Learner.load_state_dict(training_state)` puts the rest back
    progress: dict
    training_state: dict


def restore(checkpoint: ray.train.Checkpoint) -> Restored:
    with checkpoint.as_directory() as directory:
        return Restored(
            model=AutoModelForSequenceClassification.from_pretrained(directory),
            progress=json.loads(Path(directory, PROGRESS_FILE).read_text()),
            # To CPU first: the saving worker's GPU index may not exist where the run resumes.
            training_state=torch.load(Path(directory, TRAINING_STATE_FILE), map_location="cpu", weights_only=True),
        )


def read_progress(checkpoint: ray.train.Checkpoint) -> dict:
    with checkpoint.as_directory() as directory:
        return json.loads(Path(directory, PROGRESS_FILE).read_text())


def check_output(output: str | Path) -> None:
    """An export replaces a model directory, never anything else: checked before a run spends its time."""
    fs, inner = storage.filesystem(output)
    kind = fs.get_file_info(inner).type
    other_directory = kind == pyarrow.fs.FileType.Directory and bool(fs.get_file_info(pyarrow.fs.FileSelector(inner))) \
        and not storage.exists(storage.join(output, CONFIG_FILE))
    if kind == pyarrow.fs.FileType.File or other_directory:
        raise SamError(f"{storage.redact(output)}: exists and is not a SAM model directory; choose another --output")


def _write_model_dir(checkpoint: ray.train.Checkpoint, directory: Path, extra_metrics: dict,
                     latest: ray.train.Checkpoint | None, extras: Callable[[Path], None] | None) -> dict:
    with checkpoint.as_directory() as saved:
        progress = json.loads(Path(saved, PROGRESS_FILE).read_text())
        shutil.copytree(saved, directory, dirs_exist_ok=True, ignore=shutil.ignore_patterns(PROGRESS_FILE, TRAINING_STATE_FILE))
    exported = progress["epoch"]
    if latest is not None:
        progress = read_progress(latest)
    best = progress["history"][exported - 1]
    metrics = {
        "val_accuracy": best["val_accuracy"], "val_macro_f1": best["val_macro_f1"], "val_loss": best["val_loss"],
        "best_epoch": exported, "epochs_run": progress["epoch"], "peak_lr": progress["peak_lr"],
        "history": progress["history"], **extra_metrics,
    }
    Path(directory, METRICS_FILE).write_text(json.dumps(metrics, indent=2) + "\n")
    if extras is not None:
        extras(directory)
    return metrics


def export(checkpoint: ray.train.Checkpoint, output: str | Path, extra_metrics: dict,
           latest: ray.train.Checkpoint | None = None, extras: Callable[[Path], None] | None = None) -> dict:
    """The checkpoint as a clean model directory (no training state) with metrics.json beside it, and whatever
    `extras` writes into it; the history comes from `latest` when given, since the best epoch's own record stops
    at that epoch. A local directory is written beside the output and swapped in whole; on object storage the
    files are uploaded with sam_config.json last, so a partial upload is never taken for a model."""
    check_output(output)
    if storage.is_uri(output):
        with tempfile.TemporaryDirectory() as staging:
            metrics = _write_model_dir(checkpoint, Path(staging), extra_metrics, latest, extras)
            storage.delete_dir(output)
            storage.upload_dir(staging, storage.resolve(output), last=(CONFIG_FILE,))
        return metrics
    output = Path(output).expanduser().resolve()
    output.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output.name}.", dir=output.parent))
    try:
        metrics = _write_model_dir(checkpoint, staging, extra_metrics, latest, extras)
        if output.exists():
            replaced = output.with_name(f".{output.name}.replaced")
            shutil.rmtree(replaced, ignore_errors=True)
            output.rename(replaced)
            staging.rename(output)
            shutil.rmtree(replaced)
        else:
            staging.rename(output)
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # gone already when the swap succeeded
    return metrics
