"""From a config to what training consumes: the split's rows tokenized (once for the run where they fit the
budget, else streamed every epoch), the tokenizer, the class weights and the load report. A teacher's transfer
set comes through `sam.distill.prepare_distilled`, which ends here too."""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass

import ray
import ray.data

from sam import SamError
from sam.config import Config
from sam.data import LoadReport, Split, class_weights, light_tasks, text_sample, train_and_validation
from sam.encoding import encode_rows
from sam.tokenizer import tokenizer_for

log = logging.getLogger("sam")

# The knobs that change what a run trains on: the split (source, fractions, sample, seed), the tokenizer (init,
# tokenizer, vocabulary), a teacher's transfer set (teacher, augment) and the tokenized rows (max_length, budget).
PREPARATION_KNOBS = ("source", "val_fraction", "holdout_fraction", "limit_train", "seed", "init", "tokenizer", "vocab_size",
                     "lowercase", "teacher", "ensemble", "cross_fit", "folds", "fold", "augment", "max_length", "materialize_mb")


def preparation_key(config: Config) -> tuple:
    """Two configs of one key train on the same prepared data (a search's trials that differ in lr or width)."""
    flat = {name: value for section in config.to_dict().values() for name, value in section.items()}
    return tuple(flat[name] for name in PREPARATION_KNOBS)


def tokenize(rows: ray.data.Dataset, tokenizer, max_length: int) -> ray.data.Dataset:
    """Token ids and labels, computed as training consumes them (the Rust tokenizer travels to the tasks: it
    unpickles without importing transformers)."""
    return rows.map_batches(encode_rows, batch_format="pandas", **light_tasks(),
                            fn_kwargs={"tokenizer": tokenizer.backend_tokenizer, "max_length": max_length})


@dataclass
class PreparedData:
    train: ray.data.Dataset
    val: ray.data.Dataset
    tokenizer: object
    class_weights: list[float]
    n_train: int
    n_val: int
    report: LoadReport
    materialized: bool = False


def tokenized_mb(rows: int, max_length: int) -> float:
    """An upper bound on the tokenized rows' size: every row at `max_length` int64 ids, plus its label and Arrow's
    per-row offsets."""
    return rows * (max_length * 8 + 64) / 2**20


def materialize_budget_mb(setting_mb: float) -> float:
    """`materialize_mb`, but never more than a quarter of the cluster's object store, which also holds each
    epoch's blocks in flight."""
    store_mb = ray.cluster_resources().get("object_store_memory", 0) / 2**20
    return min(setting_mb, store_mb / 4)


def materialize_if_small(data: PreparedData, max_length: int, setting_mb: float) -> PreparedData:
    """Tokenized once for the run when both splits fit the budget, so every epoch's first batch comes from the
    object store at once; streamed (read, validated and tokenized as each epoch consumes it) otherwise."""
    size_mb, budget_mb = tokenized_mb(data.n_train + data.n_val, max_length), materialize_budget_mb(setting_mb)
    if size_mb > budget_mb:
        log.info("tokenized splits: up to %.0f MB, over the %.0f MB budget (materialize_mb %g): streamed every epoch",
                 size_mb, budget_mb, setting_mb)
        return data
    log.info("tokenized splits: up to %.0f MB, within the %.0f MB budget (materialize_mb %g): tokenized once for the run",
             size_mb, budget_mb, setting_mb)
    return dataclasses.replace(data, train=data.train.materialize(), val=data.val.materialize(), materialized=True)


def prepare(config: Config, budget_share: float = 1.0) -> PreparedData:
    """Read, validate, split and tokenize as one lazy Ray Data pipeline; the driver holds only the report, the
    class counts and the tokenizer (trained on a bounded sample of the training texts). `budget_share`: this
    preparation's part of `materialize_mb`, where several are held at once (a search's)."""
    if config.distill.teacher:
        raise SamError("a run with a teacher trains on its transfer set: sam.distill.prepare_distilled")
    split = train_and_validation(config)
    return prepared(config, split, split.train, int(split.train_counts.sum()), budget_share)


def prepared(config: Config, split: Split, rows: ray.data.Dataset, count: int, budget_share: float = 1.0) -> PreparedData:
    """`rows` (`count` of them; the split's training side, or a transfer set built from it) and the split's
    validation side tokenized, with no Ray Data progress of their own (a bar per epoch per worker drowns the log).
    Small splits are then tokenized once for the run (`materialize_if_small`)."""
    tokenizer = tokenizer_for(config, text_sample(split.train))
    train, val = tokenize(rows, tokenizer, config.model.max_length), tokenize(split.val, tokenizer, config.model.max_length)
    for dataset in (train, val):
        dataset.context.enable_progress_bars = False
    return materialize_if_small(PreparedData(
        train=train,
        val=val,
        tokenizer=tokenizer,
        class_weights=class_weights(split.train_counts),
        n_train=count,
        n_val=int(split.val_counts.sum()),
        report=split.report,
    ), config.model.max_length, config.scale.materialize_mb * budget_share)
