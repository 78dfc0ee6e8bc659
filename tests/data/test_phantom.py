import numpy as np
import pytest

from covidseg.data.phantom import HU, generate_phantom, phantom_affine, save_montage, save_phantom
from covidseg.errors import InputError, OutputExistsError

SMALL = ((16, 96, 96), (10.0, 3.5, 3.5))


@pytest.fixture(scope="module")
def phantom():
    return generate_phantom(*SMALL, seed=3, n_lesions=6)


def test_deterministic_for_a_seed_and_different_for_another(phantom):
    again = generate_phantom(*SMALL, seed=3, n_lesions=6)
    np.testing.assert_array_equal(phantom.hu, again.hu)
    np.testing.assert_array_equal(phantom.labels, again.labels)
    other = generate_phantom(*SMALL, seed=4, n_lesions=6)
    assert not np.array_equal(phantom.hu, other.hu)


@pytest.mark.parametrize(("shape", "spacing"), [((12, 64, 64), (3.0, 1.5, 1.5)), ((20, 48, 80), (8.0, 4.5, 4.0))])
def test_any_shape_and_spacing(shape, spacing):
    ph = generate_phantom(shape, spacing, seed=0)
    assert ph.hu.shape == ph.labels.shape == shape
    assert ph.hu.dtype == np.int16 and ph.labels.dtype == np.uint8
    assert ph.spacing == pytest.approx(spacing)


def test_tissue_values(phantom):
    hu, labels = phantom.hu, phantom.labels
    assert -900 <= np.median(hu[labels == 1]) <= -780
    assert -750 <= np.median(hu[labels == 2]) <= 100
    corner = hu[:, :4, :4]
    assert abs(float(np.median(corner)) - HU.air) < 30
    assert (hu > 300).sum() > 100  # bone


def test_labels_only_inside_lungs_and_opacity_fraction(phantom):
    lungs = phantom.labels > 0
    assert set(np.unique(phantom.labels)) == {0, 1, 2}
    fraction = (phantom.labels == 2).sum() / lungs.sum()
    assert 0.002 < fraction < 0.5
    healthy = generate_phantom(*SMALL, seed=3, n_lesions=0)
    assert (healthy.labels == 2).sum() == 0
    np.testing.assert_array_equal(healthy.labels > 0, phantom.labels > 0)


def test_both_lesion_kinds_present():
    ph = generate_phantom(*SMALL, seed=0, n_lesions=10)
    lesion_hu = ph.hu[ph.labels == 2]
    assert (lesion_hu < -300).sum() > 0 and (lesion_hu > -150).sum() > 0


def test_physical_size_does_not_depend_on_resolution():
    coarse = generate_phantom((16, 64, 64), (20.0, 5.6, 5.6), n_lesions=0)
    fine = generate_phantom((32, 128, 128), (10.0, 2.8, 2.8), n_lesions=0)
    ml = [(p.labels > 0).sum() * np.prod(p.spacing) / 1000 for p in (coarse, fine)]
    assert ml[0] == pytest.approx(ml[1], rel=0.1)
    assert 2500 < ml[1] < 7000  # adult lungs (mL) in a 358 mm x 320 mm field of view


def test_right_lung_is_larger_and_at_small_x(phantom):
    lungs = phantom.labels > 0
    half = lungs.shape[2] // 2
    right, left = lungs[:, :, :half].sum(), lungs[:, :, half:].sum()
    assert right > left  # canonical x increases toward the patient's left
    # the spine is posterior: bone near the bottom rows of the image
    bone_rows = np.nonzero((phantom.hu > 300).any(axis=(0, 2)))[0]
    assert np.median(bone_rows) > lungs.shape[1] / 2


def test_affine_orientation():
    affine = phantom_affine((10, 20, 30), (2.0, 1.0, 0.5))
    # +x index goes to patient left (-R), +y to posterior (-A), +z to superior (+S)
    assert affine[0, 2] == -0.5 and affine[1, 1] == -1.0 and affine[2, 0] == 2.0


def test_bad_arguments():
    with pytest.raises(InputError):
        generate_phantom((4, 8, 8), (1.0, 1.0, 1.0))
    with pytest.raises(InputError):
        generate_phantom((4, 32, 32), (1.0, 0.0, 1.0))
    with pytest.raises(InputError):
        generate_phantom((4, 32, 32), (1.0, 1.0, 1.0), lesion_kinds=("tumour",))


def test_save_round_trip_through_the_loader(tmp_path, phantom):
    from covidseg.io import load_ct

    paths = save_phantom(phantom, tmp_path, formats=("nifti", "mha", "dicom"))
    for kind in ("nifti", "mha", "dicom"):
        volume = load_ct(paths[kind])
        np.testing.assert_array_equal(volume.hu, phantom.hu)
        np.testing.assert_allclose(volume.affine, phantom.affine, atol=1e-4)
    labels = load_ct(paths["labels"], assume_hu=True)
    np.testing.assert_array_equal(labels.hu, phantom.labels)
    with pytest.raises(OutputExistsError):
        save_phantom(phantom, tmp_path)


def test_montage_written(tmp_path, phantom):
    out = save_montage(phantom.hu, phantom.labels, tmp_path / "m.png", spacing=phantom.spacing)
    assert out.stat().st_size > 5000
