"""Coordinates and drawing primitives of the synthetic chest-CT phantom.

The phantom's anatomy is described in *reference millimetres*: the millimetres of an adult chest in a 360 mm
field of view and a 320 mm cranio-caudal range. A :class:`Frame` maps reference millimetres to the voxels of a
requested grid, scaling in-plane by the smaller in-plane field of view and along z by the z range, so a
phantom looks the same (and has the same physical size) at any resolution of the same field of view.

Axes are canonical ``(z, y, x)``: x toward the patient's left, y toward posterior, z toward superior; the origin
of reference millimetres is the centre of the volume.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property

import numpy as np

REF_FOV_XY_MM = 360.0
"""In-plane field of view (mm) the reference anatomy is laid out in."""
REF_FOV_Z_MM = 320.0
"""Cranio-caudal range (mm) the reference anatomy is laid out in."""

Segment = tuple[np.ndarray, np.ndarray, float, float]
"""A tapered tube: start and end points ``(z, y, x)`` in reference mm, start and end radius in reference mm."""


@dataclass(frozen=True)
class Frame:
    """A voxel grid and its mapping to reference millimetres.

    Attributes:
        shape: Voxels ``(z, y, x)``.
        spacing: Voxel size ``(z, y, x)`` in mm.

    Examples:
        >>> f = Frame((64, 256, 256), (5.0, 1.40625, 1.40625))
        >>> f.step.round(3).tolist()  # reference mm per voxel
        [5.0, 1.406, 1.406]
        >>> f.to_index(np.array([0.0, 0.0, 0.0])).tolist()  # the centre of the volume
        [31.5, 127.5, 127.5]
    """

    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]

    @cached_property
    def scale(self) -> np.ndarray:
        """Physical mm per reference mm along ``(z, y, x)``."""
        z, y, x = (n * s for n, s in zip(self.shape, self.spacing, strict=True))
        xy = min(y, x) / REF_FOV_XY_MM
        return np.array([z / REF_FOV_Z_MM, xy, xy])

    @cached_property
    def step(self) -> np.ndarray:
        """Reference mm per voxel along ``(z, y, x)``."""
        return np.asarray(self.spacing, dtype=float) / self.scale

    @cached_property
    def centre(self) -> np.ndarray:
        """Voxel index of the reference origin."""
        return (np.asarray(self.shape, dtype=float) - 1) / 2

    @cached_property
    def pixel(self) -> float:
        """In-plane voxel size in reference mm (the sharpness of drawn edges)."""
        return float(min(self.step[1], self.step[2]))

    def axes(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Broadcastable reference-mm coordinates: z ``(Z, 1, 1)``, y ``(1, Y, 1)``, x ``(1, 1, X)``."""
        out = [
            (np.arange(n, dtype=np.float32) - c) * s for n, c, s in zip(self.shape, self.centre, self.step, strict=True)
        ]
        return out[0][:, None, None], out[1][None, :, None], out[2][None, None, :]

    def to_index(self, points: np.ndarray) -> np.ndarray:
        """Voxel indices (float) of reference-mm points ``(..., 3)``."""
        return np.asarray(points, dtype=float) / self.step + self.centre

    def to_ref(self, index: np.ndarray) -> np.ndarray:
        """Reference-mm coordinates of voxel indices ``(..., 3)``."""
        return (np.asarray(index, dtype=float) - self.centre) * self.step

    def box(self, lo_ref: np.ndarray, hi_ref: np.ndarray) -> tuple[slice, slice, slice] | None:
        """Index slices of the voxels between two reference-mm corners, or None when none are in the grid."""
        lo = np.floor(self.to_index(lo_ref)).astype(int)
        hi = np.ceil(self.to_index(hi_ref)).astype(int) + 1
        lo, hi = np.clip(lo, 0, self.shape), np.clip(hi, 0, self.shape)
        if np.any(hi <= lo):
            return None
        return slice(lo[0], hi[0]), slice(lo[1], hi[1]), slice(lo[2], hi[2])

    def box_axes(self, box: tuple[slice, slice, slice]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Broadcastable reference-mm coordinates of the voxels in ``box``."""
        out = [
            (np.arange(s.start, s.stop, dtype=np.float32) - c) * st
            for s, c, st in zip(box, self.centre, self.step, strict=True)
        ]
        return out[0][:, None, None], out[1][None, :, None], out[2][None, None, :]


def ellipse(
    y: np.ndarray, x: np.ndarray, cy: float, cx: float, ry: float | np.ndarray, rx: float | np.ndarray
) -> np.ndarray:
    """Squared normalised radius of an axis-aligned ellipse (< 1 inside).

    Examples:
        >>> float(ellipse(np.float32(0), np.float32(5), 0.0, 0.0, 2.0, 10.0))
        0.25
    """
    return ((y - cy) / ry) ** 2 + ((x - cx) / rx) ** 2


def split_ellipse(
    y: np.ndarray,
    x: np.ndarray,
    cy: float,
    rx: float | np.ndarray,
    r_anterior: float,
    r_posterior: float,
    power: float = 2.0,
) -> np.ndarray:
    """Normalised radius (not squared) of an ellipse centred at ``(cy, 0)`` with different front and back heights.

    ``power`` > 2 makes a superellipse (boxier outline).

    Examples:
        >>> float(split_ellipse(np.float32(-10), np.float32(0), 0.0, 5.0, 10.0, 20.0))
        1.0
    """
    ry = np.where(y < cy, r_anterior, r_posterior)
    if power == 2.0:
        return np.sqrt(((y - cy) / ry) ** 2 + (x / rx) ** 2)
    return (np.abs((y - cy) / ry) ** power + np.abs(x / rx) ** power) ** (1.0 / power)


def draw_segments(
    cover: np.ndarray,
    frame: Frame,
    segments: Sequence[Segment],
    *,
    grow_mm: float = 0.0,
    min_radius_mm: float = 0.0,
) -> tuple[slice, slice, slice] | None:
    """Draw tapered tubes into ``cover`` as partial-volume fractions in [0, 1] (maximum over tubes).

    A tube thinner than half a voxel is drawn half a voxel wide with its contrast scaled by its area, so small
    vessels fade like they do in CT rather than vanish or turn into full-contrast lines.

    Args:
        cover: Float array of ``frame.shape`` updated in place.
        frame: The grid.
        segments: Tubes in reference mm.
        grow_mm: Added to every radius (for walls drawn around a lumen).
        min_radius_mm: Tubes thinner than this (before ``grow_mm``) are skipped.

    Returns:
        The index box holding everything drawn, or None when nothing was.

    Examples:
        >>> f = Frame((8, 32, 32), (40.0, 11.25, 11.25))
        >>> c = np.zeros(f.shape, np.float32)
        >>> box = draw_segments(c, f, [(np.array([-100.0, 0, 0]), np.array([100.0, 0, 0]), 30.0, 30.0)])
        >>> float(c[4, 15, 15]), float(c[4, 0, 0])
        (1.0, 0.0)
    """
    if not segments:
        return None
    starts = np.array([s[0] for s in segments], dtype=np.float32)
    ends = np.array([s[1] for s in segments], dtype=np.float32)
    radii = np.array([(s[2], s[3]) for s in segments], dtype=np.float32)
    keep = radii.max(axis=1) >= min_radius_mm
    radii += grow_mm
    half_pixel = frame.pixel / 2
    reach = np.maximum(radii.max(axis=1), half_pixel) + frame.pixel
    shape = np.asarray(frame.shape)
    lo = np.floor(frame.to_index(np.minimum(starts, ends) - reach[:, None])).astype(int)
    hi = np.ceil(frame.to_index(np.maximum(starts, ends) + reach[:, None])).astype(int) + 1
    lo, hi = np.clip(lo, 0, shape), np.clip(hi, 0, shape)
    keep &= np.all(hi > lo, axis=1)
    if not keep.any():
        return None
    coords = [
        (np.arange(n, dtype=np.float32) - c) * st for n, c, st in zip(shape, frame.centre, frame.step, strict=True)
    ]
    for i in np.flatnonzero(keep):
        box = (slice(lo[i, 0], hi[i, 0]), slice(lo[i, 1], hi[i, 1]), slice(lo[i, 2], hi[i, 2]))
        start, d = starts[i], ends[i] - starts[i]
        pz = coords[0][box[0], None, None] - start[0]
        py = coords[1][None, box[1], None] - start[1]
        px = coords[2][None, None, box[2]] - start[2]
        t = (pz * d[0] + py * d[1] + px * d[2]) * (1.0 / max(float(d @ d), 1e-6))
        np.clip(t, 0.0, 1.0, out=t)
        dist = np.sqrt((pz - t * d[0]) ** 2 + (py - t * d[1]) ** 2 + (px - t * d[2]) ** 2)
        r0, r1 = float(radii[i, 0]), float(radii[i, 1])
        if max(r0, r1) >= half_pixel:
            radius = r0 + t * (r1 - r0)
            frac = (radius - dist) * (1.0 / frame.pixel) + 0.5
        else:  # thinner than half a voxel: half a voxel wide, contrast by area
            contrast = ((r0 + r1) / 2 / half_pixel) ** 2
            frac = ((half_pixel - dist) * (1.0 / frame.pixel) + 0.5) * contrast
        np.clip(frac, 0.0, 1.0, out=frac)
        np.maximum(cover[box], frac, out=cover[box])
    lo_all, hi_all = lo[keep].min(axis=0), hi[keep].max(axis=0)
    return slice(lo_all[0], hi_all[0]), slice(lo_all[1], hi_all[1]), slice(lo_all[2], hi_all[2])


def polyline(points: Sequence[Sequence[float]], radius: float | Sequence[float]) -> list[Segment]:
    """Segments through ``points`` (reference mm) with a constant or per-point radius.

    Examples:
        >>> len(polyline([(0, 0, 0), (10, 0, 0), (20, 5, 0)], 3.0))
        2
    """
    pts = [np.asarray(p, dtype=np.float32) for p in points]
    radii = [float(radius)] * len(pts) if isinstance(radius, int | float) else [float(r) for r in radius]
    return [(pts[i], pts[i + 1], radii[i], radii[i + 1]) for i in range(len(pts) - 1)]
