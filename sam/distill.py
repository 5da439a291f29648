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
from sam.prediction_log import weights_hash
from sam.prepare import PreparedData, prepared
from sam.resolve import teacher_config
from sam.scoring import SCORER, score_rows
from sam.storage import delete_dir, exists, join, ray_data_path, read_text, redact, resolve, write_text

log = logging.getLogger("sam")

TRANSFER_ROOT = "~/ray_results"  # without --storage
MANIFEST = "manifest.json"  # written last: what the set was built from and how many rows it holds


@dataclass
class Transfer:
    rows: ray.data.Dataset  # text, label, teacher_logits, the replica that scored the row (and its fold, cross-fitted)
    count: int


def check_teacher_split(config: Config) -> list[str]:
    """A teacher validated on another split has trained on some of this one's validation rows, and its scores
    would leak them into the student; one split with another held-out part has trained on some of the rows the
    two are compared on. Cross-fitted teachers must also be one per fold. Returns the teachers in scoring order:
    as given, or by the fold each left out."""
    teachers = config.distill.teachers
    configs = [teacher_config(config, teacher) for teacher in teachers]
    mine = (config.train.seed, config.data.val_fraction, config.data.holdout_fraction, config.data.limit_train)
    for teacher, theirs in zip(teachers, configs):
        split = (theirs.train.seed, theirs.data.val_fraction, theirs.data.holdout_fraction, theirs.data.limit_train)
        if split != mine:
            raise SamError(f"teacher {teacher} was split with (seed, val_fraction, holdout_fraction, limit_train) = {split}, "
                           f"this run with {mine}: give the same, so that it never trained on this run's validation rows")
    if not config.distill.cross_fit:
        return teachers
    folds = len(teachers)
    for teacher, theirs in zip(teachers, configs):
        if theirs.data.folds != folds:
            raise SamError(f"teacher {teacher} was trained with folds {theirs.data.folds}; cross-fitting {folds} teachers needs "
                           f"each trained with --folds {folds} and its own --fold")
    by_fold = sorted(zip((theirs.data.fold for theirs in configs), teachers))
    if [fold for fold, _ in by_fold] != list(range(folds)):
        raise SamError(f"cross-fitted teachers leave out folds {[fold for fold, _ in by_fold]}: give one teacher per fold, "
                       f"0 to {folds - 1}, so that every row is scored by a teacher that never trained on it")
    return [teacher for _, teacher in by_fold]


def transfer_key(config: Config, teachers: list[str]) -> dict:
    """What a transfer set depends on: the teachers' weights (not their paths), the data, the split, the augmentation.
    `teachers` as `check_teacher_split` returns them."""
    hashes = [weights_hash(local_model_dir(teacher), digits=64) for teacher in teachers]  # in fold order when cross-fitted
    hashes = hashes if config.distill.cross_fit else sorted(hashes)  # an ensemble's mean is the same in any order
    return {"teacher_weights": hashes[0] if len(hashes) == 1 else hashes, "data": config.with_absolute_paths().data.source,
            "limit": config.data.limit_train, "val_fraction": config.data.val_fraction,
            "holdout_fraction": config.data.holdout_fraction, "seed": config.train.seed, "augment": config.distill.augment,
            **({"cross_fit": True} if config.distill.cross_fit else {})}


def transfer_dir(config: Config, teachers: list[str], root: str) -> str:
    digest = hashlib.sha256(json.dumps(transfer_key(config, teachers), sort_keys=True).encode()).hexdigest()[:12]
    return join(root, f"sam-transfer-{digest}")


def build_transfer_set(config: Config, split: Split, directory: str, actors: int | None = None, gpus_per_actor: float = 0.0,
                       runtime: str | None = None, progress: bool = False, teachers: list[str] | None = None) -> Transfer:
    """The training rows and their augmented copies with the teacher's logits (the mean of an ensemble's, or with
    cross-fitting the logits of the one teacher that left the row's fold out), scored once by a pool of teacher
    replicas and streamed to parquet in `directory` (a local path or a URI); a complete set for the same key is
    reused. Each writer writes a part of its own and the manifest, written last, names the part that holds the set: two runs (or trials)
    building the same set at once never mix their rows, on any storage. `teachers`: `check_teacher_split`'s
    answer, when the caller has it."""
    teachers, cross_fit = teachers or check_teacher_split(config), config.distill.cross_fit
    key, manifest_path = transfer_key(config, teachers), join(directory, MANIFEST)
    if not exists(manifest_path):
        part = f"part-{secrets.token_hex(4)}"
        log.info("scoring the transfer set with %s %s into %s", "cross-fitted teachers" if cross_fit else "teacher",
                 ", ".join(map(redact, teachers)), redact(directory))
        rows = transfer_rows(split.train, config.distill.augment, config.train.seed, folds=len(teachers) if cross_fit else 0)
        scored = score_rows(rows, teachers, actors=actors, gpus_per_actor=gpus_per_actor, runtime=runtime,
                            with_logits=True, by_fold=cross_fit, progress=progress)
        try:
            scored.select_columns(["text", "true_label", "logits", SCORER, *(["fold"] if cross_fit else [])]) \
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


def transfer_location(config: Config, teachers: list[str], transfer: str | None = None, root: str | None = None) -> str:
    """`transfer` when given, else a directory named for what the set holds under `root` (default ~/ray_results)."""
    return resolve(transfer) if transfer else transfer_dir(config, teachers, root or TRANSFER_ROOT)


def prepare_distilled(config: Config, transfer: str | None = None, root: str | None = None, budget_share: float = 1.0,
                      **scoring) -> PreparedData:
    """`sam.prepare.prepare` for a student: it trains on its teacher's scored transfer set, in `transfer` (a path
    or URI) or by default in a directory named for what it holds under `root` (default ~/ray_results), scored
    once by `scoring`'s actors (`build_transfer_set`'s options; `progress` only on the driver, whose console
    owns it: in a Ray worker, Ray Data's bars travel to the driver as terminal codes even when it is piped); it
    validates on the split's validation side, as its teacher did. `budget_share` as for `sam.prepare.prepare`."""
    teachers = check_teacher_split(config)
    split = train_and_validation(config)
    scored = build_transfer_set(config, split, transfer_location(config, teachers, transfer, root), teachers=teachers, **scoring)
    return prepared(config, split, scored.rows, scored.count, budget_share)
