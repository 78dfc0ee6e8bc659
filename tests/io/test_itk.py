"""MHA/MHD/NRRD round trips with non-identity direction: LPS geometry to RAS affine and back, exactly."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk  # noqa: N813

from covidseg.errors import InputError
from covidseg.io import load_ct, save_mask
from covidseg.io.itk import affine_to_itk, itk_to_affine
from covidseg.io.volume import RAS_FROM_LPS, axcodes_of
from tests.io.geometry import MARKER_HU, assert_same_voxels, labels_from_hu, rotation, synthetic_ct, world

# ITK index (i, j, k); numpy arrays from SimpleITK are (k, j, i).
SIZE_IJK = (40, 48, 12)
MARKER_KJI = (4, 30, 11)
DIRECTIONS = {
    "identity": np.eye(3),
    "flipped_permuted": np.array([[0, -1, 0], [1, 0, 0], [0, 0, -1.0]]),
    "oblique_20deg": rotation("z", 20) @ rotation("y", -8),
}


def _write_itk(tmp_path, direction, suffix):
    data = synthetic_ct(tuple(reversed(SIZE_IJK)), MARKER_KJI)
    image = sitk.GetImageFromArray(data)
    image.SetSpacing((0.7, 0.7, 5.0))
    image.SetOrigin((12.5, -40.0, 101.0))
    image.SetDirection(tuple(float(v) for v in direction.ravel()))
    path = tmp_path / f"ct{suffix}"
    sitk.WriteImage(image, str(path))
    return path, data, image


def _marker_ras(image):
    k, j, i = MARKER_KJI
    x, y, z = image.TransformIndexToPhysicalPoint((i, j, k))
    return np.array([-x, -y, z])


@pytest.mark.parametrize("suffix", [".mha", ".nrrd", ".mhd"])
@pytest.mark.parametrize("name", sorted(DIRECTIONS))
def test_load_converts_lps_geometry_to_canonical_ras(tmp_path, name, suffix):
    path, data, image = _write_itk(tmp_path, DIRECTIONS[name], suffix)
    vol = load_ct(path)
    assert vol.source is not None and vol.source.format == suffix[1:]
    assert axcodes_of(vol.affine) == "SPL"
    np.testing.assert_allclose(vol.spacing, (5.0, 0.7, 0.7))
    assert_same_voxels(vol, data, vol.source.native_affine)
    marker = np.unravel_index(int(np.argmax(vol.hu)), vol.shape)
    assert vol.hu[marker] == MARKER_HU
    np.testing.assert_allclose(world(vol.affine, marker), _marker_ras(image), atol=1e-6)


@pytest.mark.parametrize("suffix", [".mha", ".nrrd"])
@pytest.mark.parametrize("name", sorted(DIRECTIONS))
def test_save_mask_copies_direction_origin_spacing(tmp_path, name, suffix):
    path, data, image = _write_itk(tmp_path, DIRECTIONS[name], suffix)
    vol = load_ct(path)
    out = save_mask(labels_from_hu(vol.hu), vol, tmp_path / f"mask{suffix}")
    written = sitk.ReadImage(str(out))
    assert written.GetPixelID() == sitk.sitkUInt8
    assert written.GetSize() == image.GetSize()
    np.testing.assert_allclose(written.GetDirection(), image.GetDirection(), atol=1e-12)
    np.testing.assert_allclose(written.GetOrigin(), image.GetOrigin(), atol=1e-12)
    np.testing.assert_allclose(written.GetSpacing(), image.GetSpacing(), atol=1e-12)
    mask = sitk.GetArrayFromImage(written)
    np.testing.assert_array_equal(mask, labels_from_hu(data))
    assert mask[MARKER_KJI] == 2


def test_itk_input_to_nifti_output_keeps_world_positions(tmp_path):
    path, data, image = _write_itk(tmp_path, DIRECTIONS["oblique_20deg"], ".mha")
    vol = load_ct(path)
    out = save_mask(labels_from_hu(vol.hu), vol, tmp_path / "mask.nii.gz")
    img = nib.load(out)
    mask = np.asarray(img.dataobj)
    ijk = np.argwhere(mask == 2)
    assert len(ijk) == 1
    np.testing.assert_allclose(world(img.affine, ijk[0]), _marker_ras(image), atol=1e-4)
    assert mask.shape == SIZE_IJK  # NIfTI index order (i, j, k) of the ITK image
    np.testing.assert_array_equal(mask, labels_from_hu(data).transpose(2, 1, 0))


def test_nifti_input_to_mha_output_keeps_world_positions(tmp_path):
    data = synthetic_ct((40, 48, 12), (7, 9, 4))
    aff = np.eye(4)
    aff[:3, :3] = rotation("z", 20) @ np.diag([0.7, -0.7, 5.0])
    aff[:3, 3] = (5.0, 6.0, 7.0)
    src = tmp_path / "ct.nii.gz"
    nib.save(nib.Nifti1Image(data, aff), src)
    vol = load_ct(src)
    out = save_mask(labels_from_hu(vol.hu), vol, tmp_path / "mask.mha")
    written = sitk.ReadImage(str(out))
    kji = np.argwhere(sitk.GetArrayFromImage(written) == 2)[0]
    x, y, z = written.TransformIndexToPhysicalPoint(tuple(int(v) for v in kji[::-1]))
    np.testing.assert_allclose((-x, -y, z), world(nib.load(src).affine, (7, 9, 4)), atol=1e-4)


def test_affine_conversion_round_trips():
    direction = tuple((rotation("x", 33) @ np.diag([1, -1, 1.0])).ravel())
    aff = itk_to_affine(direction, (1.0, -2.0, 3.5), (0.6, 0.9, 2.5))
    d, o, s = affine_to_itk(aff)
    np.testing.assert_allclose(d, direction, atol=1e-12)
    np.testing.assert_allclose(o, (1.0, -2.0, 3.5))
    np.testing.assert_allclose(s, (0.6, 0.9, 2.5))
    # The RAS affine is the LPS one with x and y negated, applied to numpy (k, j, i) indices.
    lps = RAS_FROM_LPS @ aff
    np.testing.assert_allclose(lps[:3, 3], (1.0, -2.0, 3.5))


def test_two_dimensional_mha_is_rejected(tmp_path):
    path = tmp_path / "slice.mha"
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((30, 40), np.int16)), str(path))
    with pytest.raises(InputError, match=r"2-D with shape \(30, 40\), need 3-D"):
        load_ct(path)


def test_vector_image_is_rejected(tmp_path):
    path = tmp_path / "rgb.nrrd"
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((4, 30, 40, 3), np.uint8), isVector=True), str(path))
    with pytest.raises(InputError, match="3 components"):
        load_ct(path)


def test_corrupt_mha_is_an_input_error(tmp_path):
    path = tmp_path / "broken.mha"
    header = "ObjectType = Image\nNDims = 3\nDimSize = 10 10 10\nElementType = MET_SHORT\nElementDataFile = LOCAL\n"
    path.write_text(header)  # header promises 2000 bytes of voxels that are not there
    with pytest.raises(InputError, match="SimpleITK cannot read"):
        load_ct(path)
