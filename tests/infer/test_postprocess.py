from dataclasses import replace

import numpy as np
import pytest
from scipy import ndimage as ndi

from covidseg.data.phantom import generate_phantom
from covidseg.errors import ConfigError, InputError
from covidseg.infer.masks import ellipsoid_footprint
from covidseg.infer.postprocess import PostprocessConfig, postprocess, probabilities_to_labels

SHAPE = (24, 96, 96)
SPACING = (5.0, 3.5, 3.5)
LOOSE = PostprocessConfig(min_lung_component_ml=5.0)


@pytest.fixture(scope="module")
def phantom():
    return generate_phantom(SHAPE, SPACING, seed=2, n_lesions=5)


def dice(a, b):
    return 2 * np.count_nonzero(a & b) / (np.count_nonzero(a) + np.count_nonzero(b))


def test_config_round_trip_and_errors():
    cfg = PostprocessConfig(opening_mm=1.5, closing_mm=2, fill_holes_mode="volume", lung_components=0)
    assert PostprocessConfig.from_dict(cfg.to_dict()) == cfg
    assert cfg.closing_mm == 2.0 and isinstance(cfg.closing_mm, float)
    with pytest.raises(ConfigError, match="unknown post-processing keys"):
        PostprocessConfig.from_dict({"min_lesion_ml": 1, "speed": "fast"})
    for bad in (
        {"opening_mm": -1},
        {"min_lesion_ml": float("nan")},
        {"lung_components": 1.5},
        {"lung_components": -1},
        {"fill_holes_mode": "2d"},
        {"fill_lung_holes": "yes"},
        {"lung_mask_source": "atlas"},
    ):
        with pytest.raises(ConfigError):
            PostprocessConfig(**bad)


def test_probabilities_to_labels_matches_argmax_in_every_layout():
    rng = np.random.default_rng(0)
    probs = rng.random((3, 37, 8, 9)).astype(np.float32)
    expected = np.argmax(probs, axis=0).astype(np.uint8)
    out = probabilities_to_labels(probs, slab=5)
    assert out.dtype == np.uint8 and np.array_equal(out, expected)
    chunks = (probs[:, z : z + 10] for z in range(0, 37, 10))
    assert np.array_equal(probabilities_to_labels(chunks), expected)
    zc = np.ascontiguousarray(probs.transpose(1, 0, 2, 3))
    assert np.array_equal(probabilities_to_labels(zc, channel_axis=1), expected)
    assert np.array_equal(probabilities_to_labels(iter([zc[:20], zc[20:]]), channel_axis=1), expected)
    with pytest.raises(InputError, match="4-D"):
        probabilities_to_labels(probs[0])
    with pytest.raises(InputError, match="no probability chunks"):
        probabilities_to_labels(iter([]))


def test_phantom_labels_pass_through_unchanged(phantom):
    out = postprocess(phantom.labels, SPACING, LOOSE)
    assert out.dtype == np.uint8 and out.shape == SHAPE
    assert np.mean(out == phantom.labels) > 0.999
    probs = np.stack([phantom.labels == k for k in range(3)]).astype(np.float32)
    assert np.array_equal(postprocess(probs, SPACING, LOOSE), out)


