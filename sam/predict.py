"""A saved model directory as a predictor: text in, sentiment out, through the same `encode` path as training, on
one of three runtimes (eager torch, ONNX Runtime fp32 or int8). Serve holds one per replica; offline scoring
(sam.scoring) one per actor of a Ray Data actor pool.

On an ONNX runtime nothing here imports torch or `transformers`: a torch-free serving image runs this module."""

from __future__ import annotations

import copy
import json
import logging
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np

from sam import LABELS, SamError
from sam.config import CONFIG_FILE, Config
from sam.encoding import chunked_logits, encode
from sam.drift import token_counts, unknown_id
from sam.runtimes import (RUNTIMES, OnnxModel, TokenizerFiles, TorchModel, check_model_dir, default_runtime, label_order,
                          model_config, model_shape, onnx_file, onnx_on_cuda, softmax)
from sam.storage import redact

log = logging.getLogger("sam")

CPU_BATCH_TOKENS, GPU_BATCH_TOKENS = 512, 16384

def prediction_columns(scores: np.ndarray) -> dict[str, list]:
    """Class probabilities (a row per text) as the fields of each prediction, column by column."""
    scores = scores.astype(np.float64)  # rounded in float64: float32 would print 0.9123 as 0.9122999906539917
    predicted = scores.argmax(1)
    return {"sentiment": [LABELS[i] for i in predicted], "label": predicted.tolist(),
            "confidence": scores.max(1).round(4).tolist(), "scores": [dict(zip(LABELS, row)) for row in scores.round(4).tolist()]}


def runtime_for(runtime: Optional[str], quantize: bool, device: str) -> str:
    """The runtime a model predicts on: the one asked for (`quantize` means `onnx-int8`), else this device's
    default (`runtimes.default_runtime`). int8 is a CPU runtime: on a GPU, its fp32 model runs instead, and without
    `onnxruntime-gpu` eager torch on CUDA."""
    runtime = runtime or ("onnx-int8" if quantize else default_runtime(device))
    if runtime not in RUNTIMES:
        raise SamError(f"runtime {runtime!r}: expected one of {', '.join(RUNTIMES)}")
    if device == "cuda" and runtime != "torch" and not onnx_on_cuda():
        log.info("runtime %s asked for on a GPU, where ONNX Runtime has no CUDA provider (onnxruntime-gpu): torch on CUDA", runtime)
        return "torch"
    return "onnx" if device == "cuda" and runtime == "onnx-int8" else runtime


class Predictor:
    def __init__(self, directory: str | Path, device: str = "cpu", runtime: Optional[str] = None, quantize: bool = False,
                 threads: Optional[int] = None):
        self.source = redact(directory)  # what it was loaded from, as it may be shown
        self.directory = directory = check_model_dir(directory)
        hf_config = model_config(directory)
        self.order = label_order(hf_config, directory)
        # SAM's own settings when it trained the model; any other directory is read by its tokenizer and config.
        self.config = Config.load(directory) if (directory / CONFIG_FILE).is_file() else None
        tokenizer = TokenizerFiles(directory, hf_config)
        self.tokenizer, self.pad_id = tokenizer.tokenizer, tokenizer.pad_id
        self.max_length = self.config.model.max_length if self.config else tokenizer.max_length
        self.shape = model_shape(hf_config, self.max_length)
        self.device, self.runtime = device, runtime_for(runtime, quantize, device)
        self.model = self._load(threads)
        # Tokens per forward pass: on a CPU thread more rows stop paying around 512 (docs/benchmarks.md); a GPU
        # wants far more (not yet measured).
        self.batch_tokens = CPU_BATCH_TOKENS if device == "cpu" else GPU_BATCH_TOKENS

    def _load(self, threads: Optional[int]):
        if self.runtime == "torch":
            return TorchModel(self.directory, self.device, threads)
        path = onnx_file(self.directory, self.runtime)
        if path is None and not onnx_file(self.directory, "onnx"):
            from sam.onnx_export import onnx_dir  # torch, once per node, for a directory exported without ONNX

            path = onnx_file(onnx_dir(self.directory), self.runtime)
        if path is None:  # the export's own check refused int8 for this model
            log.warning("%s: no int8 ONNX model (metrics.json's onnx.int8_refused says why): predicting with fp32",
                        self.source)
            self.runtime = "onnx"
            return self._load(threads)
        return OnnxModel(path, self.device, threads)

    @classmethod
    def in_actor(cls, directory: str | Path, runtime: Optional[str] = None, quantize: bool = False) -> "Predictor":
        """In a Ray actor (a Serve replica, a scoring actor): its GPU when Ray granted one (Ray 2.60 shows every GPU
        to every actor), else the CPU with one intra-op thread per CPU the actor holds, as more would fight the
        other actors for cores."""
        import ray

        device = "cuda" if ray.get_gpu_ids() else "cpu"
        threads = max(1, int(ray.get_runtime_context().get_assigned_resources().get("CPU", 1)))
        return cls(directory, device=device, runtime=runtime, quantize=quantize, threads=threads)

    @property
    def quantized(self) -> bool:
        return self.runtime == "onnx-int8"

    @property
    def metrics(self) -> dict:
        path = self.directory / "metrics.json"
        return json.loads(path.read_text()) if path.is_file() else {}

    def logits(self, texts: Sequence[str], max_tokens: int | None = None) -> np.ndarray:
        """One row per text, in input order, a column per label of LABELS. Texts run in length-sorted groups of
        at most `max_tokens` tokens, padding included (default: `self.batch_tokens`)."""
        ids = encode(self.tokenizer, texts, self.max_length)
        return chunked_logits(self.model, ids, self.pad_id, max_tokens or self.batch_tokens)[:, self.order]

    def scores(self, texts: Sequence[str], max_tokens: int | None = None) -> np.ndarray:
        """Class probabilities, one row per text, in input order."""
        return softmax(self.logits(texts, max_tokens))

    def token_counter(self) -> Callable[[Sequence[str]], tuple[np.ndarray, np.ndarray]]:
        """Texts to tokens per text as the model sees them (special ones included, truncated) and how many are
        unknown, on a copy of the tokenizer: `encode` sets its truncation, which must not race `predict` elsewhere."""
        tokenizer, unk = copy.deepcopy(self.tokenizer), unknown_id(self.tokenizer)
        return lambda texts: token_counts(encode(tokenizer, texts, self.max_length), unk)

    def predict(self, texts: Sequence[str]) -> list[dict]:
        columns = prediction_columns(self.scores(texts))
        return [dict(zip(columns, values)) for values in zip(*columns.values())]
