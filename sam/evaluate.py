"""Evaluation of a model directory on labelled tweets: scikit-learn metrics, a table, JSON, a plot."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np
from sklearn.metrics import accuracy_score, classification_report, confusion_matrix, f1_score

from sam import LABELS

if TYPE_CHECKING:
    from sam.predict import Predictor


def classification_metrics(labels: Sequence[int], predicted: Sequence[int]) -> dict:
    """Accuracy, macro-F1, per-class precision/recall/F1 and the confusion matrix: the one place they are
    computed, for validation during training and for `sam evaluate`."""
    n, classes = len(labels), range(len(LABELS))
    if not n:
        return {"accuracy": 0.0, "macro_f1": 0.0, "n": 0, "per_class": {}, "confusion_matrix": []}
    report = classification_report(labels, predicted, labels=classes, target_names=LABELS, output_dict=True, zero_division=0)
    return {
        "accuracy": float(accuracy_score(labels, predicted)),
        "macro_f1": float(f1_score(labels, predicted, average="macro", labels=classes, zero_division=0)),
        "n": n,
        "per_class": {name: {k: float(report[name][k]) for k in ("precision", "recall", "f1-score", "support")} for name in LABELS},
        "confusion_matrix": confusion_matrix(labels, predicted, labels=classes).tolist(),
    }


def evaluate(predictor: "Predictor", texts: list[str], labels: np.ndarray) -> dict:
    return classification_metrics(labels, predictor.scores(texts).argmax(-1).numpy())


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
