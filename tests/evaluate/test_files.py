from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from covidseg.errors import InputError
from covidseg.evaluate.files import evaluate_paths
from covidseg.evaluate.scores import summarize
from tests.evaluate.synth import SPACING, cube_labels, write_map, write_png


def _one(tmp_path: Path, pred: np.ndarray, ref: np.ndarray, **kwargs: object):
    p = write_map(pred, tmp_path / "pred" / "case1_labels.nii.gz")
    r = write_map(ref, tmp_path / "ref" / "case1.nii.gz")
    return evaluate_paths(p.parent, r.parent, **kwargs)  # type: ignore[arg-type]


def test_perfect_prediction_scores_one(tmp_path: Path) -> None:
    labels = cube_labels()
    result = _one(tmp_path, labels, labels)
    (case,) = result.cases
    assert case.case_id == "case1" and case.structures == ("opacity", "lung")
    for structure in ("opacity", "lung"):
        s = case.scores(structure)
        assert (s.dice, s.sensitivity, s.precision, s.fp, s.fn) == (1.0, 1.0, 1.0, 0, 0)
        assert s.volume_diff == 0.0


@pytest.mark.parametrize("shift", [1, 3, 7])
def test_shifted_cube_gives_the_expected_overlap(tmp_path: Path, shift: int) -> None:
    size = 10
    result = _one(tmp_path, cube_labels(shift=shift, size=size), cube_labels(size=size))
    s = result.cases[0].scores("opacity")
    expected = (size - shift) / size  # overlap (size - shift) columns of the same cube volume
    assert s.dice == pytest.approx(expected)
    assert s.sensitivity == pytest.approx(expected) and s.precision == pytest.approx(expected)
    assert s.tp == (size - shift) * 4 * 10 and s.fp == s.fn == shift * 4 * 10
    # the whole lungs (lung + opacity) did not change: the shifted cube stays inside the lung block
    assert result.cases[0].scores("lung").dice == 1.0


def test_volume_in_ml_is_voxel_count_times_spacing(tmp_path: Path) -> None:
    ref = cube_labels(size=10)
    pred = cube_labels(size=6)
    s = _one(tmp_path, pred, ref).cases[0].scores("opacity")
    voxel_ml = float(np.prod(SPACING)) / 1000.0
    assert s.volume_ref == pytest.approx(4 * 10 * 10 * voxel_ml, rel=1e-6)
    assert s.volume_pred == pytest.approx(4 * 10 * 6 * voxel_ml, rel=1e-6)
    assert s.volume_diff == pytest.approx(-4 * 10 * 4 * voxel_ml, rel=1e-6)


def test_same_grid_stored_ras_and_lps_compares_equal(tmp_path: Path) -> None:
    labels = cube_labels(shift=2)
    p = write_map(labels, tmp_path / "pred" / "c_labels.mha")  # ITK, LPS
    r = write_map(cube_labels(), tmp_path / "ref" / "c.nii.gz")  # NIfTI, RAS
    s = evaluate_paths(p, r).cases[0].scores("opacity")
    assert s.dice == pytest.approx(8 / 10)


def test_geometry_mismatch_is_an_input_error(tmp_path: Path) -> None:
    labels = cube_labels()
    write_map(labels, tmp_path / "ref" / "c.nii.gz")
    write_map(labels, tmp_path / "spacing" / "c_labels.nii.gz", spacing=(2.5, 0.75, 0.6))
    with pytest.raises(InputError, match=r"different grids: spacing \(2\.5, 0\.75, 0\.6\) vs \(2\.5, 0\.75, 0\.5\)"):
        evaluate_paths(tmp_path / "spacing", tmp_path / "ref")
    write_map(labels[:, :, :-1], tmp_path / "shape" / "c_labels.nii.gz")
    with pytest.raises(InputError, match=r"has shape \(8, 24, 31\).*has \(8, 24, 32\)"):
        evaluate_paths(tmp_path / "shape", tmp_path / "ref")


