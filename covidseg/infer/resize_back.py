"""Labels on the native grid from network-resolution probabilities, resizing only where they can be non-background.

The network sees 384 x 384 slices; the labels belong on the scan's own grid (512 x 512, say). Resizing every
class's probabilities to the native size and taking the argmax there is exact but costs more than everything
else in prediction after the network, while lungs fill a third of a slice's area and are absent from many
slices. :func:`labels_to_native` gives the same labels and resizes only a window around each slice's
foreground:

* Bilinear and nearest-neighbour interpolation give every native pixel a convex combination of the network
  pixels around it (weights >= 0, summing to 1). Where all of those are background-maximal (background
  probability >= every other class's), so is the combination, and the argmax is background (ties go to the
  lower class). A native pixel can only be non-background if its footprint touches a non-background network
  pixel.
* Interpolation has a period: with ``g = gcd(network size, native size)``, every block of ``network / g``
  network rows maps to ``native / g`` native rows with the same weights. Resizing a crop of whole blocks gives
  the same values as the full resize wherever the crop's edge is not within reach, so one block of margin is
  resized along and thrown away.

For 384 -> 512 the blocks are 3 -> 4 rows, the scale 0.75 is exact in binary and the window gives bit-identical
probabilities. For sizes whose ratio is not a dyadic fraction the interpolation weights are rounded slightly
differently (about 1e-7), which can only flip an exact tie.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from covidseg.data.preprocess import resize_to_native

__all__ = ["WINDOWED_MODES", "AxisWindow", "argmax_classes", "axis_window", "labels_to_native", "non_background"]

WINDOWED_MODES = ("bilinear", "nearest")
"""Interpolations with non-negative weights of neighbouring pixels only, for which windowing is exact."""


@dataclass(frozen=True)
class AxisWindow:
    """Where to resize along one axis (rows or columns).

    Attributes:
        source: Network-resolution indices to resize (whole blocks, with one block of margin where possible).
        output_size: Native size of the resized crop.
        keep: Indices of the resized crop that equal the full resize.
        native: Where the kept part goes on the native grid.
    """

    source: slice
    output_size: int
    keep: slice
    native: slice


def axis_window(low: int, high: int, network_size: int, native_size: int) -> AxisWindow:
    """The window along one axis for foreground at network indices ``[low, high)``.

    Args:
        low: First network index holding foreground.
        high: One past the last.
        network_size: Length of the axis at network resolution.
        native_size: Length on the native grid.

    Examples:
        >>> w = axis_window(100, 200, 384, 512)  # blocks of 3 -> 4
        >>> w.source, w.output_size, w.keep, w.native
        (slice(96, 204, None), 144, slice(4, 140, None), slice(132, 268, None))
        >>> axis_window(0, 384, 384, 512).native
        slice(0, 512, None)
    """
    if not 0 <= low < high <= network_size:
        raise ValueError(f"foreground [{low}, {high}) must be a non-empty range inside [0, {network_size})")
    blocks = math.gcd(network_size, native_size)
    block_in, block_out = network_size // blocks, native_size // blocks
    # Native pixels of blocks that end before network index low - 1 (or start after high) interpolate only
    # background pixels: bilinear reads floor(source) and the index after it.
    first = max((low - 1) // block_in, 0)
    last = min(-(-(high + 1) // block_in), blocks)
    crop_first, crop_last = max(first - 1, 0), min(last + 1, blocks)
    return AxisWindow(
        source=slice(crop_first * block_in, crop_last * block_in),
        output_size=(crop_last - crop_first) * block_out,
        keep=slice((first - crop_first) * block_out, (last - crop_first) * block_out),
        native=slice(first * block_out, last * block_out),
    )


def argmax_classes(probs: torch.Tensor) -> torch.Tensor:
    """uint8 index of the largest value along dim 1 of ``(N, C, H, W)``; ties go to the lower class.

    The same result as ``probs.argmax(dim=1)`` (for finite values), by C - 1 elementwise comparisons against
    the running maximum: torch's reduction over a strided middle dimension is about 30x slower for a few
    classes on large slices. Works on contiguous and channels-last tensors alike.

    Examples:
        >>> p = torch.tensor([[[[0.2, 0.5]], [[0.5, 0.5]], [[0.3, 0.0]]]])  # (1, 3, 1, 2)
        >>> argmax_classes(p).tolist()
        [[[1, 0]]]
    """
    if probs.ndim != 4 or not 1 <= probs.shape[1] <= 256:
        raise ValueError(f"expected (N, C, H, W) with 1 to 256 classes, got {list(probs.shape)}")
    n_classes = probs.shape[1]
    best = probs[:, 0]
    if n_classes == 1:
        return torch.zeros(best.shape, dtype=torch.uint8, device=probs.device)
    index = (probs[:, 1] > best).to(torch.uint8)
    for c in range(2, n_classes):
        best = torch.maximum(best, probs[:, c - 1])
        index.masked_fill_(probs[:, c] > best, c)
    return index


def non_background(probs: torch.Tensor) -> torch.Tensor:
    """Where some class beats background, bool ``(N, H, W)`` (the argmax is not class 0; ties go to 0).

    Examples:
        >>> p = torch.tensor([[[[0.5, 0.2]], [[0.5, 0.7]], [[0.0, 0.1]]]])  # (1, 3, 1, 2)
        >>> non_background(p).tolist()
        [[[False, True]]]
    """
    background = probs[:, 0]
    found = probs[:, 1] > background if probs.shape[1] > 1 else torch.zeros_like(background, dtype=torch.bool)
    for c in range(2, probs.shape[1]):  # class by class: 3x faster than one broadcast compare on channels-last
        found |= probs[:, c] > background
    return found


def labels_to_native(scores: torch.Tensor, out: np.ndarray, mode: str = "bilinear", *, softmax: bool = False) -> None:
    """Write the native-grid argmax labels of network-resolution probabilities into ``out``.

    The same labels as resizing all of the probabilities to ``out``'s slice size and taking the argmax (see the
    module docstring), resizing only each slice's foreground window.

    Args:
        scores: ``(N, C, h, w)`` class probabilities, or logits with ``softmax=True`` (any memory format and
            float dtype); class 0 is background.
        out: uint8 ``(N, H, W)`` to write; every pixel is written (0 outside the windows).
        mode: ``"bilinear"`` or ``"nearest"``.
        softmax: ``scores`` are logits: the windows are found on them (a class whose logit beats background's
            is the only one whose probability can) and only the windows are turned into float32 probabilities.

    Raises:
        ValueError: Another interpolation mode (its weights may be negative), or mismatched shapes.

    Examples:
        >>> probs = torch.zeros(1, 2, 6, 6); probs[:, 0] = 1
        >>> probs[0, :, 2, 3] = torch.tensor([0.0, 1.0])  # one foreground pixel
        >>> out = np.full((1, 8, 8), 9, np.uint8)
        >>> labels_to_native(probs, out)
        >>> expected = resize_to_native(probs, (8, 8)).argmax(1).numpy()
        >>> bool((out == expected).all()), int(out.sum())
        (True, 1)
        >>> labels_to_native(torch.log(probs + 1e-4), out, softmax=True)  # the same from logits
        >>> int(out.sum())
        1
    """
    if mode not in WINDOWED_MODES:
        raise ValueError(f"windowed resizing needs one of {list(WINDOWED_MODES)}, got {mode!r}")
    if scores.ndim != 4 or out.ndim != 3 or out.shape[0] != scores.shape[0]:
        raise ValueError(f"expected scores (N, C, h, w) and out (N, H, W), got {list(scores.shape)} and {out.shape}")
    height, width = int(out.shape[1]), int(out.shape[2])
    foreground = non_background(scores).cpu()
    rows_any = foreground.any(dim=2).numpy()
    cols_any = foreground.any(dim=1).numpy()
    out[...] = 0
    for index in range(scores.shape[0]):
        rows, cols = np.flatnonzero(rows_any[index]), np.flatnonzero(cols_any[index])
        if rows.size == 0:
            continue
        win_y = axis_window(int(rows[0]), int(rows[-1]) + 1, scores.shape[2], height)
        win_x = axis_window(int(cols[0]), int(cols[-1]) + 1, scores.shape[3], width)
        crop = scores[index : index + 1, :, win_y.source, win_x.source]
        if softmax:
            crop = torch.softmax(crop.float(), dim=1)
        resized = resize_to_native(crop, (win_y.output_size, win_x.output_size), mode)
        labels = argmax_classes(resized[:, :, win_y.keep, win_x.keep])
        out[index, win_y.native, win_x.native] = labels[0].cpu().numpy()
