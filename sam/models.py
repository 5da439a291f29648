"""The encoder: a `transformers` sequence classifier built from the config, so its directory loads anywhere.

Imports no Ray, so a GPU machine without Ray can use it directly.
"""

from __future__ import annotations

from collections import Counter

import torch
from transformers import (
    AlbertConfig,
    AlbertForSequenceClassification,
    AutoConfig,
    AutoModel,
    AutoModelForSequenceClassification,
    BertConfig,
    BertForSequenceClassification,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    ModernBertConfig,
    ModernBertForSequenceClassification,
)

from sam import LABELS, SamError
from sam.config import Config, ModelConfig
from sam.learner import kept_layers
from sam.locations import local_model_dir

LABEL_MAPS = {"id2label": dict(enumerate(LABELS)), "label2id": {name: i for i, name in enumerate(LABELS)}}


def build_model(config: ModelConfig, tokenizer: PreTrainedTokenizerBase) -> PreTrainedModel:
    """A fresh encoder of the config's `arch`: BERT's post-norm; ModernBERT's pre-norm (the one whose `transformers`
    class also pools by mean); ALBERT's, its token embedding factorized to `embedding_size`, each layer its own."""
    shape = dict(
        vocab_size=len(tokenizer),
        hidden_size=config.d_model,
        num_hidden_layers=config.num_layers,
        num_attention_heads=config.num_heads,
        max_position_embeddings=config.max_length,
        pad_token_id=tokenizer.pad_token_id,
        num_labels=len(LABELS),
        **LABEL_MAPS,
    )
    if config.arch == "modernbert":
        specials = dict(cls_token_id=tokenizer.cls_token_id, sep_token_id=tokenizer.sep_token_id,
                        bos_token_id=tokenizer.cls_token_id, eos_token_id=tokenizer.sep_token_id)
        return ModernBertForSequenceClassification(ModernBertConfig(
            # GeGLU has two input projections: 2/3 of d_ff keeps a d_ff-wide feed-forward's parameters and cost.
            intermediate_size=config.d_ff * 2 // 3,
            # Global attention everywhere: texts are shorter than ModernBERT's 128-token local window anyway.
            layer_types=["full_attention"] * config.num_layers,
            embedding_dropout=config.dropout, attention_dropout=config.dropout, mlp_dropout=config.dropout,
            classifier_dropout=config.dropout, classifier_pooling=config.pooling, **specials, **shape,
        ))
    if config.arch == "albert":
        return AlbertForSequenceClassification(AlbertConfig(
            embedding_size=config.embedding_size, num_hidden_groups=config.num_layers,  # one group per layer: none shared
            intermediate_size=config.d_ff, hidden_act="gelu", hidden_dropout_prob=config.dropout,
            attention_probs_dropout_prob=config.dropout, classifier_dropout_prob=config.dropout, type_vocab_size=1,
            bos_token_id=tokenizer.cls_token_id, eos_token_id=tokenizer.sep_token_id, **shape,
        ))
    return BertForSequenceClassification(BertConfig(
        intermediate_size=config.d_ff, hidden_dropout_prob=config.dropout, attention_probs_dropout_prob=config.dropout,
        type_vocab_size=1, **shape,
    ))


def load_pretrained(name_or_dir: str) -> PreTrainedModel:
    """A pretrained encoder (e.g. MiniLM) with a fresh 3-way head, or a SAM model directory as it was saved (a URI
    is fetched into each node's cache)."""
    return AutoModelForSequenceClassification.from_pretrained(local_model_dir(name_or_dir), num_labels=len(LABELS), **LABEL_MAPS)


def _refuse_unless_fits(source: str, available: tuple[int, int], wanted: tuple[int, int]) -> None:
    if available[0] != wanted[0] or available[1] < wanted[1]:
        raise SamError(f"init_embeddings {source}: its {available[0]} token embeddings of {available[1]} cannot start "
                       f"{wanted[0]} of {wanted[1]}: give its own --tokenizer and at most its width")


# A BERT layer's modules under the names an ALBERT layer gives them: the same post-norm computation (in training,
# ALBERT leaves out the dropout after the feed-forward).
ALBERT_NAMES = {"attention.self.query": "attention.query", "attention.self.key": "attention.key",
                "attention.self.value": "attention.value", "attention.output.dense": "attention.dense",
                "attention.output.LayerNorm": "attention.LayerNorm", "intermediate.dense": "ffn",
                "output.dense": "ffn_output", "output.LayerNorm": "full_layer_layer_norm"}


