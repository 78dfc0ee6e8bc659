"""Slice preprocessing for the network and its inverse: HU window to [0, 1], axial slices resized in batches.

This module is the single description of how a CT volume becomes network input. ``covidseg predict``, training
and the exported MONAI bundle all derive their preprocessing from a :class:`PreprocessConfig`, so the three
cannot drift apart. The operations are chosen to be exactly reproducible with standard MONAI components:

* window: ``ScaleIntensityRange(a_min=low, a_max=high, b_min=0, b_max=1, clip=True)``;
* resize: ``Resize(spatial_size=size, mode="bilinear", align_corners=False)`` per axial slice
  (``torch.nn.functional.interpolate`` underneath, no anti-aliasing).

Volumes are streamed: only ``batch_size`` slices are ever converted to float at once, so a 512 x 512 x 300 int16
scan (150 MB) never becomes a 600 MB float32 array. Slices are taken along the first axis of the canonical
``(Z, Y, X)`` array, which is the contiguous one, so every batch is a zero-copy view of the input.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from covidseg.errors import ConfigError

__all__ = [
    "DEFAULT_SLICE_SIZE",
    "DEFAULT_WINDOW",
    "HU_AIR",
    "HU_WATER",
    "PreprocessConfig",
    "iter_slice_batches",
    "preprocess_slices",
    "preprocess_volume",
    "resize_to_native",
    "window_hu",
]

HU_AIR = -1000.0
"""Hounsfield units of air."""
HU_WATER = 0.0
"""Hounsfield units of water."""
DEFAULT_WINDOW = (HU_AIR, HU_WATER)
"""The paper's window: lung parenchyma, ground glass and consolidation all fall inside [-1000, 0] HU."""
DEFAULT_SLICE_SIZE = (384, 384)
"""The paper's network input size (height, width) of an axial slice."""

_RESIZE_MODES = ("bilinear", "nearest", "area", "bicubic")


