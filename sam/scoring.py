"""Offline scoring as a Ray Data job: a pool of actors, each holding one `Predictor`, streams rows from a source
to predictions and rejects (`sam predict --data`), to a confusion matrix (`sam evaluate`) or to a teacher's
logits (`sam distill`)."""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import pyarrow
import pyarrow.compute
import pyarrow.parquet
import ray
import ray.data

from sam import LABELS, SamError
from sam.data import PROBLEM_EXAMPLES, LoadReport
from sam.locations import model_location
from sam.predict import Predictor, prediction_columns
from sam.runtimes import check_model_dir, softmax
from sam.storage import delete_dir, filesystem, is_uri, join, write_text

# Added by each scoring actor for `ScoredSink`'s report (which actor scored a row, and when); never written.
SCORER, SCORED_AT = "_scorer", "_scored_at"
SCORING_BLOCK_BYTES = 1 << 20  # about 5,000 tweets: a pool of model actors shares work by blocks, and a file is one
ACTOR_WAIT_S = 600  # for every scoring actor to start (a cluster may first add a node); then the job fails, naming it


class BatchScorer:
    """Ray Data's scoring step (a callable class, so each actor of the pool loads the model once): a pandas batch
    to its predictions, one output row per input row, in order. Rows with a `problem` pass through unscored
    (label -1), so a job can score and reject in one pass over its source."""

    def __init__(self, model_dirs: list[str], runtime: str | None = None, with_logits: bool = False, by_fold: bool = False):
        # Several models are an ensemble, their logits averaged: a better teacher than any one, at their summed cost;
        # `by_fold`: cross-fitted, model k scores only the rows of `fold` k, the fold it never trained on.
        self.predictors = [Predictor.in_actor(model_dir, runtime) for model_dir in model_dirs]
        self.with_logits, self.by_fold = with_logits, by_fold
        self.name = f"{ray.util.get_node_ip_address()}:{os.getpid()}"

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        usable = (batch["problem"] == "").to_numpy() if "problem" in batch else np.ones(len(batch), dtype=bool)
        rows = np.flatnonzero(usable)
        logits = np.zeros((len(batch), len(LABELS)), dtype=np.float32)
        columns = {"sentiment": [""] * len(batch), "label": [-1] * len(batch), "confidence": [0.0] * len(batch),
                   "scores": [None] * len(batch)}  # what a row with a problem gets
        if len(rows):
            logits[rows] = self._logits(batch.iloc[rows])
            for name, values in prediction_columns(softmax(logits[rows])).items():
                for row, value in zip(rows, values):
                    columns[name][row] = value
        scored = pd.DataFrame(columns).astype({"label": np.int64})
        if "label" in batch:  # the given label, where there is one, beside the predicted one
            scored.insert(0, "true_label", batch["label"].to_numpy())
        if self.with_logits:  # unrounded: a distilled model learns from them
            scored["logits"] = list(logits)
        passed = [column for column in ("id", "text", "where", "problem", *(["fold"] if self.by_fold else [])) if column in batch]
        scored[SCORER], scored[SCORED_AT] = self.name, time.time()
        return pd.concat([batch[passed].reset_index(drop=True), scored], axis=1)

    def _logits(self, rows: pd.DataFrame) -> np.ndarray:
        texts = rows["text"].tolist()
        if not self.by_fold:
            return np.mean([predictor.logits(texts) for predictor in self.predictors], axis=0)
        logits, folds = np.zeros((len(rows), len(LABELS)), dtype=np.float32), rows["fold"].to_numpy()
        for fold in np.unique(folds):
            mine = np.flatnonzero(folds == fold)
            logits[mine] = self.predictors[fold].logits([texts[row] for row in mine])
        return logits


def scoring_pool(actors: int | None, gpus_per_actor: float = 0.0) -> ray.data.ActorPoolStrategy:
    """`actors` model replicas, or by default a pool that grows from one up to what the cluster holds now (its CPUs,
    or its GPUs shared `gpus_per_actor` each) while blocks wait: a small job loads one model, a large one uses
    every CPU."""
    if actors is not None:
        if actors < 1:
            raise SamError(f"--actors must be at least 1 (got {actors})")
        return ray.data.ActorPoolStrategy(size=actors)
    resources = ray.cluster_resources()
    most = int(resources.get("GPU", 0) / gpus_per_actor) if gpus_per_actor else int(resources.get("CPU", 1))
    return ray.data.ActorPoolStrategy(min_size=1, max_size=max(1, most))


def score_rows(rows: ray.data.Dataset, model_dir: str | Path | Sequence[str], actors: int | None = None, gpus_per_actor: float = 0.0,
               runtime: str | None = None, batch_size: int = 256, with_logits: bool = False, by_fold: bool = False,
               progress: bool = False) -> ray.data.Dataset:
    """Rows (text; id, label and a problem where present) scored by a pool of model replicas (`scoring_pool`), lazily;
    by the mean of several models' logits when `model_dir` names several, or with `by_fold` by the one of them that
    a row's `fold` names (cross-fitted teachers).
    The job's settings go on `rows`' own context (each read has its own), so every caller gets them: small blocks
    (Ray Data makes one block of a file of up to 128 MiB), and no block handed out before every actor has loaded
    the model (else the first live actor takes several while the others still import torch);
    `repartition(target_num_rows_per_block=...)` would split blocks too, but its tasks reserve a CPU, which the
    actors hold. `progress`: Ray Data's own progress for the job."""
    model_dirs = [model_dir] if isinstance(model_dir, (str, Path)) else list(model_dir)
    for each in model_dirs:
        check_model_dir(each)
    context = rows.context
    context.target_max_block_size, context.wait_for_min_actors_s = SCORING_BLOCK_BYTES, ACTOR_WAIT_S
    context.enable_progress_bars = progress
    return rows.map_batches(
        # A URI, so that each node's actors fetch the model into that node's cache, or an absolute local path.
        BatchScorer, fn_constructor_kwargs={"model_dirs": [model_location(each) for each in model_dirs], "runtime": runtime,
                                            "with_logits": with_logits, "by_fold": by_fold},
        compute=scoring_pool(actors, gpus_per_actor), batch_size=batch_size, batch_format="pandas",
        num_cpus=0 if gpus_per_actor else 1, num_gpus=gpus_per_actor or None,
    )


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
                LoadReport(self.source, good.num_rows, Counter(problems), [f"{w} {p}" for w, p in zip(places[:PROBLEM_EXAMPLES], problems)]),
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
