"""Small synthetic label maps for the evaluation tests: cubes in canonical (Z, Y, X) volumes, written to files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from covidseg.io import CTVolume, canonical_affine, save_mask

SPACING = (2.5, 0.75, 0.5)
SHAPE = (8, 24, 32)


def cube_labels(
    shape: tuple[int, int, int] = SHAPE, *, start: int = 8, size: int = 10, shift: int = 0, lung: bool = True
) -> np.ndarray:
    """0/1/2 labels: a lung block (1) and an opacity box (2) of ``size`` x-voxels starting at ``start + shift``."""
    labels = np.zeros(shape, np.uint8)
    if lung:
        labels[:, 2:-2, 2:-2] = 1
    x0 = start + shift
    labels[2:6, 6:16, x0 : x0 + size] = 2
    return labels


def volume_like(labels: np.ndarray, spacing: tuple[float, float, float] = SPACING) -> CTVolume:
    return CTVolume.from_canonical(np.zeros(labels.shape, np.int16), canonical_affine(spacing, (10.0, -20.0, 5.0)))


def write_map(labels: np.ndarray, path: Path, spacing: tuple[float, float, float] = SPACING) -> Path:
    """Write canonical labels as a label map file (format from the suffix) with the test geometry."""
    path.parent.mkdir(parents=True, exist_ok=True)
    return save_mask(labels, volume_like(labels, spacing), path)


def write_png(mask: np.ndarray, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(mask, np.uint8)).save(path)
    return path
