"""HU sanity heuristics: what looks like HU and what does not, and the messages that name the flags."""

from __future__ import annotations

import numpy as np
import pytest

from covidseg.errors import InputError, NotHUError
from covidseg.io import looks_like_hu
from covidseg.io.sanity import check_finite, check_hu, check_modality, squeeze_to_3d
from tests.io.geometry import synthetic_ct


def test_synthetic_ct_and_padding_look_like_hu():
    hu = synthetic_ct((10, 20, 20), (3, 3, 3))
    assert looks_like_hu(hu)[0]
    padded = hu.copy()
    padded[:, :2] = -3024  # scanners pad outside the field of view far below air
    ok, reason = looks_like_hu(padded)
    assert ok and "consistent with HU" in reason


@pytest.mark.parametrize(
    ("values", "phrase"),
    [
        (np.arange(256, dtype=np.uint8).reshape(4, 8, 8), "display-windowed"),
        (np.linspace(0.0, 1.0, 64).reshape(4, 4, 4), "display-windowed"),
        (np.arange(0, 4096, 16, dtype=np.int16).reshape(4, 8, 8), "without the rescale intercept"),
        (np.full((4, 4, 4), -800.0), "all intensities are negative"),
        (np.array([[[np.nan, 0.0]]]), "NaN"),
        (np.zeros((0, 4, 4)), "empty"),
    ],
)
def test_not_hu_cases(values, phrase):
    ok, reason = looks_like_hu(values)
    assert not ok
    assert phrase in reason


def test_check_hu_message_names_the_flag():
    with pytest.raises(NotHUError, match=r"^scan\.nii: intensities do not look like Hounsfield units .*--assume-hu"):
        check_hu(np.arange(256).reshape(4, 8, 8), "scan.nii")


@pytest.mark.parametrize("modality", ["MR", "PT", "mr "])
def test_non_ct_modality_names_allow_non_ct(modality):
    with pytest.raises(NotHUError, match=f"modality is {modality}, not CT.*--allow-non-ct"):
        check_modality(modality, "series")


def test_ct_and_unknown_modality_pass():
    check_modality("CT", "series")
    check_modality(" ct", "series")
    check_modality(None, "scan.nii.gz")


def test_check_finite_counts_bad_voxels():
    arr = np.zeros((2, 3, 4), np.float32)
    arr[0, 0, :3] = [np.nan, np.inf, -np.inf]
    with pytest.raises(InputError, match="3 of 24 voxels are NaN or infinite"):
        check_finite(arr, "x.nii.gz")
    check_finite(np.zeros(3, np.int16), "x.nii.gz")


def test_squeeze_to_3d_shapes():
    assert squeeze_to_3d(np.zeros((2, 3, 4, 1, 1)), "x").shape == (2, 3, 4)
    with pytest.raises(InputError, match=r"2-D with shape \(5, 6\), need 3-D"):
        squeeze_to_3d(np.zeros((5, 6)), "x")
    with pytest.raises(InputError, match=r"4-D with shape \(2, 3, 4, 2\), need 3-D; pass a single 3-D volume"):
        squeeze_to_3d(np.zeros((2, 3, 4, 2)), "x")
    with pytest.raises(InputError, match="no voxels"):
        squeeze_to_3d(np.zeros((2, 0, 4)), "x")
