"""The one typed configuration: the CLI, the Tune search space and the saved model directory all use it."""

from __future__ import annotations

import argparse
import dataclasses
import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Optional, get_type_hints

CONFIG_FILE = "sam_config.json"
# Where `sam train` and `sam tune` write a model and `sam evaluate`, `sam predict` and Serve read it.
DEFAULT_MODEL_DIR = "models/latest"
POOLINGS = ("cls", "mean")
BACKENDS = ("auto", "nccl", "gloo")
# What fine-tuning a pretrained encoder (`init`) changes from the from-scratch defaults, unless given by hand:
# the recipe measured for MiniLM (docs/experiments.md); from-scratch's lr is ten times what fine-tuning wants.
# bf16 pays on a GPU only where matmuls are big enough to outweigh autocast's casts: not for the small default encoder.
FINE_TUNING = {"lr": 5e-5, "warmup_steps": 100, "epochs": 2, "batch_size": 32, "class_weights": False, "label_smoothing": 0.0,
               "bf16": True}


def _knob(default: Any, help: str) -> Any:
    return field(default=default, metadata={"help": help})


@dataclass
class ModelConfig:
    """The encoder's shape. With `init`, the pretrained encoder's own shape wins; max_length still applies."""

    num_layers: int = _knob(4, "transformer encoder layers")
    num_heads: int = _knob(4, "attention heads (must divide d_model)")
    d_model: int = _knob(256, "hidden size")
    d_ff: int = _knob(1024, "feed-forward size")
    dropout: float = _knob(0.1, "dropout on embeddings, attention and feed-forward")
    max_length: int = _knob(128, "tokens kept per text (longer texts are truncated)")
    norm_first: bool = _knob(False, "pre-layer-norm encoder (ModernBERT's, as the Rust/Burn model SAM replaced); default BERT's post-norm")
    pooling: str = _knob("cls", "text vector for the head: cls (the [CLS] token) | mean (of all tokens; needs norm_first)")
    vocab_size: int = _knob(4000, "vocabulary of a corpus-trained WordPiece tokenizer")
    lowercase: bool = _knob(True, "lowercase the corpus-trained WordPiece tokenizer")

    def __post_init__(self) -> None:
        """Refused here, where the CLI, a saved directory or a Tune trial builds the config, not deep in a worker."""
        if self.d_model % self.num_heads:
            raise ValueError(f"num_heads {self.num_heads} must divide d_model {self.d_model}")
        if self.pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {', '.join(POOLINGS)}, got {self.pooling!r}")
        if self.pooling != "cls" and not self.norm_first:
            raise ValueError(f"pooling {self.pooling} needs norm_first: BERT's classifier pools the [CLS] token only")


