"""save_mask / save_volume: formats by suffix, refusal to overwrite, atomicity, label and shape checks."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk  # noqa: N813

from covidseg.errors import InputError, OutputExistsError
from covidseg.io import CTVolume, canonical_affine, save_mask, save_volume
from tests.io.geometry import labels_from_hu, rotation, synthetic_ct, world

SHAPE = (12, 40, 48)
MARKER = (3, 17, 29)


def _volume():
    aff = canonical_affine((5.0, 0.7, 0.7), origin=(20.0, -10.0, 50.0))
    aff[:3, :3] = rotation("z", 20) @ aff[:3, :3]
    return CTVolume.from_canonical(synthetic_ct(SHAPE, MARKER), aff)


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii", ".mha", ".nrrd"])
def test_synthetic_volume_mask_keeps_world_positions_in_every_format(tmp_path, suffix):
    vol = _volume()
    out = save_mask(labels_from_hu(vol.hu), vol, tmp_path / f"mask{suffix}")
    if suffix.startswith(".nii"):
        img = nib.load(out)
        (index,) = np.argwhere(np.asarray(img.dataobj) == 2)
        position = world(img.affine, index)
        assert img.get_data_dtype() == np.uint8 and img.shape == SHAPE[::-1]
    else:
        img = sitk.ReadImage(str(out))
        (kji,) = np.argwhere(sitk.GetArrayFromImage(img) == 2)
        x, y, z = img.TransformIndexToPhysicalPoint(tuple(int(v) for v in kji[::-1]))
        position = np.array([-x, -y, z])
        assert img.GetPixelID() == sitk.sitkUInt8
    np.testing.assert_allclose(position, world(vol.affine, MARKER), atol=1e-4)


def test_refuses_to_overwrite_unless_asked(tmp_path):
    vol = _volume()
    out = tmp_path / "mask.nii.gz"
    save_mask(np.zeros(SHAPE, np.uint8), vol, out)
    with pytest.raises(OutputExistsError, match="--overwrite"):
        save_mask(np.ones(SHAPE, np.uint8), vol, out)
    assert np.asarray(nib.load(out).dataobj).max() == 0
    save_mask(np.ones(SHAPE, np.uint8), vol, out, overwrite=True)
    assert np.asarray(nib.load(out).dataobj).min() == 1


@pytest.mark.parametrize("name", ["mask.mhd", "mask.jpg", "mask", "mask.nii.bz2"])
def test_unsupported_suffix_is_an_input_error_and_writes_nothing(tmp_path, name):
    with pytest.raises(InputError, match=r"cannot write .* use one of \.nii\.gz, \.nii, \.mha, \.nrrd, \.png"):
        save_mask(np.zeros(SHAPE, np.uint8), _volume(), tmp_path / name)
    assert list(tmp_path.iterdir()) == []


def test_failed_write_leaves_no_file(tmp_path, monkeypatch):
    import covidseg.io.save as save_module

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(save_module, "write_nifti", boom)
    with pytest.raises(OSError, match="disk full"):
        save_mask(np.zeros(SHAPE, np.uint8), _volume(), tmp_path / "mask.nii.gz")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("bad", [np.full(SHAPE, 256), np.full(SHAPE, -1), np.full(SHAPE, 0.5)])
def test_mask_values_must_be_uint8_labels(tmp_path, bad):
    with pytest.raises(ValueError, match=r"integer labels in 0\.\.255"):
        save_mask(bad, _volume(), tmp_path / "m.nii.gz")
    assert list(tmp_path.iterdir()) == []


def test_shape_mismatch_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="volume shape"):
        save_volume(np.zeros((12, 40, 47)), _volume(), tmp_path / "x.nii.gz")


def test_bool_mask_and_dtype_argument(tmp_path):
    vol = _volume()
    out = save_mask(vol.hu > 0, vol, tmp_path / "m.nrrd")
    assert sitk.ReadImage(str(out)).GetPixelID() == sitk.sitkUInt8
    out = save_volume(vol.hu, vol, tmp_path / "hu.mha", dtype=np.float32)
    # A synthetic volume is written with file axes (x, y, z), so SimpleITK's numpy (k, j, i) is canonical.
    np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(out))), vol.hu.astype(np.float32))
    assert sitk.ReadImage(str(out)).GetPixelID() == sitk.sitkFloat32


@pytest.mark.parametrize("suffix", [".nii.gz", ".mha"])
def test_channel_axis_is_written(tmp_path, suffix):
    vol = _volume()
    probs = np.stack([vol.hu < 0, vol.hu >= 0], axis=-1).astype(np.float32)
    out = save_volume(probs, vol, tmp_path / f"p{suffix}")
    if suffix == ".nii.gz":
        data = np.asarray(nib.load(out).dataobj)
        assert data.shape == (*SHAPE[::-1], 2)
        np.testing.assert_array_equal(data[..., 1].transpose(2, 1, 0), probs[..., 1])
    else:
        img = sitk.ReadImage(str(out))
        assert img.GetNumberOfComponentsPerPixel() == 2 and img.GetSize() == SHAPE[::-1]


def test_single_slice_label_maps_and_uint8_maps_write_as_png(tmp_path):
    from PIL import Image

    from covidseg.io.save import LABEL_PALETTE

    one = CTVolume.from_canonical(np.zeros((1, 5, 7), np.int16), canonical_affine())
    labels = np.zeros((1, 5, 7), np.uint8)
    labels[0, 1:3, 2:5], labels[0, 2, 3], labels[0, 4, 6] = 1, 2, 9
    with Image.open(save_mask(labels, one, tmp_path / "m.png")) as image:
        assert image.mode == "P" and np.array_equal(np.asarray(image), labels[0])
        assert image.getpalette()[:9] == [c for colour in LABEL_PALETTE for c in colour]
    with Image.open(save_volume(labels * 20, one, tmp_path / "p.png")) as image:
        assert image.mode == "L" and np.array_equal(np.asarray(image), labels[0] * 20)
    with pytest.raises(InputError, match="one slice"):
        save_mask(
            np.zeros((2, 5, 7), np.uint8), CTVolume.from_canonical(np.zeros((2, 5, 7)), np.eye(4)), tmp_path / "x.png"
        )
    with pytest.raises(InputError, match="8-bit"):
        save_volume(np.zeros((1, 5, 7), np.float32), one, tmp_path / "f.png")
    assert not (tmp_path / "x.png").exists() and not (tmp_path / "f.png").exists()