def test_name_matching_and_missing_cases(tmp_path: Path) -> None:
    labels = cube_labels()
    for name in ("a", "b", "c"):
        write_map(labels, tmp_path / "pred" / f"{name}_labels.nii.gz")
    write_png(np.zeros((4, 4), np.uint8), tmp_path / "pred" / "a_overview.png")  # predict's picture: not a case
    for name in ("a", "b", "d"):
        write_map(labels, tmp_path / "ref" / f"{name}_mask.nii.gz")
    with pytest.raises(InputError, match=r"1 prediction\(s\) without a reference \(c\).*1 reference\(s\).*\(d\)"):
        evaluate_paths(tmp_path / "pred", tmp_path / "ref")
    result = evaluate_paths(tmp_path / "pred", tmp_path / "ref", allow_missing=True)
    assert [c.case_id for c in result.cases] == ["a", "b"]
    assert result.prediction_only == ("c",) and result.reference_only == ("d",)
    assert result.info()["missing"] == {"prediction_only": ["c"], "reference_only": ["d"]}
    # only "_mask" stripped: the predictions keep "_labels" in their names, and nothing matches
    with pytest.raises(InputError, match="no prediction matches a reference"):
        evaluate_paths(tmp_path / "pred", tmp_path / "ref", strip_suffixes=["_mask"], allow_missing=True)


def test_binary_references_auto_detected(tmp_path: Path) -> None:
    pred = cube_labels(shift=5)
    ref255 = np.where(cube_labels() == 2, 255, 0).astype(np.uint8)
    result = _one(tmp_path / "a", pred, ref255)
    assert result.reference_scheme.name == "binary" and result.cases[0].structures == ("opacity",)
    assert result.cases[0].scores("opacity").dice == pytest.approx(0.5)
    ref01 = (cube_labels() == 2).astype(np.uint8)
    result01 = _one(tmp_path / "b", pred, ref01)
    assert result01.reference_scheme.name == "binary" and any("only 0 and 1" in n for n in result01.notes)
    assert result01.cases[0].scores("opacity").dice == pytest.approx(0.5)
    # the same 0/1 file read as multiclass: 1 is lung, no opacity in the reference
    as_lung = _one(tmp_path / "c", pred, ref01, ref_labels="multiclass")
    assert as_lung.cases[0].scores("opacity").sensitivity == 1.0 and as_lung.cases[0].scores("opacity").dice == 0.0
    with pytest.raises(InputError, match="values 255"):
        _one(tmp_path / "d", pred, ref255, ref_labels="multiclass")


def test_unknown_values_are_errors(tmp_path: Path) -> None:
    ref = cube_labels()
    ref[0, 0, 0] = 7
    with pytest.raises(InputError, match="reference label values 0, 1, 2, 7"):
        _one(tmp_path, cube_labels(), ref)


def test_png_slices_report_pixels_and_pooled_dice(tmp_path: Path) -> None:
    ref_a = np.zeros((16, 16), np.uint8)
    ref_a[2:10, 2:10] = 255  # 64 px
    ref_b = np.zeros((16, 16), np.uint8)  # empty reference
    pred_a = np.zeros((16, 16), np.uint8)
    pred_a[2:10, 2:6] = 2  # 32 px, all inside
    pred_b = np.zeros((16, 16), np.uint8)
    pred_b[0:4, 0:4] = 2  # 16 false-positive px
    write_png(ref_a, tmp_path / "ref" / "s_01.png")
    write_png(ref_b, tmp_path / "ref" / "s_02.png")
    write_png(pred_a, tmp_path / "pred" / "s_01.png")
    write_png(pred_b, tmp_path / "pred" / "s_02.png")
    result = evaluate_paths(tmp_path / "pred", tmp_path / "ref")
    a, b = result.cases
    assert a.volume_unit == "px" and a.n_slices == 1
    assert a.scores().dice == pytest.approx(2 * 32 / (64 + 32)) and a.scores().volume_ref == 64.0
    assert b.scores().dice == 0.0 and b.scores().volume_pred == 16.0
    summary = summarize(result.cases)
    assert summary["pooled"]["opacity"]["dice"] == pytest.approx(2 * 32 / (2 * 32 + 16 + 32))
    assert summary["structures"]["opacity"]["dice"]["mean"] == pytest.approx((2 * 32 / 96) / 2)
    assert any("pixel" in note for note in result.notes)


def test_png_reference_against_nifti_prediction_checks_shape(tmp_path: Path) -> None:
    write_png(np.zeros((16, 12), np.uint8), tmp_path / "ref" / "s.png")
    write_map(np.zeros((1, 12, 16), np.uint8), tmp_path / "pred" / "s_labels.nii.gz", spacing=(1.0, 1.0, 1.0))
    with pytest.raises(InputError, match=r"shape \(1, 12, 16\)"):
        evaluate_paths(tmp_path / "pred", tmp_path / "ref")