@dataclass
class TrainConfig:
    lr: float = _knob(5e-4, "peak learning rate, reached at the end of warm-up")
    warmup_steps: int = _knob(300, "optimizer steps of linear warm-up, then linear decay to zero at the last epoch")
    weight_decay: float = _knob(0.01, "AdamW weight decay (not applied to norms and biases)")
    batch_size: int = _knob(64, "examples per worker per step")
    bucket_batches: int = _knob(8, "batches whose rows are sorted by length together, to pad less (1 = random batches)")
    shuffle_buffer: int = _knob(16384, "rows each worker draws its batches from at random: a corpus sorted by label mixes within this many rows")
    epochs: int = _knob(3, "maximum epochs; the schedule decays over this budget")
    patience: int = _knob(2, "epochs without a better validation loss before stopping")
    label_smoothing: float = _knob(0.1, "cross-entropy label smoothing")
    class_weights: bool = _knob(True, "weight the loss by inverse class frequency")
    grad_clip: float = _knob(1.0, "gradient norm clip")
    ema_decay: float = _knob(0.998, "evaluate and export an exponential moving average of the weights with this decay per step (0 = the last step's weights)")
    seed: int = _knob(42, "seed for the split, initialisation and shuffling")

    def __post_init__(self) -> None:
        for name in ("batch_size", "bucket_batches", "shuffle_buffer", "epochs", "patience"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.lr <= 0 or self.seed < 0 or not 0 <= self.ema_decay < 1 or not 0 <= self.label_smoothing < 1:
            raise ValueError("lr must be positive, seed not negative, ema_decay and label_smoothing within [0, 1)")


@dataclass
class DataConfig:
    data: str = _knob("mteb/tweet_sentiment_extraction", "a file, a directory (train.jsonl or shards), a glob, a URI (s3://...) or a hub name")
    val_fraction: float = _knob(0.1, "validation share of each class, carved from train by a seeded hash of each text")
    limit_train: Optional[int] = _knob(None, "keep a seeded sample of about N valid rows, the same on every run (smoke runs)")
    tokenizer: Optional[str] = _knob(None, "HF tokenizer name or directory; default: WordPiece trained on the train texts (vocab_size, lowercase)")
    init: Optional[str] = _knob(None, "pretrained encoder name or directory to fine-tune instead of training from scratch")

    def __post_init__(self) -> None:
        if not 0 < self.val_fraction < 1:
            raise ValueError(f"val_fraction must be between 0 and 1, got {self.val_fraction}")
        if self.limit_train is not None and self.limit_train < 2:
            raise ValueError(f"limit_train must be at least 2, got {self.limit_train}")


@dataclass
class DistillConfig:
    """Knowledge distillation: the model trains on a teacher's softened scores over an augmented transfer set."""

    teacher: Optional[str] = _knob(None, "model directory whose scores the model learns from (sam distill)")
    augment: int = _knob(2, "augmented copies of each training row in the transfer set (masking, word replacement, n-grams)")
    alpha: float = _knob(0.9, "weight of the teacher's softened scores; 1 - alpha is the gold labels'")
    temperature: float = _knob(2.0, "softmax temperature of teacher and student in the distillation term")

    def __post_init__(self) -> None:
        if not 0 <= self.alpha <= 1:
            raise ValueError(f"alpha must be within 0 and 1, got {self.alpha}")
        if self.temperature <= 0 or self.augment < 0:
            raise ValueError(f"temperature must be positive and augment not negative, got {self.temperature}, {self.augment}")


@dataclass
class ScaleConfig:
    num_workers: int = _knob(1, "Ray Train workers (DDP)")
    use_gpu: bool = _knob(False, "train on GPUs (gpus_per_worker each)")
    gpus_per_worker: float = _knob(1.0, "GPUs per worker with use_gpu; a fraction shares one GPU (0.25: four workers or trials per GPU)")
    backend: str = _knob("auto", "torch.distributed backend: auto (gloo on CPU or when workers share a GPU, else nccl) | nccl | gloo")
    bf16: bool = _knob(False, "bf16 autocast on GPU (the small default encoder ran at 0.45x fp32 under it, docs/benchmarks.md)")
    cpus_per_worker: int = _knob(1, "CPUs Ray reserves per worker")
    torch_threads: int = _knob(0, "intra-op threads per worker; 0 = this node's cores / workers")
    placement_strategy: str = _knob("PACK", "Ray placement of the workers: PACK (fewest nodes) | SPREAD (across nodes)")
    materialize_mb: float = _knob(1024.0, "tokenize once per run and keep the splits in Ray's object store when at most this size "
                                          "(MB, and a quarter of the store); larger ones are streamed, re-read every epoch; 0 = always stream")

    def __post_init__(self) -> None:
        if self.num_workers < 1 or self.cpus_per_worker < 0 or self.materialize_mb < 0:
            raise ValueError("num_workers must be at least 1, cpus_per_worker and materialize_mb not negative")
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {self.backend!r}")
        if self.gpus_per_worker <= 0:
            raise ValueError(f"gpus_per_worker must be positive, got {self.gpus_per_worker}")

    @property
    def torch_backend(self) -> str:
        """NCCL refuses two ranks on one device, so workers that may share a GPU talk over gloo."""
        if self.backend != "auto":
            return self.backend
        if not self.use_gpu or (self.num_workers > 1 and self.gpus_per_worker < 1):
            return "gloo"
        return "nccl"


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    data: DataConfig = field(default_factory=DataConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    scale: ScaleConfig = field(default_factory=ScaleConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "Config":
        """Nested dicts as written by `to_dict`; unknown keys are an error so typos never pass silently."""
        sections = {}
        for section in fields(cls):
            section_type = get_type_hints(cls)[section.name]
            given = dict(values.get(section.name, {}))
            known = {f.name for f in fields(section_type)}
            unknown = set(given) - known
            if unknown:
                raise ValueError(f"unknown {section.name} settings: {sorted(unknown)}")
            sections[section.name] = section_type(**given)
        return cls(**sections)

    def differences(self, other: "Config", sections: tuple[str, ...] = ("model", "train", "data", "distill"),
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
                raise ValueError(f"unknown setting {name!r}")
            values[owners[name]][name] = value
        return Config.from_dict(values)

    def with_absolute_paths(self) -> "Config":
        """A copy whose local paths and globs (data, tokenizer, init, teacher) are absolute, for code that runs
        elsewhere: Tune runs each trial in a working directory of its own. Hub names and URIs stay as they are."""
        given = {"data": self.data.data, "tokenizer": self.data.tokenizer, "init": self.data.init, "teacher": self.distill.teacher}
        local = {knob: value for knob, value in given.items()
                 if value and "://" not in value and (Path(value).expanduser().exists() or any(c in value for c in "*?["))}
        return self.with_flat(**{knob: str(Path(value).expanduser().absolute()) for knob, value in local.items()})

    def save(self, directory: str | Path) -> None:
        Path(directory, CONFIG_FILE).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, directory: str | Path) -> "Config":
        return cls.from_dict(json.loads(Path(directory, CONFIG_FILE).read_text()))


def _parse_bool(text: str) -> bool:
    lowered = text.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def add_config_arguments(parser: argparse.ArgumentParser, sections: tuple[str, ...] = ("model", "train", "data", "scale"),
                         only: Optional[tuple[str, ...]] = None) -> None:
    """One `--knob-name` option per config field (or per field named in `only`), defaults and help taken from
    the dataclasses."""
    defaults = Config()
    for section_name in sections:
        section = getattr(defaults, section_name)
        group = parser.add_argument_group(section_name)
        hints = get_type_hints(type(section))
        for knob in fields(section):
            if only is not None and knob.name not in only:
                continue
            kind = hints[knob.name]
            if kind is bool:
                parse = _parse_bool
            elif kind in (Optional[int], int):
                parse = int
            elif kind is float:
                parse = float
            else:
                parse = str
            fine_tuning = f"; with --init: {FINE_TUNING[knob.name]}" if knob.name in FINE_TUNING else ""
            group.add_argument(
                "--" + knob.name.replace("_", "-"),
                dest=knob.name,
                type=parse,
                **({"nargs": "?", "const": True} if kind is bool else {}),  # `--use-gpu` alone means true
                default=argparse.SUPPRESS,
                metavar=knob.name.upper() if kind is not bool else "true|false",
                help=f"{knob.metadata['help']} (default: {getattr(section, knob.name)}{fine_tuning})",
            )


def config_from_args(args: argparse.Namespace, base: Optional[Config] = None) -> Config:
    """Fields given on the command line override `base` (the defaults, or the fine-tuning recipe with `--init`)."""
    base = base or (Config().with_flat(**FINE_TUNING) if getattr(args, "init", None) else Config())
    known = {name for section in base.to_dict().values() for name in section}
    return base.with_flat(**{k: v for k, v in vars(args).items() if k in known})
