import numpy as np
import pytest
from scipy import ndimage as ndi

from covidseg.infer import masks as masks_module
from covidseg.infer.masks import (
    bounding_box,
    component_sizes,
    ellipsoid_footprint,
    fill_holes,
    keep_largest_components,
    label_components,
    morphology,
    remove_small_components,
    select_labels,
    voxel_volume_ml,
)


def _same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether two label arrays split the voxels into the same components (labels may be numbered differently)."""
    pairs = np.unique(np.stack([a.ravel(), b.ravel()]), axis=1)
    return bool(
        np.array_equal(a == 0, b == 0)
        and np.unique(pairs[0]).size == pairs.shape[1]
        and np.unique(pairs[1]).size == pairs.shape[1]
    )


@pytest.mark.parametrize("shape", [(6, 30, 40), (30, 40)])
def test_label_components_matches_scipy_face_connectivity(shape):
    rng = np.random.default_rng(3)
    mask = rng.random(shape) < 0.45
    labels, n = label_components(mask)
    expected, n_expected = ndi.label(mask)
    assert labels.dtype == np.uint32 and n == n_expected
    assert _same_partition(labels, expected)


def test_label_components_per_slice_never_joins_slices():
    rng = np.random.default_rng(4)
    mask = rng.random((5, 30, 40)) < 0.45
    mask[2] = False  # an empty slice in the middle
    structure = np.zeros((3, 3, 3), bool)
    structure[1] = ndi.generate_binary_structure(2, 1)
    labels, n = label_components(mask, per_slice=True)
    expected, n_expected = ndi.label(mask, structure=structure)
    assert n == n_expected and _same_partition(labels, expected)
    assert int(labels.max()) == n


def test_voxel_volume_and_empty_box():
    assert voxel_volume_ml((2.0, 0.5, 0.5)) == pytest.approx(0.0005)
    assert bounding_box(np.zeros((3, 4, 5), bool)) is None


def test_keep_largest_components_by_volume_and_minimum():
    m = np.zeros((4, 20, 20), bool)
    m[:, 1:9, 1:9] = True  # 256
    m[:, 12:19, 12:19] = True  # 196
    m[:, 1:4, 14:17] = True  # 36
    two = keep_largest_components(m, 2)
    assert two.sum() == 256 + 196 and not two[:, 2, 15].any()
    assert keep_largest_components(m, 2, min_voxels=200).sum() == 256
    assert keep_largest_components(m, 5).sum() == m.sum()
    assert not keep_largest_components(np.zeros_like(m), 2).any()


def test_fill_holes_slice_fills_tubes_volume_only_cavities():
    block = np.ones((8, 12, 12), bool)
    block[:, 5:7, 5:7] = False  # a vessel running through every slice: open in 3-D
    block[3:5, 2:4, 2:4] = False  # an enclosed cavity
    sliced = fill_holes(block, "slice")
    volume = fill_holes(block, "volume")
    assert sliced.all()
    assert not volume[:, 5:7, 5:7].any() and volume[3:5, 2:4, 2:4].all()
    limited = fill_holes(block, "slice", max_hole_voxels=3)  # each hole has 4 voxels per slice
    assert np.array_equal(limited, block)
    with pytest.raises(ValueError, match="fill mode"):
        fill_holes(block, "2d")


def test_ellipsoid_footprint_is_anisotropic():
    fp = ellipsoid_footprint(1.5, (3.0, 0.7, 0.7))
    assert fp.shape == (1, 5, 5)
    fp = ellipsoid_footprint(2.0, (1.0, 0.5, 1.0))
    assert fp.shape == (5, 9, 5)
    # every True offset lies within 2 mm
    offsets = np.argwhere(fp) - np.array(fp.shape) // 2
    assert (np.sqrt(((offsets * [1.0, 0.5, 1.0]) ** 2).sum(1)) <= 2.0 + 1e-9).all()
    assert ellipsoid_footprint(0.4, (1.0, 1.0, 1.0)).sum() == 1


@pytest.mark.parametrize("operation", ["opening", "closing"])
def test_morphology_on_crop_equals_whole_volume(operation):
    rng = np.random.default_rng(0)
    m = ndi.gaussian_filter(rng.random((20, 40, 40)), 1.5) > 0.55
    m[:, :5] = False  # keep the foreground off the volume edge so scipy's border handling matches
    m[:, -5:] = False
    m[:, :, :5] = False
    m[:, :, -5:] = False
    m[:3] = m[-3:] = False
    spacing = (2.0, 0.8, 0.8)
    fp = ellipsoid_footprint(1.7, spacing)
    expected = getattr(ndi, f"binary_{operation}")(m, structure=fp)
    assert np.array_equal(morphology(m, operation, 1.7, spacing), expected)


def test_opening_and_closing_effects_in_mm():
    m = np.zeros((1, 20, 20), bool)
    m[0, 2:10, 2:10] = True
    m[0, 15, 2:18] = True  # a 1-voxel (0.7 mm) line
    opened = morphology(m, "opening", 1.0, (5.0, 0.7, 0.7))
    assert not opened[0, 15].any() and opened[0, 4:8, 4:8].all()
    gap = np.zeros((1, 10, 20), bool)
    gap[0, 2:8, 2:9] = gap[0, 2:8, 10:18] = True
    assert morphology(gap, "closing", 1.0, (5.0, 0.7, 0.7))[0, 4, 9]
    assert not morphology(gap, "closing", 0.3, (5.0, 0.7, 0.7))[0, 4, 9]  # below the voxel size: a no-op


def test_remove_small_components():
    m = np.zeros((5, 10, 10), bool)
    m[0, 0, 0] = True
    m[2:5, 2:5, 2:5] = True
    assert remove_small_components(m, 2).sum() == 27
    assert remove_small_components(m, 28).sum() == 0
    assert remove_small_components(m, 1).sum() == 28


def test_bounding_box_matches_the_voxel_extremes():
    rng = np.random.default_rng(3)
    for density in (0.0005, 0.01, 0.3):
        m = rng.random((9, 14, 17)) < density
        if not m.any():
            continue
        idx = np.argwhere(m)
        expected = tuple(slice(int(lo), int(hi) + 1) for lo, hi in zip(idx.min(0), idx.max(0), strict=True))
        assert bounding_box(m) == expected
        grown = bounding_box(m, margin=(1, 100, 0))
        assert grown[1] == slice(0, 14) and grown[2] == expected[2]
        assert grown[0] == slice(max(expected[0].start - 1, 0), min(expected[0].stop + 1, 9))


def test_select_labels_equals_the_table_lookup():
    rng = np.random.default_rng(4)
    labels = rng.integers(0, 12, (5, 6, 7)).astype(np.int32)
    for keep_ids in ([], [3], [1, 5, 9], [2, 3, 4, 5, 6, 7], list(range(1, 12)), list(range(12))):
        keep = np.zeros(12, bool)
        keep[keep_ids] = True
        got = select_labels(labels, keep)
        assert got.dtype == bool and np.array_equal(got, keep[labels])


def test_component_sizes_in_slabs_and_from_the_mask(monkeypatch):
    rng = np.random.default_rng(5)
    mask = rng.random((12, 10, 11)) < 0.4
    labels, n = ndi.label(mask)
    expected = np.bincount(labels.ravel(), minlength=n + 1)
    monkeypatch.setattr(masks_module, "_COUNT_CHUNK", 250)  # about two slices per bincount call
    assert np.array_equal(component_sizes(labels, n), expected)
    from_mask = component_sizes(labels, n, mask=mask)
    assert from_mask[0] == 0 and np.array_equal(from_mask[1:], expected[1:])


def test_fill_holes_keeps_only_the_holes_above_the_size_limit_open():
    m = np.ones((3, 12, 12), bool)
    m[:, 2:4, 2:4] = False  # 4 voxels per slice
    m[:, 7, 7] = False  # 1 voxel per slice
    m[1, 9:11, 2:5] = False  # 6 voxels, one slice only
    out = fill_holes(m, "slice", max_hole_voxels=4)
    assert out[:, 2:4, 2:4].all() and out[:, 7, 7].all()
    assert not out[1, 9:11, 2:5].any() and out[[0, 2], 9:11, 2:5].all()
    assert np.array_equal(fill_holes(m, "slice", max_hole_voxels=0), m)


@pytest.mark.parametrize("density", [0.02, 0.5])  # few components (compared one by one) and many (find_objects)
def test_component_boxes_match_find_objects(density):
    from covidseg.infer.masks import component_boxes

    rng = np.random.default_rng(7)
    mask = np.zeros((8, 30, 40), bool)
    mask[2:6, 3:12, 5:20] = rng.random((4, 9, 15)) < density + 0.5
    labels, n = label_components(mask)
    assert component_boxes(labels, n) == ndi.find_objects(labels)


@pytest.mark.parametrize("density", [0.03, 0.6])  # the sparse path (voxel indices) and the dense one
def test_remove_small_components_matches_a_scipy_reference(density):
    rng = np.random.default_rng(11)
    mask = np.zeros((10, 40, 50), bool)
    mask[1:9, 4:36, 5:45] = rng.random((8, 32, 40)) < density
    labels, _ = ndi.label(mask)
    sizes = np.bincount(labels.ravel())
    expected = (sizes >= 3)[labels] & mask
    np.testing.assert_array_equal(remove_small_components(mask, 3), expected)
