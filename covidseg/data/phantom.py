"""A synthetic chest-CT phantom with known labels, for tests, the demo and trying covidseg without data.

A phantom has a body with subcutaneous fat and muscle; ribs that descend from back to front, costal cartilages,
sternum, vertebrae with discs, spinal canal and posterior elements, scapulae and clavicles; heart, aorta,
pulmonary arteries, superior vena cava, oesophagus; a trachea dividing into main bronchi; two lungs near -860 HU
(the right one larger, domed bases with deep posterior recesses, rounded apices, a cardiac impression on the left)
filled with tapering branching vessels and bronchi; COVID-19-like lesions, ground-glass opacities (-700..-300 HU,
vessels visible through them) and consolidations (-100..+50 HU, with air bronchograms and often a ground-glass
halo), mostly peripheral, posterior and low; and CT-like correlated noise.

Anatomy is laid out in millimetres and scaled to the field of view, so a phantom looks the same at any matrix size
and spacing, and two resolutions of the same field of view have the same lung volume in mL.

The volume is canonical ``(Z, Y, X)``: x toward the patient's left, y toward posterior, z toward superior, so
``hu[k]`` shows radiologically (the patient's right lung on the image's left, the spine at the bottom).
Labels: 0 background, 1 lung (parenchyma with the vessels and small airways inside it), 2 opacity (lesion voxels
inside the lungs; nothing outside the lungs is labelled).

Examples:
    >>> ph = generate_phantom((16, 64, 64), (20.0, 5.6, 5.6), seed=1)
    >>> ph.hu.dtype, ph.labels.dtype, ph.hu.shape
    (dtype('int16'), dtype('uint8'), (16, 64, 64))
    >>> sorted(np.unique(ph.labels).tolist())
    [0, 1, 2]
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from covidseg.data.phantom_anatomy import (
    HU,
    TissueHU,
    lung_masks,
    paint_body,
    paint_mediastinum,
    paint_skeleton,
    paint_tubes,
)
from covidseg.data.phantom_anatomy import hila as hila_mask
from covidseg.data.phantom_geometry import Frame, draw_segments
from covidseg.data.phantom_io import save_montage, save_phantom
from covidseg.data.phantom_lungs import (
    LESION_KINDS,
    Lesion,
    lesion_centres,
    lesion_count,
    lung_trees,
    paint_lesion,
)
from covidseg.errors import InputError
from covidseg.io.volume import canonical_affine

__all__ = [
    "HU",
    "HU_MAX",
    "HU_MIN",
    "LESION_KINDS",
    "Lesion",
    "Phantom",
    "TissueHU",
    "generate_phantom",
    "generate_phantom_slices",
    "phantom_affine",
    "save_montage",
    "save_phantom",
]

HU_MIN, HU_MAX = -1024, 3071
"""Range the phantom's int16 HU are clipped to (the usual 12-bit CT range)."""
BLUR_VOXELS = 0.65
"""In-plane Gaussian (voxels) that blurs the anatomy and correlates the noise, as CT reconstruction does."""
_MIN_IN_PLANE = 16


