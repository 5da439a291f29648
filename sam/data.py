"""Ray Data: read tweets from the hub or local files, validate rows, split, tokenize in parallel."""

from __future__ import annotations

import json
import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import ray
import ray.data
from sklearn.model_selection import train_test_split

from sam import LABELS
from sam.config import Config
from sam.encoding import MAX_TEXT_CHARS, encode_rows

log = logging.getLogger("sam")

FORMATS = (".jsonl", ".json", ".parquet", ".csv")
LABEL_NAMES = {name.lower(): i for i, name in enumerate(LABELS)}


class DataError(ValueError):
    """Input that cannot be used at all (no such source, no valid rows): the message names the source."""


@dataclass
class LoadReport:
    """What a load kept and what it dropped, by reason, with the first few offending rows by location."""

    source: str
    kept: int = 0
    dropped: Counter = field(default_factory=Counter)
    examples: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        text = f"{self.source}: {self.kept} valid rows"
        if self.dropped:
            reasons = ", ".join(f"{count} {reason}" for reason, count in self.dropped.most_common())
            text += f", {sum(self.dropped.values())} dropped ({reasons}); first: {'; '.join(self.examples)}"
        return text


def _missing(value) -> bool:
    if isinstance(value, str):
        return not value.strip()
    return value is None or (np.ndim(value) == 0 and bool(pd.isna(value)))


def _label_of(label, label_text) -> int | str:
    """The label as 0/1/2, or the reason it is unusable."""
    if not _missing(label):
        if isinstance(label, (bool, np.bool_)):
            return "unknown label"
        try:
            value = float(label)
        except (TypeError, ValueError):
            return LABEL_NAMES.get(str(label).strip().lower(), "unknown label")
        return int(value) if value.is_integer() and 0 <= value < len(LABELS) else "unknown label"
    if not _missing(label_text):
        return LABEL_NAMES.get(label_text.strip().lower(), "unknown label")
    return "missing label"


def _check_row(text, label, label_text) -> tuple[str, int, str]:
    """(text, label, problem): problem is empty for a usable row."""
    if not isinstance(text, str):
        return "", -1, "missing text"
    if not text.strip():
        return "", -1, "blank text"
    if len(text) > MAX_TEXT_CHARS:
        return "", -1, f"text over {MAX_TEXT_CHARS} characters"
    checked = _label_of(label, label_text)
    if isinstance(checked, str):
        return "", -1, checked
    return text, checked, ""


def validate_batch(batch: pd.DataFrame) -> pd.DataFrame:
    """Normalises any source's columns to text, label, problem, where (file:row)."""
    n = len(batch)
    texts = batch["text"] if "text" in batch else pd.Series([None] * n)
    labels = batch["label"] if "label" in batch else pd.Series([None] * n)
    label_texts = batch["label_text"] if "label_text" in batch else pd.Series([None] * n)
    checked = [_check_row(t, l, lt) for t, l, lt in zip(texts, labels, label_texts)]
    where = batch["where"] if "where" in batch else pd.Series([""] * n)
    return pd.DataFrame({
        "text": [c[0] for c in checked],
        "label": np.array([c[1] for c in checked], dtype=np.int64),
        "problem": [c[2] for c in checked],
        "where": list(where),
    })


def _parse_jsonl(file: dict) -> list[dict]:
    """One record per line; lines that are not UTF-8 or not a JSON object become rows with a problem."""
    name = Path(file["path"]).name
    rows = []
    for number, raw in enumerate(file["bytes"].splitlines(), start=1):
        if not raw.strip():
            continue
        row = {"text": None, "label": None, "label_text": None, "where": f"{name}:{number}", "problem": ""}
        try:
            record = json.loads(raw.decode("utf-8"))
        except UnicodeDecodeError:
            row["problem"] = "not UTF-8"
        except json.JSONDecodeError:
            row["problem"] = "not JSON"
        else:
            if isinstance(record, dict):
                row.update(text=record.get("text"), label=record.get("label"), label_text=record.get("label_text"))
            else:
                row["problem"] = "not a JSON object"
        for key in ("label", "label_text"):  # mixed types would break Arrow's column inference
            row[key] = None if row[key] is None else str(row[key])
        rows.append(row)
    return rows


def _validate_parsed(batch: pd.DataFrame) -> pd.DataFrame:
    checked = validate_batch(batch)
    parse_problem = batch["problem"].astype(str) != ""
    checked.loc[parse_problem, "problem"] = batch.loc[parse_problem, "problem"].values
    return checked


def _resolve_files(source: str, split: str) -> list[Path] | None:
    """Local files for `source` (a file, or a directory holding `<split>.<format>`), None for a hub name."""
    path = Path(source).expanduser()
    if path.is_file():
        return [path]
    if path.is_dir():
        matches = [path / f"{split}{suffix}" for suffix in FORMATS if (path / f"{split}{suffix}").is_file()]
        if not matches:
            raise DataError(f"{path}: no {split}.jsonl, {split}.parquet or {split}.csv in this directory")
        return matches[:1]
    if path.is_absolute() or source.startswith(".") or source.count("/") != 1:
        raise DataError(f"{source}: no such file or directory")
    return None


