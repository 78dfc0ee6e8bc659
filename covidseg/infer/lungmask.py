"""A classical lung mask from Hounsfield units, for models without a lung class, and the left/right split.

The heuristic (:func:`classical_lung_mask`), in canonical ``(Z, Y, X)`` arrays:

1. Body: the largest 3-D component of voxels above ``HU_BODY`` (-500 HU), its holes filled in each axial slice.
2. Air inside the body: voxels below ``HU_AIR`` (-400 HU) inside the filled body. Air outside the body is never
   inside it; air components that touch the in-plane border of the image are dropped too (a body cut by the
   field of view does not close around the outside air).
3. Large airways: the trachea is a tube of pure air (below ``HU_AIRWAY_LUMEN``, -950 HU; parenchyma is near
   -850 HU) within ``AIRWAY_BAND_MM`` of the body's midline, at least ``AIRWAY_MIN_LENGTH_MM`` long, whose
   top cross-section is at most ``AIRWAY_MAX_AREA_MM2``. The most superior such tube is followed downward
   (with the main bronchi it branches into, inside the band) until a slice where its area exceeds
   ``AIRWAY_MAX_AREA_MM2`` (the lumen leaked into emphysematous lung); it is removed together with a
   ``AIRWAY_WALL_MM`` in-plane margin (the partial-volume wall), which disconnects the two lungs.
4. Lung-like components: at least ``min_lung_ml`` and mostly parenchyma, i.e. at most
   ``MAX_LOW_ATTENUATION_FRACTION`` of their voxels below -950 HU. Bowel and stomach gas is nearly pure air
   and fails this test. The largest lung-like component is the first lung; if it straddles the body midline
   (lungs touching at the anterior junction) it is split at the narrowest column near the midline; otherwise
   the largest lung-like component on the other side of the midline is the second lung.
5. Holes filled in each axial slice (vessels), up to ``MAX_HOLE_MM2``.

Limits: dense consolidation (above -400 HU) against the chest wall is not air and is missed, and fill-holes
only recovers lesions enclosed by aerated lung in their slice. In the network pipeline predicted opacity is
added to this mask, which restores them.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage as ndi

from covidseg.infer.masks import (
    bounding_box,
    component_boxes,
    component_sizes,
    fill_holes,
    keep_largest_components,
    label_components,
    voxel_volume_ml,
)

__all__ = [
    "AIRWAY_BAND_MM",
    "AIRWAY_MAX_AREA_MM2",
    "AIRWAY_MIN_LENGTH_MM",
    "AIRWAY_WALL_MM",
    "HU_AIR",
    "HU_AIRWAY_LUMEN",
    "HU_BODY",
    "MAX_HOLE_MM2",
    "MAX_LOW_ATTENUATION_FRACTION",
    "MERGED_SIDE_FRACTION",
    "MIN_LUNG_ML",
    "body_midline_x",
    "classical_lung_mask",
    "large_airways",
    "slice_lung_mask",
    "split_sides",
]

HU_BODY = -500.0
"""Voxels above this are body (soft tissue, fat, bone, the lungs' vessels)."""
HU_AIR = -400.0
"""Voxels below this inside the body are air-containing: lung parenchyma, airways, gas."""
HU_AIRWAY_LUMEN = -950.0
"""Airway lumen and gas are near -1000 HU; aerated lung parenchyma is near -850 HU."""
AIRWAY_BAND_MM = 45.0
"""Half-width of the central band (from the body midline) in which the trachea and main bronchi are followed."""
AIRWAY_MAX_AREA_MM2 = 1200.0
"""Largest airway lumen area in one axial slice (trachea about 200-400 mm², both main bronchi together less)."""
AIRWAY_MIN_LENGTH_MM = 20.0
"""A trachea candidate must span at least this cranio-caudal length."""
AIRWAY_WALL_MM = 2.0
"""In-plane margin removed around the airway lumen (its partial-volume wall)."""
MAX_LOW_ATTENUATION_FRACTION = 0.5
"""Lung components have at most this fraction below -950 HU (bowel gas: mostly above 0.6)."""
MIN_LUNG_ML = 20.0
"""Smallest air component kept as lung."""
MERGED_SIDE_FRACTION = 0.2
"""A component with at least this fraction of its voxels on each side of the midline holds both lungs."""
MAX_HOLE_MM2 = 2500.0
"""Holes up to this area in an axial slice are filled (vessels); the mediastinum is larger."""

_SPLIT_SEARCH_FRACTION = 0.25
"""The split column of merged lungs is searched within this fraction of their width around the midline."""


def body_midline_x(body: np.ndarray) -> float:
    """The x index of the body's centre of mass (the patient's midline), or the image centre for an empty mask.

    Examples:
        >>> b = np.zeros((2, 3, 10), bool)
        >>> b[:, :, 2:6] = True
        >>> body_midline_x(b)
        3.5
    """
    profile = np.count_nonzero(body, axis=(0, 1))
    total = int(profile.sum())
    if total == 0:
        return (body.shape[2] - 1) / 2.0
    return float(np.dot(profile, np.arange(body.shape[2])) / total)


def split_sides(mask: np.ndarray, midline_x: float) -> tuple[np.ndarray, np.ndarray]:
    """Split a lung mask into the part at small x and the part at large x of ``midline_x``.

    Each 3-D component goes to the side of its centroid. A component with at least ``MERGED_SIDE_FRACTION``
    of its voxels on each side (two lungs touching) is cut at the column with the fewest voxels within
    ``_SPLIT_SEARCH_FRACTION`` of its width around the midline (the junction line).

    Returns:
        ``(low_x, high_x)`` boolean masks; in canonical arrays ``low_x`` is the patient's right.

    Examples:
        >>> m = np.zeros((1, 3, 12), bool)
        >>> m[0, :, 1:5] = m[0, :, 6:10] = True
        >>> m[0, 1, 5] = True  # a bridge: one component holding both lungs
        >>> low, high = split_sides(m, 5.0)
        >>> int(low.sum()), int(high.sum())  # the junction column goes to the high side
        (12, 13)
    """
    low = np.zeros(mask.shape, dtype=bool)
    high = np.zeros(mask.shape, dtype=bool)
    box = bounding_box(mask)
    if box is None:
        return low, high
    labels, n = label_components(mask[box])
    x0 = box[2].start
    columns = np.arange(labels.shape[2]) + x0
    for index, sub in enumerate(component_boxes(labels, n), start=1):
        if sub is None:
            continue
        part = labels[sub] == index
        profile = np.count_nonzero(part, axis=(0, 1))
        xs = columns[sub[2]]
        total = int(profile.sum())
        left_count = int(profile[xs < midline_x].sum())
        target = tuple(slice(b.start + s.start, b.start + s.stop) for b, s in zip(box, sub, strict=True))
        if min(left_count, total - left_count) >= MERGED_SIDE_FRACTION * total:
            cut = _junction_column(profile, xs, midline_x)
            low[target] |= part & (xs < cut)[None, None, :]
            high[target] |= part & (xs >= cut)[None, None, :]
        elif np.dot(profile, xs) / total < midline_x:
            low[target] |= part
        else:
            high[target] |= part
    return low, high


def _junction_column(profile: np.ndarray, xs: np.ndarray, midline_x: float) -> float:
    """The x of the column with the fewest voxels near the midline (voxels at x < result go to the low side)."""
    reach = max(_SPLIT_SEARCH_FRACTION * (xs[-1] - xs[0] + 1), 1.0)
    near = np.abs(xs - midline_x) <= reach
    if not near.any():
        return midline_x
    candidates = np.flatnonzero(near)
    # Fewest voxels first, then nearest to the midline.
    best = candidates[np.lexsort((np.abs(xs[candidates] - midline_x), profile[candidates]))[0]]
    return float(xs[best])


def _in_plane_disk(radius_mm: float, spacing: Sequence[float]) -> np.ndarray:
    """Boolean in-plane disk footprint ``(1, h, w)`` of ``radius_mm`` on the (y, x) spacing."""
    ry, rx = (int(np.floor(radius_mm / float(s))) for s in spacing[1:])
    yy, xx = np.ogrid[-ry : ry + 1, -rx : rx + 1]
    disk = (yy * float(spacing[1])) ** 2 + (xx * float(spacing[2])) ** 2 <= radius_mm**2 + 1e-9
    return disk[None]


def large_airways(hu: np.ndarray, air: np.ndarray, spacing: Sequence[float], midline_x: float) -> np.ndarray:
    """Trachea and main bronchi with their wall margin (step 3 of the module heuristic); empty if none is seen.

    Args:
        hu: Canonical ``(Z, Y, X)`` HU.
        air: Air inside the body (step 2).
        spacing: (z, y, x) mm.
        midline_x: x index of the body midline.

    Examples:
        >>> hu = np.full((20, 40, 40), -850, np.int16)
        >>> hu[8:, 18:22, 18:22] = -1000  # a trachea entering from the top
        >>> airway = large_airways(hu, hu < -400, (2.0, 2.0, 2.0), 19.5)
        >>> int(airway.sum()) // 12  # per slice: the 4 x 4 lumen and a one-voxel (2 mm) wall ring
        32
    """
    sz, sy, sx = (float(s) for s in spacing)
    band = max(round(AIRWAY_BAND_MM / sx), 1)
    x_lo, x_hi = max(int(midline_x) - band, 0), min(int(midline_x) + band + 2, hu.shape[2])
    out = np.zeros(hu.shape, dtype=bool)
    lumen = air[:, :, x_lo:x_hi] & (hu[:, :, x_lo:x_hi] < HU_AIRWAY_LUMEN)
    labels, n = label_components(lumen)
    if n == 0:
        return out
    max_area = AIRWAY_MAX_AREA_MM2 / (sy * sx)
    min_slices = AIRWAY_MIN_LENGTH_MM / sz
    best, best_top = 0, -1
    for index, sub in enumerate(ndi.find_objects(labels), start=1):
        if sub is None or sub[0].stop - sub[0].start < min_slices or sub[0].stop - 1 <= best_top:
            continue
        top = sub[0].stop - 1
        if np.count_nonzero(labels[top] == index) <= max_area:
            best, best_top = index, top
    if best == 0:
        return out
    tube = labels == best
    areas = np.count_nonzero(tube, axis=(1, 2))
    too_wide = np.flatnonzero(areas[: best_top + 1] > max_area)
    if too_wide.size:  # leaked into lung below this slice: keep only what lies above the leak
        tube[: too_wide[-1] + 1] = False
    out[:, :, x_lo:x_hi] = tube
    box = bounding_box(out, margin=(0, 3 + int(AIRWAY_WALL_MM / sy), 3 + int(AIRWAY_WALL_MM / sx)))
    if box is not None:
        out[box] = ndi.binary_dilation(out[box], structure=_in_plane_disk(AIRWAY_WALL_MM, spacing))
    return out


def classical_lung_mask(hu: np.ndarray, spacing: Sequence[float], *, min_lung_ml: float = MIN_LUNG_ML) -> np.ndarray:
    """Lung mask from Hounsfield units alone (see the module docstring for the heuristic and its limits).

    Args:
        hu: Canonical ``(Z, Y, X)`` HU volume (x toward the patient's left, z toward superior).
        spacing: Voxel size (z, y, x) in mm.
        min_lung_ml: Smallest air component accepted as lung.

    Returns:
        Boolean ``(Z, Y, X)`` mask of at most two lungs; all False when no lungs are in view.

    Examples:
        >>> hu = np.full((10, 60, 60), -1000, np.int16)
        >>> hu[:, 5:55, 5:55] = 40  # body
        >>> hu[:, 15:45, 10:27] = -850  # right lung
        >>> hu[:, 15:45, 33:50] = -850  # left lung
        >>> hu[4, 30, 20] = 40  # a vessel
        >>> int(classical_lung_mask(hu, (5.0, 1.0, 1.0)).sum()) == 2 * 10 * 30 * 17
        True
    """
    hu = np.asarray(hu)
    if hu.ndim != 3:
        raise ValueError(f"hu must be a (Z, Y, X) volume, got shape {hu.shape}")
    body = keep_largest_components(hu > HU_BODY, 1)
    result = np.zeros(hu.shape, dtype=bool)
    if not body.any():
        return result
    midline = body_midline_x(body)
    air = fill_holes(body, "slice") & (hu < HU_AIR)
    del body
    air &= ~large_airways(hu, air, spacing, midline)

    box = bounding_box(air)
    if box is None:
        return result
    labels, n = label_components(air[box])
    sizes = component_sizes(labels, n)
    low_att = np.bincount(labels[hu[box] < HU_AIRWAY_LUMEN], minlength=n + 1)
    lung_like = (sizes >= min_lung_ml / voxel_volume_ml(spacing)) & (low_att <= MAX_LOW_ATTENUATION_FRACTION * sizes)
    lung_like[0] = False
    touches_edge = np.zeros(n + 1, dtype=bool)
    shape_yx = air.shape[1:]
    if box[1].start == 0:
        touches_edge[labels[:, 0, :].ravel()] = True
    if box[1].stop == shape_yx[0]:
        touches_edge[labels[:, -1, :].ravel()] = True
    if box[2].start == 0:
        touches_edge[labels[:, :, 0].ravel()] = True
    if box[2].stop == shape_yx[1]:
        touches_edge[labels[:, :, -1].ravel()] = True
    lung_like &= ~touches_edge
    if not lung_like.any():
        return result

    candidates = np.flatnonzero(lung_like)
    candidates = candidates[np.argsort(-sizes[candidates], kind="stable")]
    first = labels == candidates[0]
    first_full = np.zeros(hu.shape, dtype=bool)
    first_full[box] = first
    low, high = split_sides(first_full, midline)
    if low.any() and high.any():  # the two lungs touch: the split halves are the lungs
        result = low | high
    else:
        first_low = bool(low.any())
        result = first_full
        boxes = ndi.find_objects(labels)
        for label in candidates[1:]:
            sub = boxes[label - 1]
            if sub is None:
                continue
            profile = np.count_nonzero(labels[sub] == label, axis=(0, 1))
            x_centroid = box[2].start + sub[2].start + np.dot(profile, np.arange(profile.size)) / profile.sum()
            if (x_centroid < midline) != first_low:
                result[box] |= labels == label
                break
    return fill_holes(result, "slice", int(MAX_HOLE_MM2 / (float(spacing[1]) * float(spacing[2]))))


# The per-slice variant for single 2-D slices (display images, HU approximate); its steps and limits are
# described in covidseg.train.pretrain_labels, which uses it to make pre-training labels.
PURE_AIR_RANGE_FRACTION = 0.1
"""Pure air: the darkest 10 % of the range from the slice's low percentile up to the air threshold."""
MAX_PURE_AIR_FRACTION = 0.25
"""Lung components have at most this fraction of pure air (outside air, airways and gas: 0.3 and more)."""
LOW_PERCENTILE = 0.5
"""The slice's dark (and, mirrored, bright) reference level: a percentile, robust to a few extreme pixels."""
AIR_EXCLUSION_FRACTION = 0.05
"""Pixels within 5 % of the slice's range above its dark level (air) are left out of the Otsu threshold, so
that it separates lung from soft tissue even when much of the image is outside air."""
MIN_LUNG_AREA_MM2 = 150.0
"""Smallest lung cross-section kept (mm² of one slice)."""
MAX_LUNG_COMPONENTS = 2
"""At most this many lung components per slice (the two lungs)."""
OUTSIDE_AIR_SIDES = 3
"""An air component touching this many image sides surrounds the body: outside air."""


def _image_sides(labels: np.ndarray, n: int) -> np.ndarray:
    """How many of the four image sides each component label touches, ``(n + 1,)``."""
    sides = np.zeros(n + 1, np.int64)
    for edge in (labels[0], labels[-1], labels[:, 0], labels[:, -1]):
        touched = np.zeros(n + 1, bool)
        touched[edge] = True
        sides += touched
    return sides


def slice_lung_mask(hu: np.ndarray, spacing: Sequence[float]) -> np.ndarray:
    """Lung mask of one axial slice from relative intensities (steps and limits: :mod:`covidseg.train.pretrain_labels`).

    Args:
        hu: ``(Y, X)`` slice in HU (or HU mapped back from a display image).
        spacing: Pixel size ``(y, x)`` in mm.

    Returns:
        Boolean ``(Y, X)`` mask; all False when the slice holds no lung-like region.

    Examples:
        >>> hu = np.full((60, 60), 40, np.int16)  # tightly cropped: the body fills the image
        >>> hu[:20, :8] = hu[:20, -8:] = -1000  # outside air in two corners
        >>> hu[0:45, 10:27] = -850  # a lung cut by the top edge of the crop
        >>> hu[15:45, 33:50] = -850
        >>> hu[30, 40] = 40  # a vessel
        >>> int(slice_lung_mask(hu, (1.0, 1.0)).sum()) == 45 * 17 + 30 * 17
        True
    """
    image = np.asarray(hu, dtype=np.float32)
    if image.ndim != 2:
        raise ValueError(f"hu must be one (Y, X) slice, got shape {image.shape}")
    out = np.zeros(image.shape, dtype=bool)
    if float(image.max()) <= float(image.min()):
        return out
    low, high = (float(v) for v in np.percentile(image, [LOW_PERCENTILE, 100 - LOW_PERCENTILE]))
    above_air = image[image > low + AIR_EXCLUSION_FRACTION * (high - low)]
    from skimage.filters import threshold_otsu  # imported when needed: the 3-D heuristic does not use it

    threshold = float(threshold_otsu(above_air)) if above_air.size and np.ptp(above_air) > 0 else high
    pure_level = low + PURE_AIR_RANGE_FRACTION * max(threshold - low, 0.0)
    labels, n = label_components(image < threshold)
    if n == 0:
        return out
    index = np.arange(1, n + 1)
    sizes = np.concatenate([[0], ndi.sum_labels(np.ones_like(image), labels, index)])
    pure = np.concatenate([[0], ndi.sum_labels(image <= pure_level, labels, index)])
    pixel_mm2 = float(spacing[0]) * float(spacing[1])
    lung_like = (sizes * pixel_mm2 >= MIN_LUNG_AREA_MM2) & (pure <= MAX_PURE_AIR_FRACTION * sizes)
    lung_like &= _image_sides(labels, n) < OUTSIDE_AIR_SIDES
    lung_like[0] = False
    candidates = np.flatnonzero(lung_like)
    if candidates.size == 0:
        return out
    keep = candidates[np.argsort(-sizes[candidates], kind="stable")][:MAX_LUNG_COMPONENTS]
    out = np.isin(labels, keep)
    return fill_holes(out[None], "slice", int(MAX_HOLE_MM2 / pixel_mm2))[0]