@dataclass(frozen=True)
class Phantom:
    """A synthetic scan.

    Attributes:
        hu: int16 HU, canonical ``(Z, Y, X)``.
        labels: uint8 ``(Z, Y, X)``: 0 background, 1 lung, 2 opacity.
        affine: 4x4 map from canonical index ``(z, y, x, 1)`` to RAS mm, centred on the volume.
        lesions: The lesions drawn (kind, centre, size, labelled voxels).
    """

    hu: np.ndarray
    labels: np.ndarray
    affine: np.ndarray
    lesions: tuple[Lesion, ...] = ()

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel spacing (z, y, x) in mm."""
        z, y, x = (float(v) for v in np.linalg.norm(self.affine[:3, :3], axis=0))
        return z, y, x


def phantom_affine(shape: Sequence[int], spacing: Sequence[float]) -> np.ndarray:
    """Canonical affine (x to Left, y to Posterior, z to Superior) with the volume's centre at RAS (0, 0, 0).

    Examples:
        >>> a = phantom_affine((10, 20, 20), (2.0, 1.0, 1.0))
        >>> a[:3, :3].tolist()
        [[0.0, 0.0, -1.0], [0.0, -1.0, 0.0], [2.0, 0.0, 0.0]]
        >>> (a @ [4.5, 9.5, 9.5, 1.0]).tolist()
        [0.0, 0.0, 0.0, 1.0]
    """
    affine = canonical_affine((float(spacing[0]), float(spacing[1]), float(spacing[2])))
    affine[:3, 3] = -affine[:3, :3] @ ((np.asarray(shape, dtype=float) - 1) / 2)
    return affine


def _validate(
    shape: Sequence[int], spacing: Sequence[float], noise_hu: float
) -> tuple[tuple[int, int, int], tuple[float, float, float]]:
    try:
        dims = tuple(int(v) for v in shape)
        steps = tuple(float(v) for v in spacing)
    except (TypeError, ValueError) as err:
        raise InputError(f"phantom shape and spacing must be numbers (z, y, x), got {shape!r}, {spacing!r}") from err
    if len(dims) != 3 or dims[0] < 1 or min(dims[1:]) < _MIN_IN_PLANE:
        raise InputError(f"phantom shape must be (z, y, x) with z >= 1 and y, x >= {_MIN_IN_PLANE}, got {shape!r}")
    if len(steps) != 3 or not all(math.isfinite(s) and s > 0 for s in steps):
        raise InputError(f"phantom spacing must be three positive mm values (z, y, x), got {spacing!r}")
    if not (math.isfinite(noise_hu) and noise_hu >= 0):
        raise InputError(f"noise_hu must be a finite value >= 0, got {noise_hu}")
    return (dims[0], dims[1], dims[2]), (steps[0], steps[1], steps[2])


def _check_lesions(n_lesions: int | tuple[int, int] | None, lesion_kinds: Sequence[str]) -> tuple[str, ...]:
    kinds = tuple(lesion_kinds)
    unknown = sorted(set(kinds) - set(LESION_KINDS))
    if unknown or not kinds:
        raise InputError(f"lesion_kinds must be some of {list(LESION_KINDS)}, got {list(kinds)}")
    bounds = [] if n_lesions is None else list(n_lesions) if isinstance(n_lesions, tuple | list) else [n_lesions]
    valid = all(isinstance(v, int | np.integer) and v >= 0 for v in bounds) and len(bounds) in (0, 1, 2)
    if not valid or (len(bounds) == 2 and bounds[0] > bounds[1]):
        raise InputError(f"n_lesions must be an int >= 0 or a (min, max) range of them, got {n_lesions!r}")
    return kinds


def generate_phantom(
    shape: Sequence[int] = (64, 256, 256),
    spacing: Sequence[float] = (5.0, 0.8, 0.8),
    *,
    seed: int = 0,
    n_lesions: int | tuple[int, int] | None = (3, 8),
    lesion_kinds: Sequence[str] = LESION_KINDS,
    noise_hu: float = 20.0,
) -> Phantom:
    """Generate a synthetic chest CT with labels (see the module docstring for what it contains).

    Args:
        shape: Voxels ``(z, y, x)``; y and x at least 16.
        spacing: Voxel size ``(z, y, x)`` in mm. The body fills the in-plane field of view and the lungs the
            cranio-caudal range ``shape * spacing``, whatever the resolution.
        seed: Random seed; the same arguments give the same phantom, another seed another patient.
        n_lesions: Number of lesions, an inclusive ``(min, max)`` range, or None for 3 to 8; 0 gives healthy
            lungs.
        lesion_kinds: Lesion types drawn from: ``"ggo"`` (ground glass) and/or ``"consolidation"``.
        noise_hu: Standard deviation of the image noise in HU.

    Returns:
        The :class:`Phantom`.

    Raises:
        InputError: For a bad shape, spacing, lesion count or kind, or noise level.

    Examples:
        >>> healthy = generate_phantom((8, 48, 48), (40.0, 7.5, 7.5), n_lesions=0)
        >>> int((healthy.labels == 2).sum()), len(healthy.lesions)
        (0, 0)
        >>> sick = generate_phantom((8, 48, 48), (40.0, 7.5, 7.5), n_lesions=2, lesion_kinds=["consolidation"])
        >>> [lesion.kind for lesion in sick.lesions]
        ['consolidation', 'consolidation']
    """
    dims, steps = _validate(shape, spacing, noise_hu)
    kinds = _check_lesions(n_lesions, lesion_kinds)
    rng = np.random.default_rng(seed)
    frame = Frame(dims, steps)
    hu = np.empty(dims, dtype=np.float32)
    paint_body(hu, frame)
    airway = paint_mediastinum(hu, frame)
    paint_skeleton(hu, frame)

    z, y, x = frame.axes()
    right, left = lung_masks(z, y, x)
    lungs = _largest_each((right & ~airway, left & ~airway))
    del right, left, airway
    parenchyma = HU.lung + HU.lung_gravity * np.clip(y / 90.0, -1.0, 1.0)  # dependent lung is denser
    np.copyto(hu, np.broadcast_to(parenchyma, dims), where=lungs)

    vessels, bronchi = lung_trees(rng)
    cover = np.zeros(dims, dtype=np.float32)
    paint_tubes(hu, frame, vessels, HU.blood, where=lungs | hila_mask(z, y, x), cover=cover)
    paint_tubes(hu, frame, bronchi, HU.soft, grow_mm=0.8, where=lungs, cover=cover)
    lumen = cover  # kept: consolidations spare the bronchial lumen (air bronchograms)
    box = draw_segments(lumen, frame, bronchi)
    if box is not None:
        hu[box] += lumen[box] * (HU.airway_lumen - hu[box]) * lungs[box]

    opacity = np.zeros(dims, dtype=bool)
    drawn = []
    for centre in lesion_centres(rng, frame, lungs, lesion_count(rng, n_lesions)):
        kind = kinds[int(rng.integers(len(kinds)))]
        drawn.append(paint_lesion(rng, frame, hu, opacity, lungs, lumen, centre, kind))
    del lumen, cover

    # One in-plane Gaussian both blurs the anatomy (the scanner's point-spread function) and correlates the noise.
    if noise_hu > 0:
        hu += rng.standard_normal(dims, dtype=np.float32) * (noise_hu / _smoothed_noise_std(BLUR_VOXELS))
    ndimage.gaussian_filter(hu, sigma=(0.0, BLUR_VOXELS, BLUR_VOXELS), output=hu)
    labels = lungs.view(np.uint8).copy()
    labels[opacity] = 2
    out = np.clip(np.rint(hu), HU_MIN, HU_MAX).astype(np.int16)
    return Phantom(hu=out, labels=labels, affine=phantom_affine(dims, steps), lesions=tuple(drawn))


def _largest_each(masks: tuple[np.ndarray, ...]) -> np.ndarray:
    """Union of the largest 3-D component of each mask (coarse grids can cut slivers off a lung)."""
    out = np.zeros(masks[0].shape, dtype=bool)
    for mask in masks:
        box = ndimage.find_objects(mask.view(np.uint8))
        if not box or box[0] is None:
            continue
        labels, n = ndimage.label(mask[box[0]])
        if n == 1:
            out[box[0]] |= labels > 0
        else:
            out[box[0]] |= labels == int(np.argmax(np.bincount(labels.ravel())[1:])) + 1
    return out


def _smoothed_noise_std(sigma: float) -> float:
    """Standard deviation of unit white noise after the separable 2-D Gaussian filter of ``sigma`` voxels."""
    delta = np.zeros(8 * math.ceil(sigma) + 9)
    delta[len(delta) // 2] = 1.0
    kernel = ndimage.gaussian_filter1d(delta, sigma)
    return float(np.sum(kernel**2))  # variance (sum k^2)^2 over two axes


def generate_phantom_slices(
    n: int, size: int = 128, seed: int = 0, *, n_lesions: int | tuple[int, int] | None = (2, 6)
) -> tuple[np.ndarray, np.ndarray]:
    """Axial phantom slices through the lungs, for 2-D training data: ``n`` slices from ``ceil(n / 8)`` patients.

    Args:
        n: Number of slices.
        size: Slice size in pixels (a 360 mm field of view).
        seed: Random seed.
        n_lesions: Lesions per patient (see :func:`generate_phantom`).

    Returns:
        HU ``(n, size, size)`` int16 and labels ``(n, size, size)`` uint8, slices in radiological display.

    Examples:
        >>> hu, labels = generate_phantom_slices(3, 64, seed=2)
        >>> hu.shape, labels.dtype.name, bool((labels == 1).any(axis=(1, 2)).all())
        ((3, 64, 64), 'uint8', True)
    """
    if n < 1 or size < _MIN_IN_PLANE:
        raise InputError(f"need n >= 1 slices of size >= {_MIN_IN_PLANE}, got n={n}, size={size}")
    per_patient, depth = 8, 16
    seeds = np.random.SeedSequence(seed).generate_state(math.ceil(n / per_patient))
    hus, labs = [], []
    for patient_seed in seeds:
        ph = generate_phantom(
            (depth, size, size), (20.0, 360.0 / size, 360.0 / size), seed=int(patient_seed), n_lesions=n_lesions
        )
        area = (ph.labels > 0).sum(axis=(1, 2))
        rows = np.flatnonzero(area >= 0.04 * size * size)
        picks = rows[np.linspace(0, len(rows) - 1, min(per_patient, len(rows))).round().astype(int)]
        hus.append(ph.hu[picks])
        labs.append(ph.labels[picks])
    return np.concatenate(hus)[:n], np.concatenate(labs)[:n]
