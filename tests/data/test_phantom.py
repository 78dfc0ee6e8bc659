import numpy as np
import pytest
from PIL import Image
from scipy import ndimage as ndi

from covidseg.data.phantom import (
    HU,
    LESION_KINDS,
    generate_phantom,
    generate_phantom_slices,
    phantom_affine,
    save_montage,
    save_phantom,
)
from covidseg.errors import InputError, OutputExistsError

SMALL = ((16, 96, 96), (20.0, 3.75, 3.75))  # a 360 mm x 320 mm field of view


@pytest.fixture(scope="module")
def phantom():
    return generate_phantom(*SMALL, seed=3, n_lesions=6)


@pytest.fixture(scope="module")
def healthy():
    return generate_phantom(*SMALL, seed=3, n_lesions=0)


def body_mask(hu):
    """Body from HU alone: the largest component above -500 HU, holes filled slice by slice."""
    lab, _ = ndi.label(hu > -500)
    body = lab == np.argmax(np.bincount(lab.ravel())[1:]) + 1
    return np.stack([ndi.binary_fill_holes(s) for s in body])


def test_deterministic_for_a_seed_and_different_for_another(phantom):
    again = generate_phantom(*SMALL, seed=3, n_lesions=6)
    np.testing.assert_array_equal(phantom.hu, again.hu)
    np.testing.assert_array_equal(phantom.labels, again.labels)
    other = generate_phantom(*SMALL, seed=4, n_lesions=6)
    assert not np.array_equal(phantom.hu, other.hu)
    assert not np.array_equal(phantom.labels == 2, other.labels == 2)


@pytest.mark.parametrize(
    ("shape", "spacing"),
    [((12, 64, 64), (3.0, 1.5, 1.5)), ((20, 48, 80), (8.0, 4.5, 4.0)), ((1, 16, 16), (5.0, 20.0, 20.0))],
)
def test_any_shape_and_spacing(shape, spacing):
    ph = generate_phantom(shape, spacing, seed=0)
    assert ph.hu.shape == ph.labels.shape == shape
    assert ph.hu.dtype == np.int16 and ph.labels.dtype == np.uint8
    assert ph.spacing == pytest.approx(spacing)
    assert set(np.unique(ph.labels).tolist()) <= {0, 1, 2}
    np.testing.assert_allclose(ph.affine[:3, :3] @ np.ones(3), [-spacing[2], -spacing[1], spacing[0]])


def test_tissue_values(phantom):
    hu, labels = phantom.hu, phantom.labels
    assert -900 <= np.median(hu[labels == 1]) <= -780
    assert -750 <= np.median(hu[labels == 2]) <= 100
    corners = np.concatenate([hu[:, :8, :8].ravel(), hu[:, :8, -8:].ravel(), hu[:, -8:, :8].ravel()])
    assert abs(float(np.median(corners)) - HU.air) < 10
    assert abs(float(corners.std()) - 20.0) < 6  # the requested noise level
    assert (hu > 300).sum() > 200  # bone
    body = body_mask(hu)
    assert float(np.mean(hu[body & (labels == 0)] > -500)) > 0.9  # soft tissue, fat and bone around the lungs


def test_noise_free_phantom_has_exact_air():
    ph = generate_phantom((4, 48, 48), (80.0, 7.5, 7.5), noise_hu=0.0, n_lesions=0)
    assert (ph.hu[:, :4, :4] == HU.air).all()


