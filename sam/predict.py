"""A saved model directory as a predictor: text in, sentiment out, through the same `encode` path as training.
Serve holds one per replica; offline scoring (`sam predict --data`, `sam evaluate`) runs one per actor of a Ray
Data actor pool, streaming rows from input to output."""

from __future__ import annotations

import json
import os
import time
import warnings
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import pandas as pd
import pyarrow
import pyarrow.compute
import pyarrow.parquet
import ray
import ray.data
import torch
from transformers import AutoConfig, AutoModelForSequenceClassification

from sam import LABELS, SamError
from sam.config import CONFIG_FILE, Config
from sam.console import data_progress
from sam.batching import pad_batch, token_budget_chunks
from sam.data import EXAMPLES, LoadReport
from sam.encoding import encode
from sam.storage import StorageError, delete_dir, filesystem, is_uri, join, local_model_dir, model_location, redact, write_text
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


# Added by each scoring actor for `ScoredSink`'s report (which actor scored a row, and when); never written.
SCORER, SCORED_AT = "_scorer", "_scored_at"
SCORING_BLOCK_BYTES = 1 << 20  # about 5,000 tweets: a pool of model actors shares work by blocks, and a file is one
ACTOR_WAIT_S = 600  # for every scoring actor to start (a cluster may first add a node); then the job fails, naming it


class BatchScorer:
    """Ray Data's scoring step (a callable class, so each actor of the pool loads the model once): a pandas batch
    to its predictions, one output row per input row, in order. Rows with a `problem` pass through unscored
    (label -1), so a job can score and reject in one pass over its source."""

    def __init__(self, model_dir: str, quantize: bool = False, with_logits: bool = False):
        self.predictor = Predictor.in_actor(model_dir, quantize)
        self.with_logits = with_logits
        self.name = f"{ray.util.get_node_ip_address()}:{os.getpid()}"

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        usable = (batch["problem"] == "").to_numpy() if "problem" in batch else np.ones(len(batch), dtype=bool)
        rows = np.flatnonzero(usable)
        logits = np.zeros((len(batch), len(LABELS)), dtype=np.float32)
        columns = {"sentiment": [""] * len(batch), "label": [-1] * len(batch), "confidence": [0.0] * len(batch),
                   "scores": [None] * len(batch)}  # what a row with a problem gets
        if len(rows):
            logits[rows] = self.predictor.logits(batch["text"].iloc[rows].tolist()).numpy()
            for name, values in prediction_columns(torch.from_numpy(logits[rows]).softmax(-1).numpy()).items():
                for row, value in zip(rows, values):
                    columns[name][row] = value
        scored = pd.DataFrame(columns).astype({"label": np.int64})
        if "label" in batch:  # the given label, where there is one, beside the predicted one
            scored.insert(0, "true_label", batch["label"].to_numpy())
        if self.with_logits:  # unrounded: a distilled model learns from them
            scored["logits"] = list(logits)
        passed = [column for column in ("id", "text", "where", "problem") if column in batch]
        scored[SCORER], scored[SCORED_AT] = self.name, time.time()
        return pd.concat([batch[passed].reset_index(drop=True), scored], axis=1)


def score_rows(rows: ray.data.Dataset, model_dir: str | Path, actors: int = 1, gpus_per_actor: float = 0.0,
               quantize: bool = False, batch_size: int = 256, with_logits: bool = False) -> ray.data.Dataset:
    """Rows (text; id, label and a problem where present) scored by a pool of `actors` model replicas, lazily.
    Build and run it within `scoring_job()`, so that every actor of the pool gets work."""
    check_model_dir(model_dir)
    return rows.map_batches(
        # A URI, so that each node's actors fetch the model into that node's cache, or an absolute local path.
        BatchScorer, fn_constructor_kwargs={"model_dir": model_location(model_dir), "quantize": quantize,
                                            "with_logits": with_logits},
        compute=ray.data.ActorPoolStrategy(size=actors), batch_size=batch_size, batch_format="pandas",
        num_cpus=0 if gpus_per_actor else 1, num_gpus=gpus_per_actor or None,
    )


@contextmanager
def scoring_job() -> Iterator[None]:
    """Datasets built inside spread over every actor of a scoring pool: small blocks (Ray Data makes one block of
    a file of up to 128 MiB), and no block handed out before every actor has loaded the model (else the first
    live actor takes several while the others still import torch). `repartition(target_num_rows_per_block=...)`
    would split blocks too, but its tasks reserve a CPU, which the actors hold. Ray Data shows its progress."""
    context = ray.data.DataContext.get_current()
    saved = context.target_max_block_size, context.wait_for_min_actors_s
    context.target_max_block_size, context.wait_for_min_actors_s = SCORING_BLOCK_BYTES, ACTOR_WAIT_S
    try:
        with data_progress():
            yield
    finally:
        context.target_max_block_size, context.wait_for_min_actors_s = saved


