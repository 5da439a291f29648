"""The checkpoint format, in one place: what each epoch saves, what a restarted worker resumes from, and the
export of a checkpoint as a standard Hugging Face model directory (what `sam train` and `sam tune` write)."""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import ray.train
import torch
from transformers import AutoModelForSequenceClassification, PreTrainedModel

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
    output = Path(output)
    if output.exists() and (not output.is_dir() or (any(output.iterdir()) and not (output / CONFIG_FILE).is_file())):
        raise ValueError(f"{output}: exists and is not a SAM model directory; choose another --output")


def export(checkpoint: ray.train.Checkpoint, output: str | Path, extra_metrics: dict,
           latest: ray.train.Checkpoint | None = None) -> dict:
    """The checkpoint as a clean model directory (no training state) with metrics.json beside it; the history
    comes from `latest` when given, since the best epoch's own record stops at that epoch. Written beside the
    output and swapped in whole, so a failed export leaves the previous model as it was."""
    output = Path(output).resolve()
    check_output(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output.name}.", dir=output.parent))
    with checkpoint.as_directory() as directory:
        progress = json.loads(Path(directory, PROGRESS_FILE).read_text())
        shutil.copytree(directory, staging, dirs_exist_ok=True, ignore=shutil.ignore_patterns(PROGRESS_FILE, TRAINING_STATE_FILE))
    exported = progress["epoch"]
    if latest is not None:
        progress = read_progress(latest)
    best = progress["history"][exported - 1]
    metrics = {
        "val_accuracy": best["val_accuracy"], "val_macro_f1": best["val_macro_f1"], "val_loss": best["val_loss"],
        "best_epoch": exported, "epochs_run": progress["epoch"], "peak_lr": progress["peak_lr"],
        "history": progress["history"], **extra_metrics,
    }
    Path(staging, METRICS_FILE).write_text(json.dumps(metrics, indent=2) + "\n")
    if output.exists():
        replaced = output.with_name(f".{output.name}.replaced")
        shutil.rmtree(replaced, ignore_errors=True)
        output.rename(replaced)
        staging.rename(output)
        shutil.rmtree(replaced)
    else:
        staging.rename(output)
    return metrics
