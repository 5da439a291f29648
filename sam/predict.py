"""A saved model directory as a predictor: text in, sentiment out, through the same `encode` path as training.
Serve holds one per replica; offline scoring (`sam predict --data`, `sam evaluate`) runs one per actor of a Ray
Data actor pool, streaming rows from input to output."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import ray
import ray.data
import torch
from transformers import AutoConfig, AutoModelForSequenceClassification

from sam import LABELS
from sam.config import CONFIG_FILE, Config
from sam.batching import pad_batch, token_budget_chunks
from sam.encoding import encode
from sam.storage import StorageError, local_model_dir, redact, resolve
from sam.tokenizer import load_tokenizer

WEIGHTS_FILE = "model.safetensors"
CPU_BATCH_TOKENS, GPU_BATCH_TOKENS = 512, 16384


class ModelDirError(ValueError):
    """A model directory that cannot be served: the message is one line saying why."""


def check_model_dir(directory: str | Path) -> Path:
    """Fails fast, in one line, on what would otherwise surface as a deep traceback. Returns the local directory
    to load from: the one given, or this node's cached copy of one on object storage."""
    try:
        path = local_model_dir(directory)
    except StorageError as error:
        raise ModelDirError(str(error)) from None
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
    return path


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
        # Tokens per forward pass: on a CPU thread more rows stop paying around 512 (docs/benchmarks.md); a GPU
        # wants far more (not yet measured).
        self.batch_tokens = CPU_BATCH_TOKENS if self.device.type == "cpu" else GPU_BATCH_TOKENS
        self.model = model.to(self.device).eval()

    @property
    def metrics(self) -> dict:
        path = self.directory / "metrics.json"
        return json.loads(path.read_text()) if path.is_file() else {}

    @torch.inference_mode()
    def logits(self, texts: Sequence[str], max_tokens: int | None = None) -> torch.Tensor:
        """One row per text, in input order. Texts run in length-sorted groups of at most `max_tokens` tokens,
        padding included (default: `self.batch_tokens`)."""
        ids = encode(self.tokenizer, texts, self.config.model.max_length)
        logits = torch.empty(len(ids), len(LABELS))
        for chunk in token_budget_chunks([len(row) for row in ids], max_tokens or self.batch_tokens):
            batch = {k: v.to(self.device) for k, v in pad_batch([ids[i] for i in chunk], self.tokenizer.pad_token_id).items()}
            logits[chunk] = self.model(**batch).logits.float().cpu()
        return logits

    def scores(self, texts: Sequence[str], max_tokens: int | None = None) -> torch.Tensor:
        """Class probabilities, one row per text, in input order."""
        return self.logits(texts, max_tokens).softmax(-1)

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


class BatchScorer:
    """Ray Data's scoring step (a callable class, so each actor of the pool loads the model once): a pandas batch
    of valid rows to their predictions, one output row per input row, in order."""

    def __init__(self, model_dir: str, quantize: bool = False, with_logits: bool = False):
        device = "cuda" if ray.get_gpu_ids() else "cpu"  # Ray 2.60 shows every GPU to an actor: use one only if granted
        if device == "cpu":
            torch.set_num_threads(1)  # one thread per actor, each holding one CPU: more would fight the others
        self.predictor = Predictor(model_dir, device=device, quantize=quantize and device == "cpu")
        self.with_logits = with_logits

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        logits = self.predictor.logits(batch["text"].tolist())
        scores = logits.softmax(-1).numpy()
        predicted = scores.argmax(1)
        scored = pd.DataFrame({
            "sentiment": [LABELS[i] for i in predicted],
            "label": predicted.astype(np.int64),
            "confidence": scores.max(1).round(4),
            "scores": [dict(zip(LABELS, row.round(4).tolist())) for row in scores],
        })
        if "label" in batch:  # the given label, where there is one, beside the predicted one
            scored.insert(0, "true_label", batch["label"].to_numpy())
        if self.with_logits:  # unrounded: a distilled model learns from them
            scored["logits"] = list(logits.numpy())
        passed = [column for column in ("id", "text") if column in batch]
        return pd.concat([batch[passed].reset_index(drop=True), scored], axis=1)


def score_rows(rows: ray.data.Dataset, model_dir: str | Path, actors: int = 1, gpus_per_actor: float = 0.0,
               quantize: bool = False, batch_size: int = 256, with_logits: bool = False) -> ray.data.Dataset:
    """Valid rows (text; id and label where present) scored by a pool of `actors` model replicas, lazily."""
    check_model_dir(model_dir)
    return rows.map_batches(
        # A URI, so that each node's actors fetch the model into that node's cache, or an absolute local path.
        BatchScorer, fn_constructor_kwargs={"model_dir": resolve(model_dir), "quantize": quantize,
                                            "with_logits": with_logits},
        compute=ray.data.ActorPoolStrategy(size=actors), batch_size=batch_size, batch_format="pandas",
        num_cpus=0 if gpus_per_actor else 1, num_gpus=gpus_per_actor or None,
    )


def _confusion_of_block(batch: pd.DataFrame) -> pd.DataFrame:
    cells = batch["true_label"].to_numpy() * len(LABELS) + batch["label"].to_numpy()
    return pd.DataFrame({"confusion": [np.bincount(cells, minlength=len(LABELS) ** 2).tolist()]})


def confusion(scored: ray.data.Dataset) -> np.ndarray:
    """Rows: given label, columns: predicted; summed from per-block counts, so no row reaches the driver."""
    total = np.zeros(len(LABELS) ** 2, dtype=np.int64)
    for row in scored.map_batches(_confusion_of_block, batch_format="pandas", batch_size=None, num_cpus=0).iter_rows():
        total += np.asarray(row["confusion"], dtype=np.int64)
    return total.reshape(len(LABELS), len(LABELS))
