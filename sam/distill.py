"""Knowledge distillation on Ray: a teacher model directory scores an augmented transfer set in a Ray Data actor
pool, written once as parquet and reused, and the student (the configured encoder) trains on the teacher's
softened scores and the gold labels with Ray Train. The teacher never sees the validation rows: the transfer set
is built from the training side of the same seeded split."""

from __future__ import annotations

import hashlib
import json
import logging
import secrets
from dataclasses import dataclass


import ray.data

from sam import SamError
from sam.config import Config
from sam.augment import transfer_rows
from sam.data import Split, train_and_validation
from sam.locations import local_model_dir
from sam.runtimes import WEIGHTS_FILES
from sam.prepare import PreparedData, prepared
from sam.resolve import teacher_config
from sam.scoring import SCORER, score_rows
from sam.storage import delete_dir, exists, join, ray_data_path, read_text, redact, resolve, write_text

log = logging.getLogger("sam")

TRANSFER_ROOT = "~/ray_results"  # without --storage
MANIFEST = "manifest.json"  # written last: what the set was built from and how many rows it holds


@dataclass
class Transfer:
    rows: ray.data.Dataset  # text, label, teacher_logits and the replica that scored the row
    count: int


def check_teacher_split(config: Config) -> None:
    """A teacher validated on another split has trained on some of this one's validation rows, and its scores
    would leak them into the student; one split with another held-out part has trained on some of the rows the
    two are compared on."""
    teacher = teacher_config(config)
    mine, theirs = ((c.train.seed, c.data.val_fraction, c.data.holdout_fraction, c.data.limit_train) for c in (config, teacher))
    if mine != theirs:
        raise SamError(f"teacher {config.distill.teacher} was split with (seed, val_fraction, holdout_fraction, limit_train) = {theirs}, "
                         f"this run with {mine}: give the same, so that it never trained on this run's validation rows")


def transfer_key(config: Config) -> dict:
    """What a transfer set depends on: the teacher's weights (not its path), the data, the split, the augmentation."""
    teacher = local_model_dir(config.distill.teacher)
    weights = hashlib.sha256(next(teacher / f for f in WEIGHTS_FILES if (teacher / f).is_file()).read_bytes()).hexdigest()
    return {"teacher_weights": weights, "data": config.with_absolute_paths().data.source, "limit": config.data.limit_train,
            "val_fraction": config.data.val_fraction, "holdout_fraction": config.data.holdout_fraction, "seed": config.train.seed, "augment": config.distill.augment}


def transfer_dir(config: Config, root: str) -> str:
    digest = hashlib.sha256(json.dumps(transfer_key(config), sort_keys=True).encode()).hexdigest()[:12]
    return join(root, f"sam-transfer-{digest}")


def build_transfer_set(config: Config, split: Split, directory: str, actors: int | None = None, gpus_per_actor: float = 0.0,
                       runtime: str | None = None, progress: bool = False) -> Transfer:
    """The training rows and their augmented copies with the teacher's logits, scored once by a pool of teacher
    replicas and streamed to parquet in `directory` (a local path or a URI); a complete set for the same key is
    reused. Each writer writes a part of its own and the manifest, written last, names the part that holds the set: two runs (or trials)
    building the same set at once never mix their rows, on any storage."""
    key, manifest_path = transfer_key(config), join(directory, MANIFEST)
    if not exists(manifest_path):
        part = f"part-{secrets.token_hex(4)}"
        log.info("scoring the transfer set with teacher %s into %s", redact(config.distill.teacher), redact(directory))
        rows = transfer_rows(split.train, config.distill.augment, config.train.seed)
        scored = score_rows(rows, config.distill.teacher, actors=actors, gpus_per_actor=gpus_per_actor, runtime=runtime,
                            with_logits=True, progress=progress)
        try:
            scored.select_columns(["text", "true_label", "logits", SCORER]) \
                .rename_columns({"true_label": "label", "logits": "teacher_logits"}) \
                .write_parquet(ray_data_path(join(directory, part)), ray_remote_args={"num_cpus": 0})
            count = _read_transfer(join(directory, part), progress).count()
        except BaseException:
            delete_dir(join(directory, part))  # nothing half-written left behind
            raise
        if not exists(manifest_path):  # else another run finished the same set first: use that one
            write_text(manifest_path, json.dumps({"key": key, "rows": count, "part": part}, indent=2) + "\n")
    manifest = json.loads(read_text(manifest_path))
    if manifest["key"] != key:
        differ = sorted(k for k in key if manifest["key"].get(k) != key[k])
        raise SamError(f"{redact(directory)}: a transfer set for another {', '.join(differ)}; remove it or choose another --transfer")
    log.info("transfer set %s: %d rows", redact(directory), manifest["rows"])
    return Transfer(_read_transfer(join(directory, manifest["part"]), progress), manifest["rows"])


def _read_transfer(part: str, progress: bool) -> ray.data.Dataset:
    rows = ray.data.read_parquet(ray_data_path(part))
    rows.context.enable_progress_bars = progress  # its own read: never the process's Ray Data settings
    return rows


def transfer_location(config: Config, transfer: str | None = None, root: str | None = None) -> str:
    """`transfer` when given, else a directory named for what the set holds under `root` (default ~/ray_results)."""
    return resolve(transfer) if transfer else transfer_dir(config, root or TRANSFER_ROOT)


def prepare_distilled(config: Config, transfer: str | None = None, root: str | None = None, budget_share: float = 1.0,
                      **scoring) -> PreparedData:
    """`sam.prepare.prepare` for a student: it trains on its teacher's scored transfer set, in `transfer` (a path
    or URI) or by default in a directory named for what it holds under `root` (default ~/ray_results), scored
    once by `scoring`'s actors (`build_transfer_set`'s options; `progress` only on the driver, whose console
    owns it: in a Ray worker, Ray Data's bars travel to the driver as terminal codes even when it is piped); it
    validates on the split's validation side, as its teacher did. `budget_share` as for `sam.prepare.prepare`."""
    check_teacher_split(config)
    split = train_and_validation(config)
    scored = build_transfer_set(config, split, transfer_location(config, transfer, root), **scoring)
    return prepared(config, split, scored.rows, scored.count, budget_share)
