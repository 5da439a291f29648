"""Knowledge distillation on Ray: a teacher model directory scores an augmented transfer set in a Ray Data actor
pool, written once as parquet and reused, and the student (the configured encoder) trains on the teacher's
softened scores and the gold labels with Ray Train. The teacher never sees the validation rows: the transfer set
is built from the training side of the same seeded split."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

import ray.data

from sam.config import Config
from sam.data import PreparedData, prepare_data, train_and_validation, transfer_rows
from sam.predict import score_rows

log = logging.getLogger("sam")

TRANSFER_ROOT = "~/ray_results"
DONE_MARKER = "_SUCCESS"  # written last: a directory without it is an interrupted write, built again


def transfer_dir(config: Config, root: str | Path) -> Path:
    """Where the transfer set for this teacher, data, split and augmentation lives: a run with the same ones
    reuses it instead of scoring again."""
    key = {"teacher": str(Path(config.distill.teacher).resolve()), "data": config.data.data, "limit": config.data.limit_train,
           "val_fraction": config.data.val_fraction, "seed": config.train.seed, "augment": config.distill.augment}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
    return Path(root).expanduser().resolve() / f"sam-transfer-{digest}"


def check_teacher_split(config: Config) -> None:
    """A teacher validated on another split has trained on some of this one's validation rows, and its scores
    would leak them into the student."""
    teacher = Config.load(config.distill.teacher)
    mine, theirs = ((c.train.seed, c.data.val_fraction, c.data.limit_train) for c in (config, teacher))
    if mine != theirs:
        raise ValueError(f"teacher {config.distill.teacher} was split with (seed, val_fraction, limit_train) = {theirs}, "
                         f"this run with {mine}: give the same, so that it never trained on this run's validation rows")


def build_transfer_set(config: Config, directory: Path, actors: int = 1, gpus_per_actor: float = 0.0,
                       quantize: bool = False) -> ray.data.Dataset:
    """The training rows and their augmented copies with the teacher's logits (text, label, teacher_logits),
    scored once by a pool of teacher replicas and streamed to parquet."""
    if not (directory / DONE_MARKER).is_file():
        check_teacher_split(config)
        log.info("scoring the transfer set with teacher %s into %s", config.distill.teacher, directory)
        rows = transfer_rows(train_and_validation(config).train, config.distill.augment, config.train.seed)
        scored = score_rows(rows, config.distill.teacher, actors=actors, gpus_per_actor=gpus_per_actor, quantize=quantize,
                            with_logits=True)
        directory.parent.mkdir(parents=True, exist_ok=True)
        partial = Path(tempfile.mkdtemp(prefix=directory.name + ".", dir=directory.parent))
        scored.select_columns(["text", "true_label", "logits"]) \
            .rename_columns({"true_label": "label", "logits": "teacher_logits"}).write_parquet(str(partial))
        (partial / DONE_MARKER).touch()
        try:
            os.rename(partial, directory)  # atomic: of two runs writing the same set, one wins whole
        except OSError:
            shutil.rmtree(partial, ignore_errors=True)
    else:
        log.info("reusing the transfer set in %s", directory)
    return ray.data.read_parquet(str(directory), file_extensions=["parquet"])


def prepare(config: Config, transfer: str | Path | None = None, **scoring) -> PreparedData:
    """`prepare_data`, on the teacher-scored transfer set when the config names a teacher: in `transfer`, or by
    default in a directory named for what it holds under ~/ray_results."""
    if not config.distill.teacher:
        return prepare_data(config)
    directory = Path(transfer).expanduser().resolve() if transfer else transfer_dir(config, TRANSFER_ROOT)
    return prepare_data(config, transfer=build_transfer_set(config, directory, **scoring))
