"""The one typed configuration: the CLI, the Tune search space and the saved model directory all use it."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, Literal, Optional, get_args, get_origin

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from sam import SamError

CONFIG_FILE = "sam_config.json"
# The parts a model's config carves from the train split, by a seeded hash of each text, besides its training rows:
# `sam evaluate --split` names them, though no file on disk holds them.
VALIDATION, HOLDOUT = "validation", "holdout"
CARVED = (VALIDATION, HOLDOUT)
# Where `sam train` and `sam tune` write a model and `sam evaluate`, `sam predict` and Serve read it.
DEFAULT_MODEL_DIR = "models/latest"
# Knobs whose command-line flag reads better under another name: every `sam` command takes its input as --data.
FLAGS = {"source": "data"}
# What fine-tuning a pretrained encoder (`init`) changes from the from-scratch defaults, unless given by hand:
# the recipe measured for MiniLM (docs/experiments.md); from-scratch's lr is ten times what fine-tuning wants.
# bf16 pays on a GPU only where matmuls are big enough to outweigh autocast's casts: not for the small default encoder.
FINE_TUNING = {"lr": 5e-5, "warmup_steps": 100, "epochs": 2, "batch_size": 32, "class_weights": False, "label_smoothing": 0.0,
               "bf16": True}
# What a `sam distill` (or `sam tune --teacher`) student that starts as its teacher with layers left out (`student`
# "layers") changes from the from-scratch defaults, unless given by hand: measured on two seeds (docs/experiments.md).
# Its tokenizer, width, heads and d_ff are the teacher's (`sam.resolve.resolve_config`).
DISTILLING = {"arch": "albert", "num_layers": 2, "embedding_size": 128, "lr": 1e-4}
# The knobs that say how a model starts: before they had a section of their own they sat under `data`.
START_KNOBS = ("tokenizer", "init", "init_embeddings", "init_layers")


class ConfigError(SamError):
    """Settings that cannot train or load, each named with what is wrong with it."""

    def __init__(self, error: ValidationError | str):
        if isinstance(error, ValidationError):
            error = "; ".join(_issue(issue) for issue in error.errors())
        super().__init__(error)


def _issue(issue: dict) -> str:
    where = ".".join(str(part) for part in issue["loc"])
    message = issue["msg"].removeprefix("Value error, ")
    if issue["type"] == "extra_forbidden":
        return f"unknown setting {where}"
    got = f" (got {issue['input']!r})" if issue["type"] not in ("value_error", "missing") else ""
    return f"{where}: {message}{got}" if where else message


def _knob(default: Any, help: str, **constraints: Any) -> Any:
    return Field(default, description=help, **constraints)


class Section(BaseModel):
    """A part of the config: unknown keys are refused, so a typo never passes silently."""

    model_config = ConfigDict(extra="forbid")


class ModelConfig(Section):
    """The encoder's family and shape. With `init`, the pretrained encoder's own wins; max_length still applies."""

    arch: Literal["bert", "albert", "modernbert"] = _knob(
        "bert", "encoder family: bert (post-norm) | albert (BERT's layers, each its own, under a token embedding "
                "factorized to embedding_size) | modernbert (pre-norm, GeGLU, as the Rust/Burn model SAM replaced; pools cls or mean)")
    num_layers: int = _knob(4, "transformer encoder layers", ge=1)
    num_heads: int = _knob(4, "attention heads (must divide d_model)", ge=1)
    d_model: int = _knob(256, "hidden size", ge=1)
    d_ff: int = _knob(1024, "feed-forward size", ge=1)
    dropout: float = _knob(0.1, "dropout on embeddings, attention and feed-forward", ge=0, lt=1)
    max_length: int = _knob(128, "tokens kept per text (longer texts are truncated)", ge=2)
    pooling: Literal["cls", "mean"] = _knob("cls", "text vector for the head: cls (the [CLS] token) | mean (of all tokens; needs arch modernbert)")
    vocab_size: int = _knob(4000, "vocabulary of a corpus-trained WordPiece tokenizer", ge=100)
    embedding_size: int = _knob(0, "with arch albert, token embeddings this wide, projected up to d_model: a large vocabulary, "
                                   "such as a pretrained encoder's --tokenizer, in fewer parameters (0 for the other families)", ge=0)
    lowercase: bool = _knob(True, "lowercase the corpus-trained WordPiece tokenizer")

    @model_validator(mode="before")
    @classmethod
    def _family_of_a_config_saved_before_arch(cls, values: Any) -> Any:
        """Before `arch`, two knobs chose the family: norm_first (ModernBERT) and a non-zero embedding_size (ALBERT)."""
        if isinstance(values, dict) and "arch" not in values and ("norm_first" in values or values.get("embedding_size")):
            values = dict(values)
            values["arch"] = "modernbert" if values.pop("norm_first", False) else "albert" if values.get("embedding_size") else "bert"
        return values

    @model_validator(mode="after")
    def _buildable(self) -> "ModelConfig":
        if self.d_model % self.num_heads:
            raise ValueError(f"num_heads {self.num_heads} must divide d_model {self.d_model}")
        if self.pooling != "cls" and self.arch != "modernbert":
            raise ValueError(f"pooling {self.pooling} needs arch modernbert: BERT's and ALBERT's classifiers pool the [CLS] token only")
        if self.arch == "albert" and not self.embedding_size:
            raise ValueError("arch albert needs an embedding_size: the width of its factorized token embedding")
        if self.embedding_size and self.arch != "albert":
            raise ValueError(f"embedding_size {self.embedding_size} needs arch albert: the factorized embedding is ALBERT's")
        return self


ARCHS = get_args(ModelConfig.model_fields["arch"].annotation)


class TrainConfig(Section):
    lr: float = _knob(5e-4, "peak learning rate, reached at the end of warm-up", gt=0)
    warmup_steps: int = _knob(300, "optimizer steps of linear warm-up, then linear decay to zero at the last epoch", ge=0)
    warmup_share: float = _knob(0.25, "the warm-up's most, as a share of the run's steps: a short run (small corpus, few epochs) "
                                      "still decays, at the cost of 10 of a full default run's 300 steps", gt=0, le=1)
    weight_decay: float = _knob(0.01, "AdamW weight decay (not applied to norms and biases)", ge=0)
    batch_size: int = _knob(64, "examples per worker per step", ge=1)
    bucket_batches: int = _knob(8, "batches whose rows are sorted by length together, to pad less (1 = random batches)", ge=1)
    shuffle_buffer: int = _knob(16384, "rows each worker draws its batches from at random: a corpus sorted by label mixes within this many rows", ge=1)
    epochs: int = _knob(3, "maximum epochs; the schedule decays over this budget", ge=1)
    patience: int = _knob(2, "epochs without a better validation loss before stopping", ge=1)
    label_smoothing: float = _knob(0.1, "cross-entropy label smoothing", ge=0, lt=1)
    class_weights: bool = _knob(True, "weight the loss by inverse class frequency")
    grad_clip: float = _knob(1.0, "gradient norm clip", gt=0)
    ema_decay: float = _knob(0.998, "evaluate and export an exponential moving average of the weights with this decay per step (0 = the last step's weights)", ge=0, lt=1)
    seed: int = _knob(42, "seed for the split, initialisation and shuffling", ge=0)


class DataConfig(Section):
    source: str = _knob("mteb/tweet_sentiment_extraction", "a file, a directory (train.jsonl or shards), a glob, a URI (s3://...) or a hub name",
                        validation_alias=AliasChoices("source", "data"))  # `data` in a sam_config.json saved before the rename
    val_fraction: float = _knob(0.1, "validation share of each class, carved from train by a seeded hash of each text", gt=0, lt=1)
    holdout_fraction: float = _knob(0.0, "a held-out share of each class, carved after validation and never trained, validated or "
                                         "tuned on: `sam evaluate --split holdout` scores it (0 = none)", ge=0, lt=1)
    limit_train: Optional[int] = _knob(None, "keep a seeded sample of about N valid rows, the same on every run (smoke runs)", ge=2)
    folds: int = _knob(0, "with 2 or more, cut the training rows into this many folds by the split's hash and leave fold `fold` "
                          "out: the teachers of a cross-fitted transfer set, one per fold (sam distill --cross-fit); 0 = none", ge=0)
    fold: int = _knob(0, "the fold left out of training, 0 to folds - 1", ge=0)

    @model_validator(mode="after")
    def _leaves_training_rows(self) -> "DataConfig":
        if self.val_fraction + self.holdout_fraction >= 1:
            raise ValueError(f"val_fraction {self.val_fraction} and holdout_fraction {self.holdout_fraction} leave no training rows")
        if self.folds == 1 or (self.folds and self.fold >= self.folds) or (self.fold and not self.folds):
            raise ValueError(f"fold {self.fold} of folds {self.folds}: give folds of at least 2 and a fold from 0 to folds - 1")
        return self


class StartConfig(Section):
    """How the model starts: from scratch with WordPiece trained on the train texts (the default), as a pretrained
    encoder (init), or with a pretrained encoder's (or a teacher's) token embeddings and layers."""

    tokenizer: Optional[str] = _knob(None, "HF tokenizer name or directory; default: WordPiece trained on the train texts (vocab_size, lowercase)")
    init: Optional[str] = _knob(None, "pretrained encoder name or directory to fine-tune instead of training from scratch")
    init_embeddings: Optional[str] = _knob(None, "pretrained encoder or model directory whose token embeddings start this model's, "
                                                 "reduced to embedding_size (or d_model) by their principal components; give its --tokenizer too")
    init_layers: bool = _knob(False, "with init_embeddings, a BERT encoder of this model's d_model, d_ff and heads: this model (arch "
                                     "albert) also starts from its evenly spaced layers, pooler and head, the first and last kept")

    @model_validator(mode="after")
    def _consistent(self) -> "StartConfig":
        if self.init_embeddings and (self.init or not self.tokenizer):
            raise ValueError(f"init_embeddings {self.init_embeddings} needs the tokenizer of the same vocabulary and no init")
        if self.init_layers and not self.init_embeddings:
            raise ValueError("init_layers needs init_embeddings: the encoder whose layers start this model's")
        return self


class DistillConfig(Section):
    """Knowledge distillation: the model trains on a teacher's softened scores over an augmented transfer set."""

    teacher: Optional[str] = _knob(None, "model directory whose scores the model learns from (sam distill)")
    augment: int = _knob(2, "augmented copies of each training row in the transfer set (masking, word replacement, n-grams)", ge=0)
    alpha: float = _knob(0.9, "weight of the teacher's softened scores; 1 - alpha is the gold labels'", ge=0, le=1)
    temperature: float = _knob(2.0, "softmax temperature of teacher and student in the distillation term", gt=0)
    student: Literal["layers", "scratch"] = _knob(
        "layers", "how the student starts: layers = as its (BERT) teacher with layers left out, in the teacher's tokenizer, "
                  "width, heads and d_ff, its token embeddings factorized to embedding_size by their principal components "
                  f"({', '.join(f'{k} {v}' for k, v in DISTILLING.items())} unless given); scratch = the configured encoder, from scratch")
    ensemble: tuple[str, ...] = _knob(
        (), "more teachers, comma-separated, each split as the teacher was (seed and fractions): each scores the transfer set too "
            "and the student learns the mean of their logits, or with cross_fit the one teacher's that never trained on the row")
    cross_fit: bool = _knob(False, "the teacher and the ensemble are k teachers trained with --folds k, one per --fold: each "
                                   "scores only the transfer rows of the fold it left out")
    hidden_weight: float = _knob(
        0.0, "weight of the hidden-state loss (TinyBERT's): each layer of a layered student learns the output of the teacher layer it "
             "started as, by mean squared error over real tokens; the teacher runs frozen beside the student in every training worker", ge=0)

    @field_validator("ensemble", mode="before")
    @classmethod
    def _comma_separated(cls, value: Any) -> Any:
        return tuple(part.strip() for part in value.split(",") if part.strip()) if isinstance(value, str) else value

    @property
    def teachers(self) -> list[str]:
        """The teacher, then the ensemble: every model that scores the transfer set."""
        return [self.teacher, *self.ensemble] if self.teacher else []


