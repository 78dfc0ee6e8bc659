"""Reading label maps for evaluation, checking that two of them share one grid, and counting value pairs.

Volumes (NIfTI, MHA/MHD, NRRD) are read with :func:`covidseg.io.load_ct` into canonical ``(Z, Y, X)`` order with
their affine, so two files that store the same grid in different axis orders (RAS vs LPS) compare equal. 2-D
masks (PNG) are read as stored, ``(1, H, W)``, without geometry: their pixels have no known size.

Examples:
    >>> a = LabelMap(np.zeros((2, 3, 4), np.uint8), np.eye(4), Path("a.nii.gz"))
    >>> b = LabelMap(np.zeros((2, 3, 4), np.uint8), np.diag([1.0, 1.0, 1.2, 1.0]), Path("b.nii.gz"))
    >>> check_same_grid(a, b)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    covidseg.errors.InputError: a.nii.gz and b.nii.gz lie on different grids: spacing (1, 1, 1) vs (1, 1, 1.2) mm...
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from covidseg.data.cases import read_mask_image
from covidseg.errors import InputError
from covidseg.io import load_ct
from covidseg.io.atomic import full_suffix
from covidseg.train.metrics import confusion_matrix

__all__ = ["DEFAULT_TOLERANCE_MM", "MAX_LABEL_VALUE", "LabelMap", "check_same_grid", "joint_counts", "read_label_map"]

DEFAULT_TOLERANCE_MM = 0.01
"""Largest difference (mm) between two affines' entries (spacing, direction x spacing, origin) on one grid."""
MAX_LABEL_VALUE = 255
"""Largest stored label value (uint8 masks)."""
_CHUNK_VOXELS = 1 << 22
"""Voxels counted at once (bounds the memory of the int64 pair index)."""
IMAGE_MASK_SUFFIXES = (".png",)


@dataclass(frozen=True)
class LabelMap:
    """A label map in canonical ``(Z, Y, X)`` order.

    Attributes:
        array: Integer labels.
        affine: 4x4 canonical-index-to-world affine (mm), or None for 2-D masks without geometry.
        path: The file it was read from.
    """

    array: np.ndarray
    affine: np.ndarray | None
    path: Path

    @property
    def is_2d(self) -> bool:
        """A 2-D mask image (no voxel spacing)."""
        return self.affine is None

    @property
    def spacing(self) -> tuple[float, float, float] | None:
        """Voxel spacing (z, y, x) in mm, None for 2-D masks."""
        if self.affine is None:
            return None
        norms = np.linalg.norm(self.affine[:3, :3], axis=0)
        return (float(norms[0]), float(norms[1]), float(norms[2]))


def read_label_map(path: str | os.PathLike[str]) -> LabelMap:
    """Read a label map: volumes in canonical orientation with their affine, PNG masks as ``(1, H, W)``.

    Raises:
        InputError: An unreadable file, non-integer values, or values outside ``0..255``.

    Examples:
        >>> import tempfile, nibabel as nib
        >>> p = Path(tempfile.mkdtemp()) / "m.nii.gz"
        >>> nib.save(nib.Nifti1Image(np.ones((4, 3, 2), np.uint8), np.diag([0.5, 0.5, 2.5, 1])), p)
        >>> m = read_label_map(p)
        >>> m.array.shape, m.spacing
        ((2, 3, 4), (2.5, 0.5, 0.5))
    """
    p = Path(path)
    if full_suffix(p) in IMAGE_MASK_SUFFIXES:
        array = read_mask_image(p)
        affine = None
    else:
        volume = load_ct(p, assume_hu=True, allow_non_ct=True)
        array, affine = volume.hu, volume.affine
    if array.size and not np.issubdtype(array.dtype, np.integer):
        if not np.array_equal(array, np.round(array)):
            raise InputError(f"{p} holds non-integer values; a label map stores class labels 0..{MAX_LABEL_VALUE}")
        array = array.astype(np.int16)
    if array.size:
        low, high = int(array.min()), int(array.max())
        if low < 0 or high > MAX_LABEL_VALUE:
            raise InputError(f"{p} holds values {low}..{high}; a label map stores labels 0..{MAX_LABEL_VALUE}")
    return LabelMap(array=array, affine=affine, path=p)


def _fmt(values: tuple[float, ...] | np.ndarray) -> str:
    return "(" + ", ".join(f"{float(v):.4g}" for v in values) + ")"


def check_same_grid(prediction: LabelMap, reference: LabelMap, tolerance_mm: float = DEFAULT_TOLERANCE_MM) -> None:
    """Raise InputError unless both maps have the same shape and (for volumes) the same affine within tolerance.

    2-D masks without geometry are compared by shape only.

    Examples:
        >>> a = LabelMap(np.zeros((1, 3, 4), np.uint8), None, Path("a.png"))
        >>> check_same_grid(a, LabelMap(np.zeros((1, 3, 4), np.uint8), np.eye(4), Path("b.nii.gz")))
        >>> check_same_grid(a, LabelMap(np.zeros((1, 4, 3), np.uint8), None, Path("c.png")))  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        covidseg.errors.InputError: a.png has shape (1, 3, 4) (z, y, x) but c.png has (1, 4, 3); ...
    """
    p, r = prediction, reference
    if p.array.shape != r.array.shape:
        raise InputError(
            f"{p.path.name} has shape {p.array.shape} (z, y, x) but {r.path.name} has {r.array.shape}; "
            "a prediction must lie on its reference's grid (predict the reference's own scan)"
        )
    if p.affine is None or r.affine is None:
        return
    gap = float(np.max(np.abs(p.affine - r.affine)))
    if gap > tolerance_mm:
        p_spacing, r_spacing = p.spacing or (), r.spacing or ()
        raise InputError(
            f"{p.path.name} and {r.path.name} lie on different grids: spacing {_fmt(p_spacing)} vs {_fmt(r_spacing)} "
            f"mm, origin {_fmt(p.affine[:3, 3])} vs {_fmt(r.affine[:3, 3])} mm (largest affine difference "
            f"{gap:.3g} mm > {tolerance_mm:g}); resample the prediction onto the reference grid"
        )


def joint_counts(reference: np.ndarray, prediction: np.ndarray) -> dict[tuple[int, int], int]:
    """``{(reference value, predicted value): voxel count}`` of two label maps of one shape (values 0..255).

    Counted in chunks of axial slices with :func:`covidseg.train.metrics.confusion_matrix`.

    Examples:
        >>> joint_counts(np.array([[[0, 255, 255]]]), np.array([[[0, 2, 1]]]))
        {(0, 0): 1, (255, 1): 1, (255, 2): 1}
    """
    ref = np.asarray(reference)
    pred = np.asarray(prediction)
    if ref.shape != pred.shape:
        raise InputError(f"reference shape {ref.shape} differs from prediction shape {pred.shape}")
    total = np.zeros((MAX_LABEL_VALUE + 1, MAX_LABEL_VALUE + 1), np.int64)
    if ref.ndim == 0 or ref.size == 0:
        return {}
    per_slice = max(1, int(np.prod(ref.shape[1:])))
    step = max(1, _CHUNK_VOXELS // per_slice)
    for start in range(0, ref.shape[0], step):
        rows = slice(start, start + step)
        total += confusion_matrix(pred[rows], ref[rows], MAX_LABEL_VALUE + 1)
    return {(int(r), int(q)): int(total[r, q]) for r, q in zip(*total.nonzero(), strict=True)}
