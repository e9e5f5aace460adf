"""Classification metrics for `astrovlm eval`: accuracy with a bootstrap interval, per-class and
averaged precision/recall/F1, the confusion matrix, and calibration (ECE, reliability bins).

Pure numpy; every image counts (nothing is skipped: scored classification has no unparseable answers).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from .errors import AstroVLMError

__all__ = ["ClassificationMetrics", "compute_metrics", "confusion_matrix", "expected_calibration_error",
           "reliability_bins", "bootstrap_accuracy"]


def confusion_matrix(true: Sequence[str], pred: Sequence[str], labels: Sequence[str]) -> np.ndarray:
    """``(K, K)`` counts, rows = true label, columns = predicted label, in ``labels`` order."""
    index = {label: i for i, label in enumerate(labels)}
    unknown = sorted({t for t in list(true) + list(pred) if t not in index})
    if unknown:
        raise AstroVLMError(f"Labels {unknown} are not in the label set {list(labels)}.")
    matrix = np.zeros((len(labels), len(labels)), dtype=int)
    for t, p in zip(true, pred):
        matrix[index[t], index[p]] += 1
    return matrix


def reliability_bins(confidence: np.ndarray, correct: np.ndarray, n_bins: int = 10) -> list[dict]:
    """Equal-width confidence bins: count, mean confidence and accuracy of each (for the diagram)."""
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, n_bins - 1)
    bins = []
    for b in range(n_bins):
        members = which == b
        count = int(members.sum())
        bins.append({"low": float(edges[b]), "high": float(edges[b + 1]), "count": count,
                     "confidence": float(confidence[members].mean()) if count else float("nan"),
                     "accuracy": float(correct[members].mean()) if count else float("nan")})
    return bins


def expected_calibration_error(confidence: np.ndarray, correct: np.ndarray, n_bins: int = 10) -> float:
    """ECE: the count-weighted mean |accuracy - confidence| over equal-width confidence bins."""
    total = len(confidence)
    return float(sum(b["count"] / total * abs(b["accuracy"] - b["confidence"])
                     for b in reliability_bins(confidence, correct, n_bins) if b["count"]))


def bootstrap_accuracy(correct: np.ndarray, n_boot: int = 2000, level: float = 0.95,
                       seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the accuracy (resampling images with replacement)."""
    rng = np.random.default_rng(seed)
    samples = rng.integers(0, len(correct), size=(n_boot, len(correct)))
    accuracies = correct[samples].mean(axis=1)
    alpha = (1 - level) / 2
    return float(np.quantile(accuracies, alpha)), float(np.quantile(accuracies, 1 - alpha))


@dataclass
class ClassificationMetrics:
    """Everything `compute_metrics` measures; ``to_dict()`` is the JSON report's entry."""

    labels: list[str]
    n: int
    accuracy: float
    accuracy_ci: tuple[float, float]
    per_class: dict[str, dict[str, float]]
    macro: dict[str, float]
    weighted: dict[str, float]
    confusion: np.ndarray
    ece: float
    reliability: list[dict] = field(default_factory=list)
    balanced_accuracy: float = float("nan")
    majority_baseline: float = float("nan")
    majority_class: str = ""
    chance: float = float("nan")

    def to_dict(self) -> dict:
        return {"labels": self.labels, "n": self.n, "accuracy": self.accuracy,
                "accuracy_ci95": list(self.accuracy_ci), "balanced_accuracy": self.balanced_accuracy,
                "majority_baseline": self.majority_baseline, "majority_class": self.majority_class,
                "chance": self.chance, "per_class": self.per_class, "macro": self.macro,
                "weighted": self.weighted, "confusion": self.confusion.tolist(), "ece": self.ece,
                "reliability": self.reliability}


def compute_metrics(true: Sequence[str], probabilities: np.ndarray, labels: Sequence[str], *,
                    n_bins: int = 10, n_boot: int = 2000, seed: int = 0) -> ClassificationMetrics:
    """Metrics of a classification run.

    Besides accuracy (with a bootstrap interval), per-class and macro/weighted precision, recall and F1,
    the confusion matrix and calibration (ECE), it gives the baselines that accuracy must beat:
    ``chance`` (1/K, for balanced classes), ``majority_baseline`` (always answering the most frequent
    true class, the bar that matters on imbalanced data) and ``balanced_accuracy`` (the mean recall over
    the classes present).

    Parameters
    ----------
    true : sequence of str
        True label of each image.
    probabilities : numpy.ndarray
        ``(N, K)`` predicted probabilities in ``labels`` order.
    labels : sequence of str
        The label set.
    n_bins : int
        Confidence bins for ECE and the reliability diagram.
    n_boot : int
        Bootstrap resamples for the 95% accuracy interval.
    seed : int
        Seed of the bootstrap.
    """
    labels = list(labels)
    probabilities = np.asarray(probabilities, dtype=float)
    if len(true) == 0:
        raise AstroVLMError("No images to evaluate.")
    if probabilities.shape != (len(true), len(labels)):
        raise AstroVLMError(f"Expected probabilities of shape {(len(true), len(labels))}, got {probabilities.shape}.")
    pred = [labels[i] for i in probabilities.argmax(axis=1)]
    matrix = confusion_matrix(true, pred, labels)
    correct = np.array([t == p for t, p in zip(true, pred)], dtype=float)
    per_class = {}
    for i, label in enumerate(labels):
        tp = matrix[i, i]
        predicted, actual = matrix[:, i].sum(), matrix[i, :].sum()
        precision = tp / predicted if predicted else 0.0
        recall = tp / actual if actual else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_class[label] = {"precision": float(precision), "recall": float(recall), "f1": float(f1),
                            "support": int(actual)}
    support = np.array([per_class[label]["support"] for label in labels], dtype=float)
    present = support > 0
    macro = {key: float(np.mean([per_class[l][key] for l, p in zip(labels, present) if p]))
             for key in ("precision", "recall", "f1")}
    weighted = {key: float(sum(per_class[l][key] * s for l, s in zip(labels, support)) / support.sum())
                for key in ("precision", "recall", "f1")}
    confidence = probabilities.max(axis=1)
    counts = {label: sum(1 for t in true if t == label) for label in labels}
    majority = max(labels, key=lambda label: counts[label])
    return ClassificationMetrics(labels=labels, n=len(true), accuracy=float(correct.mean()),
                                 balanced_accuracy=macro["recall"], majority_baseline=counts[majority] / len(true),
                                 majority_class=majority, chance=1.0 / len(labels),
                                 accuracy_ci=bootstrap_accuracy(correct, n_boot, seed=seed), per_class=per_class,
                                 macro=macro, weighted=weighted, confusion=matrix,
                                 ece=expected_calibration_error(confidence, correct, n_bins),
                                 reliability=reliability_bins(confidence, correct, n_bins))