class ScaleConfig(Section):
    num_workers: int = _knob(1, "Ray Train workers (DDP)", ge=1)
    use_gpu: bool = _knob(False, "train on GPUs (gpus_per_worker each)")
    gpus_per_worker: float = _knob(1.0, "GPUs per worker with use_gpu; a fraction shares one GPU (0.25: four workers or trials per GPU)", gt=0)
    backend: Literal["auto", "nccl", "gloo"] = _knob("auto", "torch.distributed backend: auto (gloo on CPU or when workers share a GPU, else nccl) | nccl | gloo")
    bf16: bool = _knob(False, "bf16 autocast on GPU (the small default encoder ran at 0.45x fp32 under it, docs/benchmarks.md)")
    cpus_per_worker: int = _knob(1, "CPUs Ray reserves per worker", ge=0)
    torch_threads: int = _knob(0, "intra-op threads per worker; 0 = this node's cores / workers", ge=0)
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = _knob(
        "PACK", "Ray placement of the workers: PACK (fewest nodes) | SPREAD (across nodes)")
    materialize_mb: float = _knob(1024.0, "tokenize once per run and keep the splits in Ray's object store when at most this size "
                                          "(MB, and a quarter of the store); larger ones are streamed, re-read every epoch; 0 = always stream", ge=0)

    @property
    def torch_backend(self) -> str:
        """NCCL refuses two ranks on one device, so workers that may share a GPU talk over gloo."""
        if self.backend != "auto":
            return self.backend
        if not self.use_gpu or (self.num_workers > 1 and self.gpus_per_worker < 1):
            return "gloo"
        return "nccl"