def test_anatomy_is_where_a_radiologist_expects_it(healthy):
    hu, lungs = healthy.hu, healthy.labels > 0
    cy, cx = (hu.shape[1] - 1) / 2, (hu.shape[2] - 1) / 2
    # Spine: bone on the midline, posterior (bottom of the image) in every slice.
    bone_rows = np.nonzero((hu[:, :, int(cx) - 2 : int(cx) + 3] > 300).any(axis=(0, 2)))[0]
    assert np.median(bone_rows) > cy + 10
    # Heart: in the lower chest it pushes the anterior gap between the lungs to the patient's left (image right).
    rows = np.nonzero(lungs.any(axis=(1, 2)))[0]
    gaps = []
    for k in rows[: len(rows) // 2]:
        for y in range(int(cy)):
            xs = np.nonzero(lungs[k, y])[0]
            right, left = xs[xs < cx], xs[xs > cx]
            if len(right) and len(left):
                gaps.append((right.max() + left.min()) / 2)
    assert len(gaps) > 10 and np.median(gaps) > cx + 2  # at least 7.5 mm left of the midline
    # Trachea: air on the midline in the top slices, inside the body and not labelled lung.
    top = hu[-2:, :, int(cx) - 3 : int(cx) + 4]
    assert (top < -900).any() and not lungs[-2:, :, int(cx) - 3 : int(cx) + 4].any()
    # Vessels: part of the lung label is soft-tissue dense.
    vessel_fraction = float(np.mean(hu[lungs] > -500))
    assert 0.005 < vessel_fraction < 0.2


def test_labels_only_inside_the_lungs(phantom, healthy):
    assert set(np.unique(phantom.labels).tolist()) == {0, 1, 2}
    # the lungs do not depend on the lesions: opacity only relabels lung voxels
    np.testing.assert_array_equal(healthy.labels > 0, phantom.labels > 0)
    labelled = phantom.labels > 0
    assert not (labelled & ~body_mask(phantom.hu)).any()
    assert (phantom.hu[labelled] > 300).mean() < 0.001  # no bone
    assert (phantom.hu[labelled] < -990).mean() < 0.01  # no trachea or outside air


def test_opacity_fraction(phantom, healthy):
    fraction = (phantom.labels == 2).sum() / (phantom.labels > 0).sum()
    assert 0.005 < fraction < 0.5
    assert len(phantom.lesions) == 6
    assert sum(lesion.voxels for lesion in phantom.lesions) >= (phantom.labels == 2).sum()
    assert (healthy.labels == 2).sum() == 0 and healthy.lesions == ()
    ranged = generate_phantom(*SMALL, seed=3, n_lesions=(2, 3))
    assert 2 <= len(ranged.lesions) <= 3


def test_both_lesion_kinds_and_their_densities():
    mixed = generate_phantom(*SMALL, seed=0, n_lesions=8)
    assert {lesion.kind for lesion in mixed.lesions} == set(LESION_KINDS)
    lesion_hu = mixed.hu[mixed.labels == 2]
    assert (lesion_hu < -300).sum() > 0 and (lesion_hu > -150).sum() > 0
    medians = {}
    for kind in LESION_KINDS:
        ph = generate_phantom(*SMALL, seed=1, n_lesions=4, lesion_kinds=[kind])
        assert {lesion.kind for lesion in ph.lesions} == {kind}
        medians[kind] = float(np.median(ph.hu[ph.labels == 2]))
    assert -750 < medians["ggo"] < -250  # ground glass
    assert -250 < medians["consolidation"] < 100  # consolidation (air bronchograms and halo lower it a little)


def test_physical_size_does_not_depend_on_resolution():
    coarse = generate_phantom((16, 64, 64), (20.0, 5.6, 5.6), n_lesions=0)
    fine = generate_phantom((32, 128, 128), (10.0, 2.8, 2.8), n_lesions=0)
    ml = [(p.labels > 0).sum() * np.prod(p.spacing) / 1000 for p in (coarse, fine)]
    assert ml[0] == pytest.approx(ml[1], rel=0.08)
    assert 3000 < ml[1] < 8000  # adult lungs (mL) in a 358 mm x 320 mm field of view


def test_right_lung_is_larger_and_at_small_x(healthy):
    lungs = healthy.labels > 0
    lab, n = ndi.label(lungs)
    assert n == 2
    sizes = np.bincount(lab.ravel())[1:]
    centre_x = [np.nonzero(lab == k)[2].mean() for k in (1, 2)]
    right = int(np.argmin(centre_x))  # canonical x increases toward the patient's left
    assert sizes[right] > sizes[1 - right]
    half = lungs.shape[2] // 2
    assert not lungs[:, :, half - 1 : half + 1].any()  # each lung stays on its side of the midline
    assert lungs[:, :, :half].sum() > 1.05 * lungs[:, :, half:].sum()


def test_affine_orientation_and_centre():
    affine = phantom_affine((10, 20, 30), (2.0, 1.0, 0.5))
    # +x index goes to patient left (-R), +y to posterior (-A), +z to superior (+S)
    assert affine[0, 2] == -0.5 and affine[1, 1] == -1.0 and affine[2, 0] == 2.0
    np.testing.assert_allclose(affine @ [4.5, 9.5, 14.5, 1.0], [0, 0, 0, 1])


@pytest.mark.parametrize(
    ("args", "kwargs"),
    [
        (((4, 8, 8), (1.0, 1.0, 1.0)), {}),
        (((4, 32), (1.0, 1.0, 1.0)), {}),
        (((4, 32, 32), (1.0, 0.0, 1.0)), {}),
        (((4, 32, 32), (1.0, float("nan"), 1.0)), {}),
        (((4, 32, 32), (1.0, 1.0, 1.0)), {"lesion_kinds": ("tumour",)}),
        (((4, 32, 32), (1.0, 1.0, 1.0)), {"lesion_kinds": ()}),
        (((4, 32, 32), (1.0, 1.0, 1.0)), {"n_lesions": -1}),
        (((4, 32, 32), (1.0, 1.0, 1.0)), {"n_lesions": (5, 2)}),
        (((4, 32, 32), (1.0, 1.0, 1.0)), {"noise_hu": -1.0}),
    ],
)
def test_bad_arguments(args, kwargs):
    with pytest.raises(InputError):
        generate_phantom(*args, **kwargs)


def test_default_size():
    ph = generate_phantom(seed=1)
    assert ph.hu.shape == (64, 256, 256) and ph.spacing == pytest.approx((5.0, 0.8, 0.8))


def test_phantom_slices():
    hu, labels = generate_phantom_slices(10, 64, seed=5)
    assert hu.shape == labels.shape == (10, 64, 64)
    assert hu.dtype == np.int16 and labels.dtype == np.uint8
    assert ((labels > 0).sum(axis=(1, 2)) > 0.04 * 64 * 64).all()
    again, _ = generate_phantom_slices(10, 64, seed=5)
    np.testing.assert_array_equal(hu, again)
    with pytest.raises(InputError):
        generate_phantom_slices(0, 64)


def test_save_round_trip_through_the_loader(tmp_path, phantom):
    from covidseg.io import load_ct

    paths = save_phantom(phantom, tmp_path, formats=("nifti", "mha", "nrrd", "dicom"))
    assert paths["nifti"].name == "phantom.nii.gz" and paths["dicom"].name == "phantom_dicom"
    for kind in ("nifti", "mha", "nrrd", "dicom"):
        volume = load_ct(paths[kind])
        np.testing.assert_array_equal(volume.hu, phantom.hu)
        np.testing.assert_allclose(volume.affine, phantom.affine, atol=1e-4)
    labels = load_ct(paths["labels"], assume_hu=True)
    np.testing.assert_array_equal(labels.hu, phantom.labels)
    np.testing.assert_allclose(labels.affine, phantom.affine, atol=1e-6)
    with pytest.raises(OutputExistsError):
        save_phantom(phantom, tmp_path)
    save_phantom(phantom, tmp_path, overwrite=True)


def test_save_rejects_unknown_format_and_writes_nothing(tmp_path, phantom):
    with pytest.raises(InputError, match="nifti"):
        save_phantom(phantom, tmp_path / "out", formats=("nifti", "jpeg"))
    assert not (tmp_path / "out").exists()


def test_montage_written(tmp_path, phantom):
    out = save_montage(phantom.hu, phantom.labels, tmp_path / "m.png", spacing=phantom.spacing, n_slices=4)
    assert out.stat().st_size > 20_000
    with Image.open(out) as img:
        pixels = np.asarray(img.convert("RGB")).astype(int)
    assert pixels.shape[1] > 2 * pixels.shape[0]  # a row of views
    assert pixels.std() > 30  # not blank
    orange = (pixels[..., 0] > 200) & (pixels[..., 1] > 100) & (pixels[..., 1] < 200) & (pixels[..., 2] < 80)
    assert orange.sum() > 10  # opacity outlines drawn
    with pytest.raises(OutputExistsError):
        save_montage(phantom.hu, phantom.labels, out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.png"]  # no temporary files left
    with pytest.raises(InputError):
        save_montage(phantom.hu[0], None, tmp_path / "flat.png")
