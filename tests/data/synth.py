"""Small synthetic chest-like volumes and slice images written in the dataset layouts (test helpers)."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
from PIL import Image

HU_AIR = -1000
HU_LUNG = -850
HU_LESION = -300
HU_TISSUE = 40
SHAPE = (16, 64, 64)
SPACING = (5.0, 1.5, 1.5)


def chest(shape: tuple[int, int, int] = SHAPE, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Canonical (Z, Y, X) int16 HU and uint8 labels (0 background, 1 lung, 2 opacity) of a toy chest."""
    rng = np.random.default_rng(seed)
    axes = [np.linspace(-1, 1, n) if n > 1 else np.zeros(1) for n in shape]
    z, y, x = np.meshgrid(*axes, indexing="ij")
    hu = np.full(shape, HU_AIR, np.int16)
    labels = np.zeros(shape, np.uint8)
    body = (y / 0.8) ** 2 + (x / 0.9) ** 2 < 1
    hu[body] = HU_TISSUE
    for cx in (-0.4, 0.4):
        lung = ((y / 0.55) ** 2 + ((x - cx) / 0.3) ** 2 < 1) & (np.abs(z) < 0.9)
        hu[lung] = HU_LUNG
        labels[lung] = 1
    cz, cy, cx = rng.uniform(-0.3, 0.3), rng.uniform(-0.2, 0.2), rng.choice([-0.4, 0.4])
    lesion = ((z - cz) / 0.4) ** 2 + ((y - cy) / 0.25) ** 2 + ((x - cx) / 0.15) ** 2 < 1
    lesion &= labels == 1
    hu[lesion] = HU_LESION
    labels[lesion] = 2
    hu += rng.integers(-20, 20, shape, dtype=np.int16)
    return hu, labels


def file_affine(shape: tuple[int, int, int], spacing: tuple[float, float, float] = SPACING) -> np.ndarray:
    """RAS affine of the file array that is ``canonical.transpose(2, 1, 0)`` flipped to RAS axes."""
    del shape
    return np.diag([spacing[2], spacing[1], spacing[0], 1.0])


def to_file(canonical: np.ndarray) -> np.ndarray:
    """Canonical (z, y, x: S, P, L) array -> file array (i, j, k) for an RAS diagonal affine."""
    return np.ascontiguousarray(canonical.transpose(2, 1, 0)[::-1, ::-1, :])


def save_nifti(array: np.ndarray, path: Path, spacing: tuple[float, float, float] = SPACING) -> Path:
    """Write a canonical array as NIfTI (RAS file axes)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(to_file(array), file_affine(array.shape, spacing)), str(path))
    return path


def volumes_dataset(
    root: Path, n: int = 3, *, nnunet: bool = False, shape: tuple[int, int, int] = SHAPE
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Write ``n`` cases in the "volumes" layout; return case id -> (hu, labels) canonical arrays."""
    image_dir, label_dir = ("imagesTr", "labelsTr") if nnunet else ("images", "labels")
    out = {}
    for i in range(n):
        case = f"case{i:02d}"
        hu, labels = chest(shape, seed=i)
        save_nifti(hu, root / image_dir / (f"{case}_0000.nii.gz" if nnunet else f"{case}.nii.gz"))
        save_nifti(labels, root / label_dir / f"{case}.nii.gz")
        out[case] = (hu, labels)
    return out


def covid20_dataset(root: Path, *, combined: bool = False) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Two cases in the covid20 layout: a HU "coronacases" scan and a 0..255 "radiopaedia" scan."""
    out = {}
    for i, name in enumerate(("coronacases_001", "radiopaedia_4_85506_1")):
        hu, labels = chest(seed=i)
        stored = hu
        if name.startswith("radiopaedia"):
            stored = np.round((np.clip(hu, -1250, 250) + 1250) / 1500 * 255).astype(np.int16)
        save_nifti(stored, root / "COVID-19-CT-Seg_20cases" / f"{name}.nii.gz")
        left_right = np.where(labels > 0, 1, 0).astype(np.uint8)
        left_right[..., SHAPE[2] // 2 :] *= 2  # x toward Left: 2 on one side, 1 on the other
        infection = (labels == 2).astype(np.uint8)
        if combined:
            save_nifti(
                np.where(infection > 0, 3, left_right).astype(np.uint8),
                root / "Lung_and_Infection_Mask" / f"{name}.nii.gz",
            )
        else:
            save_nifti(left_right, root / "Lung_Mask" / f"{name}.nii.gz")
            save_nifti(infection, root / "Infection_Mask" / f"{name}.nii.gz")
        out[name] = (hu, labels)
    return out


def slices_dataset(
    root: Path, n: int = 4, *, size: tuple[int, int] = (70, 90), multiclass: bool = True, names: list[str] | None = None
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Slice images (display values) with binary and palette masks; return id -> (display uint8, classes 0/1/2)."""
    rng = np.random.default_rng(0)
    out = {}
    stems = names or [str(i) for i in range(n)]
    for i, stem in enumerate(stems):
        hu, labels = chest((1, *size), seed=i)
        display = np.round((np.clip(hu[0], -1350, 150) + 1350) / 1500 * 255).astype(np.uint8)
        multi = np.where(labels[0] == 2, 1 + (rng.random(size) > 0.5), 0).astype(np.uint8)
        (root / "images").mkdir(parents=True, exist_ok=True)
        Image.fromarray(display).save(root / "images" / f"{stem}.png")
        (root / "masks").mkdir(exist_ok=True)
        Image.fromarray(np.where(multi > 0, 255, 0).astype(np.uint8)).save(root / "masks" / f"{stem}.png")
        if multiclass:
            (root / "masks-multiclass").mkdir(exist_ok=True)
            palette = Image.fromarray(multi, mode="P")
            palette.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0])
            palette.save(root / "masks-multiclass" / f"{stem}.png")
        out[stem] = (display, multi)
    return out


__all__ = ["chest", "covid20_dataset", "save_nifti", "slices_dataset", "volumes_dataset"]
