"""NIfTI round trips: RAS, LPS, oblique, anisotropic and permuted inputs keep geometry and voxel positions."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from covidseg.errors import InputError
from covidseg.io import load_ct, save_mask, save_volume
from covidseg.io.nifti import read_nifti
from covidseg.io.volume import axcodes_of
from tests.io.geometry import (
    MARKER_HU,
    affine,
    assert_same_voxels,
    labels_from_hu,
    rotation,
    synthetic_ct,
    world,
)

SP = np.diag([0.7, 0.7, 5.0])
# name -> (native shape, 3x3 linear part of the affine, origin)
CASES = {
    "ras_anisotropic": ((40, 48, 12), SP, (-14.0, -20.0, 30.0)),
    "lps": ((40, 48, 12), np.diag([-0.7, -0.7, 5.0]), (14.0, 20.0, -30.0)),
    "oblique_20deg": ((40, 48, 12), rotation("z", 20) @ rotation("x", 10) @ SP, (3.0, -7.0, 11.0)),
    "permuted_yxz": ((48, 40, 12), np.array([[0, -0.7, 0], [0.7, 0, 0], [0, 0, 5.0]]), (1.0, 2.0, 3.0)),
    "permuted_zxy_flipped": ((12, 40, 48), np.array([[0, 0.7, 0], [0, 0, -0.7], [-5.0, 0, 0]]), (0.0, 0.0, 0.0)),
}


def _write_case(tmp_path, name, sform_code=2, qform_code=1):
    shape, linear, origin = CASES[name]
    marker = (shape[0] // 3, shape[1] // 2 + 1, shape[2] // 2 + 1)
    data = synthetic_ct(shape, marker)
    aff = affine(linear, origin)
    img = nib.Nifti1Image(data, aff)
    img.set_sform(aff, code=sform_code)
    img.set_qform(aff, code=qform_code)
    path = tmp_path / f"{name}.nii.gz"
    nib.save(img, path)
    return path, data, marker


@pytest.mark.parametrize("name", sorted(CASES))
def test_load_reorients_to_canonical_and_keeps_world_positions(tmp_path, name):
    path, data, marker = _write_case(tmp_path, name)
    in_affine = nib.load(path).affine
    vol = load_ct(path)

    assert vol.hu.dtype == np.int16 and vol.hu.flags.c_contiguous
    assert axcodes_of(vol.affine) == "SPL"
    assert sorted(vol.shape) == sorted(data.shape)
    np.testing.assert_allclose(vol.spacing, (5.0, 0.7, 0.7), rtol=1e-6)
    assert_same_voxels(vol, data, in_affine)
    marker_canonical = np.unravel_index(int(np.argmax(vol.hu)), vol.shape)
    assert vol.hu[marker_canonical] == MARKER_HU
    np.testing.assert_allclose(world(vol.affine, marker_canonical), world(in_affine, marker), atol=1e-4)
    np.testing.assert_array_equal(vol.to_native(vol.hu), data)


@pytest.mark.parametrize("name", sorted(CASES))
def test_save_mask_writes_input_geometry_and_axis_order(tmp_path, name):
    path, data, marker = _write_case(tmp_path, name)
    vol = load_ct(path)
    out = save_mask(labels_from_hu(vol.hu), vol, tmp_path / "mask.nii.gz")

    src, written = nib.load(path), nib.load(out)
    assert written.get_data_dtype() == np.uint8
    assert written.shape == data.shape
    np.testing.assert_allclose(written.affine, src.affine, atol=1e-6)
    for getter in ("get_sform", "get_qform"):
        src_aff, src_code = getattr(src.header, getter)(coded=True)
        out_aff, out_code = getattr(written.header, getter)(coded=True)
        assert int(out_code) == int(src_code)
        np.testing.assert_allclose(out_aff, src_aff, atol=1e-6)
    mask = np.asarray(written.dataobj)
    np.testing.assert_array_equal(mask, labels_from_hu(data))
    assert mask[marker] == 2


def test_qform_only_file_uses_qform_and_keeps_codes(tmp_path):
    path, data, _ = _write_case(tmp_path, "lps", sform_code=0, qform_code=1)
    vol = load_ct(path)
    assert_same_voxels(vol, data, nib.load(path).affine)
    out = save_mask(labels_from_hu(vol.hu), vol, tmp_path / "m.nii")
    hdr = nib.load(out).header
    assert int(hdr["sform_code"]) == 0 and int(hdr["qform_code"]) == 1
    np.testing.assert_allclose(nib.load(out).affine, nib.load(path).affine, atol=1e-6)


def test_header_without_transform_warns(tmp_path):
    data = synthetic_ct((20, 22, 6), (5, 5, 3))
    img = nib.Nifti1Image(data, None)
    img.set_sform(None, code=0)
    img.set_qform(None, code=0)
    path = tmp_path / "bare.nii.gz"
    nib.save(img, path)
    vol = load_ct(path)
    assert vol.source is not None
    assert any("no sform or qform" in w for w in vol.source.warnings)


def test_scl_slope_and_inter_are_applied(tmp_path):
    hu = synthetic_ct((20, 22, 6), (5, 5, 3))
    stored = (hu.astype(np.int32) + 1024).astype(np.uint16)
    img = nib.Nifti1Image(stored, np.diag([0.8, 0.8, 2.0, 1.0]))
    img.header.set_data_dtype(np.uint16)
    img.header.set_slope_inter(1.0, -1024.0)
    path = tmp_path / "scaled.nii.gz"
    nib.save(img, path)
    vol = load_ct(path)
    assert vol.hu.dtype == np.int16
    np.testing.assert_array_equal(vol.to_native(vol.hu), hu)


def test_non_integral_scaling_gives_float32(tmp_path):
    hu = synthetic_ct((20, 22, 6), (5, 5, 3))
    img = nib.Nifti1Image((hu.astype(np.int32) + 1024).astype(np.int16), np.eye(4))
    img.header.set_slope_inter(0.5, -1024.0)
    path = tmp_path / "half.nii.gz"
    nib.save(img, path)
    vol = load_ct(path, assume_hu=True)
    assert vol.hu.dtype == np.float32
    np.testing.assert_allclose(vol.to_native(vol.hu), (hu.astype(np.float64) + 1024) * 0.5 - 1024)


def test_singleton_fourth_dimension_is_dropped_and_written_3d(tmp_path):
    data = synthetic_ct((20, 22, 6), (5, 5, 3))
    path = tmp_path / "four.nii.gz"
    nib.save(nib.Nifti1Image(data[..., None], np.diag([-1.0, 1.0, 3.0, 1.0])), path)
    vol = load_ct(path)
    assert vol.source is not None and vol.source.native_shape == (20, 22, 6)
    out = save_mask(labels_from_hu(vol.hu), vol, tmp_path / "m.nii.gz")
    assert nib.load(out).shape == (20, 22, 6)


def test_save_volume_float16_probabilities_written_as_float32(tmp_path):
    path, data, _ = _write_case(tmp_path, "oblique_20deg")
    vol = load_ct(path)
    prob = (vol.hu > 0).astype(np.float16) * np.float16(0.75)
    out = save_volume(prob, vol, tmp_path / "prob.nii.gz")
    img = nib.load(out)
    assert img.get_data_dtype() == np.float32
    np.testing.assert_allclose(np.asarray(img.dataobj), (data > 0) * 0.75)
    np.testing.assert_allclose(img.affine, nib.load(path).affine, atol=1e-6)


def test_save_volume_hu_int16_round_trips(tmp_path):
    path, data, _ = _write_case(tmp_path, "permuted_yxz")
    vol = load_ct(path)
    out = save_volume(vol.hu, vol, tmp_path / "hu.nii")
    again = load_ct(out)
    np.testing.assert_array_equal(again.hu, vol.hu)
    np.testing.assert_array_equal(np.asarray(nib.load(out).dataobj), data)
    np.testing.assert_allclose(again.affine, vol.affine, atol=1e-6)
    assert nib.load(out).get_data_dtype() == np.int16


def test_read_nifti_rejects_other_content(tmp_path):
    path = tmp_path / "fake.nii"
    path.write_bytes(b"this is not a nifti header" * 20)
    with pytest.raises(InputError, match="cannot read the NIfTI file"):
        read_nifti(path)


def test_distinct_sform_and_qform_are_both_written_back(tmp_path):
    data = synthetic_ct((40, 48, 12), (3, 4, 5))
    sform = affine(np.array([[0.7, 0.05, 0], [0, 0.7, 0], [0, 0, 5.0]]), (1.0, 2.0, 3.0))  # sheared
    qform = affine(np.diag([0.7, 0.7, 5.0]), (1.0, 2.0, 3.0))
    img = nib.Nifti1Image(data, sform)
    img.set_sform(sform, code=4)  # MNI
    img.set_qform(qform, code=1)
    path = tmp_path / "two.nii.gz"
    nib.save(img, path)
    vol = load_ct(path)
    assert_same_voxels(vol, data, sform)  # nibabel prefers the sform
    hdr = nib.load(save_mask(labels_from_hu(vol.hu), vol, tmp_path / "m.nii.gz")).header
    np.testing.assert_allclose(hdr.get_sform(), sform, atol=1e-6)
    np.testing.assert_allclose(hdr.get_qform(), qform, atol=1e-6)
    assert (int(hdr["sform_code"]), int(hdr["qform_code"])) == (4, 1)


@pytest.mark.parametrize(
    ("image_class", "dtype"),
    [(nib.Nifti1Image, "<i2"), (nib.Nifti1Image, ">i2"), (nib.Nifti2Image, "<i2"), (nib.Nifti2Image, ">f4")],
)
def test_gzipped_nifti_1_and_2_in_either_byte_order_read_like_nibabel(tmp_path, image_class, dtype) -> None:
    """The ISA-L reading path of .nii.gz gives nibabel's array, affine and header class."""
    rng = np.random.default_rng(0)
    array = rng.integers(-1000, 400, (5, 6, 7)).astype(dtype)
    affine = np.array([[-0.7, 0, 0, 10], [0, 0.7, 0.1, -20], [0, 0, 2.5, 30], [0, 0, 0, 1]])
    image = image_class(array, affine)
    image.header.set_data_dtype(np.dtype(dtype))
    path = tmp_path / "scan.nii.gz"
    nib.save(image, path)
    reference = nib.load(path)
    got = read_nifti(path)
    assert type(got.header) is type(reference.header)
    np.testing.assert_array_equal(got.array, np.asanyarray(reference.dataobj))
    np.testing.assert_allclose(got.affine, reference.affine)
