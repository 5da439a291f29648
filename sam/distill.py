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
from transformers import AutoConfig

from sam import SamError
from sam.config import CONFIG_FILE, Config
from sam.data import Split, transfer_rows
from sam.predict import SCORER, WEIGHTS_FILES, score_rows
from sam.storage import delete_dir, exists, join, local_model_dir, ray_data_path, read_text, redact, resolve, write_text

log = logging.getLogger("sam")

TRANSFER_ROOT = "~/ray_results"  # without --storage
MANIFEST = "manifest.json"  # written last: what the set was built from and how many rows it holds


@dataclass
class Transfer:
    rows: ray.data.Dataset  # text, label, teacher_logits and the replica that scored the row
    count: int


def teacher_config(config: Config) -> Config:
    """The config the teacher was trained with, saved in its model directory (a URI is fetched into this node's cache)."""
    directory = local_model_dir(config.distill.teacher)
    if not (directory / CONFIG_FILE).is_file():
        raise SamError(f"teacher {config.distill.teacher}: not a SAM model directory (no {CONFIG_FILE}), so its split "
                       "cannot be checked against this run's validation rows")
    return Config.load(directory)


def check_teacher_split(config: Config) -> None:
    """A teacher validated on another split has trained on some of this one's validation rows, and its scores
    would leak them into the student; one split with another held-out part has trained on some of the rows the
    two are compared on."""
    teacher = teacher_config(config)
    mine, theirs = ((c.train.seed, c.data.val_fraction, c.data.holdout_fraction, c.data.limit_train) for c in (config, teacher))
    if mine != theirs:
        raise SamError(f"teacher {config.distill.teacher} was split with (seed, val_fraction, holdout_fraction, limit_train) = {theirs}, "
                         f"this run with {mine}: give the same, so that it never trained on this run's validation rows")


def with_teacher_layers(config: Config) -> Config:
    """A layered student (`student` "layers", the default) starts as its teacher with layers left out, so it takes
    the teacher's tokenizer and token embeddings and the width, heads and d_ff its layers need: as with `init`, the
    teacher's shape wins over the configured one. A scratch student, or a run without a teacher, is left as it is."""
    if not config.distill.teacher or config.distill.student != "layers":
        return config
    teacher = config.distill.teacher
    shape = teacher_config(config).model
    kind = AutoConfig.from_pretrained(local_model_dir(teacher)).model_type
    if kind != "bert":
        raise SamError(f"teacher {teacher}: a {kind} encoder, whose layers cannot start a student's (BERT's only): "
                       "give --student scratch")
    return config.with_flat(tokenizer=teacher, init_embeddings=teacher, init_layers=True, d_model=shape.d_model,
                            num_heads=shape.num_heads, d_ff=shape.d_ff)


def transfer_key(config: Config) -> dict:
    """What a transfer set depends on: the teacher's weights (not its path), the data, the split, the augmentation."""
    teacher = local_model_dir(config.distill.teacher)
    weights = hashlib.sha256(next(teacher / f for f in WEIGHTS_FILES if (teacher / f).is_file()).read_bytes()).hexdigest()
    return {"teacher_weights": weights, "data": config.with_absolute_paths().data.data, "limit": config.data.limit_train,
            "val_fraction": config.data.val_fraction, "holdout_fraction": config.data.holdout_fraction, "seed": config.train.seed, "augment": config.distill.augment}


def transfer_dir(config: Config, root: str) -> str:
    digest = hashlib.sha256(json.dumps(transfer_key(config), sort_keys=True).encode()).hexdigest()[:12]
    return join(root, f"sam-transfer-{digest}")


def build_transfer_set(config: Config, split: Split, directory: str, actors: int = 1, gpus_per_actor: float = 0.0,
                       quantize: bool = False) -> Transfer:
    """The training rows and their augmented copies with the teacher's logits, scored once by a pool of teacher
    replicas and streamed to parquet in `directory` (a local path or a URI); a complete set for the same key is
    reused. Give it a `split` built within `scoring_job()`, so that every replica gets work. Each writer writes a
    part of its own and the manifest, written last, names the part that holds the set: two runs (or trials)
    building the same set at once never mix their rows, on any storage."""
    key, manifest_path = transfer_key(config), join(directory, MANIFEST)
    if not exists(manifest_path):
        part = f"part-{secrets.token_hex(4)}"
        log.info("scoring the transfer set with teacher %s into %s", redact(config.distill.teacher), redact(directory))
        rows = transfer_rows(split.train, config.distill.augment, config.train.seed)
        scored = score_rows(rows, config.distill.teacher, actors=actors, gpus_per_actor=gpus_per_actor, quantize=quantize,
                            with_logits=True)
        try:
            scored.select_columns(["text", "true_label", "logits", SCORER]) \
                .rename_columns({"true_label": "label", "logits": "teacher_logits"}) \
                .write_parquet(ray_data_path(join(directory, part)), ray_remote_args={"num_cpus": 0})
            count = ray.data.read_parquet(ray_data_path(join(directory, part))).count()
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
    return Transfer(ray.data.read_parquet(ray_data_path(join(directory, manifest["part"]))), manifest["rows"])


def transfer_location(config: Config, transfer: str | None = None, root: str | None = None) -> str:
    """`transfer` when given, else a directory named for what the set holds under `root` (default ~/ray_results)."""
    return resolve(transfer) if transfer else transfer_dir(config, root or TRANSFER_ROOT)