def read_rows(source: str, split: str = "train") -> ray.data.Dataset:
    """A Ray Dataset of validated rows (text, label, problem, where) from a local path or a hub name."""
    files = _resolve_files(source, split)
    if files is None:
        import datasets

        try:
            hub = datasets.load_dataset(source, split=split)
        except Exception as error:  # the hub raises many kinds; the user needs the source and the reason
            raise DataError(f"{source}: cannot load split {split!r} from the hub ({error})") from error
        return ray.data.from_huggingface(hub).map_batches(validate_batch, batch_format="pandas")
    file = files[0]
    suffix = file.suffix.lower()
    if suffix in (".jsonl", ".json"):
        parsed = ray.data.read_binary_files(str(file), include_paths=True).flat_map(_parse_jsonl)
        return parsed.map_batches(_validate_parsed, batch_format="pandas")
    reader = {".parquet": ray.data.read_parquet, ".csv": ray.data.read_csv}.get(suffix)
    if reader is None:
        raise DataError(f"{file}: unsupported format {suffix!r} (use {', '.join(FORMATS)})")
    return reader(str(file)).map_batches(validate_batch, batch_format="pandas")


def load_frame(source: str, split: str = "train", limit: int | None = None) -> tuple[pd.DataFrame, LoadReport]:
    """Valid rows (text, label) in file order, plus what was dropped and why."""
    ray.data.DataContext.get_current().execution_options.preserve_order = True
    try:
        rows = read_rows(source, split).to_pandas()
    except DataError:
        raise
    except Exception as error:  # Arrow/Ray read errors: name the source, keep the cause
        raise DataError(f"{source}: cannot read ({error})") from error
    report = LoadReport(source=str(source))
    bad = rows[rows["problem"] != ""]
    report.dropped = Counter(bad["problem"])
    report.examples = [f"{w or 'row ' + str(i)} {p}" for i, w, p in zip(bad.index[:5], bad["where"][:5], bad["problem"][:5])]
    good = rows[rows["problem"] == ""][["text", "label"]].reset_index(drop=True)
    if limit is not None:
        good = good.iloc[:limit]
    report.kept = len(good)
    if good.empty:
        raise DataError(f"{source}: no valid rows ({report})")
    log.info("%s", report)
    return good, report


def split_frame(frame: pd.DataFrame, val_fraction: float, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Seeded, stratified train/validation split (falls back to unstratified when a class is too rare)."""
    counts = frame["label"].value_counts()
    stratify = frame["label"] if counts.min() >= 2 and len(frame) * val_fraction >= len(counts) else None
    train, val = train_test_split(frame, test_size=val_fraction, random_state=seed, stratify=stratify)
    return train.reset_index(drop=True), val.reset_index(drop=True)


def train_and_validation(config: Config) -> tuple[pd.DataFrame, pd.DataFrame, LoadReport]:
    """The train split's valid rows, split by the config's source, row limit, fraction and seed: given a model's
    saved config, `sam evaluate --split validation` carves the very rows that model was validated on. The
    training rows come back in one seeded shuffle; each epoch adds a local shuffle in the workers."""
    frame, report = load_frame(config.data.data, "train", config.data.limit_train)
    train, val = split_frame(frame, config.data.val_fraction, config.train.seed)
    return train.sample(frac=1.0, random_state=config.train.seed).reset_index(drop=True), val, report


def class_weights(labels: np.ndarray) -> list[float]:
    """Inverse class frequency, normalised so a balanced set gets all ones."""
    counts = np.bincount(labels, minlength=len(LABELS)).astype(float)
    return (counts.sum() / (len(LABELS) * np.maximum(counts, 1))).tolist()


TOKENIZE_TASKS = 2


def to_token_dataset(frame: pd.DataFrame, tokenizer, max_length: int, rows_per_block: int = 2048) -> ray.data.Dataset:
    """A lazily tokenized Ray Dataset: tokenization streams in parallel tasks as training consumes it.

    The tasks reserve no CPU: tokenizing is a few percent of a training step's work, and a task waiting for a
    free CPU hangs the run forever once the training workers hold them all (2 workers on a 2-CPU machine, or
    trials resumed side by side). At most `TOKENIZE_TASKS` run at once, so they cannot swamp the workers."""
    chunks = [frame.iloc[start : start + rows_per_block] for start in range(0, len(frame), rows_per_block)]
    return ray.data.from_pandas(chunks).map_batches(
        # The tasks get the Rust tokenizer inside the transformers one: it unpickles without importing transformers.
        encode_rows, batch_format="pandas", fn_kwargs={"tokenizer": tokenizer.backend_tokenizer, "max_length": max_length},
        num_cpus=0, compute=ray.data.TaskPoolStrategy(size=TOKENIZE_TASKS),
    )


@dataclass
class PreparedData:
    train: ray.data.Dataset
    val: ray.data.Dataset
    tokenizer: object
    class_weights: list[float]
    n_train: int
    n_val: int
    report: LoadReport


def prepare_data(config: Config) -> PreparedData:
    """Read, validate and split on the driver, choose or train the tokenizer; tokenization streams in Ray Data
    tasks while training consumes it."""
    from sam.tokenizer import tokenizer_for  # here, not at the top: Ray Data's tasks import this module

    ray.data.DataContext.get_current().enable_progress_bars = False  # one bar per epoch per worker drowns the log
    train, val, report = train_and_validation(config)
    tokenizer = tokenizer_for(config, train["text"].tolist())
    return PreparedData(
        train=to_token_dataset(train, tokenizer, config.model.max_length),
        val=to_token_dataset(val, tokenizer, config.model.max_length),
        tokenizer=tokenizer,
        class_weights=class_weights(train["label"].to_numpy()),
        n_train=len(train),
        n_val=len(val),
        report=report,
    )
