"""Metrics checked against values computed by hand."""

import numpy as np
import pytest

from glue_astrovlm import AstroVLMError
from glue_astrovlm.metrics import compute_metrics, confusion_matrix, expected_calibration_error


def test_metrics_match_hand_computation():
    labels = ["FRI", "FRII", "Compact"]
    true = ["FRI", "FRI", "FRII", "FRII", "Compact", "Compact"]
    probs = np.array([[0.8, 0.1, 0.1], [0.3, 0.6, 0.1], [0.2, 0.7, 0.1],
                      [0.1, 0.8, 0.1], [0.1, 0.1, 0.8], [0.5, 0.2, 0.3]])
    m = compute_metrics(true, probs, labels, n_boot=500)
    assert m.accuracy == pytest.approx(4 / 6)
    np.testing.assert_array_equal(m.confusion, [[1, 1, 0], [0, 2, 0], [1, 0, 1]])
    assert m.per_class["FRI"] == pytest.approx({"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2})
    assert m.per_class["FRII"]["precision"] == pytest.approx(2 / 3)
    assert m.per_class["FRII"]["f1"] == pytest.approx(0.8)
    assert m.macro["f1"] == pytest.approx((0.5 + 0.8 + 2 / 3) / 3)
    low, high = m.accuracy_ci
    assert 0 <= low <= m.accuracy <= high <= 1
    d = m.to_dict()
    assert d["n"] == 6 and len(d["reliability"]) == 10


def test_ece_of_perfect_calibration_is_zero_and_of_overconfidence_is_positive():
    conf = np.array([0.75] * 4)
    assert expected_calibration_error(conf, np.array([1, 1, 1, 0.0])) == pytest.approx(0.0)
    assert expected_calibration_error(np.array([0.95] * 4), np.array([1, 0, 1, 0.0])) == pytest.approx(0.45)


def test_unknown_labels_and_empty_input_are_errors():
    with pytest.raises(AstroVLMError, match="not in the label set"):
        confusion_matrix(["x"], ["a"], ["a", "b"])
    with pytest.raises(AstroVLMError, match="No images"):
        compute_metrics([], np.zeros((0, 2)), ["a", "b"])


def test_baselines_for_imbalanced_classes():
    """On imbalanced data the majority class, not 1/K, is the accuracy to beat (issue 11)."""
    labels = ["spiral", "elliptical", "merger", "edge-on", "irregular", "other"]
    true = ["spiral"] * 71 + ["elliptical"] * 20 + ["merger"] * 9
    always_spiral = np.tile(np.eye(len(labels))[0], (len(true), 1))
    m = compute_metrics(true, always_spiral, labels, n_boot=10)
    assert m.accuracy == pytest.approx(0.71) and m.majority_baseline == pytest.approx(0.71)
    assert m.majority_class == "spiral" and m.chance == pytest.approx(1 / 6)
    assert m.balanced_accuracy == pytest.approx(1 / 3)  # recall 1, 0, 0 over the three classes present
    assert m.to_dict()["majority_baseline"] == pytest.approx(0.71)
