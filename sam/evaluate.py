"""Evaluation of a model directory on labelled tweets: scikit-learn metrics, a table, JSON, a plot."""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import numpy as np
from sklearn.metrics import accuracy_score, classification_report, confusion_matrix, f1_score

from sam import LABELS


def classification_metrics(labels: Sequence[int], predicted: Sequence[int], counts: Optional[Sequence[int]] = None) -> dict:
    """Accuracy, macro-F1, per-class precision/recall/F1 and the confusion matrix: the one place they are
    computed, for validation during training and for `sam evaluate`. `counts` weighs each (label, predicted)
    pair, so a confusion matrix of any size can stand for its rows."""
    n, classes = int(np.sum(counts) if counts is not None else len(labels)), range(len(LABELS))
    if not n:
        return {"accuracy": 0.0, "macro_f1": 0.0, "n": 0, "per_class": {}, "confusion_matrix": []}
    report = classification_report(labels, predicted, labels=classes, target_names=LABELS, output_dict=True,
                                   zero_division=0, sample_weight=counts)
    return {
        "accuracy": float(accuracy_score(labels, predicted, sample_weight=counts)),
        "macro_f1": float(f1_score(labels, predicted, average="macro", labels=classes, zero_division=0, sample_weight=counts)),
        "n": n,
        "per_class": {name: {k: float(report[name][k]) for k in ("precision", "recall", "f1-score", "support")} for name in LABELS},
        "confusion_matrix": confusion_matrix(labels, predicted, labels=classes, sample_weight=counts).astype(int).tolist(),
    }


def metrics_from_confusion(matrix: np.ndarray) -> dict:
    """`classification_metrics` of the rows a confusion matrix (given label x predicted) counts."""
    given, predicted = np.indices(matrix.shape)
    return classification_metrics(given.ravel(), predicted.ravel(), counts=matrix.ravel())


def format_table(results: dict) -> str:
    lines = [f"n={results['n']}  accuracy={results['accuracy']:.4f}  macro-F1={results['macro_f1']:.4f}", "",
             f"{'class':<10}{'precision':>10}{'recall':>10}{'f1':>10}{'support':>10}"]
    for name, row in results["per_class"].items():
        lines.append(f"{name:<10}{row['precision']:>10.4f}{row['recall']:>10.4f}{row['f1-score']:>10.4f}{int(row['support']):>10}")
    lines += ["", "confusion matrix (rows: true, columns: predicted)", " " * 10 + "".join(f"{n:>10}" for n in LABELS)]
    lines += [f"{name:<10}" + "".join(f"{v:>10}" for v in row) for name, row in zip(LABELS, results["confusion_matrix"])]
    return "\n".join(lines)


def plot_confusion(results: dict, path: str | Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from sklearn.metrics import ConfusionMatrixDisplay

    display = ConfusionMatrixDisplay(np.array(results["confusion_matrix"]), display_labels=LABELS)
    display.plot(cmap="Blues", values_format="d")
    display.ax_.set_title(f"accuracy {results['accuracy']:.3f}, macro-F1 {results['macro_f1']:.3f}")
    display.figure_.savefig(path, dpi=120, bbox_inches="tight")