@dataclass(frozen=True)
class PreprocessConfig:
    """How a CT volume is turned into network input.

    Attributes:
        window: ``(low, high)`` HU clipped and mapped linearly to ``[0, 1]``.
        slice_size: ``(height, width)`` each axial slice is resized to; both divisible by 32 for the U-Net.
        resize_mode: interpolation of the resize (``torch.nn.functional.interpolate`` mode).

    Examples:
        >>> cfg = PreprocessConfig(window=(-1000.0, 0.0), slice_size=(256, 256))
        >>> PreprocessConfig.from_dict(cfg.to_dict()) == cfg
        True
    """

    window: tuple[float, float] = DEFAULT_WINDOW
    slice_size: tuple[int, int] = DEFAULT_SLICE_SIZE
    resize_mode: str = "bilinear"

    def __post_init__(self) -> None:
        low, high = (float(v) for v in self.window)
        if not np.isfinite([low, high]).all() or low >= high:
            raise ConfigError(f"window must be two finite HU values with low < high, got {self.window!r}")
        object.__setattr__(self, "window", (low, high))
        size = tuple(int(v) for v in self.slice_size)
        if len(size) != 2 or min(size) < 32 or any(v % 32 for v in size):
            raise ConfigError(
                f"slice_size must be (height, width), each a multiple of 32 and >= 32, got {self.slice_size!r}; "
                "for example (384, 384)"
            )
        object.__setattr__(self, "slice_size", size)
        if self.resize_mode not in _RESIZE_MODES:
            raise ConfigError(f"resize_mode must be one of {list(_RESIZE_MODES)}, got {self.resize_mode!r}")

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON/YAML-serialisable form (lists instead of tuples)."""
        data = asdict(self)
        return {key: list(value) if isinstance(value, tuple) else value for key, value in data.items()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PreprocessConfig:
        """Build from :meth:`to_dict` output; unknown keys are a :class:`ConfigError`."""
        known = {"window", "slice_size", "resize_mode"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown preprocessing keys {unknown}; expected some of {sorted(known)}")
        kwargs: dict[str, Any] = dict(data)
        for key in ("window", "slice_size"):
            if key in kwargs:
                kwargs[key] = tuple(kwargs[key])
        return cls(**kwargs)


def window_hu(hu: np.ndarray | torch.Tensor, window: tuple[float, float] = DEFAULT_WINDOW) -> torch.Tensor:
    """Clip HU to ``window`` and scale linearly to ``[0, 1]`` as float32.

    Args:
        hu: HU values of any shape and numeric dtype (a numpy array is wrapped without a copy where possible).
        window: ``(low, high)`` HU.

    Returns:
        A new float32 tensor of the same shape with values in ``[0, 1]``.

    Examples:
        >>> window_hu(np.array([-1200, -1000, -500, 0, 300], dtype=np.int16)).tolist()
        [0.0, 0.0, 0.5, 1.0, 1.0]
    """
    low, high = window
    tensor = torch.as_tensor(hu)
    out = tensor.to(torch.float32, copy=True) if tensor.dtype == torch.float32 else tensor.to(torch.float32)
    return out.clamp_(low, high).sub_(low).div_(high - low)


def _resize(batch: torch.Tensor, size: tuple[int, int], mode: str) -> torch.Tensor:
    """Resize ``(N, C, H, W)`` to ``(N, C, *size)``; identity when the size already matches."""
    if tuple(batch.shape[-2:]) == tuple(size):
        return batch
    align = False if mode in ("bilinear", "bicubic") else None
    return F.interpolate(batch, size=size, mode=mode, align_corners=align)


def preprocess_slices(hu_slices: np.ndarray | torch.Tensor, config: PreprocessConfig) -> torch.Tensor:
    """Window and resize a stack of axial slices ``(N, Y, X)`` into network input ``(N, 1, H, W)``.

    Examples:
        >>> hu = np.full((2, 100, 120), -1000, dtype=np.int16)
        >>> preprocess_slices(hu, PreprocessConfig(slice_size=(64, 64))).shape
        torch.Size([2, 1, 64, 64])
    """
    windowed = window_hu(hu_slices, config.window)
    if windowed.ndim != 3:
        raise ValueError(f"expected slices shaped (N, Y, X), got {tuple(windowed.shape)}")
    return _resize(windowed.unsqueeze(1), config.slice_size, config.resize_mode)


def iter_slice_batches(
    hu: np.ndarray, config: PreprocessConfig, batch_size: int = 32
) -> Iterator[tuple[slice, torch.Tensor]]:
    """Stream a canonical ``(Z, Y, X)`` volume as preprocessed batches ``(slice_range, (n, 1, H, W))``.

    Only one batch is held as float at a time; each batch of the input is a contiguous view.

    Examples:
        >>> hu = np.zeros((5, 64, 64), dtype=np.int16)
        >>> batches = iter_slice_batches(hu, PreprocessConfig(slice_size=(32, 32)), batch_size=2)
        >>> [(rows.start, rows.stop, tuple(batch.shape)) for rows, batch in batches]
        [(0, 2, (2, 1, 32, 32)), (2, 4, (2, 1, 32, 32)), (4, 5, (1, 1, 32, 32))]
    """
    if hu.ndim != 3:
        raise ValueError(f"expected a (Z, Y, X) volume, got shape {hu.shape}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    for start in range(0, hu.shape[0], batch_size):
        rows = slice(start, min(start + batch_size, hu.shape[0]))
        yield rows, preprocess_slices(hu[rows], config)


def preprocess_volume(hu: np.ndarray, config: PreprocessConfig, batch_size: int = 32) -> torch.Tensor:
    """Preprocess a whole canonical ``(Z, Y, X)`` volume into ``(Z, 1, H, W)`` float32.

    Prefer :func:`iter_slice_batches` for inference on large scans; this materialises every slice.

    Examples:
        >>> preprocess_volume(np.zeros((3, 50, 50), dtype=np.int16), PreprocessConfig(slice_size=(32, 32))).shape
        torch.Size([3, 1, 32, 32])
    """
    out = torch.empty((hu.shape[0], 1, *config.slice_size), dtype=torch.float32)
    for rows, batch in iter_slice_batches(hu, config, batch_size):
        out[rows] = batch
    return out


def resize_to_native(maps: torch.Tensor, native_hw: tuple[int, int], mode: str = "bilinear") -> torch.Tensor:
    """Resize per-slice maps ``(N, C, H, W)`` (probabilities or logits) back to the native slice size.

    This is the inverse of the resize in :func:`preprocess_slices` (the window needs no inverse: outputs are
    class maps, not intensities). Interpolate probabilities, then take the argmax on the native grid.

    Examples:
        >>> probs = torch.rand(4, 3, 32, 32).softmax(1)
        >>> resize_to_native(probs, (50, 60)).shape
        torch.Size([4, 3, 50, 60])
    """
    if maps.ndim != 4:
        raise ValueError(f"expected maps shaped (N, C, H, W), got {tuple(maps.shape)}")
    return _resize(maps, native_hw, mode)
