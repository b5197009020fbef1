"""The evaluation plots (stack.plots): confusion counts and the blank-removal curve."""

from __future__ import annotations

import numpy as np

from stack.plots import blank_curve, confusion

CLASSES = ["chimp", "duiker", "blank"]


def _onehot(labels: list[int]) -> np.ndarray:
    return np.eye(3)[labels]


def test_confusion_counts_true_rows_and_predicted_columns() -> None:
    targets = _onehot([0, 0, 1, 2, 2])
    probs = np.array(
        [[0.9, 0.1, 0.0], [0.2, 0.7, 0.1], [0.1, 0.8, 0.1], [0.3, 0.1, 0.6], [0.5, 0.1, 0.4]]
    )
    np.testing.assert_array_equal(confusion(targets, probs), [[1, 1, 0], [0, 1, 0], [1, 0, 1]])


def test_blank_removal_curve() -> None:
    # P(blank) of 2 blank clips (0.9, 0.6) and 3 animal clips (0.7, 0.2, 0.2)
    targets = _onehot([2, 0, 2, 1, 0])
    pb = np.array([0.9, 0.7, 0.6, 0.2, 0.2])
    probs = np.stack([1 - pb, np.zeros(5), pb], axis=1)
    curve = blank_curve(targets, probs, CLASSES)
    assert curve is not None
    np.testing.assert_allclose(curve.thresholds, [np.inf, 0.9, 0.7, 0.6, 0.2])
    np.testing.assert_allclose(curve.blanks_removed, [0, 0.5, 0.5, 1, 1])
    np.testing.assert_allclose(curve.animals_lost, [0, 0, 1 / 3, 1 / 3, 1])  # ties: one step
    assert curve.removed_at(0.0) == 0.5 and curve.removed_at(0.4) == 1.0


def test_no_curve_without_blank_class_or_without_blank_clips() -> None:
    probs = np.full((2, 3), 1 / 3)
    assert blank_curve(_onehot([0, 1]), probs, CLASSES) is None
    assert blank_curve(_onehot([0, 1]), probs, ["a", "b", "c"]) is None