@dataclass
class ScoringReport:
    """What a scoring job wrote: the rows kept and dropped (a `LoadReport`), rows per actor, and when each batch was
    scored, from which the steady rate is told apart from start-up."""

    rows: LoadReport
    per_actor: Counter = field(default_factory=Counter)
    batches: list[tuple[float, int]] = field(default_factory=list)  # (scored at, usable rows)

    def merge(self, other: "ScoringReport") -> None:
        self.rows.merge(other.rows)
        self.per_actor.update(other.per_actor)
        self.batches += other.batches

    def timing(self, started: float) -> dict:
        """Seconds to the first scored batch, and rows/s from it to the last (the first batch's rows excluded)."""
        if not self.batches:
            return {"first_batch_s": None, "steady_rows_per_s": None}
        stamps = sorted(self.batches)
        first, last = stamps[0][0], stamps[-1][0]
        later = sum(rows for at, rows in stamps if at > first)
        return {"first_batch_s": round(first - started, 1),
                "steady_rows_per_s": round(later / (last - first)) if last > first else None}


class ScoredSink(ray.data.Datasink):
    """One pass, two outputs: scored rows to `predictions` (parquet or jsonl), rows with a problem to `rejects`
    (jsonl: where, problem, id, text), each write returning what it wrote for the job's `ScoringReport`. A plain
    local path is written on the driver's node, whole; a URI from every node."""

    PREDICTED = ["id", "text", "sentiment", "label", "confidence", "scores"]
    REJECTED = ["where", "problem", "id", "text"]

    def __init__(self, source: str, predictions: str, rejects: str, file_format: str = "parquet"):
        self.source, self.predictions, self.rejects, self.file_format = source, predictions, rejects, file_format
        self.report = ScoringReport(LoadReport(source))

    @property
    def supports_distributed_writes(self) -> bool:
        return is_uri(self.predictions)

    def on_write_start(self, schema=None) -> None:
        delete_dir(self.predictions)  # a rerun replaces its output instead of adding to it
        delete_dir(self.rejects)

    def write(self, blocks, ctx) -> ScoringReport:
        part = ScoringReport(LoadReport(self.source))
        for index, block in enumerate(blocks):
            table = ray.data.block.BlockAccessor.for_block(block).to_arrow()
            bad = pyarrow.compute.not_equal(table["problem"], "")
            good, rejected = table.filter(pyarrow.compute.invert(bad)), table.filter(bad)
            name = f"{ctx.task_idx:06d}_{index:06d}"
            if good.num_rows:
                _write_table(good.select([c for c in self.PREDICTED if c in good.column_names]),
                             join(self.predictions, name), self.file_format)
            if rejected.num_rows:
                _write_table(rejected.select(self.REJECTED), join(self.rejects, name), "jsonl")
            problems, places = rejected["problem"].to_pylist(), rejected["where"].to_pylist()
            part.merge(ScoringReport(
                LoadReport(self.source, good.num_rows, Counter(problems), [f"{w} {p}" for w, p in zip(places[:EXAMPLES], problems)]),
                Counter(good[SCORER].to_pylist()), list(Counter(good[SCORED_AT].to_pylist()).items())))
        return part

    def on_write_complete(self, write_result) -> None:
        for part in write_result.write_returns:
            self.report.merge(part)


def _write_table(table: pyarrow.Table, path: str, file_format: str) -> None:
    if file_format == "jsonl":
        write_text(path + ".jsonl", "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in table.to_pylist()))
        return
    fs, inner = filesystem(path)
    fs.create_dir(inner.rsplit("/", 1)[0], recursive=True)
    pyarrow.parquet.write_table(table, inner + ".parquet", filesystem=fs)


def _confusion_of_block(batch: pd.DataFrame) -> pd.DataFrame:
    cells = batch["true_label"].to_numpy() * len(LABELS) + batch["label"].to_numpy()
    return pd.DataFrame({"confusion": [np.bincount(cells, minlength=len(LABELS) ** 2).tolist()]})


def confusion(scored: ray.data.Dataset) -> np.ndarray:
    """Rows: given label, columns: predicted; summed from per-block counts, so no row reaches the driver."""
    total = np.zeros(len(LABELS) ** 2, dtype=np.int64)
    for row in scored.map_batches(_confusion_of_block, batch_format="pandas", batch_size=None, num_cpus=0).iter_rows():
        total += np.asarray(row["confusion"], dtype=np.int64)
    return total.reshape(len(LABELS), len(LABELS))