def test_dense_consolidation_at_the_lung_edge_is_kept(phantom):
    labels = phantom.labels.copy()
    lung = labels > 0
    z = SHAPE[0] // 2
    xs = np.flatnonzero(lung[z].any(axis=0))
    edge_x = xs[0]  # the right lung's lateral edge
    # a pleural-based consolidation: opacity on the lung border and one voxel beyond it
    ys = np.flatnonzero(lung[z, :, edge_x + 2])
    y0 = ys[len(ys) // 2]
    labels[z - 1 : z + 2, y0 - 2 : y0 + 3, edge_x - 1 : edge_x + 4] = 2
    out = postprocess(labels, SPACING, LOOSE)
    assert np.array_equal(out == 2, labels == 2)  # nothing deleted, nothing added


def test_opacity_outside_lungs_removed_and_small_lesions_become_lung(phantom):
    labels = phantom.labels.copy()
    labels[labels == 2] = 1
    labels[2:5, 2:8, 2:8] = 2  # outside the lungs (far corner): large but not in any lung
    lung_idx = np.argwhere(labels == 1)
    zc, yc, xc = lung_idx[len(lung_idx) // 2]
    labels[zc, yc, xc] = 2  # a one-voxel speck (0.06 mL) inside the lung
    labels[zc - 1 : zc + 2, yc + 4 : yc + 9, xc : xc + 5] = 2  # 75 voxels = 4.6 mL
    cfg = PostprocessConfig(min_lung_component_ml=5.0, min_lesion_ml=0.1)
    out = postprocess(labels, SPACING, cfg)
    assert out[2:5, 2:8, 2:8].max() == 0
    assert out[zc, yc, xc] == 1
    assert np.count_nonzero(out == 2) == 75
    keep = PostprocessConfig(min_lung_component_ml=5.0, min_lesion_ml=0.0, remove_opacity_outside_lung=False)
    kept = postprocess(labels, SPACING, keep)
    assert kept[zc, yc, xc] == 2 and (kept[2:5, 2:8, 2:8] == 2).all()


def test_only_the_two_largest_lung_components_of_enough_volume(phantom):
    labels = phantom.labels.copy()
    labels[1:3, 5:10, 40:50] = 1  # a third, small "lung" component (100 voxels = 6.1 mL)
    out = postprocess(labels, SPACING, PostprocessConfig(min_lung_component_ml=1.0))
    assert out[1:3, 5:10, 40:50].max() == 0
    assert np.mean(out == phantom.labels) > 0.999
    big = PostprocessConfig(min_lung_component_ml=1e6)
    assert postprocess(phantom.labels, SPACING, big).max() == 0
    all_components = PostprocessConfig(lung_components=0, min_lung_component_ml=1.0)
    assert (postprocess(labels, SPACING, all_components)[1:3, 5:10, 40:50] == 1).all()


def test_vessel_holes_are_filled_and_mediastinum_is_not(phantom):
    labels = phantom.labels.copy()
    z = SHAPE[0] // 2
    idx = np.argwhere(labels[z] == 1)
    for y, x in idx[:: max(len(idx) // 6, 1)][1:-1]:
        labels[z - 2 : z + 3, y, x] = 0  # vessel cross-sections inside the lung
    out = postprocess(labels, SPACING, LOOSE)
    assert np.mean(out == phantom.labels) > 0.999
    off = postprocess(labels, SPACING, PostprocessConfig(min_lung_component_ml=5.0, fill_lung_holes=False))
    assert np.count_nonzero(off == 0) > np.count_nonzero(out == 0)
    # two lungs joined in front of and behind the mediastinum: the big enclosed region stays open
    ring = np.zeros((6, 60, 60), np.uint8)
    ring[:, 5:55, 5:55] = 1
    ring[:, 15:45, 15:45] = 0  # 30 x 30 x 2 mm = 3600 mm2 > max_hole_mm2
    out = postprocess(ring, (2.0, 2.0, 2.0), PostprocessConfig(min_lung_component_ml=1.0))
    assert not out[:, 15:45, 15:45].any()


def test_opening_respects_anisotropic_spacing():
    labels = np.zeros((9, 40, 40), np.uint8)
    labels[1:8, 5:35, 5:35] = 1
    labels[4, 10:20, 10:20] = 2  # one slice thick (5 mm), 7 mm wide: survives a 1 mm in-plane disk
    labels[2:7, 25, 10:30] = 2  # one voxel (0.7 mm) thin in-plane: removed
    spacing = (5.0, 0.7, 0.7)
    cfg = PostprocessConfig(min_lung_component_ml=0.01, min_lesion_ml=0.0, opening_mm=1.0)
    out = postprocess(labels, spacing, cfg)
    assert (out[4, 11:19, 11:19] == 2).all()
    assert not (out[2:7, 25] == 2).any() and (out[2:7, 25, 10:30] == 1).all()
    iso = postprocess(labels, (0.7, 0.7, 0.7), cfg)  # on isotropic voxels the one-slice lesion is too thin
    assert not (iso == 2).any()


def test_closing_bridges_gaps_but_stays_inside_the_lung():
    labels = np.zeros((5, 30, 30), np.uint8)
    labels[:, 3:27, 3:27] = 1
    labels[1:4, 10:20, 3:9] = 2
    labels[1:4, 10:20, 10:16] = 2  # 1-voxel gap at x = 9
    cfg = PostprocessConfig(min_lung_component_ml=0.01, min_lesion_ml=0.0, closing_mm=1.0)
    out = postprocess(labels, (5.0, 1.0, 1.0), cfg)
    assert (out[1:4, 11:19, 9] == 2).all()
    assert out[:, :, :3].max() == 0


def test_models_without_lung_class_use_the_hu_lung_mask(phantom):
    opacity_only = (phantom.labels == 2).astype(np.uint8)
    names = ("background", "opacity")
    with pytest.raises(InputError, match="no lung class"):
        postprocess(opacity_only, SPACING, LOOSE, class_names=names)
    out = postprocess(opacity_only, SPACING, LOOSE, class_names=names, hu=phantom.hu)
    assert dice(out > 0, phantom.labels > 0) > 0.9
    assert np.array_equal(out == 2, phantom.labels == 2)  # opacity kept, even dense consolidation
    forced = PostprocessConfig(min_lung_component_ml=5.0, lung_mask_source="hu")
    out_hu = postprocess(phantom.labels, SPACING, forced, hu=phantom.hu)
    assert np.array_equal(out_hu, out)
    with pytest.raises(ConfigError, match="needs a 'lung' class"):
        postprocess(opacity_only, SPACING, PostprocessConfig(lung_mask_source="model"), class_names=names)
    with pytest.raises(InputError, match="hu shape"):
        postprocess(opacity_only, SPACING, LOOSE, class_names=names, hu=phantom.hu[:-1])


def test_lung_and_opacity_outside_the_body_are_dropped(phantom):
    rows = SHAPE[1]
    hu = np.concatenate([phantom.hu, np.full((SHAPE[0], 20, SHAPE[2]), -1000, np.int16)], axis=1)
    hu[:, -6:-3, :] = 300  # the table, below the patient
    labels = np.zeros(hu.shape, np.uint8)
    labels[:, :rows] = phantom.labels
    labels[4:20, -12:-7, 20:70] = 1  # "lung" in the air above the table (24 mL) ...
    labels[8:12, -11:-8, 30:40] = 2  # ... with "opacity"
    cfg = PostprocessConfig(lung_components=3, min_lung_component_ml=5.0)
    out = postprocess(labels, SPACING, cfg, hu=hu)
    assert out[:, rows:].max() == 0
    assert np.array_equal(out[:, :rows], postprocess(phantom.labels, SPACING, cfg, hu=phantom.hu))
    assert np.mean(out[:, :rows] == phantom.labels) > 0.999
    outside = np.zeros(hu.shape, bool)
    outside[4:20, -12:-7, 20:70] = True
    assert postprocess(labels, SPACING, replace(cfg, within_body=False), hu=hu)[outside].all()
    assert postprocess(labels, SPACING, cfg)[outside].all()  # no HU, no body outline to judge by
    one_slice = postprocess(labels[10:11], SPACING, cfg, hu=hu[10:11])  # a single slice: no outline to trust
    assert one_slice[0][outside[10]].all()


def test_a_lung_open_to_the_outside_in_a_few_slices_is_kept_whole(phantom):
    hu = phantom.hu.copy()
    z = SHAPE[0] // 2
    lung_x = np.flatnonzero((phantom.labels[z] > 0).any(axis=0))
    row = int(np.flatnonzero(phantom.labels[z, :, lung_x[0] + 2] > 0).mean())
    hu[z - 1 : z + 2, row - 2 : row + 2, : lung_x[0] + 3] = -1000  # the chest wall open: the lung is no hole there
    cfg = PostprocessConfig(min_lung_component_ml=5.0)
    expected = postprocess(phantom.labels, SPACING, cfg, hu=phantom.hu)
    assert np.array_equal(postprocess(phantom.labels, SPACING, cfg, hu=hu), expected)
    assert np.mean(expected == phantom.labels) > 0.999


def test_without_lung_class_only_opacity_connected_to_the_lungs_joins_them(phantom):
    names = ("background", "opacity")
    opacity = (phantom.labels == 2).astype(np.uint8)
    # Fat or muscle taken for opacity: a 4 x 6 x 6 voxel (8.8 mL) block in the body, far from both lungs.
    far = ndi.distance_transform_edt(phantom.labels == 0, sampling=SPACING) > 25
    candidates = np.argwhere(far & (phantom.hu > -500) & (ndi.uniform_filter(far.astype(float), 7) == 1))
    z, y, x = candidates[len(candidates) // 2]
    opacity[z - 2 : z + 2, y - 3 : y + 3, x - 3 : x + 3] = 1
    every_component = replace(LOOSE, lung_components=0)  # the block is not dropped for its size alone
    out = postprocess(opacity, SPACING, every_component, class_names=names, hu=phantom.hu)
    assert np.array_equal(out == 2, phantom.labels == 2)  # the lesions, and nothing else
    assert dice(out > 0, phantom.labels > 0) > 0.9
    unconnected = replace(every_component, opacity_connected_to_lung=False)
    assert (postprocess(opacity, SPACING, unconnected, class_names=names, hu=phantom.hu)[z, y, x]) == 2


def test_bad_inputs_and_empty_scans():
    empty = np.zeros((4, 16, 16), np.uint8)
    out = postprocess(empty, (1.0, 1.0, 1.0))
    assert out.dtype == np.uint8 and not out.any()
    with pytest.raises(InputError, match="only 3 classes"):
        postprocess(np.full((2, 4, 4), 3, np.uint8), (1.0, 1.0, 1.0))
    with pytest.raises(InputError, match="integer class indices"):
        postprocess(np.zeros((2, 4, 4), np.float32), (1.0, 1.0, 1.0))
    with pytest.raises(InputError, match="spacing"):
        postprocess(empty, (1.0, 0.0, 1.0))
    with pytest.raises(InputError, match="expected"):
        postprocess(np.zeros((4, 4), np.uint8), (1.0, 1.0, 1.0))
    with pytest.raises(ConfigError, match="background"):
        postprocess(empty, (1.0, 1.0, 1.0), class_names=("bg", "lung", "infection"))


def _reference_postprocess(labels: np.ndarray, spacing, cfg: PostprocessConfig) -> np.ndarray:
    """Post-processing written directly with scipy on the whole volume: no bounding boxes, no lookups."""
    voxel_ml = float(np.prod(spacing)) / 1000.0
    opacity = labels == 2
    lung = (labels == 1) | opacity
    if cfg.lung_components:
        comp, n = ndi.label(lung)
        sizes = np.bincount(comp.ravel(), minlength=n + 1)
        sizes[0] = 0
        order = np.argsort(-sizes, kind="stable")[: cfg.lung_components]
        keep = np.zeros(n + 1, bool)
        keep[order] = sizes[order] >= max(int(np.ceil(cfg.min_lung_component_ml / voxel_ml)), 1)
        lung = keep[comp]
    if cfg.fill_lung_holes and cfg.fill_holes_mode == "volume":
        lung = ndi.binary_fill_holes(lung)
    elif cfg.fill_lung_holes:
        max_hole = int(cfg.max_hole_mm2 / (spacing[1] * spacing[2]))
        for z in range(lung.shape[0]):
            background, n = ndi.label(~lung[z])
            border = np.concatenate([background[0], background[-1], background[:, 0], background[:, -1]])
            sizes = np.bincount(background.ravel(), minlength=n + 1)
            hole = (sizes <= max_hole) if max_hole > 0 else np.ones(n + 1, bool)
            hole[0] = False
            hole[border] = False
            lung[z] |= hole[background]
    if cfg.remove_opacity_outside_lung:
        opacity &= lung
    pad = 4
    for name, radius in (("opening", cfg.opening_mm), ("closing", cfg.closing_mm)):
        if radius > 0:
            footprint = ellipsoid_footprint(radius, spacing)
            padded = np.pad(opacity, pad)
            opacity = getattr(ndi, f"binary_{name}")(padded, structure=footprint)[pad:-pad, pad:-pad, pad:-pad]
    if cfg.closing_mm > 0 and cfg.remove_opacity_outside_lung:
        opacity &= lung
    if cfg.min_lesion_ml > 0:
        comp, n = ndi.label(opacity)
        keep = np.bincount(comp.ravel(), minlength=n + 1) >= int(np.ceil(cfg.min_lesion_ml / voxel_ml))
        keep[0] = False
        opacity = keep[comp]
    out = lung.astype(np.uint8)
    out[opacity] = 2
    return out


@pytest.mark.parametrize(
    "cfg",
    [
        LOOSE,
        PostprocessConfig(min_lung_component_ml=5.0, opening_mm=4.0, closing_mm=4.0, fill_holes_mode="volume"),
        PostprocessConfig(lung_components=0, remove_opacity_outside_lung=False, closing_mm=4.0, min_lesion_ml=0.5),
        PostprocessConfig(min_lung_component_ml=5.0, max_hole_mm2=40.0),
    ],
)
def test_cropped_post_processing_equals_the_whole_volume_computation(phantom, cfg):
    """The lung bounding box, slab-wise counting and label selection change nothing, wherever the lungs lie."""
    rng = np.random.default_rng(7)
    labels = np.zeros((SHAPE[0] + 6, SHAPE[1] + 20, SHAPE[2] + 9), np.uint8)
    labels[4 : 4 + SHAPE[0], 15 : 15 + SHAPE[1], 2 : 2 + SHAPE[2]] = phantom.labels
    specks = rng.random(labels.shape) < 0.004
    labels[specks] = rng.integers(0, 3, int(specks.sum()))  # specks everywhere, holes in the lungs
    labels[8:11, 5:9, 40:48] = 1  # a small third lung component near the border
    labels[12:15, 60:64, 5:9] = 2  # opacity outside the lungs
    expected = _reference_postprocess(labels, SPACING, cfg)
    assert np.array_equal(postprocess(labels, SPACING, cfg), expected)


def test_single_slice_without_lung_class_uses_the_per_slice_lung_mask():
    """A cropped 2-D slice: lesions in both lungs are kept (three of them), one in the chest wall is removed."""
    hu = np.full((1, 120, 120), 40, np.int16)  # tightly cropped: the body fills the image
    hu[0, :40, :16] = hu[0, :40, -16:] = -1000  # outside air in two corners
    hu[0, 10:100, 20:54] = -850  # right lung
    hu[0, 30:100, 66:100] = -850  # left lung
    labels = np.zeros_like(hu, dtype=np.uint8)
    lesions = [(slice(20, 30), slice(25, 35)), (slice(60, 70), slice(40, 50)), (slice(50, 60), slice(75, 85))]
    for rows, cols in lesions:
        labels[0, rows, cols] = 1
    labels[0, 105:115, 55:65] = 1  # false positive below the lungs, in soft tissue
    out = postprocess(
        labels,
        (1.0, 1.0, 1.0),
        PostprocessConfig(min_lesion_ml=0.0, min_lung_component_ml=0.0),
        class_names=("background", "opacity"),
        hu=hu,
    )
    for rows, cols in lesions:
        assert (out[0, rows, cols] == 2).all()
    assert not (out[0, 105:115, 55:65] == 2).any()
    assert (out[0, 40:90, 25:50] == 1).mean() > 0.9  # the lungs are labelled, not only the lesions
