"""Synthetic chest-CT datasets for the training tests: toy chests written in the "volumes" layout.

Each case is a body ellipse of soft tissue with two lungs (-850 HU) holding a few ground-glass/consolidation
blobs (-450..-150 HU): classes 0 background, 1 lung, 2 opacity. Lesion count, position and size vary with the
seed, as does the body and lung shape, so validation cases differ from training cases.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np

from covidseg.config import RunConfig, load_config

HU_AIR = -1000
HU_TISSUE = 40
HU_LUNG = -850
LESION_HU = (-450, -150)
NOISE_HU = 25


def chest(shape: tuple[int, int, int], seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Canonical ``(Z, Y, X)`` int16 HU and uint8 labels of a toy chest."""
    rng = np.random.default_rng(seed)
    axes = [np.linspace(-1, 1, n) for n in shape]
    z, y, x = np.meshgrid(*axes, indexing="ij")
    hu = np.full(shape, HU_AIR, np.float32)
    labels = np.zeros(shape, np.uint8)
    body = (y / rng.uniform(0.7, 0.85)) ** 2 + (x / rng.uniform(0.85, 0.95)) ** 2 < 1
    hu[body] = HU_TISSUE
    for side in (-1, 1):
        cx = side * rng.uniform(0.35, 0.45)
        ry, rx = rng.uniform(0.45, 0.6), rng.uniform(0.22, 0.32)
        lung = (y / ry) ** 2 + ((x - cx) / rx) ** 2 < 1 - 0.5 * z**2
        hu[lung] = HU_LUNG
        labels[lung] = 1
    lung_voxels = np.argwhere(labels == 1)
    for _ in range(int(rng.integers(2, 5))):
        cz, cy, cx = axes[0][0] * 0, 0.0, 0.0
        k = lung_voxels[rng.integers(len(lung_voxels))]
        cz, cy, cx = (axes[i][k[i]] for i in range(3))
        r = rng.uniform(0.12, 0.25, size=3)
        blob = ((z - cz) / (2 * r[0])) ** 2 + ((y - cy) / r[1]) ** 2 + ((x - cx) / r[2]) ** 2 < 1
        blob &= labels >= 1
        hu[blob] = rng.uniform(*LESION_HU)
        labels[blob] = 2
    hu += rng.normal(0, NOISE_HU, shape)
    return np.clip(hu, -1024, 3000).astype(np.int16), labels


def _save(array: np.ndarray, path: Path) -> None:
    """Write a canonical (z, y, x) array as an RAS NIfTI (file axes x: L->R flipped, y, z)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = np.ascontiguousarray(array.transpose(2, 1, 0)[::-1, ::-1, :])
    nib.save(nib.Nifti1Image(data, np.diag([1.5, 1.5, 5.0, 1.0])), str(path))


def volumes_dataset(root: Path, n: int, shape: tuple[int, int, int] = (8, 64, 64), first_seed: int = 0) -> Path:
    """Write ``n`` toy chests as ``root/images/caseNN.nii.gz`` + ``root/labels/caseNN.nii.gz``; return root."""
    for i in range(n):
        hu, labels = chest(shape, first_seed + i)
        _save(hu, root / "images" / f"case{i:02d}.nii.gz")
        _save(labels, root / "labels" / f"case{i:02d}.nii.gz")
    return root


TINY_DECODER = "[16, 16, 16, 16, 16]"


def tiny_overrides(tmp: Path, data_root: Path, cache: Path | None = None) -> list[str]:
    """Overrides of a fast run on a "volumes" dataset at 64 px: scratch training, small decoder, quiet outputs."""
    return [
        "data.layout=volumes",
        f"data.root={data_root}",
        "data.val_fraction=0.34",
        f"data.cache_dir={cache or tmp / 'cache'}",
        "preprocess.slice_size=[64, 64]",
        f"model.decoder_channels={TINY_DECODER}",
        "train.epochs=2",
        "train.batch_size=2",
        "train.steps_per_epoch=2",
        "train.device=cpu",
        "train.early_stopping_patience=0",
        "augment.enabled=false",
        f"output.root={tmp / 'runs'}",
        "output.name=run",
        "output.tensorboard=false",
    ]


def tiny_config(tmp: Path, data_root: Path, *extra: str, cache: Path | None = None) -> RunConfig:
    """:func:`tiny_overrides` plus ``extra`` overrides, loaded."""
    return load_config(overrides=[*tiny_overrides(tmp, data_root, cache), *extra])