class Config(Section):
    model: ModelConfig = Field(default_factory=ModelConfig)
    start: StartConfig = Field(default_factory=StartConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    distill: DistillConfig = Field(default_factory=DistillConfig)
    scale: ScaleConfig = Field(default_factory=ScaleConfig)

    @model_validator(mode="before")
    @classmethod
    def _start_of_a_config_saved_before_its_section(cls, values: Any) -> Any:
        if isinstance(values, dict) and "start" not in values and isinstance(values.get("data"), dict):
            data = dict(values["data"])
            values = {**values, "data": data, "start": {knob: data.pop(knob) for knob in START_KNOBS if knob in data}}
        return values

    @model_validator(mode="after")
    def _teachers_to_learn_from(self) -> "Config":
        if (self.distill.ensemble or self.distill.cross_fit) and not self.distill.teacher:
            raise ValueError("ensemble and cross_fit need a teacher: the ensemble's first member")
        if self.distill.cross_fit and not self.distill.ensemble:
            raise ValueError("cross_fit needs an ensemble: one teacher per fold")
        if self.distill.teacher and self.data.folds:
            raise ValueError(f"folds {self.data.folds} are for the teachers of a cross-fitted transfer set (sam train --folds): "
                             "a student learns from every training row")
        return self

    @model_validator(mode="after")
    def _hidden_states_to_learn(self) -> "Config":
        if self.distill.hidden_weight and not (self.distill.teacher and self.distill.student == "layers"):
            raise ValueError(f"hidden_weight {self.distill.hidden_weight} needs a teacher and a layered student (student layers): "
                             "a student learns hidden states only from the teacher layers it started as")
        if self.distill.hidden_weight and self.distill.cross_fit:
            raise ValueError("hidden_weight with cross_fit: the hidden states come from the first teacher, which trained on "
                             "every fold but its own, so they cannot be taught out of fold")
        return self

    def to_dict(self) -> dict:
        return self.model_dump()

    @classmethod
    def from_dict(cls, values: dict) -> "Config":
        """Nested dicts as written by `to_dict`, validated: a bad or unknown setting is a `ConfigError` naming it."""
        try:
            return cls.model_validate(values)
        except ValidationError as error:
            raise ConfigError(error) from None

    def differences(self, other: "Config", sections: tuple[str, ...] = ("model", "start", "train", "data", "distill"),
                    only: Optional[tuple[str, ...]] = None) -> list[str]:
        """The knobs of `sections` (of those, the ones in `only`, when given) whose values differ, as
        `name: mine -> other`."""
        mine, theirs = self.to_dict(), other.to_dict()
        return [f"{knob}: {value!r} -> {theirs[section][knob]!r}" for section in sections
                for knob, value in mine[section].items()
                if (only is None or knob in only) and theirs[section][knob] != value]

    def with_flat(self, **flat: Any) -> "Config":
        """A copy with knobs replaced by their bare names (`lr=...`, `num_layers=...`), as Tune samples them."""
        values = self.to_dict()
        owners = {name: section for section, knobs in values.items() for name in knobs}
        for name, value in flat.items():
            if name not in owners:
                raise ConfigError(f"unknown setting {name!r}")
            values[owners[name]][name] = value
        return Config.from_dict(values)

    def with_absolute_paths(self) -> "Config":
        """A copy whose local paths and globs (source, tokenizer, init, init_embeddings, teacher) are absolute, for code that runs
        elsewhere: Tune runs each trial in a working directory of its own. Hub names and URIs stay as they are."""
        given = {"source": self.data.source, "tokenizer": self.start.tokenizer, "init": self.start.init,
                 "init_embeddings": self.start.init_embeddings, "teacher": self.distill.teacher}

        def absolute(value: Optional[str]) -> Optional[str]:
            local = value and "://" not in value and (Path(value).expanduser().exists() or any(c in value for c in "*?["))
            return str(Path(value).expanduser().absolute()) if local else value

        return self.with_flat(**{knob: absolute(value) for knob, value in given.items()},
                              ensemble=tuple(absolute(value) for value in self.distill.ensemble))

    def save(self, directory: str | Path) -> None:
        Path(directory, CONFIG_FILE).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, directory: str | Path) -> "Config":
        return cls.from_dict(json.loads(Path(directory, CONFIG_FILE).read_text()))


