"""A synthetic chest-CT phantom with known labels, for tests, the demo and trying covidseg without data.

Anatomy is laid out in millimetres relative to the field of view, so a phantom looks the same at any matrix size
and spacing: a body with subcutaneous fat and muscle, ribs, sternum and spine, heart and aorta, a trachea that
divides into main bronchi, two lungs near -850 HU (the right one larger, domed bases, tapering apices) with
branching vessels, and COVID-19-like lesions — ground-glass opacities (-700..-300 HU) and consolidations
(-100..+50 HU, with air bronchograms), mostly peripheral and posterior — plus CT-like noise.

The volume is canonical ``(Z, Y, X)``: x toward the patient's left, y toward posterior, z toward superior, so
``hu[k]`` shows radiologically (the patient's right lung on the image's left, the spine at the bottom).
Labels: 0 background, 1 lung (parenchyma and the vessels inside it), 2 opacity (lesion voxels inside the lungs).

Examples:
    >>> ph = generate_phantom((16, 64, 64), (10.0, 5.0, 5.0), seed=1)
    >>> ph.hu.dtype, ph.labels.dtype, ph.hu.shape
    (dtype('int16'), dtype('uint8'), (16, 64, 64))
    >>> sorted(np.unique(ph.labels).tolist())
    [0, 1, 2]
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from covidseg.errors import InputError

__all__ = ["HU", "Phantom", "generate_phantom", "phantom_affine", "save_montage", "save_phantom"]


@dataclass(frozen=True)
class _HUValues:
    air: float = -1000.0
    fat: float = -100.0
    muscle: float = 45.0
    blood: float = 40.0
    bone: float = 700.0
    marrow: float = 250.0
    lung: float = -860.0
    ggo: tuple[float, float] = (-700.0, -300.0)
    consolidation: tuple[float, float] = (-100.0, 50.0)


HU = _HUValues()
"""Tissue values (HU) the phantom is built from."""

_LESION_KINDS = ("ggo", "consolidation")


@dataclass(frozen=True)
class Phantom:
    """A synthetic scan: int16 HU, uint8 labels (both canonical ``(Z, Y, X)``) and the RAS affine."""

    hu: np.ndarray
    labels: np.ndarray
    affine: np.ndarray

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel spacing (z, y, x) in mm."""
        return tuple(float(v) for v in np.linalg.norm(self.affine[:3, :3], axis=0))  # type: ignore[return-value]


def phantom_affine(shape: Sequence[int], spacing: Sequence[float]) -> np.ndarray:
    """Affine mapping canonical index ``(z, y, x)`` to RAS mm, centred on the volume.

    Examples:
        >>> phantom_affine((10, 20, 20), (2.0, 1.0, 1.0))[:3, :3].tolist()
        [[0.0, 0.0, -1.0], [0.0, -1.0, 0.0], [2.0, 0.0, 0.0]]
    """
    sz, sy, sx = (float(v) for v in spacing)
    affine = np.zeros((4, 4))
    affine[0, 2] = -sx  # x index -> patient left = -R
    affine[1, 1] = -sy  # y index -> posterior = -A
    affine[2, 0] = sz  # z index -> superior = +S
    affine[3, 3] = 1.0
    centre = (np.asarray(shape, dtype=float) - 1) / 2
    affine[:3, 3] = -affine[:3, :3] @ centre
    return affine


def _validate(shape: Sequence[int], spacing: Sequence[float]) -> tuple[tuple[int, int, int], tuple[float, ...]]:
    dims = tuple(int(v) for v in shape)
    steps = tuple(float(v) for v in spacing)
    if len(dims) != 3 or min(dims) < 1 or min(dims[1:]) < 16:
        raise InputError(f"phantom shape must be (z, y, x) with y and x >= 16, got {tuple(shape)}")
    if len(steps) != 3 or not all(np.isfinite(steps)) or min(steps) <= 0:
        raise InputError(f"phantom spacing must be three positive mm values (z, y, x), got {tuple(spacing)}")
    return dims, steps


