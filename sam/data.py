"""Ray Data: read tweets from the hub or files (one, a directory of shards, a glob, a URI), validate rows, split
train/validation by a seeded hash, tokenize in parallel. The corpus never lands on the driver: it sees only
per-block summaries and a bounded sample for the tokenizer."""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import os
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Iterator, Optional

import numpy as np
import pandas as pd
import pyarrow.csv
import pyarrow.fs
import ray
import ray.data

from sam import LABELS, SamError
from sam.config import HOLDOUT, VALIDATION, Config
from sam.encoding import MAX_TEXT_CHARS
from sam.storage import ray_data_path

log = logging.getLogger("sam")

JSON_LINES = (".jsonl", ".json", ".jsonl.gz", ".json.gz")
FORMATS = (*JSON_LINES, ".parquet", ".csv", ".csv.gz")
LABEL_NAMES = {name.lower(): i for i, name in enumerate(LABELS)}
# Ray warns when a small source gives fewer blocks than the task bound: nothing to fix, and it repeats every epoch.
warnings.filterwarnings("ignore", message="The maximum number of concurrent tasks", category=UserWarning)
# SAM writes a plain local path on a cluster through `local://` on purpose (storage.ray_data_path).
warnings.filterwarnings("ignore", message="`local://` paths in Ray Data are deprecated")
SPLIT_BINS = 4096  # resolution of the per-class split thresholds: one bin is 1/4096 of a class's rows
TOKENIZER_SAMPLE = 200_000  # texts the corpus WordPiece learns from, at most
PROBLEM_EXAMPLES = 5  # dropped rows named by file and line in the report


def data_tasks() -> int:
    """Tasks of one data stage at once: one per CPU of the cluster as the pipeline is built (at least 2)."""
    return max(2, int(ray.cluster_resources().get("CPU", 0))) if ray.is_initialized() else max(2, os.cpu_count() or 1)


def light_tasks() -> dict:
    """Data tasks reserve no CPU: they are light next to a training step, and a task waiting for a free CPU hangs
    the run forever once the training workers hold them all (2 workers on a 2-CPU machine)."""
    return {"num_cpus": 0, "compute": ray.data.TaskPoolStrategy(size=data_tasks())}


class DataError(SamError):
    """Input that cannot be used at all (no such source, no valid rows): the message names the source."""


@dataclass
class LoadReport:
    """What a load kept and what it dropped, by reason, with the first few offending rows by location."""

    source: str
    kept: int = 0
    dropped: Counter = field(default_factory=Counter)
    examples: list[str] = field(default_factory=list)

    def merge(self, other: "LoadReport") -> None:
        """Another part's counts added in (a block's, a write task's)."""
        self.kept += other.kept
        self.dropped.update(other.dropped)
        self.examples = (self.examples + other.examples)[:PROBLEM_EXAMPLES]

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
        return LABEL_NAMES.get(str(label_text).strip().lower(), "unknown label")
    return "missing label"


def _check_row(text, label, label_text, require_label: bool) -> tuple[str, int, str]:
    """(text, label, problem): problem is empty for a usable row; label is -1 where there is none. A bad row keeps
    its text, if it has one, for the rejects file."""
    if not isinstance(text, str):
        return "", -1, "missing text"
    if not text.strip():
        return text, -1, "blank text"
    if len(text) > MAX_TEXT_CHARS:
        return text, -1, f"text over {MAX_TEXT_CHARS} characters"
    checked = _label_of(label, label_text)
    if isinstance(checked, str):
        return (text, -1, checked) if require_label else (text, -1, "")
    return text, checked, ""


def validate_batch(batch: pd.DataFrame, require_label: bool = True) -> pd.DataFrame:
    """Normalises any source's columns to text, label, id, problem (empty when usable) and where (file:line)."""
    n = len(batch)

    def column(name, default=None) -> pd.Series:
        return batch[name] if name in batch else pd.Series([default] * n)

    checked = [_check_row(t, l, lt, require_label) for t, l, lt in zip(column("text"), column("label"), column("label_text"))]
    problems = [c[2] for c in checked]
    if "problem" in batch:  # a line that did not parse keeps the parser's reason
        problems = [parsed or checked for parsed, checked in zip(batch["problem"].astype(str), problems)]
    return pd.DataFrame({
        "text": [c[0] for c in checked],
        "label": np.array([c[1] for c in checked], dtype=np.int64),
        "id": ["" if _missing(i) else str(i) for i in column("id")],
        "problem": problems,
        "where": [str(w) for w in column("where", "")],
    })


