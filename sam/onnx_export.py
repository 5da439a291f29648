"""ONNX files beside a model directory: `onnx/model.onnx`, exported by `torch.onnx.export`, and
`onnx/model_int8.onnx`, quantized by ONNX Runtime (dynamic int8, per channel), each checked against torch on the
rows given before it is kept. A directory without them (an older export, a plain Hugging Face one) gets them once
per node in the model cache."""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import ray.data
import torch

from sam.config import CONFIG_FILE, Config
from sam.data import read_rows, train_and_validation, valid_only
from sam.encoding import chunked_logits, encode, pad_ids
from sam import LABELS, SamError
from sam.checkpoint import METRICS_FILE
from sam.drift import data_profile, token_counts, unknown_id, write_profile
from sam.locations import derived_dir, model_location
from sam.runtimes import (ONNX_DIR, ONNX_FILES, ModelDirError, OnnxModel, TokenizerFiles, TorchModel, check_model_dir, label_order,
                          model_config, onnx_file, softmax)
from sam.storage import is_model_uri, is_uri, redact, upload_dir

log = logging.getLogger("sam")

OPSET = 17
FP32_TOLERANCE = 1e-4  # largest logit difference from torch that fp32 ONNX may show
INT8_MIN_AGREEMENT, INT8_MAX_ACCURACY_DROP = 0.99, 0.005  # what int8 must keep of fp32's answers to be kept
CHECK_ROWS = 4000  # rows the export is checked on: the validation split's first ones
CHECK_TOKENS = 2048  # tokens per forward pass while checking


