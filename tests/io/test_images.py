"""2-D slice images: shape (1, H, W), display values mapped back to approximate HU through a window."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from covidseg.errors import InputError, NotHUError
from covidseg.io import LUNG_WINDOW, load_ct, save_mask
from covidseg.io.images import window_to_hu
from tests.io.geometry import DATA_DIR

MEDSEG_IMAGES = DATA_DIR / "medseg-slices" / "images"


def _slice_values(h=30, w=40):
    values = np.zeros((h, w), np.uint8)
    values[5:25, 5:35] = 255  # soft tissue saturates in a lung window
    values[10:20, 10:20] = 60
    return values


def test_png_maps_lung_window_linearly_to_hu(tmp_path):
    values = _slice_values()
    Image.fromarray(values).save(tmp_path / "s.png")
    vol = load_ct(tmp_path / "s.png")
    assert vol.shape == (1, 30, 40)
    assert vol.hu.dtype == np.int16
    low, high = LUNG_WINDOW
    expected = np.round(low + values.astype(np.float64) / 255 * (high - low))
    np.testing.assert_array_equal(vol.hu[0], expected)
    assert vol.hu.min() == -1350 and vol.spacing == (1.0, 1.0, 1.0)
    assert vol.source is not None and vol.source.format == "image"
    assert any("assumed lung window" in w for w in vol.source.warnings)


def test_given_window_is_used(tmp_path):
    Image.fromarray(np.array([[0, 255, 51]], np.uint8)).save(tmp_path / "s.png")
    vol = load_ct(tmp_path / "s.png", image_window=(-1000.0, 0.0), assume_hu=True)
    assert vol.hu[0].tolist() == [[-1000, 0, -800]]


def test_rgb_jpeg_is_converted_to_grayscale(tmp_path):
    rgb = np.repeat(_slice_values()[..., None], 3, axis=2)
    Image.fromarray(rgb, "RGB").save(tmp_path / "s.jpg", quality=100)
    vol = load_ct(tmp_path / "s.jpg")
    assert vol.shape == (1, 30, 40)
    # JPEG is lossy: compare within a few display levels (1 level = 1500/255 HU).
    expected = window_to_hu(_slice_values(), LUNG_WINDOW)
    assert np.abs(vol.hu[0] - expected).max() < 6 * 1500 / 255
    assert any("converted RGB to grayscale" in w for w in vol.source.warnings)


def test_sixteen_bit_png_spans_the_window(tmp_path):
    Image.fromarray(np.array([[0, 65535]], np.uint16)).save(tmp_path / "s16.png")
    vol = load_ct(tmp_path / "s16.png")
    assert vol.hu[0].tolist() == [[-1350, 150]]


def test_bright_image_without_air_needs_assume_hu(tmp_path):
    Image.fromarray(np.full((8, 8), 250, np.uint8)).save(tmp_path / "bright.png")
    with pytest.raises(NotHUError, match="--assume-hu"):
        load_ct(tmp_path / "bright.png")


def test_invalid_window_and_broken_image(tmp_path):
    Image.fromarray(_slice_values()).save(tmp_path / "s.png")
    with pytest.raises(InputError, match="low < high"):
        load_ct(tmp_path / "s.png", image_window=(100.0, -100.0))
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff garbage")
    with pytest.raises(InputError, match="cannot read the image"):
        load_ct(tmp_path / "broken.jpg")


def test_image_mask_is_written_as_nifti_with_its_pixel_grid(tmp_path):
    import nibabel as nib

    Image.fromarray(_slice_values()).save(tmp_path / "s.png")
    vol = load_ct(tmp_path / "s.png")
    mask = (vol.hu > -500).astype(np.uint8)
    out = save_mask(mask, vol, tmp_path / "m.nii.gz")
    written = np.asarray(nib.load(out).dataobj)
    assert written.shape == (40, 30, 1)
    np.testing.assert_array_equal(written[:, :, 0].T, mask[0])


@pytest.mark.skipif(not MEDSEG_IMAGES.is_dir(), reason=f"shared medseg slices not present at {MEDSEG_IMAGES}")
def test_real_medseg_jpeg_loads_with_lung_window():
    path = sorted(MEDSEG_IMAGES.glob("*.jpg"))[0]
    with Image.open(path) as img:
        width, height = img.size
    vol = load_ct(path)
    assert vol.shape == (1, height, width)
    # Air (black) maps to the bottom of the lung window, about -1350..-1000 HU.
    assert -1350 <= vol.hu.min() <= -1000
    assert np.percentile(vol.hu, 5) < -900
    assert vol.hu.max() <= LUNG_WINDOW[1]
