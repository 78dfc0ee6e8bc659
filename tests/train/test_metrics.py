from __future__ import annotations

import numpy as np
import pytest
import torch

from covidseg.errors import InputError
from covidseg.train.metrics import case_scores, confusion_matrix, mean_scores

CLASSES = ("background", "lung", "opacity")


def test_confusion_matrix_counts() -> None:
    pred = np.array([0, 1, 2, 2, 1])
    true = np.array([0, 1, 1, 2, 2])
    m = confusion_matrix(pred, true, 3)
    assert m.tolist() == [[1, 0, 0], [0, 1, 1], [0, 1, 1]]


def test_case_scores_hand_values_in_3d() -> None:
    true = np.zeros((2, 4, 4), np.uint8)
    pred = np.zeros((2, 4, 4), np.uint8)
    true[0, :2, :2] = 2  # 4 opacity voxels in slice 0
    true[1, 0, 0] = 2  # 1 in slice 1
    pred[0, :2, :1] = 2  # 2 of them found
    pred[1, 3, 3] = 2  # a false positive in slice 1
    s = case_scores(pred, true, CLASSES, case_id="c")
    # TP = 2, FN = 3, FP = 1: Dice = 4 / (4 + 1 + 3) = 0.5, sensitivity 2/5, precision 2/3
    assert s.dice["opacity"] == pytest.approx(0.5)
    assert s.sensitivity["opacity"] == pytest.approx(0.4)
    assert s.precision["opacity"] == pytest.approx(2 / 3)
    assert s.voxels["opacity"] == 5
    # 3-D Dice is not the mean of slice Dice (slice 0: 2*2/(2+4) = 2/3, slice 1: 0)
    per_slice = [case_scores(pred[i], true[i], CLASSES).dice["opacity"] for i in range(2)]
    assert np.mean(per_slice) != pytest.approx(s.dice["opacity"])


def test_empty_conventions() -> None:
    empty = np.zeros((1, 3, 3), np.uint8)
    s = case_scores(empty, empty, CLASSES)
    assert s.dice["opacity"] == 1.0 and s.sensitivity["opacity"] == 1.0 and s.precision["opacity"] == 1.0
    truth = empty.copy()
    truth[0, 1, 1] = 2
    missed = case_scores(empty, truth, CLASSES)
    assert missed.dice["opacity"] == 0.0 and missed.sensitivity["opacity"] == 0.0
    assert missed.precision["opacity"] == 1.0  # nothing predicted, nothing false claimed
    false_alarm = case_scores(truth, empty, CLASSES)
    assert false_alarm.dice["opacity"] == 0.0 and false_alarm.precision["opacity"] == 0.0
    assert false_alarm.sensitivity["opacity"] == 1.0


def test_mean_scores_over_cases() -> None:
    a = np.zeros((1, 2, 2), np.uint8)
    b = a.copy()
    b[0, 0, 0] = 2
    scores = [case_scores(a, a, CLASSES, "empty"), case_scores(a, b, CLASSES, "missed")]
    means = mean_scores(scores)
    assert means["dice_opacity"] == pytest.approx(0.5)
    assert means["dice_lung"] == pytest.approx(1.0)
    assert means["dice_mean"] == pytest.approx(0.75)
    assert means["sensitivity_opacity"] == pytest.approx(0.5)


def test_shape_and_value_errors() -> None:
    with pytest.raises(InputError, match="differs"):
        case_scores(np.zeros((2, 2)), np.zeros((2, 3)), CLASSES)
    with pytest.raises(InputError, match=r"0\.\.2"):
        case_scores(torch.full((2, 2), 3), torch.zeros(2, 2, dtype=torch.long), CLASSES)
    with pytest.raises(InputError):
        mean_scores([])
