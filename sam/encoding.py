"""Text to ids: the one path used by Ray Data in training, by evaluation and by Serve at /predict.

Imports numpy only: Ray Data's tokenizing tasks run this in processes of their own, where importing torch and
transformers would delay every epoch's first batch by seconds.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from sam import LABELS

# Longer texts are refused at /predict and dropped from training data: no tweet comes close.
MAX_TEXT_CHARS = 10_000


def encode(tokenizer, texts: Sequence[str], max_length: int) -> list[np.ndarray]:
    """Token ids per text, special tokens included, truncated to `max_length`, unpadded: padding happens per
    batch. `tokenizer` is a `transformers` fast tokenizer or the `tokenizers.Tokenizer` inside it (what Ray
    Data's tasks get, since it unpickles without transformers); both give the same ids."""
    backend = getattr(tokenizer, "backend_tokenizer", tokenizer)
    backend.no_padding()  # a saved tokenizer.json may pad to a fixed length
    backend.enable_truncation(max_length)
    return [np.asarray(encoding.ids, dtype=np.int64) for encoding in backend.encode_batch(list(texts))]


def pad_ids(ids: Sequence[np.ndarray], pad_id: int) -> dict[str, np.ndarray]:
    """Pads to the longest row of this batch (dynamic padding), with its attention mask: a model's two inputs."""
    lengths = np.fromiter((len(row) for row in ids), dtype=np.int64, count=len(ids))
    input_ids = np.full((len(ids), lengths.max(initial=0)), pad_id, dtype=np.int64)
    for i, row in enumerate(ids):
        input_ids[i, : len(row)] = row
    attention_mask = (np.arange(input_ids.shape[1]) < lengths[:, None]).astype(np.int64)
    return {"input_ids": input_ids, "attention_mask": attention_mask}


def token_budget_chunks(lengths: Sequence[int], max_tokens: int) -> list[list[int]]:
    """Indices of rows in length order, grouped so that no group pads to more than `max_tokens` tokens (rows
    times its longest row); a longer row still gets a group of its own.

    For inference: random tweets padded together are about half padding (docs/benchmarks.md has the figures)."""
    chunks: list[list[int]] = []
    for index in sorted(range(len(lengths)), key=lengths.__getitem__):
        if chunks and (len(chunks[-1]) + 1) * lengths[index] <= max_tokens:
            chunks[-1].append(index)
        else:
            chunks.append([index])
    return chunks


def chunked_logits(run: Callable[[dict[str, np.ndarray]], np.ndarray], ids: Sequence[np.ndarray], pad_id: int,
                   max_tokens: int) -> np.ndarray:
    """`run` (a model: padded ids and mask to logits) over rows in `token_budget_chunks`, in input order."""
    logits = np.empty((len(ids), len(LABELS)), dtype=np.float32)
    for chunk in token_budget_chunks([len(row) for row in ids], max_tokens):
        logits[chunk] = run(pad_ids([ids[i] for i in chunk], pad_id))
    return logits


def encode_column(tokenizer, texts: Sequence[str], max_length: int) -> np.ndarray:
    """`encode` as one column of ragged rows, the shape Ray Data batches hold and `batching` pads."""
    column = np.empty(len(texts), dtype=object)
    column[:] = encode(tokenizer, texts, max_length)
    return column


def encode_rows(batch, tokenizer, max_length: int) -> dict[str, np.ndarray]:
    """Ray Data's tokenizing step: a pandas batch of valid rows (text, label, and a teacher's logits when
    distilling) to token ids, labels and those logits."""
    encoded = {"input_ids": encode_column(tokenizer, batch["text"].tolist(), max_length), "labels": batch["label"].to_numpy()}
    if "teacher_logits" in batch:
        encoded["teacher_logits"] = np.stack(batch["teacher_logits"].to_numpy()).astype(np.float32)
    return encoded
