"""The patient's body from Hounsfield units: where lungs can be, and where they cannot (table, cushions, air).

A network that sees one slice at a time can take the foam of the table cushion, the air around the patient or
the table for lung or opacity, most of all on slices unlike its training set (an abdominal scan). The body
outline from HU rules those out: lungs are always inside it.

:func:`body_mask` takes the largest 3-D face-connected component of voxels above
:data:`~covidseg.infer.lungmask.HU_BODY` (-500 HU), the body, and fills the holes of each axial slice: the
lungs, airways and bowel gas are holes of the body; the table, the cushion's foam and the air around the patient
are not. Where the field of view cuts through the patient (the body reaches the image edge in a slice), lungs cut
by that edge are not holes and cannot be told from the air outside, so such slices count as body as a whole.

Limits: where a cushion's surface touches the patient's back at two places, the air between them is a hole of
the body too. A lung that leaves its hole in a slice (a chest wall open in that slice) is outside the body there
only: :mod:`covidseg.infer.postprocess` drops whole components that lie mostly outside the body, never single
voxels.

The outline needs no fine detail (a lung never lies within a few millimetres of the skin), so it is computed on
voxels of at most about :data:`BODY_PIXEL_MM` along each axis (every 2nd row and column of a 0.7 mm scan, every
2nd slice of a 1 mm one; about 0.2 s for a 512 x 512 x 300 scan).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from covidseg.infer.lungmask import HU_BODY
from covidseg.infer.masks import Box, fill_holes, keep_largest_components

__all__ = ["BODY_PIXEL_MM", "body_mask"]

BODY_PIXEL_MM = 2.0
"""Slices, rows and columns are subsampled to steps of at most about this size (every 2nd of a 0.7 mm scan)."""


def body_mask(
    hu: np.ndarray,
    spacing: Sequence[float],
    *,
    pixel_mm: float = BODY_PIXEL_MM,
    box: Box | None = None,
) -> np.ndarray:
    """Boolean mask of the patient's body with its cavities (lungs, airways, bowel), from a HU volume.

    Args:
        hu: Canonical ``(Z, Y, X)`` HU volume (any real dtype; a strided view is fine).
        spacing: Voxel size (z, y, x) in mm.
        pixel_mm: Work on every n-th slice, row and column, n the largest that keeps voxels at most this size
            along that axis (at least 1), and repeat the result back to full size.
        box: Return only this part of the mask (three slices with steps of 1, as from
            :func:`~covidseg.infer.masks.bounding_box`); the outline is still found on the whole volume.

    Returns:
        Boolean ``(Z, Y, X)`` mask, or the ``box`` part of it. All False when no voxel is above -500 HU (no
        patient in view); slices where the body reaches the image edge are True as a whole.

    Raises:
        ValueError: If ``hu`` is not 3-D or a size is not positive.

    Examples:
        >>> hu = np.full((3, 64, 64), -1000, np.int16)
        >>> hu[:, 4:50, 4:60] = 40  # the patient
        >>> hu[:, 14:40, 14:50] = -850  # lungs, a hole of the body
        >>> hu[:, 52:54, 2:62] = -900  # the cushion's foam
        >>> hu[:, 55:58, :] = 300  # the table
        >>> body = body_mask(hu, (5.0, 1.0, 1.0))
        >>> bool(body[1, 25, 25]), bool(body[1, 52, 30]), bool(body[1, 56, 30]), bool(body[1, 1, 1])
        (True, False, False, False)
        >>> hu[2, 20:30, 0:10] = 40  # the field of view cuts the patient in slice 2
        >>> bool(body_mask(hu, (5.0, 1.0, 1.0))[2].all())
        True
        >>> body_mask(hu, (5.0, 1.0, 1.0), box=(slice(0, 2), slice(10, 20), slice(5, 9))).shape
        (2, 10, 4)
    """
    volume = np.asarray(hu)
    if volume.ndim != 3:
        raise ValueError(f"hu must be a (Z, Y, X) volume, got shape {volume.shape}")
    if min(pixel_mm, *spacing) <= 0:
        raise ValueError(f"spacing and pixel_mm must be positive, got {tuple(spacing)} and {pixel_mm}")
    steps = [max(1, int(pixel_mm // float(size))) for size in spacing]
    body = keep_largest_components(volume[:: steps[0], :: steps[1], :: steps[2]] > HU_BODY, 1)
    cut = body[:, 0, :].any(axis=1) | body[:, -1, :].any(axis=1)
    cut |= body[:, :, 0].any(axis=1) | body[:, :, -1].any(axis=1)
    body = fill_holes(body, "slice")
    body[cut] = True
    whole: Box = (slice(0, volume.shape[0]), slice(0, volume.shape[1]), slice(0, volume.shape[2]))
    return _upsampled(body, steps, box or whole)


def _upsampled(coarse: np.ndarray, steps: Sequence[int], box: Box) -> np.ndarray:
    """The ``box`` part of ``coarse`` (every ``steps[axis]``-th voxel along each axis) repeated to full resolution."""
    firsts = [part.start // step for part, step in zip(box, steps, strict=True)]
    out = coarse[
        tuple(slice(first, -(-part.stop // step)) for first, part, step in zip(firsts, box, steps, strict=True))
    ]
    for axis, (first, part, step) in enumerate(zip(firsts, box, steps, strict=True)):
        if step > 1:
            keep = [slice(None)] * 3
            keep[axis] = slice(part.start - first * step, part.stop - first * step)
            out = np.repeat(out, step, axis=axis)[tuple(keep)]
    return out
