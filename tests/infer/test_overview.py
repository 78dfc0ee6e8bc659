import numpy as np
import pytest
from PIL import Image

from covidseg.data.phantom import generate_phantom
from covidseg.errors import InputError, OutputExistsError
from covidseg.infer.overview import OPACITY_COLOR, _profiles, choose_axial_slices, save_overview

SHAPE = (24, 96, 96)
SPACING = (5.0, 3.5, 3.5)


@pytest.fixture(scope="module")
def phantom():
    return generate_phantom(SHAPE, SPACING, seed=6, n_lesions=5)


def orange_pixels(path):
    """Pixels of the opacity fill: orange blended over grey has red well above green and blue (the yellow
    orientation markers have green close to red, the cyan outline has red below blue)."""
    rgb = np.asarray(Image.open(path).convert("RGB")).astype(int)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    assert OPACITY_COLOR[0] > OPACITY_COLOR[1] > OPACITY_COLOR[2]
    return int(np.count_nonzero((r - g > 40) & (r - b > 80) & (r > 120)))


def test_overview_png_shows_opacity_and_refuses_overwrite(tmp_path, phantom):
    path = save_overview(phantom.hu, phantom.labels, SPACING, tmp_path / "ov.png", title="phantom")
    image = Image.open(path)
    assert image.format == "PNG" and image.width > 600 and image.height > 250
    n_orange = orange_pixels(path)
    assert n_orange > 1500
    with pytest.raises(OutputExistsError):
        save_overview(phantom.hu, phantom.labels, SPACING, path)
    save_overview(phantom.hu, phantom.labels, SPACING, path, n_axial=3, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ov.png"]


def test_overview_without_opacity_or_lungs(tmp_path, phantom):
    no_opacity = np.where(phantom.labels == 2, 1, phantom.labels).astype(np.uint8)
    path = save_overview(phantom.hu, no_opacity, SPACING, tmp_path / "a.png")
    assert orange_pixels(path) < 400  # only the legend swatch (about 230 pixels)
    empty = save_overview(phantom.hu, np.zeros(SHAPE, np.uint8), SPACING, tmp_path / "b.png", n_axial=4)
    assert Image.open(empty).format == "PNG"


def test_axial_slices_follow_opacity_and_spread_through_the_lungs():
    lab = np.zeros((40, 8, 8), np.uint8)
    lab[4:36] = 1
    lab[30, :4, :4] = 2
    lab[31, 0, 0] = 2
    chosen = choose_axial_slices(lab, 4)
    assert len(chosen) == 4 and 30 in chosen
    assert chosen == sorted(chosen) and min(chosen) < 12 and max(chosen) >= 28
    assert choose_axial_slices(lab, 100) == list(range(4, 36))


def test_shape_mismatch_is_an_input_error(tmp_path):
    with pytest.raises(InputError, match="one shape"):
        save_overview(np.zeros((2, 4, 4)), np.zeros((2, 4, 5), np.uint8), (1.0, 1.0, 1.0), tmp_path / "x.png")


def test_label_profiles_count_lung_and_opacity_per_slice_and_row():
    rng = np.random.default_rng(8)
    lab = np.zeros((12, 30, 40), np.uint8)
    lab[2:10, 5:25, 6:30] = rng.integers(0, 3, (8, 20, 24))
    profiles = _profiles(lab)
    assert np.array_equal(profiles.lung_z, np.count_nonzero(lab > 0, axis=(1, 2)))
    assert np.array_equal(profiles.opac_z, np.count_nonzero(lab == 2, axis=(1, 2)))
    assert np.array_equal(profiles.lung_y, np.count_nonzero(lab > 0, axis=(0, 2)))
    assert np.array_equal(profiles.opac_y, np.count_nonzero(lab == 2, axis=(0, 2)))
    empty = _profiles(np.zeros((3, 4, 5), np.uint8))
    assert empty.box is None and not empty.lung_z.any() and empty.lung_y.shape == (4,)


def test_single_slice_overview_has_no_coronal_view(tmp_path):
    """A 2-D image (one axial slice) gets its slice with outline and fill; a coronal view of one row cannot exist."""
    hu = np.full((1, 80, 96), -1000, np.int16)
    hu[0, 8:72, 6:90] = 40  # body
    lab = np.zeros(hu.shape, np.uint8)
    lab[0, 15:65, 12:44] = lab[0, 15:65, 52:84] = 1
    lab[0, 30:50, 20:36] = 2
    path = save_overview(hu, lab, (1.0, 0.7, 0.7), tmp_path / "slice.png", title="slice")
    image = Image.open(path)
    assert image.format == "PNG" and image.width < image.height * 2.5  # one panel, no coronal column
    assert orange_pixels(path) > 200
