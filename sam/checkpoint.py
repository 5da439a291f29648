"""The checkpoint format, in one place: what each epoch saves, what a restarted worker resumes from, and the
export of a checkpoint as a standard Hugging Face model directory (what `sam train` and `sam tune` write)."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import ray.train
import torch
from transformers import AutoModelForSequenceClassification, PreTrainedModel

from sam.config import Config
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


def export(checkpoint: ray.train.Checkpoint, output: str | Path, extra_metrics: dict,
           latest: ray.train.Checkpoint | None = None) -> dict:
    """The checkpoint as a clean model directory (no training state) with metrics.json beside it; the history
    comes from `latest` when given, since the best epoch's own record stops at that epoch."""
    output = Path(output)
    with checkpoint.as_directory() as directory:
        progress = json.loads(Path(directory, PROGRESS_FILE).read_text())
        if output.exists():
            shutil.rmtree(output)
        shutil.copytree(directory, output, ignore=shutil.ignore_patterns(PROGRESS_FILE, TRAINING_STATE_FILE))
    exported = progress["epoch"]
    if latest is not None:
        progress = read_progress(latest)
    best = progress["history"][exported - 1]
    metrics = {
        "val_accuracy": best["val_accuracy"], "val_macro_f1": best["val_macro_f1"], "val_loss": best["val_loss"],
        "best_epoch": exported, "epochs_run": progress["epoch"], "peak_lr": progress["peak_lr"],
        "history": progress["history"], **extra_metrics,
    }
    Path(output, METRICS_FILE).write_text(json.dumps(metrics, indent=2) + "\n")
    return metrics