def _grids(shape: tuple[int, int, int], spacing: Sequence[float]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Broadcastable mm coordinates (z, y, x), centred on the volume."""
    axes = [((np.arange(n, dtype=np.float32) - (n - 1) / 2) * s) for n, s in zip(shape, spacing, strict=True)]
    return axes[0][:, None, None], axes[1][None, :, None], axes[2][None, None, :]


def _ellipse(
    y: np.ndarray, x: np.ndarray, cy: float, cx: float, ry: float | np.ndarray, rx: float | np.ndarray
) -> np.ndarray:
    return ((y - cy) / ry) ** 2 + ((x - cx) / rx) ** 2


def _segment_distance(points: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    ab = b - a
    t = np.clip(((points - a) @ ab) / max(float(ab @ ab), 1e-6), 0.0, 1.0)
    return np.linalg.norm(points - (a + t[:, None] * ab), axis=1)


def _draw_tubes(
    target: np.ndarray,
    segments: list[tuple[np.ndarray, np.ndarray, float]],
    spacing: Sequence[float],
) -> None:
    """Set ``target`` True within each segment's radius (mm); segments are (start_mm, end_mm, radius_mm)."""
    shape = np.asarray(target.shape)
    step = np.asarray(spacing, dtype=np.float32)
    centre = (shape - 1) / 2
    for start, end, radius in segments:
        lo = np.floor((np.minimum(start, end) - radius) / step + centre).astype(int)
        hi = np.ceil((np.maximum(start, end) + radius) / step + centre).astype(int) + 1
        lo, hi = np.clip(lo, 0, shape), np.clip(hi, 0, shape)
        if np.any(hi <= lo):
            continue
        idx = np.stack(
            np.meshgrid(*[np.arange(a, b) for a, b in zip(lo, hi, strict=True)], indexing="ij"), axis=-1
        ).reshape(-1, 3)
        dist = _segment_distance((idx - centre) * step, start, end)
        inside = idx[dist <= radius]
        target[inside[:, 0], inside[:, 1], inside[:, 2]] = True


def _vessel_tree(
    rng: np.random.Generator, hilum: np.ndarray, reach: np.ndarray, lateral: float, depth: int = 5
) -> list[tuple[np.ndarray, np.ndarray, float]]:
    """Random branching segments (start, end, radius in mm) from ``hilum``, spreading laterally over ``reach``."""
    segments: list[tuple[np.ndarray, np.ndarray, float]] = []
    frontier = [(hilum, np.array([0.0, 0.0, lateral]), 4.5)]
    for level in range(depth):
        next_frontier = []
        for start, direction, radius in frontier:
            for _ in range(6 if level == 0 else 2):
                d = direction + rng.normal(scale=(1.2, 0.8, 0.5) if level == 0 else 0.5, size=3)
                d[2] = lateral * abs(d[2])  # always away from the mediastinum
                d = d / (np.linalg.norm(d) + 1e-6)
                length = float(rng.uniform(0.35, 0.6)) * float(reach.max()) / (1.0 + 0.6 * level)
                end = start + d * length
                segments.append((start.astype(np.float32), end.astype(np.float32), radius))
                next_frontier.append((end, d, max(radius * 0.7, 1.1)))
        frontier = next_frontier
    return segments


def _blob(
    rng: np.random.Generator, shape: tuple[int, int, int], spacing: Sequence[float], radius_mm: float
) -> np.ndarray:
    """A random smooth lesion shape inside a box of half-size ``radius_mm`` (boolean, box-shaped array)."""
    half = np.maximum(np.ceil(radius_mm / np.asarray(spacing)).astype(int), 1)
    box = tuple(int(2 * h + 1) for h in half)
    noise = ndimage.gaussian_filter(rng.normal(size=box).astype(np.float32), sigma=np.maximum(half / 2.5, 0.6))
    zz, yy, xx = (np.arange(n, dtype=np.float32) - n // 2 for n in box)
    r = np.sqrt(
        (zz[:, None, None] / half[0]) ** 2 + (yy[None, :, None] / half[1]) ** 2 + (xx[None, None, :] / half[2]) ** 2
    )
    field = noise / (noise.std() + 1e-6) * 0.35 + (1.0 - r)
    blob = field > 0.25
    if not blob.any():
        blob[box[0] // 2, box[1] // 2, box[2] // 2] = True
    return blob


def generate_phantom(
    shape: Sequence[int] = (64, 256, 256),
    spacing: Sequence[float] = (5.0, 1.4, 1.4),
    *,
    seed: int = 0,
    n_lesions: int | tuple[int, int] | None = None,
    lesion_kinds: Sequence[str] = _LESION_KINDS,
    noise_hu: float = 20.0,
) -> Phantom:
    """Generate a synthetic chest CT with labels.

    Args:
        shape: Voxels ``(z, y, x)``.
        spacing: Voxel size ``(z, y, x)`` in mm; anatomy scales with the field of view ``shape * spacing``.
        seed: Random seed; the same arguments give the same phantom.
        n_lesions: Number of lesions, a ``(min, max)`` range, or None for 3 to 8. 0 gives healthy lungs.
        lesion_kinds: Lesion types to draw from: ``ggo`` and/or ``consolidation``.
        noise_hu: Standard deviation of the image noise in HU.

    Returns:
        The :class:`Phantom`.

    Examples:
        >>> healthy = generate_phantom((8, 48, 48), (12.0, 7.0, 7.0), n_lesions=0)
        >>> int((healthy.labels == 2).sum())
        0
    """
    dims, steps = _validate(shape, spacing)
    unknown = sorted(set(lesion_kinds) - set(_LESION_KINDS))
    if unknown or not lesion_kinds:
        raise InputError(f"lesion_kinds must be some of {list(_LESION_KINDS)}, got {list(lesion_kinds)}")
    rng = np.random.default_rng(seed)
    z, y, x = _grids(dims, steps)
    fov_y, fov_x = dims[1] * steps[1], dims[2] * steps[2]
    length_z = dims[0] * steps[0]
    hu = np.full(dims, HU.air, dtype=np.float32)

    # Body: outer skin ellipse, subcutaneous fat, muscle inside; slight size change along z.
    body_rx, body_ry = 0.44 * fov_x, 0.31 * fov_y
    body_r = _ellipse(y, x, 0.02 * fov_y, 0.0, body_ry, body_rx)
    body = np.broadcast_to(body_r <= 1.0, dims)
    hu[body] = HU.fat
    inner = _ellipse(y, x, 0.02 * fov_y, 0.0, body_ry * 0.9, body_rx * 0.92) <= 1.0
    hu[np.broadcast_to(inner, dims)] = HU.muscle

    # Lungs: cranio-caudal profile t = 0 at the base, 1 at the apex.
    base, apex = -0.42 * length_z, 0.40 * length_z
    t = (z - base) / (apex - base)
    taper = np.sqrt(np.clip(1.0 - np.clip(t, 0, 1) ** 1.6, 0.0, 1.0))
    lungs = np.zeros(dims, dtype=bool)
    heart_r = _ellipse(y, x, -0.06 * fov_y, 0.06 * fov_x, 0.13 * fov_y, 0.15 * fov_x) + np.clip(t - 0.45, 0, None) * 8
    sides = {}
    for name, sign, scale, dome_height in (("right", -1.0, 1.06, 0.10), ("left", 1.0, 0.96, 0.07)):
        cx, cy = sign * 0.21 * fov_x, 0.03 * fov_y
        rx, ry = 0.15 * fov_x * scale * taper, 0.25 * fov_y * scale * taper
        r = _ellipse(y, x, cy, cx, ry + 1e-3, rx + 1e-3)
        dome = base + dome_height * length_z * np.clip(1.0 - r, 0, 1)
        lung = (r <= 1.0) & (t >= 0) & (t <= 1) & (z >= dome) & (body_r < 0.78)
        lung &= _ellipse(y, x, 0.0, 0.0, 0.26 * fov_y, 0.055 * fov_x) > 1.0  # mediastinum
        lung &= heart_r > 1.12  # cardiac impression
        lungs |= lung
        sides[name] = (np.array([0.15 * length_z, cy, cx], np.float32), np.array([0.4 * length_z, ry.max(), rx.max()]))
    gradient = HU.lung + 25.0 * (y / (0.25 * fov_y)).clip(-1, 1)  # gravity-dependent (posterior denser)
    hu = np.where(lungs, gradient, hu).astype(np.float32)

    # Heart and great vessels in the mediastinum.
    heart = np.broadcast_to((heart_r <= 1.0) & (t > -0.05), dims) & body
    hu[heart & ~lungs] = HU.blood
    aorta = (_ellipse(y, x, 0.12 * fov_y, 0.05 * fov_x, 12.0, 12.0) <= 1.0) & (t < 0.85) & (t > -0.1)
    hu[np.broadcast_to(aorta, dims) & ~lungs] = HU.blood + 5

    # Skeleton: vertebral body with marrow, spinal canal, posterior elements, sternum, ribs.
    spine_y = 0.21 * fov_y
    vert = _ellipse(y, x, spine_y, 0.0, 15.0, 18.0)
    hu[np.broadcast_to(vert <= 1.0, dims)] = HU.bone
    hu[np.broadcast_to(vert <= 0.6, dims)] = HU.marrow
    hu[np.broadcast_to(_ellipse(y, x, spine_y + 24.0, 0.0, 7.0, 7.0) <= 1.0, dims)] = HU.muscle - 20
    lamina = (np.abs(np.abs(x) - 12.0) < 4.0) & (np.abs(y - spine_y - 34.0) < 6.0)
    hu[np.broadcast_to(lamina, dims)] = HU.bone
    sternum = _ellipse(y, x, -0.27 * fov_y, 0.0, 6.0, 14.0) <= 1.0
    hu[np.broadcast_to(sternum & (t < 0.9), dims)] = HU.bone
    ring = (body_r > 0.80) & (body_r < 0.86) & (np.abs(x) > 0.08 * fov_x)
    rib_phase = np.mod(z - base, 28.0) < 9.0
    hu[np.broadcast_to(ring & rib_phase, dims) & ~lungs] = HU.bone

    # Airways: trachea above the carina, main bronchi toward each hilum.
    carina_z = base + 0.68 * (apex - base)
    top = np.array([length_z / 2, -0.03 * fov_y, 0.0], np.float32)
    carina = np.array([carina_z, -0.01 * fov_y, 0.0], np.float32)
    airway = np.zeros(dims, dtype=bool)
    wall = np.zeros(dims, dtype=bool)
    tubes = [(top, carina, 9.0)]
    for sign in (-1.0, 1.0):
        hilum = np.array([carina_z - 25.0, 0.02 * fov_y, sign * 0.12 * fov_x], np.float32)
        tubes.append((carina, hilum, 6.0))
    _draw_tubes(wall, [(a, b, r + 2.0) for a, b, r in tubes], steps)
    _draw_tubes(airway, tubes, steps)
    hu[wall & body] = HU.muscle
    hu[airway & body] = HU.air

    # Pulmonary vessels: branching trees from each hilum, kept inside the lungs.
    vessels = np.zeros(dims, dtype=bool)
    for sign, (_, reach) in zip((-1.0, 1.0), sides.values(), strict=True):
        hilum = np.array([carina_z - 35.0, 0.03 * fov_y, sign * 0.15 * fov_x], np.float32)
        _draw_tubes(vessels, _vessel_tree(rng, hilum, reach, lateral=sign), steps)
    vessels &= lungs
    hu[vessels] = HU.blood

    # Lesions: peripheral / posterior blobs of ground glass or consolidation, inside the lungs.
    labels = np.where(lungs, 1, 0).astype(np.uint8)
    count = _lesion_count(rng, n_lesions)
    lung_idx = np.argwhere(ndimage.binary_erosion(lungs, iterations=1) if lungs.any() else lungs)
    if count and len(lung_idx):
        distance = ndimage.distance_transform_edt(lungs, sampling=steps)[tuple(lung_idx.T)]
        posterior = y.ravel()[lung_idx[:, 1]] / (0.25 * fov_y)
        weight = np.exp(-distance / 15.0) * np.exp(0.8 * posterior)
        picks = rng.choice(len(lung_idx), size=count, p=weight / weight.sum())
        for pick in picks:
            kind = lesion_kinds[int(rng.integers(len(lesion_kinds)))]
            _add_lesion(rng, hu, labels, lungs, lung_idx[pick], kind, steps, fov_x)

    # Noise with a little correlation, like reconstructed CT.
    noise = ndimage.gaussian_filter(rng.normal(size=dims).astype(np.float32), sigma=(0, 0.7, 0.7))
    noise *= noise_hu / (float(noise.std()) + 1e-6)
    hu = ndimage.gaussian_filter(hu, sigma=(0, 0.5, 0.5)) + noise
    return Phantom(
        hu=np.clip(np.rint(hu), -1024, 3071).astype(np.int16), labels=labels, affine=phantom_affine(dims, steps)
    )


def _lesion_count(rng: np.random.Generator, n_lesions: int | tuple[int, int] | None) -> int:
    if n_lesions is None:
        return int(rng.integers(3, 9))
    if isinstance(n_lesions, tuple):
        low, high = n_lesions
        return int(rng.integers(low, high + 1))
    if n_lesions < 0:
        raise InputError(f"n_lesions must be >= 0, got {n_lesions}")
    return int(n_lesions)


def _add_lesion(
    rng: np.random.Generator,
    hu: np.ndarray,
    labels: np.ndarray,
    lungs: np.ndarray,
    centre: np.ndarray,
    kind: str,
    spacing: Sequence[float],
    fov_x: float,
) -> None:
    radius = float(rng.uniform(0.035, 0.09)) * fov_x
    blob = _blob(rng, hu.shape, spacing, radius)
    half = np.asarray(blob.shape) // 2
    lo = centre - half
    src = tuple(slice(max(0, -a), b - max(0, a + b - n)) for a, b, n in zip(lo, blob.shape, hu.shape, strict=True))
    dst = tuple(slice(max(0, a), min(n, a + b)) for a, b, n in zip(lo, blob.shape, hu.shape, strict=True))
    region = blob[src] & lungs[dst]
    if not region.any():
        return
    low, high = HU.ggo if kind == "ggo" else HU.consolidation
    level = float(rng.uniform(low, high))
    texture = rng.normal(scale=0.08 * (high - low), size=region.shape).astype(np.float32)
    patch = hu[dst]
    if kind == "ggo":  # ground glass: vessels stay visible through it
        patch[region] = np.maximum(patch[region], level + texture[region])
    else:
        patch[region] = level + texture[region]
        bronchogram = region & (rng.random(region.shape) < 0.002)
        bronchogram = ndimage.binary_dilation(bronchogram, iterations=1) & region
        patch[bronchogram] = HU.air + 50
    labels[dst][region] = 2


def save_phantom(
    phantom: Phantom,
    out_dir: str | Path,
    *,
    name: str = "phantom",
    formats: Sequence[str] = ("nifti",),
    overwrite: bool = False,
) -> dict[str, Path]:
    """Write the phantom's HU volume and labels.

    Args:
        phantom: What :func:`generate_phantom` returned.
        out_dir: Destination folder (created).
        name: File name stem.
        formats: ``nifti`` (``<name>.nii.gz`` + ``<name>_labels.nii.gz``), ``mha``, ``nrrd``, ``dicom``
            (``<name>_dicom/`` series).
        overwrite: Replace existing files.

    Returns:
        Paths by kind: ``nifti``, ``labels`` (NIfTI label map, always written), ``mha``, ``nrrd``, ``dicom``.

    Examples:
        >>> import tempfile
        >>> paths = save_phantom(generate_phantom((6, 32, 32), (10.0, 10.0, 10.0)), tempfile.mkdtemp())
        >>> sorted(paths)
        ['labels', 'nifti']
    """
    from covidseg.io import CTVolume, save_mask, save_volume, write_dicom_series

    valid = ("nifti", "mha", "nrrd", "dicom")
    unknown = sorted(set(formats) - set(valid))
    if unknown:
        raise InputError(f"unknown phantom format(s) {unknown}; expected some of {list(valid)}")
    folder = Path(out_dir)
    volume = CTVolume.from_canonical(phantom.hu, phantom.affine)
    targets = {"labels": folder / f"{name}_labels.nii.gz"}
    suffixes = {"nifti": ".nii.gz", "mha": ".mha", "nrrd": ".nrrd"}
    for fmt in formats:
        targets[fmt] = folder / (f"{name}_dicom" if fmt == "dicom" else f"{name}{suffixes[fmt]}")
    if not overwrite:
        existing = [str(p) for p in targets.values() if p.exists()]
        if existing:
            from covidseg.errors import OutputExistsError

            raise OutputExistsError(f"{existing[0]} already exists; pass --overwrite to replace it")
    folder.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    for kind, path in targets.items():
        if kind == "labels":
            save_mask(phantom.labels, volume, path, overwrite=overwrite)
        elif kind == "dicom":
            write_dicom_series(volume, path, series_description="covidseg phantom", overwrite=overwrite)
        else:
            save_volume(phantom.hu, volume, path, overwrite=overwrite)
        written[kind] = path
    return written


def save_montage(
    hu: np.ndarray,
    labels: np.ndarray | None,
    path: str | Path,
    *,
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    n_slices: int = 6,
    overwrite: bool = False,
) -> Path:
    """Save a PNG of axial slices (lung window) with label outlines, plus a coronal view.

    Examples:
        >>> import tempfile
        >>> ph = generate_phantom((12, 48, 48), (10.0, 7.0, 7.0))
        >>> save_montage(ph.hu, ph.labels, Path(tempfile.mkdtemp()) / "m.png").stat().st_size > 0
        True
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from covidseg.io.atomic import atomic_path

    lung_rows = np.flatnonzero((labels > 0).any(axis=(1, 2))) if labels is not None else np.array([], dtype=int)
    if len(lung_rows):
        picks = np.linspace(lung_rows[0], lung_rows[-1], n_slices + 2)[1:-1].round().astype(int)
    else:
        picks = np.linspace(0, hu.shape[0] - 1, n_slices).round().astype(int)
    fig, axes = plt.subplots(1, n_slices + 1, figsize=(2.6 * (n_slices + 1), 3.0))
    window = {"cmap": "gray", "vmin": -1350, "vmax": 150}
    for ax, k in zip(axes[:-1], picks[::-1], strict=True):
        ax.imshow(hu[k], **window)
        if labels is not None:
            ax.contour(labels[k] >= 1, levels=[0.5], colors="deepskyblue", linewidths=0.6)
            ax.contour(labels[k] == 2, levels=[0.5], colors="orangered", linewidths=0.8)
        ax.set_title(f"axial {k}", fontsize=8)
        ax.text(0.02, 0.5, "R", color="yellow", transform=ax.transAxes, fontsize=8, va="center")
        ax.axis("off")
    row = int(np.argmax((labels > 0).sum(axis=(0, 2)))) if labels is not None and labels.any() else hu.shape[1] // 2
    ax = axes[-1]
    ax.imshow(hu[::-1, row, :], aspect=float(spacing[0]) / float(spacing[2]), **window)
    if labels is not None:
        ax.contour(labels[::-1, row, :] >= 1, levels=[0.5], colors="deepskyblue", linewidths=0.6)
        ax.contour(labels[::-1, row, :] == 2, levels=[0.5], colors="orangered", linewidths=0.8)
    ax.set_title(f"coronal (y={row})", fontsize=8)
    ax.axis("off")
    fig.tight_layout()
    with atomic_path(path, overwrite=overwrite) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    return Path(path)
