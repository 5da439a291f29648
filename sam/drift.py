"""What a model learned from, as production will be compared with it: on its validation split, the predicted and
true label mix, a histogram of token lengths, the unknown-token rate and a histogram of its confidence, kept as
profile.json beside metrics.json. Histograms are counts on fixed edges, so the ones a monitoring job sums over
blocks of its log compare with these bin by bin (the population stability index)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from sam import LABELS
from sam.storage import join, write_text

PROFILE_FILE = "profile.json"
LENGTH_EDGES = [0, 8, 16, 24, 32, 48, 64, 96, 128, 1 << 20]  # tokens, special ones included
CONFIDENCE_EDGES = [round(x, 2) for x in np.arange(0.30, 1.0001, 0.05)]  # three labels: never below 1/3
PSI_FLOOR = 1e-4  # an empty bin's share, so that a bin seen on one side only counts and never divides by zero


def unknown_id(tokenizer) -> Optional[int]:
    """The unknown token's id of a `tokenizers.Tokenizer` (WordPiece and BPE models name one), else None."""
    token = getattr(tokenizer.model, "unk_token", None)
    return tokenizer.token_to_id(token) if token else None


def token_counts(ids: Sequence[np.ndarray], unk_id: Optional[int]) -> tuple[np.ndarray, np.ndarray]:
    """Tokens per row and unknown tokens per row."""
    lengths = np.fromiter((len(row) for row in ids), dtype=np.int64, count=len(ids))
    unknown = np.fromiter((int((row == unk_id).sum()) if unk_id is not None else 0 for row in ids), dtype=np.int64, count=len(ids))
    return lengths, unknown


def histogram(values: np.ndarray, edges: Sequence[float]) -> list[int]:
    return np.histogram(np.clip(values, edges[0], edges[-1]), bins=edges)[0].tolist()


def mix(labels: np.ndarray) -> dict[str, float]:
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=len(LABELS))[:len(LABELS)]
    return dict(zip(LABELS, (counts / max(counts.sum(), 1)).round(6).tolist()))


def data_profile(lengths: np.ndarray, unknown: np.ndarray, scores: np.ndarray, labels: Optional[np.ndarray] = None) -> dict:
    """`scores`: class probabilities per row, in LABELS order; `labels`: the true ones where known."""
    profile = {"rows": int(len(lengths)), "label_mix": mix(scores.argmax(1)),
               "token_length": {"edges": LENGTH_EDGES, "counts": histogram(lengths, LENGTH_EDGES)},
               "unknown_rate": float(unknown.sum() / max(lengths.sum(), 1)),
               "confidence": {"edges": CONFIDENCE_EDGES, "counts": histogram(scores.max(1), CONFIDENCE_EDGES)}}
    if labels is not None:
        profile["true_label_mix"] = mix(labels)
    return profile


def write_profile(directory: str | Path, profile: dict) -> None:
    """profile.json into a model directory: a local path or a URI."""
    write_text(join(directory, PROFILE_FILE), json.dumps(profile, indent=2) + "\n")


def read_profile(directory: Path) -> Optional[dict]:
    path = Path(directory) / PROFILE_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def psi(expected: Sequence[float], actual: Sequence[float]) -> float:
    """Population stability index of two distributions over the same bins (counts or shares): the sum over bins
    of (a - e) ln(a / e). Under 0.1 is commonly read as stable, 0.1-0.2 as a shift, above 0.2 as drift."""
    e = np.maximum(np.asarray(expected, dtype=np.float64) / max(np.sum(expected), 1e-12), PSI_FLOOR)
    a = np.maximum(np.asarray(actual, dtype=np.float64) / max(np.sum(actual), 1e-12), PSI_FLOOR)
    return float(((a - e) * np.log(a / e)).sum())
