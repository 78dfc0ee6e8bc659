"""The real abdominal CT from ../shared/data/real-ct (skipped when the shared data folder is absent)."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from covidseg.io import describe, load_ct, save_mask
from tests.io.geometry import DATA_DIR, assert_same_voxels

REAL_CT = DATA_DIR / "real-ct" / "abdomen-small.nii.gz"
pytestmark = pytest.mark.skipif(not REAL_CT.is_file(), reason=f"real CT not present at {REAL_CT}")


def test_real_ct_loads_as_hu_with_documented_shape_and_spacing():
    vol = load_ct(REAL_CT)
    assert vol.hu.dtype == np.int16
    # README: 122 x 101 x 30 voxels at 3 mm, RAS orientation.
    assert vol.source is not None and vol.source.native_shape == (122, 101, 30)
    assert vol.shape == (30, 101, 122)
    np.testing.assert_allclose(vol.spacing, (3.0, 3.0, 3.0))
    assert -1200 <= vol.hu.min() <= -1000 and 1000 <= vol.hu.max() <= 1300
    info = describe(vol)
    assert info["looks_like_hu"] and info["orientation_native"] == "RAS"
    assert_same_voxels(vol, np.asarray(nib.load(REAL_CT).dataobj), nib.load(REAL_CT).affine)


def test_real_ct_mask_round_trip_preserves_affine(tmp_path):
    vol = load_ct(REAL_CT)
    body = (vol.hu > -300).astype(np.uint8)
    out = save_mask(body, vol, tmp_path / "body.nii.gz")
    src, written = nib.load(REAL_CT), nib.load(out)
    np.testing.assert_allclose(written.affine, src.affine, atol=1e-6)
    assert written.header["sform_code"] == src.header["sform_code"]
    assert written.header["qform_code"] == src.header["qform_code"]
    np.testing.assert_array_equal(np.asarray(written.dataobj), (np.asarray(src.dataobj) > -300).astype(np.uint8))
