"""Where a tokenizer comes from: a name or directory, the hub, or WordPiece training on the train texts."""

from __future__ import annotations

import logging
import socket
from typing import Iterable, Sequence
from urllib.parse import urlparse

from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

log = logging.getLogger("sam")


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