def _parse_json_lines(file: dict) -> list[dict]:
    """One record per line; lines that are not UTF-8 or not a JSON object become rows with a problem."""
    name, data = Path(file["path"]).name, file["bytes"]
    if data[:2] == b"\x1f\x8b":  # Ray decompresses by file extension; a gzip stream under another name is read here
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError):
            return [{"text": None, "label": None, "label_text": None, "id": None, "where": name, "problem": "unreadable gzip"}]
    rows = []
    for number, raw in enumerate(data.splitlines(), start=1):
        if not raw.strip():
            continue
        row = {"text": None, "label": None, "label_text": None, "id": None, "where": f"{name}:{number}", "problem": ""}
        try:
            record = json.loads(raw.decode("utf-8-sig" if number == 1 else "utf-8"))  # a leading byte-order mark
        except UnicodeDecodeError:
            row["problem"] = "not UTF-8"
        except json.JSONDecodeError:
            row["problem"] = "not JSON"
        else:
            if isinstance(record, dict):
                row.update({key: record.get(key) for key in ("text", "label", "label_text", "id")})
            else:
                row["problem"] = "not a JSON object"
        for key in ("label", "label_text", "id"):  # mixed types would break Arrow's column inference
            row[key] = None if row[key] is None else str(row[key])
        if row["text"] is not None and not isinstance(row["text"], str):
            row["text"] = None
        rows.append(row)
    return rows


def _format_of(path: str) -> Optional[str]:
    lowered = path.lower()
    return next((suffix for suffix in sorted(FORMATS, key=len, reverse=True) if lowered.endswith(suffix)), None)


def _held_out(relative: str) -> bool:
    """A file of another split: `test.*` / `validation.*`, or anything under a `test/` or `validation/` folder."""
    parts = PurePosixPath(relative).parts
    return Path(relative).name.startswith(("test.", "validation.")) or bool({"test", "validation"} & set(parts[:-1]))


def _is_hub_name(source: str) -> bool:
    """`owner/name`; a mistyped relative path such as `data/tweets.jsonl` (a data suffix) stays a path, so its
    error is "no such file" rather than the hub's."""
    return "://" not in source and not Path(source).expanduser().exists() and not any(c in source for c in "*?[") \
        and not source.startswith((".", "/", "~")) and source.count("/") == 1 and _format_of(source) is None


def list_files(source: str, split: str = "train") -> tuple[pyarrow.fs.FileSystem, list[str]]:
    """The data files of `source`: a file; a directory holding `<split>.<format>`, else a `<split>/` folder of
    shards, else (for the train split) every data file under it; a glob; any of these as a URI that pyarrow's
    filesystems read (s3://, gs://, ...)."""
    pattern = source if any(c in source for c in "*?[") else None
    base = source.split("*")[0].split("?")[0].split("[")[0].rsplit("/", 1)[0] if pattern else source
    if "://" not in base:
        base = str(Path(base or ".").expanduser().resolve())
        pattern = pattern and str(Path(pattern).expanduser().absolute())
    try:
        filesystem, path = pyarrow.fs.FileSystem.from_uri(base) if "://" in base else (pyarrow.fs.LocalFileSystem(), base)
        info = filesystem.get_file_info(path)
    except (OSError, ValueError, pyarrow.ArrowException) as error:
        raise DataError(f"{source}: cannot open ({error})") from error
    if info.type == pyarrow.fs.FileType.NotFound:
        raise DataError(f"{source}: no such file or directory")
    if info.type == pyarrow.fs.FileType.File:
        return filesystem, [path]

    def data_files(directory: str) -> list[str]:
        found = filesystem.get_file_info(pyarrow.fs.FileSelector(directory, recursive=True))
        return sorted(f.path for f in found if f.type == pyarrow.fs.FileType.File and _format_of(f.path)
                      and not Path(f.path).name.startswith((".", "_")))

    everything = data_files(path)
    if pattern:
        prefix = "" if "://" not in source else source.split("://", 1)[0] + "://"
        files = [f for f in everything if PurePosixPath(prefix + f if prefix else f).match(pattern)]
    else:
        files = [f for f in everything if Path(f).parent.as_posix() == Path(path).as_posix() and Path(f).name.startswith(split + ".")] \
            or [f for f in everything if f"/{split}/" in f[len(path):] + "/"] \
            or ([f for f in everything if not _held_out(f[len(path):])] if split == "train" else [])
    if not files:
        raise DataError(f"{source}: no {split} data files ({', '.join(FORMATS)}) there")
    return filesystem, files


