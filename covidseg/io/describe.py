"""A plain summary of what the loader saw (for ``covidseg info`` and logs)."""

from __future__ import annotations

from typing import Any

import numpy as np

from covidseg.io.sanity import looks_like_hu
from covidseg.io.volume import REVERSE_AXES, CTVolume, axcodes_of

#: Percentiles of the HU distribution reported by :func:`describe`.
PERCENTILES = (1, 5, 50, 95, 99)
#: Voxels sampled (evenly spaced) for the percentiles; min and max use every voxel.
_MAX_SAMPLES = 1_000_000


def describe(volume: CTVolume) -> dict[str, Any]:
    """Summarize a volume: format, shapes, spacing, orientation, HU statistics and warnings.

    Orientation codes are nibabel's (the direction in which each index increases, RAS+ letters), given for
    the file's index axes ``(i, j, k)`` (``"RAS"``, ``"LPS"``, ...) and for the canonical ``(z, y, x)``.

    Returns:
        A JSON-serializable dict.

    Examples:
        >>> import numpy as np
        >>> from covidseg.io.volume import canonical_affine
        >>> vol = CTVolume.from_canonical(np.array([[[-1000, 0], [40, 60]]]), canonical_affine((2.0, 0.5, 0.5)))
        >>> info = describe(vol)
        >>> info["orientation_canonical"], info["spacing_mm"], info["looks_like_hu"]
        ('SPL', [2.0, 0.5, 0.5], True)
    """
    src = volume.source
    hu = volume.hu
    ok, reason = looks_like_hu(hu)
    flat = hu.ravel()
    sample = flat[:: max(1, flat.size // _MAX_SAMPLES)]
    percentiles = np.percentile(sample, PERCENTILES) if sample.size else [float("nan")] * len(PERCENTILES)
    if src is None:
        native_codes: str | None = axcodes_of(volume.affine @ REVERSE_AXES)
    elif src.format == "image":
        native_codes = None
    elif src.format == "nifti":
        native_codes = axcodes_of(src.native_affine)
    else:  # SimpleITK numpy (k, j, i) and DICOM (slice, row, column) are stored reversed from file order
        native_codes = axcodes_of(src.native_affine @ REVERSE_AXES)
    return {
        "format": src.format if src is not None else "synthetic",
        "path": str(src.path) if src is not None and src.path is not None else None,
        "modality": src.modality if src is not None else None,
        "shape_native": list(src.native_shape) if src is not None else list(volume.shape),
        "shape_canonical": list(volume.shape),
        "spacing_mm": [round(s, 6) for s in volume.spacing],
        "orientation_native": native_codes if native_codes is not None else "unknown (2-D image)",
        "orientation_canonical": axcodes_of(volume.affine),
        "obliquity_deg": round(obliquity_deg(volume.affine), 3),
        "dtype": hu.dtype.name,
        "hu_min": float(hu.min()),
        "hu_max": float(hu.max()),
        "hu_percentiles": {f"p{p}": float(v) for p, v in zip(PERCENTILES, percentiles, strict=True)},
        "looks_like_hu": ok,
        "hu_reason": reason,
        "series_uid": src.series_uid if src is not None else None,
        "warnings": list(src.warnings) if src is not None else [],
    }


def obliquity_deg(affine: np.ndarray) -> float:
    """Largest angle (degrees) between a voxel axis and its nearest world axis; 0 for axis-aligned grids.

    Examples:
        >>> obliquity_deg(np.diag([1.0, 2.0, 3.0, 1.0]))
        0.0
    """
    cols = np.asarray(affine, np.float64)[:3, :3]
    unit = cols / np.linalg.norm(cols, axis=0)
    cosines = np.clip(np.abs(unit).max(axis=0), 0.0, 1.0)
    return float(np.degrees(np.arccos(cosines)).max())
