"""describe(): what `covidseg info` prints, checked on loaded files of known geometry."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import SimpleITK as sitk  # noqa: N813

from covidseg.io import CTVolume, canonical_affine, describe, load_ct, write_dicom_series
from covidseg.io.describe import obliquity_deg
from tests.io.geometry import rotation, synthetic_ct


def test_describe_nifti_lps(tmp_path):
    data = synthetic_ct((40, 48, 12), (3, 4, 5))
    path = tmp_path / "lps.nii.gz"
    nib.save(nib.Nifti1Image(data, np.diag([-0.75, -0.75, 5.0, 1.0])), path)
    info = describe(load_ct(path))
    json.dumps(info)  # serializable as is
    assert info["format"] == "nifti" and info["path"] == str(path)
    assert info["shape_native"] == [40, 48, 12] and info["shape_canonical"] == [12, 48, 40]
    assert info["spacing_mm"] == [5.0, 0.75, 0.75]
    assert info["orientation_native"] == "LPS" and info["orientation_canonical"] == "SPL"
    assert info["obliquity_deg"] == 0.0
    assert info["dtype"] == "int16"
    assert info["hu_min"] == float(data.min()) and info["hu_max"] == 1500.0
    assert info["hu_percentiles"]["p1"] == -1000.0
    assert info["looks_like_hu"] is True and "consistent with HU" in info["hu_reason"]
    assert info["warnings"] == []


def test_describe_itk_reports_file_index_orientation(tmp_path):
    image = sitk.GetImageFromArray(synthetic_ct((12, 48, 40), (3, 4, 5)))
    image.SetDirection((1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0))
    path = tmp_path / "ct.nrrd"
    sitk.WriteImage(image, str(path))
    info = describe(load_ct(path))
    # ITK identity direction: i to +x (Left), j to +y (Posterior), k to +z (Superior).
    assert info["orientation_native"] == "LPS" and info["shape_native"] == [12, 48, 40]


def test_describe_dicom_and_synthetic(tmp_path):
    aff = canonical_affine((2.0, 0.5, 0.5))
    aff[:3, :3] = rotation("z", 20) @ aff[:3, :3]
    vol = CTVolume.from_canonical(synthetic_ct((6, 20, 24), (1, 2, 3)), aff)
    synthetic = describe(vol)
    assert synthetic["format"] == "synthetic" and synthetic["path"] is None
    assert abs(synthetic["obliquity_deg"] - 20.0) < 1e-6
    write_dicom_series(vol, tmp_path / "ct")
    info = describe(load_ct(tmp_path / "ct"))
    assert info["format"] == "dicom" and info["modality"] == "CT" and info["series_uid"]
    assert info["shape_native"] == [6, 20, 24] and info["orientation_native"] == "LPS"


def test_describe_flags_windowed_volume(tmp_path):
    vol = CTVolume.from_canonical(np.arange(240).reshape(4, 6, 10), np.eye(4))
    info = describe(vol)
    assert info["looks_like_hu"] is False and "0..255" in info["hu_reason"]


def test_obliquity_of_rotated_affine():
    aff = np.eye(4)
    aff[:3, :3] = rotation("x", 20) @ np.diag([1.0, 2.0, 3.0])
    assert abs(obliquity_deg(aff) - 20.0) < 1e-9
