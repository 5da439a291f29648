"""A saved model directory as a predictor: text in, sentiment out. Used by `sam predict`, `sam evaluate` and
Serve, through the same `encode` path as training. Imports no Ray."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Sequence

import torch
from transformers import AutoConfig, AutoModelForSequenceClassification

from sam import LABELS
from sam.config import CONFIG_FILE, Config
from sam.batching import pad_batch, token_budget_chunks
from sam.encoding import encode
from sam.tokenizer import load_tokenizer

WEIGHTS_FILE = "model.safetensors"
CPU_BATCH_TOKENS, GPU_BATCH_TOKENS = 512, 16384


class ModelDirError(ValueError):
    """A model directory that cannot be served: the message is one line saying why."""


def check_model_dir(directory: str | Path) -> None:
    """Fails fast, in one line, on what would otherwise surface as a deep traceback."""
    path = Path(directory)
    if not path.is_dir():
        raise ModelDirError(f"{path}: no such model directory")
    for required in ("config.json", WEIGHTS_FILE, CONFIG_FILE):
        if not (path / required).is_file():
            raise ModelDirError(f"{path}: missing {required}")
    try:
        config = AutoConfig.from_pretrained(path)
    except (OSError, ValueError) as error:
        raise ModelDirError(f"{path}: unreadable config.json ({error})") from error
    if config.num_labels != len(LABELS):
        raise ModelDirError(f"{path}: model has {config.num_labels} labels, expected {len(LABELS)} ({', '.join(LABELS)})")


def quantize_linear_layers(model: torch.nn.Module) -> torch.nn.Module:
    """Dynamic int8 Linear layers for CPU inference. torch 2.13 deprecates eager-mode quantization in favour of
    torchao but still runs it; its warnings would otherwise repeat in every replica's log."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)


class Predictor:
    def __init__(self, directory: str | Path, device: str = "cpu", quantize: bool = False):
        check_model_dir(directory)
        self.directory = Path(directory)
        self.config = Config.load(directory)
        try:
            self.tokenizer = load_tokenizer(str(directory))
            model = AutoModelForSequenceClassification.from_pretrained(directory, use_safetensors=True)
        except Exception as error:  # corrupt weights or tokenizer files come in many exception types
            raise ModelDirError(f"{directory}: cannot load model ({type(error).__name__}: {error})") from error
        if quantize:
            model = quantize_linear_layers(model)
        self.quantized = quantize
        self.device = torch.device(device)
        # Tokens per forward pass: on a CPU thread more rows stop paying around 512 (measured); a GPU wants far
        # more (its figure is a guess: the old batches of 64 at full length were 8,192).
        self.batch_tokens = CPU_BATCH_TOKENS if self.device.type == "cpu" else GPU_BATCH_TOKENS
        self.model = model.to(self.device).eval()

    @property
    def metrics(self) -> dict:
        path = self.directory / "metrics.json"
        return json.loads(path.read_text()) if path.is_file() else {}

    @torch.inference_mode()
    def scores(self, texts: Sequence[str], max_tokens: int | None = None) -> torch.Tensor:
        """Class probabilities, one row per text, in input order. Texts run in length-sorted groups of at most
        `max_tokens` tokens, padding included (default: `self.batch_tokens`)."""
        ids = encode(self.tokenizer, texts, self.config.model.max_length)
        probabilities = torch.empty(len(ids), len(LABELS))
        for chunk in token_budget_chunks([len(row) for row in ids], max_tokens or self.batch_tokens):
            batch = {k: v.to(self.device) for k, v in pad_batch([ids[i] for i in chunk], self.tokenizer.pad_token_id).items()}
            probabilities[chunk] = self.model(**batch).logits.float().softmax(-1).cpu()
        return probabilities

    def predict(self, texts: Sequence[str]) -> list[dict]:
        return [
            {
                "sentiment": LABELS[int(row.argmax())],
                "label": int(row.argmax()),
                "confidence": round(float(row.max()), 4),
                "scores": {name: round(float(p), 4) for name, p in zip(LABELS, row)},
            }
            for row in self.scores(texts)
        ]
