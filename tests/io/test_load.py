"""Bad inputs to load_ct: each raises the exact error type with a one-line message and writes nothing."""

from __future__ import annotations

import gzip

import nibabel as nib
import numpy as np
import pytest

from covidseg.errors import InputError, NotHUError
from covidseg.io import load_ct
from tests.io.geometry import synthetic_ct


def _nifti(tmp_path, data, name="scan.nii.gz"):
    path = tmp_path / name
    nib.save(nib.Nifti1Image(data, np.diag([0.7, 0.7, 5.0, 1.0])), path)
    return path


def _write_valid(tmp_path):
    return _nifti(tmp_path, synthetic_ct((40, 48, 12), (5, 6, 7)), "valid.nii.gz")


def _bad_missing(tmp_path):
    return tmp_path / "nope" / "scan.nii.gz"


def _bad_empty(tmp_path):
    path = tmp_path / "empty.nii.gz"
    path.write_bytes(b"")
    return path


def _bad_empty_gzip(tmp_path):
    path = tmp_path / "empty-gz.nii.gz"
    path.write_bytes(gzip.compress(b""))
    return path


def _bad_truncated(tmp_path):
    valid = _write_valid(tmp_path)
    raw = valid.read_bytes()
    path = tmp_path / "truncated.nii.gz"
    path.write_bytes(raw[: len(raw) // 2])
    valid.unlink()
    return path


def _bad_2d(tmp_path):
    return _nifti(tmp_path, np.full((40, 48), -1000, np.int16), "flat.nii.gz")


def _bad_4d(tmp_path):
    return _nifti(tmp_path, np.full((20, 24, 6, 3), -1000, np.int16), "time.nii.gz")


def _bad_nan(tmp_path):
    data = synthetic_ct((20, 24, 6), (2, 3, 4)).astype(np.float32)
    data[3, 4, 5] = np.nan
    return _nifti(tmp_path, data, "nan.nii.gz")


def _bad_windowed(tmp_path):
    data = np.clip((synthetic_ct((20, 24, 6), (2, 3, 4)).astype(np.int32) + 1000) // 8, 0, 255).astype(np.uint8)
    return _nifti(tmp_path, data, "windowed.nii.gz")


def _bad_suffix(tmp_path):
    path = tmp_path / "scan.txt"
    path.write_text("hello")
    return path


BAD_INPUTS = {
    "missing path": (_bad_missing, InputError, r"scan\.nii\.gz: no such file or folder; check the path"),
    "empty file": (_bad_empty, InputError, r"the file is empty \(0 bytes\); re-export or re-download"),
    "empty gzip": (_bad_empty_gzip, InputError, r"cannot read the NIfTI file.*re-export or re-download"),
    "truncated": (_bad_truncated, InputError, r"cannot read the NIfTI file, it is truncated or corrupt"),
    "2-D": (_bad_2d, InputError, r"2-D with shape \(40, 48\), need 3-D; pass a 3-D volume"),
    "4-D": (_bad_4d, InputError, r"4-D with shape \(20, 24, 6, 3\), need 3-D; pass a single 3-D volume"),
    "NaN voxels": (_bad_nan, InputError, r"1 of 2880 voxels are NaN or infinite; fix or re-export"),
    "0..255 volume": (_bad_windowed, NotHUError, r"within 0\.\.255.*display-windowed.*--assume-hu"),
    "unsupported suffix": (_bad_suffix, InputError, r"unsupported input '\.txt'; pass a \.nii"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_raises_clear_one_line_error_and_writes_nothing(tmp_path, case):
    make, error, message = BAD_INPUTS[case]
    path = make(tmp_path)
    before = sorted(p.name for p in tmp_path.rglob("*"))
    with pytest.raises(error, match=message) as info:
        load_ct(path)
    assert type(info.value) is error
    assert "\n" not in str(info.value)
    assert str(path) in str(info.value)
    assert sorted(p.name for p in tmp_path.rglob("*")) == before


def test_windowed_volume_loads_with_assume_hu(tmp_path):
    vol = load_ct(_bad_windowed(tmp_path), assume_hu=True)
    assert vol.hu.dtype == np.int16 and vol.hu.max() <= 255


def test_image_window_is_ignored_for_volumes_with_a_warning(tmp_path):
    vol = load_ct(_write_valid(tmp_path), image_window=(-1000.0, 0.0))
    assert vol.source is not None
    assert any("image_window" in w for w in vol.source.warnings)


def test_non_integral_float_volume_stays_float32(tmp_path):
    data = synthetic_ct((20, 24, 6), (2, 3, 4)).astype(np.float32) + np.float32(0.25)
    vol = load_ct(_nifti(tmp_path, data))
    assert vol.hu.dtype == np.float32
    np.testing.assert_array_equal(vol.to_native(vol.hu), data)


def test_truncated_uncompressed_nifti_message_is_one_line(tmp_path):
    valid = _nifti(tmp_path, synthetic_ct((20, 24, 6), (2, 3, 4)), "full.nii")
    raw = valid.read_bytes()
    path = tmp_path / "cut.nii"
    path.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(InputError, match="truncated or corrupt") as info:
        load_ct(path)
    assert "\n" not in str(info.value)