def add_config_arguments(parser: argparse.ArgumentParser, sections: tuple[str, ...] = ("model", "start", "train", "data", "scale"),
                         only: Optional[tuple[str, ...]] = None) -> None:
    """One `--knob-name` option per config field (or per field named in `only`), with its help and default. The
    values stay text: the config's own validation converts and checks them (`sam.resolve.resolve_config`)."""
    defaults = Config()
    for section_name in sections:
        section = getattr(defaults, section_name)
        group = parser.add_argument_group(section_name)
        for name, knob in type(section).model_fields.items():
            if only is not None and name not in only:
                continue
            recipes = f"; with --init: {FINE_TUNING[name]}" if name in FINE_TUNING else ""
            recipes += f"; a layered student's: {DISTILLING[name]}" if name in DISTILLING and "distill" in sections else ""
            choices = get_args(knob.annotation) if get_origin(knob.annotation) is Literal else None
            flag = knob.annotation is bool
            group.add_argument(
                "--" + FLAGS.get(name, name).replace("_", "-"),
                dest=name,
                **({"nargs": "?", "const": True} if flag else {}),  # `--use-gpu` alone means true
                choices=choices,
                default=argparse.SUPPRESS,
                metavar="true|false" if flag else None if choices else FLAGS.get(name, name).upper(),
                help=f"{knob.description} (default: {getattr(section, name)}{recipes})",
            )


def given_knobs(args: argparse.Namespace) -> dict:
    """The config knobs set on the command line, by bare name, as text: what `sam.resolve.resolve_config` resolves."""
    known = {name for section in Config().to_dict().values() for name in section}
    return {name: value for name, value in vars(args).items() if name in known}
