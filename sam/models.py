"""The encoder: a `transformers` sequence classifier built from the config, so its directory loads anywhere.

Imports no Ray, so a GPU machine without Ray can use it directly.
"""

from __future__ import annotations

from collections import Counter

import torch
from transformers import (
    AutoModelForSequenceClassification,
    BertConfig,
    BertForSequenceClassification,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    RobertaPreLayerNormConfig,
    RobertaPreLayerNormForSequenceClassification,
)

from sam import LABELS
from sam.config import ModelConfig

LABEL_MAPS = {"id2label": dict(enumerate(LABELS)), "label2id": {name: i for i, name in enumerate(LABELS)}}


def build_model(config: ModelConfig, tokenizer: PreTrainedTokenizerBase) -> PreTrainedModel:
    """A fresh encoder: pre-layer-norm (RoBERTa-PreLN) when `norm_first`, else BERT's post-norm."""
    if config.d_model % config.num_heads:
        raise ValueError(f"num_heads {config.num_heads} must divide d_model {config.d_model}")
    shape = dict(
        vocab_size=len(tokenizer),
        hidden_size=config.d_model,
        num_hidden_layers=config.num_layers,
        num_attention_heads=config.num_heads,
        intermediate_size=config.d_ff,
        hidden_dropout_prob=config.dropout,
        attention_probs_dropout_prob=config.dropout,
        pad_token_id=tokenizer.pad_token_id,
        type_vocab_size=1,
        num_labels=len(LABELS),
        **LABEL_MAPS,
    )
    if config.norm_first:
        # RoBERTa numbers positions from pad_token_id + 1, so it needs that many extra slots.
        hf_config = RobertaPreLayerNormConfig(max_position_embeddings=config.max_length + tokenizer.pad_token_id + 1, **shape)
        return RobertaPreLayerNormForSequenceClassification(hf_config)
    return BertForSequenceClassification(BertConfig(max_position_embeddings=config.max_length, **shape))


def load_pretrained(name_or_dir: str) -> PreTrainedModel:
    """A pretrained encoder (e.g. MiniLM) with a fresh 3-way head, or a SAM model directory as it was saved."""
    return AutoModelForSequenceClassification.from_pretrained(name_or_dir, num_labels=len(LABELS), **LABEL_MAPS)


def summary(model: torch.nn.Module) -> str:
    """Parameters per top-level module and in total, like the seed's learner summary."""
    counts: Counter[str] = Counter()
    for name, parameter in model.named_parameters():
        parts = name.split(".")
        counts[".".join(parts[:2]) if len(parts) > 2 else parts[0]] += parameter.numel()
    width = max(len(name) for name in counts)
    lines = [f"{type(model).__name__}"]
    lines += [f"  {name:<{width}}  {count:>12,}" for name, count in counts.items()]
    lines.append(f"  {'total':<{width}}  {sum(counts.values()):>12,}")
    return "\n".join(lines)