def check_embeddings_source(config: Config, vocabulary: int) -> None:
    """Before any worker starts, from the source's config alone: it must share the tokenizer's vocabulary and be at
    least as wide (ALBERT's token embeddings are `embedding_size` wide, not `hidden_size`); with `init_layers`, a
    BERT encoder of the model's own layer shape and at least its layers."""
    source, model = config.start.init_embeddings, config.model
    shape = AutoConfig.from_pretrained(local_model_dir(source))
    _refuse_unless_fits(source, (shape.vocab_size, getattr(shape, "embedding_size", None) or shape.hidden_size),
                        (vocabulary, model.embedding_size or model.d_model))
    if not config.start.init_layers:
        return
    theirs = (shape.model_type, shape.hidden_size, getattr(shape, "intermediate_size", None), shape.num_attention_heads,
              getattr(shape, "hidden_act", None), getattr(shape, "layer_norm_eps", None))
    mine = ("bert", model.d_model, model.d_ff, model.num_heads, "gelu", AlbertConfig().layer_norm_eps)
    longest = getattr(shape, "max_position_embeddings", 0)
    if (theirs != mine or shape.num_hidden_layers < model.num_layers or longest < model.max_length
            or model.arch != "albert"):
        raise SamError(f"init_layers from {source}: a {theirs[0]} encoder of {shape.num_hidden_layers} layers (d_model "
                       f"{theirs[1]}, d_ff {theirs[2]}, {theirs[3]} heads, {theirs[4]}, layer norm eps {theirs[5]}, "
                       f"{longest} positions) cannot start {model.num_layers} ALBERT layers of d_model {model.d_model}, "
                       f"d_ff {model.d_ff}, {model.num_heads} heads, gelu, eps {mine[5]}, {model.max_length} positions: "
                       "give its shape, at most its layers and positions, and arch albert")


def start_from_embeddings(model: PreTrainedModel, source: str, layers: bool = False) -> None:
    """Puts into `model` the token embeddings of `source`, a pretrained encoder (or a fine-tuned teacher) of the
    same vocabulary, projected onto their leading principal components when `model`'s are narrower: a small
    encoder starts knowing the words its few training texts rarely show. With `layers`, see `start_from_layers`."""
    directory = local_model_dir(source)  # a URI: fetched into this node's cache
    labeled = getattr(AutoConfig.from_pretrained(directory), "label2id", None) == LABEL_MAPS["label2id"]
    teacher = (AutoModelForSequenceClassification if labeled else AutoModel).from_pretrained(directory).eval()
    pretrained = teacher.get_input_embeddings().weight.detach().float()
    target = model.get_input_embeddings().weight
    _refuse_unless_fits(source, tuple(pretrained.shape), tuple(target.shape))
    mean = pretrained.mean(dim=0)
    centered = pretrained - mean
    components = torch.linalg.svd(centered, full_matrices=False).Vh[:target.shape[1]]
    with torch.no_grad():
        target.copy_(centered @ components.T)
    if layers:
        start_from_layers(model, teacher, components, mean)


@torch.no_grad()
def start_from_layers(model: AlbertForSequenceClassification, teacher: PreTrainedModel, components: torch.Tensor,
                      mean: torch.Tensor) -> None:
    """The student becomes the teacher with layers left out: its position and type embeddings in the same principal
    components, the map up to d_model fitted by least squares so that its first layer sees what the teacher's
    embedding layer gave, then evenly spaced teacher layers (first and last kept), its pooler and, when it was
    trained on these labels, its head. The teacher must be a BERT encoder of the model's layer shape."""
    student, source = model.albert, teacher.base_model
    embeddings = student.embeddings
    positions = embeddings.position_embeddings.num_embeddings
    embeddings.position_embeddings.weight.copy_(source.embeddings.position_embeddings.weight[:positions] @ components.T)
    # The vocabulary's mean, left out of the centered tokens, goes back in: normalization sees the teacher's sums.
    embeddings.token_type_embeddings.weight.copy_((source.embeddings.token_type_embeddings.weight[:1] + mean) @ components.T)

    tokens = torch.arange(embeddings.word_embeddings.num_embeddings).unsqueeze(1)
    at = dict(input_ids=tokens, token_type_ids=torch.zeros_like(tokens),
              position_ids=torch.randint(positions, tokens.shape, generator=torch.Generator().manual_seed(0)))
    wanted = source.embeddings(**at).squeeze(1)
    training = embeddings.training
    given = embeddings.eval()(**at).squeeze(1)  # without dropout
    embeddings.train(training)
    with_bias = torch.cat([given, torch.ones(len(given), 1)], dim=1)
    mapping = torch.linalg.lstsq(with_bias, wanted).solution
    student.encoder.embedding_hidden_mapping_in.weight.copy_(mapping[:-1].T)
    student.encoder.embedding_hidden_mapping_in.bias.copy_(mapping[-1])

    kept = kept_layers(source.config.num_hidden_layers, len(student.encoder.albert_layer_groups))
    for group, index in zip(student.encoder.albert_layer_groups, kept):
        layer = source.encoder.layer[index].state_dict()
        group.albert_layers[0].load_state_dict({
            f"{ALBERT_NAMES[name.rsplit('.', 1)[0]]}.{name.rsplit('.', 1)[1]}": value for name, value in layer.items()})
    student.pooler.load_state_dict(source.pooler.dense.state_dict())
    if hasattr(teacher, "classifier"):
        model.classifier.load_state_dict(teacher.classifier.state_dict())


def summary(model: torch.nn.Module) -> str:
    """Parameters per top-level module and in total, logged when a run builds its model."""
    counts: Counter[str] = Counter()
    for name, parameter in model.named_parameters():
        parts = name.split(".")
        counts[".".join(parts[:2]) if len(parts) > 2 else parts[0]] += parameter.numel()
    width = max(len(name) for name in counts)
    lines = [f"{type(model).__name__}"]
    lines += [f"  {name:<{width}}  {count:>12,}" for name, count in counts.items()]
    lines.append(f"  {'total':<{width}}  {sum(counts.values()):>12,}")
    return "\n".join(lines)
