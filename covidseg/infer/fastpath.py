"""The fast path: decide from Hounsfield units, before the network runs, which axial slices hold lung tissue.

Scans often extend far beyond the lungs (neck, abdomen). Slices without lung parenchyma cannot hold lung or
opacity, so the network can skip them; their labels are background. The decision uses only HU
(:class:`~covidseg.infer.spec.SliceSkipConfig`):

* the body of a slice is everything between the first and last voxel above ``body_hu`` along its row AND along
  its column (air outside the patient and between the patient and the table is outside);
* lung-like voxels are those in ``lung_hu`` whose four in-plane neighbours are lung-like too (the one-voxel
  partial-volume rim between air and skin, or around bowel gas, does not count);
* a slice is a lung slice when lung-like voxels make up at least ``min_lung_fraction`` of its body, and every
  slice within ``margin_mm`` of a lung slice is kept as well.

The volume is scanned in slabs of a few slices, so the temporaries stay small, and slices larger than
:data:`FULL_RES_SIZE` pixels are looked at on every second (third, ...) row and column: the decision is about
areas of square centimetres, not voxels.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from scipy import ndimage as ndi

from covidseg.infer.spec import SliceSkipConfig

__all__ = ["lung_slice_fractions", "slices_to_run"]

_SLAB = 16
"""Axial slices per step (bounds the boolean temporaries to 16 slices)."""
_THREADS = 2
"""Threads computing slabs at the same time."""
FULL_RES_SIZE = 256
"""Slices with more pixels than this along their shorter side are subsampled to about this size."""


def _between(mask: np.ndarray, axis: int) -> np.ndarray:
    """Voxels between the first and last True voxel along ``axis`` (inclusive).

    From the positions of the first and last True voxel of each line (boolean ``argmax`` stops at the first
    True), compared with the index: several times faster than cumulative ``logical_or`` scans.
    """
    size = mask.shape[axis]
    index_type = np.int16 if size < np.iinfo(np.int16).max else np.int64  # small ints: less memory to stream
    first = np.argmax(mask, axis=axis, keepdims=True).astype(index_type)
    last = (size - 1 - np.argmax(np.flip(mask, axis=axis), axis=axis, keepdims=True)).astype(index_type)
    last[~np.any(mask, axis=axis, keepdims=True)] = -1  # no True voxel: an empty range
    index = np.arange(size, dtype=index_type).reshape([size if a == axis else 1 for a in range(mask.ndim)])
    return (index >= first) & (index <= last)


def lung_slice_fractions(hu: np.ndarray, config: SliceSkipConfig | None = None) -> np.ndarray:
    """Per axial slice, the fraction of the body's area that is lung-like tissue (see the module docstring).

    Args:
        hu: Canonical ``(Z, Y, X)`` HU volume.
        config: Thresholds (``lung_hu``, ``body_hu``); defaults to :class:`SliceSkipConfig()`.

    Returns:
        float64 ``(Z,)`` fractions in [0, 1]; 0 for slices without body.

    Examples:
        >>> hu = np.full((3, 20, 20), -1000, np.int16)
        >>> hu[:, 2:18, 2:18] = 40  # body
        >>> hu[1, 5:15, 5:10] = -850  # lung in the middle slice
        >>> lung_slice_fractions(hu).round(3).tolist()
        [0.0, 0.094, 0.0]
    """
    cfg = config or SliceSkipConfig()
    arr = np.asarray(hu)
    if arr.ndim != 3:
        raise ValueError(f"expected a (Z, Y, X) volume, got shape {arr.shape}")
    low, high = cfg.lung_hu
    step = max(1, min(arr.shape[1:]) // FULL_RES_SIZE)

    def slab_fractions(start: int) -> np.ndarray:
        part = np.ascontiguousarray(arr[start : start + _SLAB, ::step, ::step])
        tissue = part > cfg.body_hu
        body = _between(tissue, 2) & _between(tissue, 1)
        lung = (part >= low) & (part <= high)
        core = lung.copy()
        core[:, 1:, :] &= lung[:, :-1, :]
        core[:, :-1, :] &= lung[:, 1:, :]
        core[:, :, 1:] &= lung[:, :, :-1]
        core[:, :, :-1] &= lung[:, :, 1:]
        core &= body
        area = np.count_nonzero(body, axis=(1, 2))
        return np.asarray(np.count_nonzero(core, axis=(1, 2)) / np.maximum(area, 1), dtype=np.float64)

    # Slabs are independent and numpy releases the GIL on whole-array operations: two threads.
    with ThreadPoolExecutor(max_workers=_THREADS) as pool:
        parts = list(pool.map(slab_fractions, range(0, arr.shape[0], _SLAB)))
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.float64)


def slices_to_run(hu: np.ndarray, spacing: Sequence[float], config: SliceSkipConfig) -> np.ndarray:
    """Which axial slices the network must see: lung slices and their ``margin_mm`` neighbours.

    Args:
        hu: Canonical ``(Z, Y, X)`` HU volume.
        spacing: Voxel size (z, y, x) in mm.
        config: The fast-path settings; when ``config.enabled`` is false every slice runs.

    Returns:
        bool ``(Z,)``: True for slices to run through the network.

    Examples:
        >>> hu = np.full((9, 20, 20), -1000, np.int16)
        >>> hu[:, 2:18, 2:18] = 40
        >>> hu[4, 5:15, 5:10] = -850
        >>> cfg = SliceSkipConfig(enabled=True, margin_mm=2.0)
        >>> slices_to_run(hu, (1.0, 1.0, 1.0), cfg).astype(int).tolist()
        [0, 0, 1, 1, 1, 1, 1, 0, 0]
    """
    n = int(np.shape(hu)[0])
    if not config.enabled:
        return np.ones(n, dtype=bool)
    lung = lung_slice_fractions(hu, config) >= max(config.min_lung_fraction, np.finfo(np.float64).tiny)
    margin = int(np.ceil(config.margin_mm / float(spacing[0]) - 1e-9))
    if margin > 0 and lung.any():
        lung = ndi.binary_dilation(lung, structure=np.ones(2 * margin + 1, dtype=bool))
    return np.asarray(lung, dtype=bool)