def read_rows(source: str, split: str = "train", require_label: bool = True,
              shuffle_seed: Optional[int] = None, progress: bool = False) -> ray.data.Dataset:
    """Validated rows (text, label, id, problem, where) from files or a hub name, lazily: nothing is read yet.
    With `shuffle_seed`, files are read in a seeded order, the same on every pass, so a corpus sharded by class
    still mixes across an epoch without a stage that waits for all of its input. `progress`: Ray Data's own
    progress for the jobs that run it (batch jobs); off for training, where a bar per epoch per worker drowns the log."""
    rows = _read(source, split, require_label, shuffle_seed)
    rows.context.enable_progress_bars = progress  # this read's own context, not the process's
    return rows


def _read(source: str, split: str, require_label: bool, shuffle_seed: Optional[int]) -> ray.data.Dataset:
    if _is_hub_name(source):
        import datasets

        try:
            hub = datasets.load_dataset(source, split=split)
        except Exception as error:  # the hub raises many kinds; the user needs the source and the reason
            raise DataError(f"{source}: cannot load split {split!r} from the hub ({error})") from error
        # `datasets` keeps the split memory-mapped in its cache; for corpora past one machine, give files or URIs.
        return ray.data.from_huggingface(hub).map_batches(validate_batch, batch_format="pandas",
                                                          fn_kwargs={"require_label": require_label}, **light_tasks())
    filesystem, files = list_files(source, split)
    reads = {"num_cpus": 0, "concurrency": data_tasks(),
             "shuffle": None if shuffle_seed is None else ray.data.FileShuffleConfig(seed=shuffle_seed, reseed_after_execution=False)}
    if isinstance(filesystem, pyarrow.fs.LocalFileSystem):  # read where the files are: the driver's node
        files, filesystem = [ray_data_path(f) for f in files], None
    by_format = {name: [f for f in files if _format_of(f) in suffixes]
                 for name, suffixes in {"json": JSON_LINES, "parquet": (".parquet",), "csv": (".csv", ".csv.gz")}.items()}
    parts = []
    if by_format["json"]:
        raw = ray.data.read_binary_files(by_format["json"], filesystem=filesystem, include_paths=True, **reads)
        parts.append(raw.flat_map(_parse_json_lines, **light_tasks()))
    if by_format["parquet"]:
        parts.append(ray.data.read_parquet(by_format["parquet"], filesystem=filesystem, include_paths=True, **reads))
    if by_format["csv"]:
        # Every column as text: a type inferred from the first block would refuse the whole source at one odd value.
        as_text = pyarrow.csv.ConvertOptions(column_types={c: pyarrow.string() for c in ("text", "label", "label_text", "id")})
        parts.append(ray.data.read_csv(by_format["csv"], filesystem=filesystem, include_paths=True,
                                       convert_options=as_text, **reads))
    validated = [part.map_batches(_located, batch_format="pandas", fn_kwargs={"require_label": require_label}, **light_tasks())
                 for part in parts]
    return validated[0].union(*validated[1:]) if len(validated) > 1 else validated[0]


def _located(batch: pd.DataFrame, require_label: bool) -> pd.DataFrame:
    """Parquet and CSV rows are located by their file; JSON lines already carry file:line."""
    if "where" not in batch and "path" in batch:
        batch = batch.assign(where=[Path(p).name for p in batch["path"]])
    return validate_batch(batch, require_label)


def split_key(texts, seed: int) -> np.ndarray:
    """A stable number in [0, 1) per text: the same text lands on the same side on every run and every worker."""
    return np.array([int.from_bytes(hashlib.blake2b(f"{seed}:{t}".encode(), digest_size=8).digest(), "big") / 2**64
                     for t in texts])


def split_bins(texts, seed: int) -> np.ndarray:
    """Each text's split-key bin, the unit the split and `--limit-train` thresholds are counted in."""
    return (split_key(texts, seed) * SPLIT_BINS).astype(np.int64)


