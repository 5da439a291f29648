"""A model directory's files as a function from padded token ids to logits, on one of three runtimes: eager
PyTorch, or ONNX Runtime on the directory's `onnx/model.onnx` (fp32) or `onnx/model_int8.onnx` (dynamic int8).

Imports neither torch nor `transformers` until the torch runtime is asked for: a serving image with ONNX Runtime
and `tokenizers` alone reads a model directory, its tokenizer and its labels through this module."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Literal, Optional

import numpy as np

from sam import LABELS, SamError
from sam.locations import local_model_dir
from sam.storage import StorageError

log = logging.getLogger(__name__)

Runtime = Literal["torch", "onnx", "onnx-int8"]
RUNTIMES: tuple[str, ...] = ("torch", "onnx", "onnx-int8")
WEIGHTS_FILES = ("model.safetensors", "pytorch_model.bin")  # what `from_pretrained` loads, safetensors first
ONNX_DIR = "onnx"
ONNX_FILES = {"onnx": "model.onnx", "onnx-int8": "model_int8.onnx"}
UNSET_MAX_LENGTH = 1_000_000  # tokenizers without a limit of their own report 1e30


class ModelDirError(SamError):
    """A model directory that cannot be served: the message is one line saying why."""


def _why(error: Exception) -> str:
    """A library's exception as one line: ONNX Runtime's and safetensors' messages span several."""
    return f"{type(error).__name__}: {' '.join(str(error).split())}"


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
    if not any((path / weights).is_file() for weights in WEIGHTS_FILES) and not onnx_file(path, "onnx"):
        raise ModelDirError(f"{path}: missing the weights ({' or '.join(WEIGHTS_FILES)})")
    label_order(model_config(path), path)
    return path


def onnx_file(directory: Path, runtime: str) -> Optional[Path]:
    """The directory's ONNX model for `runtime`, when it has one."""
    path = directory / ONNX_DIR / ONNX_FILES[runtime]
    return path if path.is_file() else None


def model_config(path: Path) -> dict:
    """config.json as written by `save_pretrained`, read without `transformers`."""
    try:
        config = json.loads((path / "config.json").read_text())
    except (OSError, ValueError) as error:
        raise ModelDirError(f"{path}: unreadable config.json ({error})") from error
    if not isinstance(config, dict):
        raise ModelDirError(f"{path}: unreadable config.json (not an object)")
    return config


def label_order(config: dict, path: Path) -> list[int]:
    """The model's output index of each of LABELS: its own names in any order (`negative`, ...), or index order
    when it names them generically (`LABEL_0`, ...)."""
    id2label = {int(k): str(v) for k, v in (config.get("id2label") or {}).items()}
    num_labels = len(id2label) if id2label else config.get("num_labels", 2)
    if num_labels != len(LABELS):
        raise ModelDirError(f"{path}: model has {num_labels} labels, expected {len(LABELS)} ({', '.join(LABELS)})")
    names = [id2label.get(i, f"LABEL_{i}").lower() for i in range(len(LABELS))]
    if sorted(names) == sorted(label.lower() for label in LABELS):
        return [names.index(label.lower()) for label in LABELS]
    if all(name == f"label_{i}" for i, name in enumerate(names)):
        return list(range(len(LABELS)))
    raise ModelDirError(f"{path}: labels {names} are not {', '.join(LABELS)}")


def model_shape(config: dict, max_length: int) -> dict:
    """The loaded model's real shape, from its config.json: what /model reports."""
    return {"model_type": config.get("model_type"), "num_layers": config.get("num_hidden_layers"),
            "num_heads": config.get("num_attention_heads"), "d_model": config.get("hidden_size"),
            "d_ff": config.get("intermediate_size"), "vocab_size": config.get("vocab_size"), "max_length": max_length}


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


class TokenizerFiles:
    """The directory's tokenizer through `tokenizers` alone (tokenizer.json), with its padding id and length
    limit; a directory with only slow-tokenizer files goes through `transformers`, which converts them."""

    def __init__(self, directory: Path, config: dict):
        settings_path = directory / "tokenizer_config.json"
        settings = json.loads(settings_path.read_text()) if settings_path.is_file() else {}
        try:
            if (directory / "tokenizer.json").is_file():
                from tokenizers import Tokenizer

                self.tokenizer = Tokenizer.from_file(str(directory / "tokenizer.json"))
            else:
                from sam.tokenizer import load_tokenizer

                self.tokenizer = load_tokenizer(str(directory)).backend_tokenizer
        except Exception as error:  # a corrupt tokenizer file comes in many exception types
            raise ModelDirError(f"{directory}: cannot load the tokenizer ({_why(error)})") from error
        pad_token = settings.get("pad_token")
        pad_token = pad_token.get("content") if isinstance(pad_token, dict) else pad_token
        pad_id = config.get("pad_token_id")
        if pad_id is None and pad_token is not None:
            pad_id = self.tokenizer.token_to_id(pad_token)
        self.pad_id: int = pad_id or 0
        own_limit = settings.get("model_max_length") or UNSET_MAX_LENGTH
        positions = config.get("max_position_embeddings") or UNSET_MAX_LENGTH
        self.max_length: int = int(min(own_limit if own_limit < UNSET_MAX_LENGTH else positions, positions))


class TorchModel:
    """Eager PyTorch on the CPU or a GPU: `transformers`' own class for the directory."""

    def __init__(self, directory: Path, device: str, threads: Optional[int]):
        import torch
        from transformers import AutoModelForSequenceClassification

        if threads and device == "cpu":
            torch.set_num_threads(threads)
        try:
            model = AutoModelForSequenceClassification.from_pretrained(directory)
        except Exception as error:  # corrupt weights come in many exception types
            raise ModelDirError(f"{directory}: cannot load model ({_why(error)})") from error
        self.torch, self.device = torch, torch.device(device)
        self.model = model.to(self.device).eval()

    def __call__(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        with self.torch.inference_mode():
            batch = {name: self.torch.from_numpy(array).to(self.device) for name, array in inputs.items()}
            return self.model(**batch).logits.float().cpu().numpy()


class OnnxModel:
    """ONNX Runtime on one of the directory's ONNX files, on the CPU (one thread per CPU it was given) or, with
    `onnxruntime-gpu`, on CUDA."""

    def __init__(self, path: Path, device: str, threads: Optional[int]):
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads or 0  # 0: ONNX Runtime's own choice, every core
        options.inter_op_num_threads = 1
        providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if device == "cuda" else ["CPUExecutionProvider"]
        try:
            self.session = onnxruntime.InferenceSession(str(path), options, providers=providers)
        except Exception as error:  # a corrupt or foreign file: onnxruntime raises its own exception types
            raise ModelDirError(f"{path}: cannot load the ONNX model ({_why(error)})") from error
        self.inputs = [i.name for i in self.session.get_inputs()]

    def __call__(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        return self.session.run(["logits"], {name: inputs[name] for name in self.inputs})[0]


def onnx_on_cuda() -> bool:
    """Whether ONNX Runtime can run on a GPU here (`onnxruntime-gpu` installed)."""
    try:
        import onnxruntime
    except ImportError:
        return False
    return "CUDAExecutionProvider" in onnxruntime.get_available_providers()


def default_runtime(device: str) -> str:
    """ONNX Runtime fp32 on a CPU (the same answers as torch's, faster); on a GPU, ONNX Runtime's CUDA provider
    when `onnxruntime-gpu` is installed, else eager torch on CUDA."""
    return "onnx" if device == "cpu" or onnx_on_cuda() else "torch"