class Logits(torch.nn.Module):
    """The classifier as ONNX sees it: two inputs, one output."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask).logits


def _export_fp32(model: torch.nn.Module, path: Path) -> None:
    # The example batch has a padded row: traced without padding, `transformers` leaves the mask out of the graph.
    example = {name: torch.from_numpy(array) for name, array in pad_ids([np.arange(1, 9), np.arange(1, 5)], 0).items()}
    axes = {0: "batch", 1: "sequence"}
    with warnings.catch_warnings():  # the tracer's notes on shapes it treats as constants hold for every input here
        warnings.simplefilter("ignore")
        torch.onnx.export(Logits(model).eval(), (example["input_ids"], example["attention_mask"]), str(path),
                          input_names=["input_ids", "attention_mask"], output_names=["logits"], opset_version=OPSET,
                          dynamic_axes={"input_ids": axes, "attention_mask": axes,
                                        "logits": {0: "batch"}}, dynamo=False)
    model.eval()  # the exporter puts the wrapper back in training mode, and the model inside it with it


def _quantize(fp32: Path, int8: Path) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    root = logging.getLogger()
    level, root.level = root.level, max(root.level, logging.ERROR)  # its advice to pre-process, on the root logger
    try:
        quantize_dynamic(str(fp32), str(int8), per_channel=True, weight_type=QuantType.QInt8)
    finally:
        root.setLevel(level)


def synthetic_rows(vocab_size: int, max_length: int, count: int = 256, seed: int = 0) -> list[np.ndarray]:
    """Seeded random token ids of every length up to `max_length`: what an export is checked on when no labelled
    rows are at hand (fp32 against torch, int8's agreement with fp32)."""
    rng = np.random.default_rng(seed)
    return [rng.integers(0, vocab_size, size=int(n)) for n in rng.integers(2, max_length + 1, size=count)]


def export_onnx(directory: Path, ids: Sequence[np.ndarray], labels: Optional[np.ndarray] = None, target: Optional[Path] = None,
                min_int8_agreement: float = INT8_MIN_AGREEMENT, max_int8_accuracy_drop: float = INT8_MAX_ACCURACY_DROP) -> dict:
    """Writes `target/onnx/` (default: the model's own directory) and returns the check's figures, also kept under
    "onnx" in `target/metrics.json`. `ids` are the check rows' token ids, `labels` their labels in LABELS order
    when known. fp32 that differs from torch is refused; int8 that keeps too little of fp32 is left out, with one
    line saying why."""
    target = target or directory
    config = model_config(directory)
    order = label_order(config, directory)
    tokenizer = TokenizerFiles(directory, config)
    pad_id = tokenizer.pad_id
    reference = TorchModel(directory, "cpu", None)
    (target / ONNX_DIR).mkdir(parents=True, exist_ok=True)
    fp32_path, int8_path = (target / ONNX_DIR / ONNX_FILES[runtime] for runtime in ("onnx", "onnx-int8"))
    _export_fp32(reference.model, fp32_path)
    _quantize(fp32_path, int8_path)

    answers = {"torch": chunked_logits(reference, ids, pad_id, CHECK_TOKENS)}
    for runtime, path in (("onnx", fp32_path), ("onnx-int8", int8_path)):
        answers[runtime] = chunked_logits(OnnxModel(path, "cpu", None), ids, pad_id, CHECK_TOKENS)
    predicted = {runtime: logits[:, order].argmax(1) for runtime, logits in answers.items()}
    figures = {"check_rows": len(ids), "opset": OPSET,
               "fp32_max_abs_diff": float(np.abs(answers["onnx"] - answers["torch"]).max(initial=0.0)),
               "int8_agreement": float((predicted["onnx-int8"] == predicted["onnx"]).mean()) if len(ids) else 1.0}
    if labels is not None:
        figures["accuracy"] = {runtime: float((guess == labels).mean()) for runtime, guess in predicted.items()}
    if figures["fp32_max_abs_diff"] > FP32_TOLERANCE:
        fp32_path.unlink()
        int8_path.unlink()
        raise ModelDirError(f"{directory}: the ONNX export differs from torch by {figures['fp32_max_abs_diff']:.2g} "
                            f"(more than {FP32_TOLERANCE:g}): no ONNX files written")
    refused = _int8_refusal(figures, min_int8_agreement, max_int8_accuracy_drop)
    figures["int8"] = refused is None
    if refused:
        int8_path.unlink()
        figures["int8_refused"] = refused
        log.warning("%s: no int8 ONNX model: %s", directory, refused)
    if labels is not None:  # the validation split: what production is later compared with
        counts = token_counts(ids, unknown_id(tokenizer.tokenizer))
        write_profile(target, data_profile(*counts, softmax(answers["onnx"][:, order]), labels))
    metrics_path = target / METRICS_FILE
    metrics = json.loads(metrics_path.read_text()) if metrics_path.is_file() else {}
    metrics_path.write_text(json.dumps({**metrics, "onnx": figures}, indent=2) + "\n")
    return figures


def _int8_refusal(figures: dict, min_agreement: float, max_accuracy_drop: float) -> Optional[str]:
    if figures["int8_agreement"] < min_agreement:
        return f"its labels agree with fp32's on {figures['int8_agreement']:.2%} of {figures['check_rows']} rows (at least {min_agreement:.0%} wanted)"
    accuracy = figures.get("accuracy")
    if accuracy and accuracy["onnx"] - accuracy["onnx-int8"] > max_accuracy_drop:
        return (f"its accuracy {accuracy['onnx-int8']:.4f} is more than {max_accuracy_drop * 100:g} points below fp32's "
                f"{accuracy['onnx']:.4f}")
    return None


def tokenized_rows(rows: ray.data.Dataset, limit: int = CHECK_ROWS) -> tuple[list[np.ndarray], np.ndarray]:
    """The first `limit` rows of a tokenized split (input_ids, labels): a training run's validation side."""
    batch = rows.limit(limit).take_batch(limit, batch_format="numpy")
    return list(batch["input_ids"]), batch["labels"]


def labelled_texts(directory: Path, source: Optional[str] = None, limit: int = CHECK_ROWS) -> Optional[tuple[list[str], np.ndarray]]:
    """Labelled rows to check a model on: the first `limit` of `source` when given, else of the validation split
    of the data the model was trained on (its sam_config.json); None for a model with neither."""
    if source is None and not (directory / CONFIG_FILE).is_file():
        return None
    rows = valid_only(read_rows(source)) if source else train_and_validation(Config.load(directory)).val
    batch = rows.limit(limit).take_batch(limit, batch_format="pandas")
    return batch["text"].tolist(), batch["label"].to_numpy()


def labelled_rows(directory: Path, source: Optional[str] = None, limit: int = CHECK_ROWS) -> Optional[tuple[list[np.ndarray], np.ndarray]]:
    """`labelled_texts` as the model's own tokenizer encodes them."""
    found = labelled_texts(directory, source, limit)
    if found is None:
        return None
    tokenizer = TokenizerFiles(directory, model_config(directory))
    max_length = Config.load(directory).model.max_length if (directory / CONFIG_FILE).is_file() else tokenizer.max_length
    return encode(tokenizer.tokenizer, found[0], max_length), found[1]


def add_onnx(model: str, source: Optional[str] = None) -> dict:
    """`sam export-onnx`: ONNX files added to a model directory (a path, a URI, or a registered model whose files
    SAM's storage reaches), checked on `source`'s rows, else on the validation split its sam_config.json names,
    else (a plain Hugging Face directory) on seeded random rows, int8 then judged on its agreement with fp32."""
    location = model_location(model)
    if is_model_uri(location):
        raise SamError(f"{redact(model)}: its files are in MLflow's artifact store, which SAM does not write to; "
                       "export-onnx a copy of the directory")
    directory = check_model_dir(location)
    rows = labelled_rows(directory, source)
    if rows is None:
        log.info("%s: no sam_config.json and no --data: checking the export on seeded random rows", redact(model))
        config = model_config(directory)
        rows = (synthetic_rows(config["vocab_size"], min(TokenizerFiles(directory, config).max_length, 128)), None)
    if not is_uri(location):
        return export_onnx(directory, *rows)
    with tempfile.TemporaryDirectory() as staging:
        if (directory / METRICS_FILE).is_file():
            shutil.copy(directory / METRICS_FILE, staging)
        figures = export_onnx(directory, *rows, target=Path(staging))
        upload_dir(staging, location)
    return figures


def onnx_dir(directory: Path) -> Path:
    """The directory holding this model's `onnx/` files: its own, or for a model exported without them, this
    node's cached export (made once, checked on seeded random rows since no labelled ones are at hand)."""
    if onnx_file(directory, "onnx"):
        return directory

    def export(staging: Path) -> Path:
        log.info("%s has no ONNX files: exporting them once into this node's model cache", directory)
        config = model_config(directory)
        tokenizer = TokenizerFiles(directory, config)
        export_onnx(directory, synthetic_rows(config["vocab_size"], min(tokenizer.max_length, 128)), target=staging)
        return staging

    return derived_dir(directory, "onnx", export)
