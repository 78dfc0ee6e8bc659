"""Inside the phantom's lungs: branching vessels and bronchi, and COVID-19-like lesions.

Vessel trees grow from the hila toward random points spread through each lung: every branch heads part of the
way to the centroid of the points it serves and then splits them in two along their longest axis, so the tree
fills the lung, tapers (radius grows with the number of points served) and stops short of the pleura. Bronchi run
beside the larger arteries. Lesions are smooth random blobs (a radial envelope plus smoothed noise), placed mostly
peripherally, posteriorly and low, like the ground-glass opacities and consolidations of COVID-19 pneumonia.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from covidseg.data.phantom_anatomy import HU, TAPER_Z, cavity_radius, lung_masks
from covidseg.data.phantom_geometry import Frame, Segment

LESION_KINDS = ("ggo", "consolidation")
"""Lesion types: ground-glass opacity and consolidation."""

# Tree roots (z, y, x) in reference mm: pulmonary arteries at the hila, veins toward the left atrium.
_ROOTS = {
    "right": {"artery": (10.0, 5.0, -40.0), "vein": (-25.0, 14.0, -34.0)},
    "left": {"artery": (12.0, 10.0, 45.0), "vein": (-28.0, 16.0, 36.0)},
}
_TARGETS_PER_TREE = {"right": 320, "left": 260}
_LEAF_RADIUS_MM = 0.6
_BRONCHUS_MIN_ARTERY_MM = 1.6


@dataclass(frozen=True)
class Lesion:
    """One drawn lesion.

    Attributes:
        kind: ``"ggo"`` or ``"consolidation"``.
        centre: Voxel index ``(z, y, x)`` of its centre.
        radius_mm: Its nominal radius in physical mm (in-plane).
        voxels: Opacity voxels it labelled (inside the lungs).
    """

    kind: str
    centre: tuple[int, int, int]
    radius_mm: float
    voxels: int


def sample_lung_points(rng: np.random.Generator, side: str, n: int, max_radius: float = 0.93) -> np.ndarray:
    """``n`` random points ``(z, y, x)`` (reference mm) inside one lung, away from the costal pleura.

    Examples:
        >>> pts = sample_lung_points(np.random.default_rng(0), "left", 5)
        >>> pts.shape, bool((pts[:, 2] > 0).all())
        ((5, 3), True)
    """
    sign = -1.0 if side == "right" else 1.0
    lo, hi = np.array([-160.0, -85.0, 5.0]), np.array([155.0, 100.0, 135.0])
    found: list[np.ndarray] = []
    total = 0
    for _ in range(100):
        cand = rng.uniform(lo, hi, size=(4 * n, 3))
        cand[:, 2] *= sign
        z, y, x = cand[:, 0], cand[:, 1], cand[:, 2]
        inside = lung_masks(z, y, x)[0 if side == "right" else 1] & (cavity_radius(z, y, x) < max_radius)
        found.append(cand[inside])
        total += int(inside.sum())
        if total >= n:
            break
    return np.concatenate(found)[:n]


def grow_tree(rng: np.random.Generator, root: np.ndarray, targets: np.ndarray, root_radius: float) -> list[Segment]:
    """Branching segments from ``root`` that reach every target point (see the module docstring).

    Examples:
        >>> rng = np.random.default_rng(0)
        >>> segs = grow_tree(rng, np.zeros(3), rng.normal(size=(16, 3)) * 50, 6.0)
        >>> len(segs), max(s[2] for s in segs) <= 6.0
        (31, True)
    """
    segments: list[Segment] = []
    stack = [(np.asarray(root, dtype=np.float32), targets.astype(np.float32), root_radius, 0)]
    while stack:
        start, pts, r_in, depth = stack.pop()
        n = len(pts)
        radius = min(r_in, _LEAF_RADIUS_MM * n**0.42)
        if n == 1:
            segments.append((start, pts[0], radius, _LEAF_RADIUS_MM * 0.8))
            continue
        centroid = pts.mean(axis=0)
        reach = rng.uniform(0.3, 0.55) if depth else rng.uniform(0.15, 0.3)
        end = (start + (centroid - start) * reach).astype(np.float32)
        segments.append((start, end, radius, radius * 0.93))
        centred = pts - centroid
        axis = np.linalg.eigh(centred.T @ centred)[1][:, -1]
        order = np.argsort(centred @ axis)
        spread = max(n // 6, 0)
        cut = int(np.clip(n // 2 + rng.integers(-spread, spread + 1), 1, n - 1))
        stack.append((end, pts[order[:cut]], radius * 0.93, depth + 1))
        stack.append((end, pts[order[cut:]], radius * 0.93, depth + 1))
    return segments


def lung_trees(rng: np.random.Generator) -> tuple[list[Segment], list[Segment]]:
    """Pulmonary vessel segments (arteries and veins, both lungs) and bronchus segments beside the arteries."""
    vessels: list[Segment] = []
    bronchi: list[Segment] = []
    for side, roots in _ROOTS.items():
        for kind, root in roots.items():
            targets = sample_lung_points(rng, side, _TARGETS_PER_TREE[side])
            tree = grow_tree(rng, np.asarray(root), targets, 7.5 if kind == "artery" else 6.5)
            vessels.extend(tree)
            if kind == "artery":
                bronchi.extend(_bronchi_beside(tree))
    return vessels, bronchi


def _bronchi_beside(arteries: list[Segment]) -> list[Segment]:
    """Bronchus lumen segments alongside the larger arteries (bronchovascular bundles)."""
    out: list[Segment] = []
    for start, end, r0, r1 in arteries:
        if r0 < _BRONCHUS_MIN_ARTERY_MM:
            continue
        d = (end - start) / max(float(np.linalg.norm(end - start)), 1e-6)
        side = np.array([0.0, -1.0, 0.0]) + d[1] * d  # the anterior side, perpendicular to the artery
        if np.linalg.norm(side) < 0.3:
            side = np.array([0.0, 0.0, 1.0]) - d[2] * d
        side = side / np.linalg.norm(side)
        lumen0, lumen1 = 0.7 * r0, 0.7 * r1
        offset = side * (r0 + lumen0 + 1.0)
        out.append(((start + offset).astype(np.float32), (end + offset).astype(np.float32), lumen0, lumen1))
    return out


def lesion_count(rng: np.random.Generator, n_lesions: int | tuple[int, int] | None) -> int:
    """Resolve ``n_lesions`` (an int, an inclusive ``(min, max)`` range, or None for 3 to 8) to a count."""
    if n_lesions is None:
        return int(rng.integers(3, 9))
    if isinstance(n_lesions, tuple | list):
        low, high = (int(v) for v in n_lesions)
        return int(rng.integers(low, high + 1))
    return int(n_lesions)


def lesion_centres(rng: np.random.Generator, frame: Frame, lungs: np.ndarray, count: int) -> np.ndarray:
    """Voxel indices ``(count, 3)`` of lesion centres: mostly subpleural, posterior and in the lower lungs."""
    flat = np.flatnonzero(lungs)
    if count == 0 or len(flat) == 0:
        return np.zeros((0, 3), dtype=int)
    cand = np.stack(np.unravel_index(rng.choice(flat, size=min(len(flat), 4000)), lungs.shape), axis=1)
    z, y, x = frame.to_ref(cand).T
    periphery = cavity_radius(z, y, x)
    weight = np.exp(4.0 * (periphery - 1.0)) * np.exp(1.3 * y / 90.0) * np.exp(-0.5 * (z - TAPER_Z) / 100.0)
    picks = rng.choice(len(cand), size=count, p=weight / weight.sum())
    return cand[picks]


def _texture(rng: np.random.Generator, shape: tuple[int, ...], sigma: float) -> np.ndarray:
    """Unit-variance in-plane smoothed noise of ``shape``."""
    noise = ndimage.gaussian_filter(rng.standard_normal(shape, dtype=np.float32), sigma=(0.0, sigma, sigma))
    return noise / (float(noise.std()) + 1e-6)


def paint_lesion(
    rng: np.random.Generator,
    frame: Frame,
    hu: np.ndarray,
    opacity: np.ndarray,
    lungs: np.ndarray,
    lumen: np.ndarray,
    centre: np.ndarray,
    kind: str,
) -> Lesion:
    """Draw one lesion into ``hu`` (and ``opacity``) inside ``lungs``; return what was drawn.

    Ground glass keeps vessels visible (the lesion value is a floor under the existing tissue); consolidation
    replaces tissue but leaves the bronchial ``lumen`` air (air bronchograms) and often has a ground-glass halo.
    """
    radius = float(rng.uniform(14.0, 40.0) if kind == "ggo" else rng.uniform(10.0, 28.0))
    axes = radius * rng.uniform(0.7, 1.3, size=3)
    axes[0] *= 1.2  # lesions extend further cranio-caudally than a slice
    mid = frame.to_ref(centre)
    box = frame.box(mid - 1.5 * axes, mid + 1.5 * axes)
    empty = Lesion(kind, (int(centre[0]), int(centre[1]), int(centre[2])), radius * frame.scale[2], 0)
    if box is None:
        return empty
    z, y, x = frame.box_axes(box)
    envelope = np.sqrt(((z - mid[0]) / axes[0]) ** 2 + ((y - mid[1]) / axes[1]) ** 2 + ((x - mid[2]) / axes[2]) ** 2)
    shape = envelope.shape
    sigma = np.maximum(0.35 * axes / frame.step, 0.5)
    noise = ndimage.gaussian_filter(rng.standard_normal(shape, dtype=np.float32), sigma=sigma)
    noise /= float(noise.std()) + 1e-6
    field = 1.0 - envelope + float(rng.uniform(0.3, 0.5)) * noise
    edge = (3.0 if kind == "ggo" else 1.0) * frame.pixel / radius  # ground glass fades out, consolidation less
    inside = lungs[box].astype(np.float32)
    weight = np.clip(field / edge + 0.5, 0.0, 1.0) * inside
    texture = _texture(rng, shape, 0.8) * 35.0 + _texture(rng, shape, 2.0) * 60.0  # fine grain and patchiness
    patch = hu[box]
    if kind == "ggo":
        level = float(rng.uniform(*HU.ggo))
        target = np.maximum(patch, level + texture)
        halo = np.zeros_like(weight)
    else:
        level = float(rng.uniform(*HU.consolidation))
        target = np.where(lumen[box] > 0.5, patch, level + 0.5 * texture)
        halo_hu = float(rng.uniform(-650.0, -450.0))
        reach = float(rng.uniform(0.1, 0.35)) if rng.random() < 0.7 else 0.0
        halo = np.clip((field + reach) / (2.0 * edge) + 0.5, 0.0, 1.0) * inside * (reach > 0)
        patch += halo * (np.maximum(patch, halo_hu + texture) - patch)
    patch += weight * (target - patch)
    labelled = ((weight >= 0.5) | (halo >= 0.5)) & lungs[box]
    opacity[box] |= labelled
    return Lesion(kind, empty.centre, empty.radius_mm, int(labelled.sum()))
