from __future__ import annotations

import numpy as np
import pytest

from covidseg.errors import InputError
from covidseg.evaluate.scores import CaseEval, pooled_scores, summarize
from covidseg.train.metrics import case_scores


def _case(case_id: str, matrix: list[list[int]], unit: str = "mL", volume: float = 0.002) -> CaseEval:
    return CaseEval(case_id, np.array(matrix), has_lung=True, n_slices=2, voxel_volume=volume, volume_unit=unit)


def test_scores_agree_with_training_metrics() -> None:
    rng = np.random.default_rng(0)
    ref = rng.integers(0, 3, size=(3, 16, 16))
    pred = np.where(rng.random((3, 16, 16)) < 0.7, ref, rng.integers(0, 3, size=(3, 16, 16)))
    matrix = np.zeros((3, 3), np.int64)
    np.add.at(matrix, (ref.ravel(), pred.ravel()), 1)
    case = _case("c", matrix.tolist())
    expected = case_scores(pred, ref, ("background", "lung", "opacity"))
    assert case.scores("opacity").dice == pytest.approx(expected.dice["opacity"])
    assert case.scores("opacity").precision == pytest.approx(expected.precision["opacity"])
    lungs = case_scores(pred > 0, ref > 0, ("rest", "lung"))
    assert case.scores("lung").dice == pytest.approx(lungs.dice["lung"])
    assert case.scores("lung").sensitivity == pytest.approx(lungs.sensitivity["lung"])


def test_empty_reference_and_prediction_score_one() -> None:
    s = _case("empty", [[100, 0, 0], [0, 0, 0], [0, 0, 0]]).scores("opacity")
    assert (s.dice, s.sensitivity, s.precision, s.volume_ref) == (1.0, 1.0, 1.0, 0.0)


def test_summary_statistics_and_pooling() -> None:
    a = _case("a", [[90, 0, 0], [0, 0, 0], [0, 0, 10]])  # opacity Dice 1
    b = _case("b", [[90, 0, 5], [0, 0, 0], [5, 0, 0]])  # opacity Dice 0
    c = _case("c", [[90, 0, 0], [0, 0, 0], [5, 0, 5]])  # opacity Dice 2/3
    summary = summarize([a, b, c])
    dice = summary["structures"]["opacity"]["dice"]
    values = [1.0, 0.0, 2 / 3]
    assert dice["mean"] == pytest.approx(np.mean(values)) and dice["median"] == pytest.approx(2 / 3)
    assert dice["std"] == pytest.approx(np.std(values, ddof=1))
    assert summary["pooled"]["opacity"]["dice"] == pytest.approx(2 * 15 / (2 * 15 + 5 + 10))
    assert summary["structures"]["opacity"]["volume_ref"]["mean"] == pytest.approx((10 + 5 + 10) * 0.002 / 3)
    assert pooled_scores([a, b], "opacity").volume_pred == pytest.approx((10 + 5) * 0.002)
    assert summarize([a])["structures"]["opacity"]["dice"]["std"] is None


def test_units_must_agree_and_structures_exist() -> None:
    with pytest.raises(InputError, match="mix 2-D slices"):
        summarize([_case("a", np.eye(3, dtype=int).tolist()), _case("b", np.eye(3, dtype=int).tolist(), "px", 1.0)])
    binary = CaseEval("x", np.eye(3, dtype=int), has_lung=False, n_slices=1, voxel_volume=1.0, volume_unit="px")
    with pytest.raises(InputError, match="no lung scores"):
        binary.scores("lung")
    assert "lung" not in summarize([binary])["structures"]