def fold_of(bins: np.ndarray, folds: int) -> np.ndarray:
    """A row's cross-fitting fold, 0 to `folds` - 1, from its split-key bin: the bins deal the rows round the folds,
    so each fold's rows per class are counted from the split's histogram, with no pass of their own."""
    return bins % folds


def _block_summary(batch: pd.DataFrame, seed: int) -> pd.DataFrame:
    """One row per block: its dropped rows by reason (the first few by location) and a histogram of its valid
    rows by class and split key, from which the driver sets the split without seeing a row."""
    good, bad = batch[batch["problem"] == ""], batch[batch["problem"] != ""]
    labelled = good[good["label"] >= 0]  # rows read for scoring may have no label
    cells = labelled["label"].to_numpy() * SPLIT_BINS + split_bins(labelled["text"], seed)
    return pd.DataFrame({"summary": [json.dumps({
        "kept": len(good),
        "dropped": Counter(bad["problem"]),
        "examples": [f"{w} {p}" for w, p in zip(bad["where"][:PROBLEM_EXAMPLES], bad["problem"][:PROBLEM_EXAMPLES])],
        "histogram": np.bincount(cells, minlength=len(LABELS) * SPLIT_BINS).tolist(),
    })]})


def _valid_rows(batch: pd.DataFrame) -> pd.DataFrame:
    return batch[batch["problem"] == ""]


def valid_only(rows: ray.data.Dataset) -> ray.data.Dataset:
    return rows.map_batches(_valid_rows, batch_format="pandas", **light_tasks())


def survey_rows(rows: ray.data.Dataset, source: str, seed: int) -> tuple[LoadReport, np.ndarray]:
    """One pass over the rows: the report, and the labelled valid rows' histogram (classes x SPLIT_BINS)."""
    report, histogram = LoadReport(source=source), np.zeros((len(LABELS), SPLIT_BINS), dtype=np.int64)
    try:
        summaries = rows.map_batches(_block_summary, batch_format="pandas", batch_size=None, fn_kwargs={"seed": seed},
                                     **light_tasks())
        for row in summaries.iter_rows():
            part = json.loads(row["summary"])
            report.merge(LoadReport(source, part["kept"], Counter(part["dropped"]), part["examples"]))
            histogram += np.asarray(part["histogram"], dtype=np.int64).reshape(len(LABELS), SPLIT_BINS)
    except DataError:
        raise
    except Exception as error:  # Arrow/Ray read errors: name the source, keep the cause
        raise DataError(f"{source}: cannot read ({error})") from error
    if not report.kept:
        raise DataError(f"{source}: no valid rows ({report})")
    log.info("%s", report)
    return report, histogram


def limit_bin(histogram: np.ndarray, limit: Optional[int]) -> int:
    """The split-key bin below which about `limit` rows lie: `--limit-train` keeps a seeded sample of the valid rows
    that is the same on every run, worker and shard layout (all bins without a limit)."""
    if limit is None:
        return SPLIT_BINS
    return min(SPLIT_BINS, int(np.searchsorted(np.cumsum(histogram.sum(0)), limit)) + 1)


def split_edges(histogram: np.ndarray, val_fraction: float) -> list[int]:
    """Per class, the split-key bin below which a row is validation: each class gives `val_fraction` of its rows
    (to one bin), so every class's share of validation is its share of the data."""
    edges = []
    for counts in histogram:
        target = round(val_fraction * counts.sum())
        edges.append(0 if target == 0 else int(np.searchsorted(np.cumsum(counts), target)) + 1)
    return edges


TRAIN = "train"


def _one_side(batch: pd.DataFrame, seed: int, edges: dict[str, list[int]], cut: int, side: str,
              left_out: Optional[tuple[int, int]] = None) -> pd.DataFrame:
    good = _valid_rows(batch)
    bins, labels = split_bins(good["text"], seed), good["label"].to_numpy()
    below_val, below_holdout = (bins < np.asarray(edges[part])[labels] for part in (VALIDATION, HOLDOUT))
    keep = {VALIDATION: below_val, HOLDOUT: below_holdout & ~below_val, TRAIN: ~below_holdout}[side]
    if left_out and side == TRAIN:
        keep &= fold_of(bins, left_out[0]) != left_out[1]
    return good.loc[keep & (bins < cut), ["text", "label"]]


@dataclass
class Split:
    train: ray.data.Dataset  # text, label
    val: ray.data.Dataset
    holdout: ray.data.Dataset  # empty without holdout_fraction; nothing in training or tuning reads it
    report: LoadReport
    train_counts: np.ndarray  # rows per class
    val_counts: np.ndarray
    holdout_counts: np.ndarray


