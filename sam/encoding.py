"""Text to ids: the one path used by Ray Data in training, by evaluation and by Serve at /predict.

Imports no Ray, so a GPU machine without Ray can use it directly.
"""

from __future__ import annotations

import logging
import socket
from typing import Iterable, Iterator, Sequence
from urllib.parse import urlparse

import numpy as np
import torch
from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

log = logging.getLogger("sam")

# Longer texts are refused at /predict and dropped from training data: no tweet comes close.
MAX_TEXT_CHARS = 10_000


def encode(tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], max_length: int) -> list[np.ndarray]:
    """Token ids per text, truncated to `max_length`, unpadded: padding happens per batch in `pad_batch`."""
    encoded = tokenizer(list(texts), truncation=True, max_length=max_length, return_attention_mask=False)
    return [np.asarray(ids, dtype=np.int64) for ids in encoded["input_ids"]]


def pad_batch(ids: Iterable[np.ndarray], pad_id: int) -> dict[str, torch.Tensor]:
    """Pads to the longest sequence in this batch (dynamic padding), with its attention mask."""
    rows = [torch.as_tensor(row, dtype=torch.long) for row in ids]
    input_ids = torch.nn.utils.rnn.pad_sequence(rows, batch_first=True, padding_value=pad_id)
    attention_mask = torch.zeros_like(input_ids)
    for i, row in enumerate(rows):
        attention_mask[i, : len(row)] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask}


def train_wordpiece(texts: Iterable[str], vocab_size: int, lowercase: bool = False) -> PreTrainedTokenizerFast:
    """A BERT-style WordPiece tokenizer learned from `texts`, as a standard HF fast tokenizer."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    backend = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    backend.normalizer = normalizers.BertNormalizer(lowercase=lowercase, clean_text=True, handle_chinese_chars=True)
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    backend.decoder = decoders.WordPiece()
    trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=special, min_frequency=2, show_progress=False)
    backend.train_from_iterator(texts, trainer=trainer)
    backend.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B [SEP]",
        special_tokens=[("[CLS]", backend.token_to_id("[CLS]")), ("[SEP]", backend.token_to_id("[SEP]"))],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]",
    )


def load_tokenizer(name_or_dir: str) -> PreTrainedTokenizerBase:
    return AutoTokenizer.from_pretrained(name_or_dir, use_fast=True)


def _hub_reachable(timeout_s: float = 3.0) -> bool:
    """huggingface_hub retries an unreachable hub for about 45 s; one quick connect tells us first."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return False
    host = urlparse(constants.ENDPOINT).hostname or "huggingface.co"
    try:
        socket.create_connection((host, 443), timeout=timeout_s).close()
        return True
    except OSError:
        return False


def resolve_tokenizer(name_or_dir: str, corpus: Sequence[str], vocab_size: int, lowercase: bool = False) -> PreTrainedTokenizerBase:
    """The named tokenizer (a directory, the local cache, then the hub), or one trained on `corpus` when
    none of those has it."""
    try:
        return AutoTokenizer.from_pretrained(name_or_dir, use_fast=True, local_files_only=not _hub_reachable())
    except (OSError, ValueError) as error:
        log.warning(
            "tokenizer %r unavailable (%s); training a %d-word WordPiece tokenizer on the %d training texts instead",
            name_or_dir, type(error).__name__, vocab_size, len(corpus),
        )
        return train_wordpiece(corpus, vocab_size, lowercase)


def collate(batch: dict[str, np.ndarray], pad_id: int) -> dict[str, torch.Tensor]:
    """A Ray Data numpy batch of token ids and labels to padded training tensors."""
    tensors = pad_batch(batch["input_ids"], pad_id)
    tensors["labels"] = torch.tensor(batch["labels"], dtype=torch.long)
    return tensors


def length_bucketed(window: dict[str, np.ndarray], batch_size: int, pad_id: int, rng: np.random.Generator) -> Iterator[dict[str, torch.Tensor]]:
    """Splits a window of several batches' rows into batches of similar length, in random order.

    Tweets vary from 3 to 100+ tokens; random batches pad to their longest row and waste about half their
    compute on padding. Sorting within a window keeps batches random across windows."""
    order = np.argsort([len(row) for row in window["input_ids"]], kind="stable")
    chunks = [order[start : start + batch_size] for start in range(0, len(order), batch_size)]
    for index in rng.permutation(len(chunks)):
        yield collate({name: column[chunks[index]] for name, column in window.items()}, pad_id)
