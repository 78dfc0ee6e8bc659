"""Checks that a loaded scan is a usable 3-D CT in Hounsfield units, with messages that say what to do.

The HU test is a heuristic built on two facts about chest CT in HU: air (outside the body, in the lungs and
airways) sits near -1000 HU, and soft tissue near 0..+100 HU. Volumes already windowed for display (0..255, as
half of the public 20-case COVID-19 dataset is), stored values without the rescale intercept (0..4095), MR or
PET intensities all lack voxels below ``HU_AIR_THRESHOLD`` and are flagged.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from covidseg.errors import InputError, NotHUError

#: Hounsfield unit of air.
HU_AIR = -1000
#: Voxels at or below this value count as air; a chest CT in HU always has some.
HU_AIR_THRESHOLD = -900
#: 8-bit display range; a volume entirely inside it with no air is display-windowed, not HU.
DISPLAY_RANGE = (0, 255)
#: DICOM modalities that carry Hounsfield units.
CT_MODALITIES = frozenset({"CT"})


def looks_like_hu(hu: np.ndarray) -> tuple[bool, str]:
    """Decide whether intensities look like Hounsfield units of a CT scan, and say why.

    Args:
        hu: Array of intensities (any shape).

    Returns:
        ``(ok, reason)``: ``ok`` is False when the values are clearly not HU; ``reason`` is one sentence.

    Examples:
        >>> import numpy as np
        >>> looks_like_hu(np.array([-1000, -850, 0, 40, 400]))[0]
        True
        >>> ok, reason = looks_like_hu(np.array([0, 12, 80, 255]))
        >>> ok, "0..255" in reason
        (False, True)
    """
    arr = np.asarray(hu)
    if arr.size == 0:
        return False, "the volume is empty"
    if np.issubdtype(arr.dtype, np.floating) and not np.isfinite(arr).all():
        return False, "the volume contains NaN or infinite values"
    lo, hi = float(arr.min()), float(arr.max())
    if hi < 0:
        return False, f"all intensities are negative (max {hi:g}), but a CT has soft tissue near 0..100 HU"
    n_air = int(np.count_nonzero(arr <= HU_AIR_THRESHOLD))
    if n_air == 0:
        if DISPLAY_RANGE[0] <= lo and hi <= DISPLAY_RANGE[1]:
            return False, (
                f"intensities lie in {lo:g}..{hi:g} (within 0..255) with no air below {HU_AIR_THRESHOLD} HU: "
                "the volume looks display-windowed, not HU"
            )
        return False, (
            f"no voxel is at or below {HU_AIR_THRESHOLD} HU (range {lo:g}..{hi:g}), but air in a CT is near "
            f"{HU_AIR} HU; stored values without the rescale intercept, or not a CT"
        )
    fraction = n_air / arr.size
    return True, (
        f"range {lo:g}..{hi:g} with air ({100 * fraction:.1f}% of voxels at or below {HU_AIR_THRESHOLD} HU) "
        "and soft tissue: consistent with HU"
    )


def check_hu(hu: np.ndarray, path: str | Path | None) -> None:
    """Raise :class:`NotHUError` (naming ``--assume-hu``) when ``hu`` does not look like HU.

    Examples:
        >>> import numpy as np
        >>> check_hu(np.array([-1000, 0, 50]), "scan.nii.gz")
    """
    ok, reason = looks_like_hu(hu)
    if not ok:
        raise NotHUError(
            f"{_name(path)}: intensities do not look like Hounsfield units ({reason}); convert the scan to HU, "
            "or pass --assume-hu (assume_hu=True) to proceed anyway"
        )


def check_finite(arr: np.ndarray, path: str | Path | None) -> None:
    """Raise :class:`InputError` when a floating-point volume holds NaN or infinite voxels.

    Examples:
        >>> import numpy as np
        >>> check_finite(np.zeros(3, np.float32), "scan.nii.gz")
    """
    if not np.issubdtype(arr.dtype, np.floating):
        return
    bad = arr.size - int(np.count_nonzero(np.isfinite(arr)))
    if bad:
        raise InputError(
            f"{_name(path)}: {bad} of {arr.size} voxels are NaN or infinite; fix or re-export the scan "
            "(e.g. replace them with -1000 HU) and try again"
        )


def squeeze_to_3d(arr: np.ndarray, path: str | Path | None) -> np.ndarray:
    """Return a 3-D view of ``arr``, dropping singleton dimensions after the third; raise otherwise.

    Examples:
        >>> import numpy as np
        >>> squeeze_to_3d(np.zeros((4, 5, 6, 1)), "x.nii").shape
        (4, 5, 6)
    """
    shape = tuple(int(s) for s in arr.shape)
    if len(shape) > 3 and all(s == 1 for s in shape[3:]):
        arr = arr.reshape(shape[:3])
        shape = shape[:3]
    if len(shape) != 3:
        hint = (
            "pass a 3-D volume (a single axial slice can be given as a .png/.jpg image)"
            if len(shape) < 3
            else "pass a single 3-D volume (split the series, e.g. take one time point or channel)"
        )
        raise InputError(f"{_name(path)}: the image is {len(shape)}-D with shape {shape}, need 3-D; {hint}")
    if min(shape) == 0:
        raise InputError(f"{_name(path)}: the volume has shape {shape} with no voxels; re-export the scan")
    return arr


def check_modality(modality: str | None, path: str | Path | None) -> None:
    """Raise :class:`NotHUError` (naming ``--allow-non-ct``) when a recorded modality is not CT.

    Examples:
        >>> check_modality("CT", "series/")
        >>> check_modality(None, "scan.nii.gz")
    """
    if modality is None or modality.strip().upper() in CT_MODALITIES:
        return
    raise NotHUError(
        f"{_name(path)}: the scan's modality is {modality}, not CT; covidseg segments CT only; pass "
        "--allow-non-ct (allow_non_ct=True, and --assume-hu if its intensities are not HU) to proceed anyway"
    )


def one_line(err: BaseException, limit: int = 200) -> str:
    r"""An exception as ``Type: message`` on one line (library messages may span lines), shortened.

    Examples:
        >>> one_line(OSError("Expected 2000 bytes\n - could the file be damaged?"))
        'OSError: Expected 2000 bytes - could the file be damaged?'
    """
    text = " ".join(f"{type(err).__name__}: {err}".split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _name(path: str | Path | None) -> str:
    return str(path) if path is not None else "volume"
