"""Token ids to model tensors: dynamic padding and length-bucketed batches, shared by training, the benchmarks
and Serve. Imports no Ray."""

from __future__ import annotations

from typing import Iterable, Iterator, Sequence

import numpy as np
import torch

from sam.encoding import pad_ids


def pad_batch(ids: Sequence[np.ndarray], pad_id: int) -> dict[str, torch.Tensor]:
    """`pad_ids` as tensors (fresh arrays: Ray Data's own are read-only)."""
    return {name: torch.from_numpy(array) for name, array in pad_ids(ids, pad_id).items()}


def collate(batch: dict[str, np.ndarray], pad_id: int) -> dict[str, torch.Tensor]:
    """A Ray Data numpy batch of token ids and labels (and a teacher's logits) to padded training tensors."""
    tensors = pad_batch(batch["input_ids"], pad_id)
    tensors["labels"] = torch.tensor(batch["labels"], dtype=torch.long)
    if "teacher_logits" in batch:
        tensors["teacher_logits"] = torch.as_tensor(np.stack(batch["teacher_logits"]), dtype=torch.float32)
    return tensors


def length_bucketed(window: dict[str, np.ndarray], batch_size: int, pad_id: int, rng: np.random.Generator) -> Iterator[dict[str, torch.Tensor]]:
    """Splits a window of several batches' rows into batches of similar length, in random order.

    Tweets vary from 3 to 100+ tokens; random batches pad to their longest row and waste about half their
    compute on padding. Sorting within a window keeps batches random across windows."""
    order = np.argsort([len(row) for row in window["input_ids"]], kind="stable")
    chunks = [order[start : start + batch_size] for start in range(0, len(order), batch_size)]
    for index in rng.permutation(len(chunks)):
        yield collate({name: column[chunks[index]] for name, column in window.items()}, pad_id)


def training_batches(windows: Iterable[dict[str, np.ndarray]], batch_size: int, pad_id: int, seed: int) -> Iterator[dict[str, torch.Tensor]]:
    """An epoch's padded training batches from windows of `batch_size * bucket_batches` rows each (a Ray Data
    shard's `iter_batches`, or slices of an in-memory set): the one batching pipeline of training."""
    rng = np.random.default_rng(seed)
    for window in windows:
        yield from length_bucketed(window, batch_size, pad_id, rng)


def epoch_batches(rows, config, epoch: int, pad_id: int) -> Iterator[dict[str, torch.Tensor]]:
    """One epoch's padded training batches from tokenized rows (a Ray Data dataset or a worker's shard of it):
    windows of `batch_size * bucket_batches` rows drawn through a shuffle buffer, reseeded each epoch, so the same
    rows in the same order give the same batches, materialized or streamed. `config` is a `TrainConfig`."""
    window = config.batch_size * config.bucket_batches
    windows = rows.iter_batches(batch_size=window, batch_format="numpy", local_shuffle_seed=config.seed + epoch,
                                local_shuffle_buffer_size=max(config.shuffle_buffer, 2 * window))
    return training_batches(windows, config.batch_size, pad_id, config.seed + epoch)
