"""Binary-mask primitives for post-processing: components, hole filling, morphology in physical units.

Every function works on boolean ``(Z, Y, X)`` arrays and never allocates a float volume. Work is done on the
bounding box of the foreground, since lungs fill only a fraction of a CT's field of view, and components are
found with one labelling pass (:func:`label_components`, connected-components-3d: two to three times faster
than :func:`scipy.ndimage.label`) followed by a lookup table, never a loop over components or voxels. Sizes
are given in voxels here; callers convert millilitres with :func:`voxel_volume_ml`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import cc3d
import numpy as np
from scipy import ndimage as ndi

__all__ = [
    "MM3_PER_ML",
    "bounding_box",
    "component_boxes",
    "component_sizes",
    "ellipsoid_footprint",
    "fill_holes",
    "keep_largest_components",
    "label_components",
    "morphology",
    "remove_small_components",
    "select_labels",
    "voxel_volume_ml",
]

MM3_PER_ML = 1000.0
"""Cubic millimetres in one millilitre."""

_VOLUME_CONNECTIVITY: Literal[6] = 6
"""Face connectivity in 3-D (the neighbours sharing a face), as :func:`cc3d.connected_components` counts it."""
_SLICE_CONNECTIVITY: Literal[4] = 4
"""Face connectivity inside one axial slice."""

Box = tuple[slice, slice, slice]
_COUNT_CHUNK = 1 << 22
"""Voxels per :func:`numpy.bincount` call in :func:`component_sizes` (bounds its int64 temporary to 32 MB)."""
_SPARSE_FRACTION = 0.125
"""Masks filling at most this fraction of their box are handled through the indices of their voxels."""
_FEW_LABELS = 4
"""Up to this many kept labels, :func:`select_labels` compares instead of looking up."""


def voxel_volume_ml(spacing: Sequence[float]) -> float:
    """Volume of one voxel in mL from the (z, y, x) spacing in mm.

    Examples:
        >>> voxel_volume_ml((1.0, 0.5, 0.5))
        0.00025
    """
    return float(np.prod([float(s) for s in spacing])) / MM3_PER_ML


def bounding_box(mask: np.ndarray, margin: int | Sequence[int] = 0) -> Box | None:
    """The smallest box (one slice per axis) that holds every True voxel, grown by ``margin``; None if empty.

    Each axis is searched only within the extent already found along the previous axes, so a mask that fills
    a small part of a large volume costs little more than one pass over it.

    Examples:
        >>> m = np.zeros((4, 5, 6), bool)
        >>> m[1, 2, 3] = m[2, 3, 3] = True
        >>> bounding_box(m)
        (slice(1, 3, None), slice(2, 4, None), slice(3, 4, None))
        >>> bounding_box(m, margin=1)
        (slice(0, 4, None), slice(1, 5, None), slice(2, 5, None))
    """
    if mask.ndim != 3:
        raise ValueError(f"expected a (Z, Y, X) mask, got shape {mask.shape}")
    margins = [int(margin)] * mask.ndim if isinstance(margin, int | np.integer) else [int(m) for m in margin]
    tight: list[slice] = []
    part = mask
    for axis in range(mask.ndim):
        others = tuple(a for a in range(mask.ndim) if a != axis)
        hits = np.flatnonzero(np.any(part, axis=others))
        if hits.size == 0:
            return None
        tight.append(slice(int(hits[0]), int(hits[-1]) + 1))
        part = part[(slice(None),) * axis + (tight[-1],)]
    box = [slice(max(s.start - m, 0), min(s.stop + m, n)) for s, m, n in zip(tight, margins, mask.shape, strict=True)]
    return (box[0], box[1], box[2])


def label_components(mask: np.ndarray, *, per_slice: bool = False) -> tuple[np.ndarray, int]:
    """Face-connected components of a boolean mask: uint32 labels ``1..n`` (0 outside) and ``n``.

    The same partition as :func:`scipy.ndimage.label` with its default (face) structure, two to three times
    faster on a CT volume (connected-components-3d); components are numbered in the order they are met.

    Args:
        mask: Boolean array, 2-D or 3-D.
        per_slice: Label each axial slice ``mask[z]`` of a 3-D mask on its own (in-plane face connectivity),
            with labels running on across slices.

    Examples:
        >>> m = np.array([[[1, 1, 0, 1]], [[0, 1, 0, 0]]], bool)  # (2, 1, 4)
        >>> labels, n = label_components(m)
        >>> n, labels.ravel().tolist()
        (2, [1, 1, 0, 2, 0, 1, 0, 0])
        >>> label_components(m, per_slice=True)[1]  # the voxel below is its own component
        3
    """
    arr = np.asarray(mask, dtype=bool)
    if not per_slice or arr.ndim != 3:
        connectivity = _VOLUME_CONNECTIVITY if arr.ndim == 3 else _SLICE_CONNECTIVITY
        labels, n = cc3d.connected_components(arr, connectivity=connectivity, return_N=True, out_dtype=np.uint32)
        return np.asarray(labels), int(n)
    out = np.zeros(arr.shape, dtype=np.uint32)
    total = 0
    for z in range(arr.shape[0]):
        if not arr[z].any():
            continue
        part, n = cc3d.connected_components(
            arr[z], connectivity=_SLICE_CONNECTIVITY, return_N=True, out_dtype=np.uint32
        )
        np.add(part, total, out=out[z], where=part > 0)
        total += int(n)
    return out, total


def component_boxes(labels: np.ndarray, n: int) -> list[Box | None]:
    """Bounding box of each label ``1..n`` of a 3-D :func:`label_components` result (None for an absent label).

    Like :func:`scipy.ndimage.find_objects`; for a few labels (two lungs) one comparison and
    :func:`bounding_box` per label is several times faster than its pass over every voxel.

    Examples:
        >>> lab = np.zeros((2, 3, 4), np.uint32)
        >>> lab[0, 1, 1:3] = 1
        >>> lab[1, 2, 3] = 2
        >>> [[(s.start, s.stop) for s in box] for box in component_boxes(lab, 2)]
        [[(0, 1), (1, 2), (1, 3)], [(1, 2), (2, 3), (3, 4)]]
    """
    if n > _FEW_LABELS:
        return [None if sub is None else (sub[0], sub[1], sub[2]) for sub in ndi.find_objects(labels, max_label=n)]
    return [bounding_box(labels == label) for label in range(1, int(n) + 1)]


def component_sizes(labels: np.ndarray, n: int, mask: np.ndarray | None = None) -> np.ndarray:
    """Voxel count of each label ``0..n`` of a :func:`label_components` result (index 0: background).

    Counted a slab of slices at a time: ``numpy.bincount`` converts its input to int64, which for a whole
    int32 label volume would be a temporary twice its size.

    Args:
        labels: Labels ``0..n``.
        n: The number of labels.
        mask: The labelled foreground (``labels > 0``), when at hand: only its voxels are read and
            ``sizes[0]`` is 0, which is faster for sparse masks.

    Examples:
        >>> component_sizes(np.array([[0, 1, 1, 2]]), 2).tolist()
        [1, 2, 1]
        >>> lab = np.array([[[0, 1, 1, 2]]])
        >>> component_sizes(lab, 2, mask=lab > 0).tolist()
        [0, 2, 1]
    """
    sizes = np.zeros(int(n) + 1, dtype=np.int64)
    rows = max(1, _COUNT_CHUNK // max(1, int(np.prod(labels.shape[1:]))))
    for start in range(0, labels.shape[0], rows):
        part = labels[start : start + rows]
        values = part[mask[start : start + rows]] if mask is not None else part.reshape(-1)
        counts = np.bincount(values, minlength=sizes.size)
        if counts.size > sizes.size:  # labels above n: grow rather than fail
            sizes = np.concatenate([sizes, np.zeros(counts.size - sizes.size, dtype=np.int64)])
        sizes += counts
    return sizes


def select_labels(labels: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """Boolean mask of the voxels whose label ``l`` has ``keep[l]`` True (``keep[labels]``, but faster).

    A few kept labels are compared one by one (about 3x faster than the table lookup on a large volume); all
    non-zero labels kept is ``labels != 0``.

    Examples:
        >>> select_labels(np.array([[0, 1, 2, 3, 2]]), np.array([False, False, True, True])).astype(int).tolist()
        [[0, 0, 1, 1, 1]]
    """
    keep = np.asarray(keep, dtype=bool)
    ids = np.flatnonzero(keep)
    if ids.size == 0:
        return np.zeros(labels.shape, dtype=bool)
    if not keep[0] and ids.size == keep.size - 1:
        return labels != 0
    if ids.size <= _FEW_LABELS:
        out = labels == ids[0]
        for label in ids[1:]:
            out |= labels == label
        return out
    return keep[labels]


def keep_largest_components(mask: np.ndarray, n_keep: int, min_voxels: int = 0) -> np.ndarray:
    """Keep the ``n_keep`` largest 3-D face-connected components that have at least ``min_voxels`` voxels.

    Args:
        mask: Boolean ``(Z, Y, X)`` mask.
        n_keep: How many components to keep (the largest by voxel count; ties broken by label order).
        min_voxels: Components smaller than this are dropped even when among the largest.

    Returns:
        A new boolean mask of the same shape.

    Examples:
        >>> m = np.zeros((1, 1, 9), bool)
        >>> m[0, 0, [0, 2, 3, 5, 6, 7]] = True
        >>> keep_largest_components(m, 2).astype(int).tolist()
        [[[0, 0, 1, 1, 0, 1, 1, 1, 0]]]
        >>> keep_largest_components(m, 2, min_voxels=3).astype(int).tolist()
        [[[0, 0, 0, 0, 0, 1, 1, 1, 0]]]
    """
    out = np.zeros(mask.shape, dtype=bool)
    box = bounding_box(mask)
    if box is None or n_keep < 1:
        return out
    crop = mask[box]
    labels, n = label_components(crop)
    sizes = component_sizes(labels, n, mask=crop)
    order = np.argsort(-sizes, kind="stable")[:n_keep]
    keep = np.zeros(n + 1, dtype=bool)
    keep[order] = sizes[order] >= max(int(min_voxels), 1)
    out[box] = select_labels(labels, keep)
    return out


def remove_small_components(mask: np.ndarray, min_voxels: int) -> np.ndarray:
    """Drop 3-D face-connected components with fewer than ``min_voxels`` voxels (a new array).

    Examples:
        >>> m = np.array([[[1, 0, 1, 1, 0, 1, 1, 1]]], bool)
        >>> remove_small_components(m, 2).astype(int).tolist()
        [[[0, 0, 1, 1, 0, 1, 1, 1]]]
    """
    out = np.zeros(mask.shape, dtype=bool)
    box = bounding_box(mask)
    if box is None:
        return out
    if min_voxels <= 1:
        out[box] = mask[box]
        return out
    crop = mask[box]
    labels, n = label_components(crop)
    voxels = np.flatnonzero(crop) if np.count_nonzero(crop) <= _SPARSE_FRACTION * crop.size else None
    if voxels is None:
        keep = component_sizes(labels, n, mask=crop) >= int(min_voxels)
        keep[0] = False
        out[box] = select_labels(labels, keep)
        return out
    # A sparse mask (opacity in its box): look up only its own voxels' labels, not the whole box's.
    values = labels.reshape(-1)[voxels]
    keep = np.bincount(values, minlength=n + 1) >= int(min_voxels)
    kept = np.zeros(crop.size, dtype=bool)
    kept[voxels[keep[values]]] = True
    out[box] = kept.reshape(crop.shape)
    return out


def fill_holes(mask: np.ndarray, mode: str = "slice", max_hole_voxels: int | None = None) -> np.ndarray:
    """Fill the holes of a mask: background regions that do not reach the border.

    ``"slice"`` fills holes in each axial slice on its own (2-D face connectivity of the background): vessels
    and bronchi that run into the lung from the hilum, and dense lesions touching the mediastinum, are tubes
    open in 3-D but enclosed islands in an axial slice, so only this mode fills them. ``"volume"`` fills only
    cavities enclosed in 3-D. Slice-wise filling includes every 3-D cavity (each cross-section of a cavity is
    enclosed in its slice).

    Args:
        mask: Boolean ``(Z, Y, X)`` mask.
        mode: ``"slice"`` or ``"volume"``.
        max_hole_voxels: Holes larger than this (voxels of one slice in ``"slice"`` mode, of the cavity in
            ``"volume"`` mode) stay open, e.g. the mediastinum when both lungs touch in front of and behind it.
            None fills every hole.

    Returns:
        A new boolean mask that includes ``mask``.

    Examples:
        >>> ring = np.ones((1, 5, 5), bool)
        >>> ring[0, 1:4, 1:4] = False
        >>> int(fill_holes(ring).sum()), int(fill_holes(ring, max_hole_voxels=8).sum())
        (25, 16)
    """
    if mode not in ("slice", "volume"):
        raise ValueError(f"fill mode must be 'slice' or 'volume', got {mode!r}")
    out = np.array(mask, dtype=bool, copy=True)
    box = bounding_box(out)
    if box is None:
        return out
    crop = out[box]
    background, n = label_components(~crop, per_slice=mode == "slice")
    if n == 0:
        return out
    # Background components touching the box's sides reach the outside; in slice mode the z faces are not
    # sides (each slice is its own 2-D image).
    faces = [background[:, 0, :], background[:, -1, :], background[:, :, 0], background[:, :, -1]]
    if mode == "volume":
        faces += [background[0], background[-1]]
    is_hole = np.ones(n + 1, dtype=bool)
    is_hole[0] = False
    for face in faces:
        is_hole[face.ravel()] = False
    holes = select_labels(background, is_hole)
    if max_hole_voxels is not None:
        too_big = is_hole & (component_sizes(background, n, mask=holes) > int(max_hole_voxels))
        if too_big.any():  # usually a few (the mediastinum in some slices)
            holes &= ~select_labels(background, too_big)
    crop |= holes
    return out


def ellipsoid_footprint(radius_mm: float, spacing: Sequence[float]) -> np.ndarray:
    """Boolean structuring element of a ball of ``radius_mm`` in physical space, on an anisotropic grid.

    The half-size along each axis is ``floor(radius_mm / spacing)`` voxels; an axis whose spacing exceeds the
    radius gets extent 1, so a 1 mm ball on 5 mm slices is a flat in-plane disk.

    Examples:
        >>> ellipsoid_footprint(1.0, (5.0, 0.7, 0.7)).shape
        (1, 3, 3)
        >>> int(ellipsoid_footprint(1.0, (1.0, 1.0, 1.0)).sum())
        7
    """
    radius = float(radius_mm)
    steps = [float(s) for s in spacing]
    half = [int(np.floor(radius / s + 1e-9)) for s in steps]
    grids = np.ogrid[tuple(slice(-h, h + 1) for h in half)]
    dist2 = sum((g * s) ** 2 for g, s in zip(grids, steps, strict=True))
    return np.asarray(dist2 <= radius**2 + 1e-9)


def morphology(mask: np.ndarray, operation: str, radius_mm: float, spacing: Sequence[float]) -> np.ndarray:
    """Binary ``"opening"`` or ``"closing"`` with a ball of ``radius_mm`` (anisotropic voxels), a new array.

    Computed on the foreground's bounding box padded by the footprint, so the result equals the operation
    on the whole volume with the background continued outside it. A radius below every voxel size is a no-op.

    Examples:
        >>> m = np.zeros((1, 7, 7), bool)
        >>> m[0, 1:6, 1:6] = True
        >>> m[0, 0, 0] = True  # a speck touching a corner
        >>> opened = morphology(m, "opening", 1.0, (5.0, 1.0, 1.0))  # a flat 1 mm disk on 5 mm slices
        >>> bool(opened[0, 0, 0]), int(opened.sum())  # the speck and the square's 4 corners removed
        (False, 21)
    """
    if operation not in ("opening", "closing"):
        raise ValueError(f"operation must be 'opening' or 'closing', got {operation!r}")
    out = np.array(mask, dtype=bool, copy=True)
    footprint = ellipsoid_footprint(radius_mm, spacing)
    if footprint.sum() <= 1:
        return out
    pad = [h // 2 + 1 for h in footprint.shape]
    box = bounding_box(out, margin=pad)
    if box is None:
        return out
    crop = out[box]
    if operation == "opening":
        result = ndi.binary_opening(crop, structure=footprint)
    else:
        # Pad so that closing does not treat the box border as foreground-adjacent (scipy's border_value=0).
        padded = np.pad(crop, [(p, p) for p in pad])
        inner = tuple(slice(p, p + n) for p, n in zip(pad, crop.shape, strict=True))
        result = ndi.binary_closing(padded, structure=footprint)[inner]
    out[box] = result
    return out