def train_and_validation(config: Config, progress: bool = False) -> Split:
    """The train split's valid rows, split by a seeded hash of each text within its class into validation, the
    held-out part and training: given a model's saved config, `sam evaluate --split validation` (or `holdout`)
    carves the very rows that model was validated (or never trained) on."""
    report, histogram = survey_rows(read_rows(config.data.source, "train", progress=progress), config.data.source, config.train.seed)
    cut = limit_bin(histogram, config.data.limit_train)
    histogram[:, cut:] = 0
    if config.data.limit_train is not None:
        log.info("--limit-train: a seeded sample of %d of the %d valid rows", histogram.sum(), report.kept)
    # The held-out part's edges count from the same start as validation's, so validation is the same with or without it.
    edges = {VALIDATION: split_edges(histogram, config.data.val_fraction),
             HOLDOUT: split_edges(histogram, config.data.val_fraction + config.data.holdout_fraction)}
    below = {part: np.array([counts[:edge].sum() for counts, edge in zip(histogram, part_edges)]) for part, part_edges in edges.items()}
    val_counts, holdout_counts = below[VALIDATION], below[HOLDOUT] - below[VALIDATION]
    train_counts = histogram.sum(1) - below[HOLDOUT]
    left_out = (config.data.folds, config.data.fold) if config.data.folds else None
    if left_out:  # a cross-fitted teacher: the training rows of its own fold are left for it to score
        in_fold = fold_of(np.arange(SPLIT_BINS), left_out[0]) == left_out[1]
        left = np.array([counts[edge:][in_fold[edge:]].sum() for counts, edge in zip(histogram, edges[HOLDOUT])])
        if not left.sum():  # folds deal whole split-key bins, so a tiny sample may leave one empty
            raise DataError(f"{config.data.source}: fold {left_out[1]} of {left_out[0]} holds none of the "
                            f"{train_counts.sum()} training rows: give fewer folds or more rows")
        train_counts -= left
    if val_counts.sum() == 0 or train_counts.sum() == 0 or (config.data.holdout_fraction and holdout_counts.sum() == 0):
        raise DataError(f"{config.data.source}: {histogram.sum()} rows leave no training, validation or held-out rows "
                        f"at val_fraction {config.data.val_fraction}, holdout_fraction {config.data.holdout_fraction}")

    if config.data.holdout_fraction:
        log.info("held out: %d rows, never trained or validated on (sam evaluate --split holdout)", holdout_counts.sum())

    def side(name: str) -> ray.data.Dataset:
        """A read of its own, so that each side's settings (a scoring job's small blocks) stay its own."""
        rows = read_rows(config.data.source, "train", shuffle_seed=config.train.seed, progress=progress)
        return rows.map_batches(_one_side, batch_format="pandas", **light_tasks(),
                                fn_kwargs={"seed": config.train.seed, "edges": edges, "cut": cut, "side": name,
                                           "left_out": left_out})

    return Split(side(TRAIN), side(VALIDATION), side(HOLDOUT), report, train_counts, val_counts, holdout_counts)


def text_sample(rows: ray.data.Dataset, limit: int = TOKENIZER_SAMPLE) -> Iterator[str]:
    """The first `limit` texts, streamed: what the corpus tokenizer learns from, never the whole corpus."""
    for batch in rows.limit(limit).iter_batches(batch_size=4096, batch_format="pandas"):
        yield from batch["text"]


def load_frame(source: str, split: str = "train", limit: Optional[int] = None) -> tuple[pd.DataFrame, LoadReport]:
    """Valid rows (text, label; at most `limit`, in no set order) as one pandas frame on the driver, for small sets
    (benchmarks, tests)."""
    rows = read_rows(source, split)
    report, _ = survey_rows(rows, source, seed=0)
    valid = valid_only(rows)
    frame = (valid.limit(limit) if limit else valid).to_pandas()
    return frame[["text", "label"]].reset_index(drop=True), report


def class_weights(counts: np.ndarray) -> list[float]:
    """Inverse class frequency from rows per class, normalised so a balanced set gets all ones."""
    counts = np.asarray(counts, dtype=float)
    return (counts.sum() / (len(LABELS) * np.maximum(counts, 1))).tolist()
