"""Where a tokenizer comes from: a pretrained encoder, a name or directory, or WordPiece trained on the train texts."""

from __future__ import annotations

from typing import Iterable

from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

from sam import SamError
from sam.config import Config
from sam.locations import local_model_dir


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
    try:
        return AutoTokenizer.from_pretrained(local_model_dir(name_or_dir), use_fast=True)
    except (OSError, ValueError) as error:  # not a directory, not in the cache and no network, or not a tokenizer
        raise SamError(f"tokenizer {name_or_dir!r}: cannot load ({type(error).__name__}: {error})") from error


def tokenizer_for(config: Config, train_texts: Iterable[str]) -> PreTrainedTokenizerBase:
    """A fine-tuned encoder's own tokenizer, else the one named by `tokenizer`, else WordPiece trained on the
    train texts: the default needs no network, so a run gives the same model on any machine."""
    if config.start.init:
        return load_tokenizer(config.start.init)
    if config.start.tokenizer:
        return load_tokenizer(config.start.tokenizer)
    return train_wordpiece(train_texts, config.model.vocab_size, config.model.lowercase)
