"""A saved model directory as a predictor: text in, sentiment out, through the same `encode` path as training.
Serve holds one per replica; offline scoring (sam.scoring) one per actor of a Ray Data actor pool."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
import ray
import torch
from transformers import AutoConfig, AutoModelForSequenceClassification

from sam import LABELS, SamError
from sam.config import CONFIG_FILE, Config
from sam.batching import pad_batch, token_budget_chunks
from sam.encoding import encode
from sam.locations import local_model_dir
from sam.storage import StorageError, redact
from sam.tokenizer import load_tokenizer

WEIGHTS_FILES = ("model.safetensors", "pytorch_model.bin")  # what `from_pretrained` loads, safetensors first
CPU_BATCH_TOKENS, GPU_BATCH_TOKENS = 512, 16384
UNSET_MAX_LENGTH = 1_000_000  # tokenizers without a limit of their own report 1e30


class ModelDirError(SamError):
    """A model directory that cannot be served: the message is one line saying why."""


def check_model_dir(directory: str | Path) -> Path:
    """Fails fast, in one line, on what would otherwise surface as a deep traceback. Any Hugging Face
    sequence-classification directory with three labels passes, SAM's or not. Returns the local directory to load
    from: the one given, or this node's cached copy of one on object storage or in MLflow's registry."""
    try:
        path = local_model_dir(directory)
    except StorageError as error:
        raise ModelDirError(str(error)) from None
    if not path.is_dir():
        raise ModelDirError(f"{path}: no such model directory")
    if not (path / "config.json").is_file():
        raise ModelDirError(f"{path}: missing config.json")
    if not any((path / weights).is_file() for weights in WEIGHTS_FILES):
        raise ModelDirError(f"{path}: missing the weights ({' or '.join(WEIGHTS_FILES)})")
    label_order(model_config(path), path)
    return path


def model_config(path: Path):
    try:
        return AutoConfig.from_pretrained(path)
    except (OSError, ValueError) as error:
        raise ModelDirError(f"{path}: unreadable config.json ({error})") from error


def label_order(config, path: Path) -> list[int]:
    """The model's output index of each of LABELS: its own names in any order (`negative`, ...), or index order
    when it names them generically (`LABEL_0`, ...)."""
    if config.num_labels != len(LABELS):
        raise ModelDirError(f"{path}: model has {config.num_labels} labels, expected {len(LABELS)} ({', '.join(LABELS)})")
    names = [str(config.id2label[i]).lower() for i in range(len(LABELS))]
    if sorted(names) == sorted(label.lower() for label in LABELS):
        return [names.index(label.lower()) for label in LABELS]
    if all(name == f"label_{i}" for i, name in enumerate(names)):
        return list(range(len(LABELS)))
    raise ModelDirError(f"{path}: labels {names} are not {', '.join(LABELS)}")


def model_shape(config, max_length: int) -> dict:
    """The loaded model's real shape, from its config.json: what /model reports."""
    return {"model_type": config.model_type, "num_layers": config.num_hidden_layers, "num_heads": config.num_attention_heads,
            "d_model": config.hidden_size, "d_ff": getattr(config, "intermediate_size", None), "vocab_size": config.vocab_size,
            "max_length": max_length}


def prediction_columns(scores: np.ndarray) -> dict[str, list]:
    """Class probabilities (a row per text) as the fields of each prediction, column by column."""
    scores = scores.astype(np.float64)  # rounded in float64: float32 would print 0.9123 as 0.9122999906539917
    predicted = scores.argmax(1)
    return {"sentiment": [LABELS[i] for i in predicted], "label": predicted.tolist(),
            "confidence": scores.max(1).round(4).tolist(), "scores": [dict(zip(LABELS, row)) for row in scores.round(4).tolist()]}


def quantize_linear_layers(model: torch.nn.Module) -> torch.nn.Module:
    """Dynamic int8 Linear layers for CPU inference. torch 2.13 deprecates eager-mode quantization in favour of
    torchao but still runs it; its warnings would otherwise repeat in every replica's log."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)


class Predictor:
    def __init__(self, directory: str | Path, device: str = "cpu", quantize: bool = False):
        self.source = redact(directory)  # what it was loaded from, as it may be shown
        self.directory = directory = check_model_dir(directory)
        hf_config = model_config(directory)
        self.order = label_order(hf_config, directory)
        # SAM's own settings when it trained the model; any other directory is read by its tokenizer and config.
        self.config = Config.load(directory) if (directory / CONFIG_FILE).is_file() else None
        try:
            self.tokenizer = load_tokenizer(str(directory))
            model = AutoModelForSequenceClassification.from_pretrained(directory)
        except Exception as error:  # corrupt weights or tokenizer files come in many exception types
            raise ModelDirError(f"{directory}: cannot load model ({type(error).__name__}: {error})") from error
        self.max_length = self.config.model.max_length if self.config else min(
            self.tokenizer.model_max_length if self.tokenizer.model_max_length < UNSET_MAX_LENGTH else hf_config.max_position_embeddings,
            hf_config.max_position_embeddings)
        self.shape = model_shape(hf_config, self.max_length)
        if quantize:
            model = quantize_linear_layers(model)
        self.quantized = quantize
        self.device = torch.device(device)
        # Tokens per forward pass: on a CPU thread more rows stop paying around 512 (docs/benchmarks.md); a GPU
        # wants far more (not yet measured).
        self.batch_tokens = CPU_BATCH_TOKENS if self.device.type == "cpu" else GPU_BATCH_TOKENS
        self.model = model.to(self.device).eval()

    @classmethod
    def in_actor(cls, directory: str | Path, quantize: bool = False) -> "Predictor":
        """In a Ray actor (a Serve replica, a scoring actor): its GPU when Ray granted one (Ray 2.60 shows every GPU
        to every actor), else the CPU with one intra-op thread per CPU the actor holds, as more would fight the
        other actors for cores; int8 layers on CPU only."""
        device = "cuda" if ray.get_gpu_ids() else "cpu"
        if device == "cpu":
            torch.set_num_threads(max(1, int(ray.get_runtime_context().get_assigned_resources().get("CPU", 1))))
        return cls(directory, device=device, quantize=quantize and device == "cpu")

    @property
    def metrics(self) -> dict:
        path = self.directory / "metrics.json"
        return json.loads(path.read_text()) if path.is_file() else {}

    @torch.inference_mode()
    def logits(self, texts: Sequence[str], max_tokens: int | None = None) -> torch.Tensor:
        """One row per text, in input order, a column per label of LABELS. Texts run in length-sorted groups of
        at most `max_tokens` tokens, padding included (default: `self.batch_tokens`)."""
        ids = encode(self.tokenizer, texts, self.max_length)
        logits = torch.empty(len(ids), len(LABELS))
        for chunk in token_budget_chunks([len(row) for row in ids], max_tokens or self.batch_tokens):
            batch = {k: v.to(self.device) for k, v in pad_batch([ids[i] for i in chunk], self.tokenizer.pad_token_id).items()}
            logits[chunk] = self.model(**batch).logits.float().cpu()[:, self.order]
        return logits

    def scores(self, texts: Sequence[str], max_tokens: int | None = None) -> torch.Tensor:
        """Class probabilities, one row per text, in input order."""
        return self.logits(texts, max_tokens).softmax(-1)

    def predict(self, texts: Sequence[str]) -> list[dict]:
        columns = prediction_columns(self.scores(texts).numpy())
        return [dict(zip(columns, values)) for values in zip(*columns.values())]
