"""Test helpers for the bundle: a decisive DenseUNet checkpoint, phantom scans in several storage orientations,
and a Python environment in which covidseg cannot be imported.

A DenseUNet with random weights gives masks without meaning and many near-ties in the class probabilities, so
two correct implementations could disagree by float rounding alone. :func:`fitted_unet` takes a BatchNorm-
calibrated random DenseUNet and fits only its 3 x 3 head (a few LBFGS steps on the frozen decoder features of toy
chests), which gives a model that segments the toy chest's body, lungs and lesion with decisive probabilities
(fewer than 1e-4 of pixels have a top-2 probability margin below 1e-4) in seconds.
"""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
import torch.nn.functional as F

from covidseg.data.preprocess import PreprocessConfig, preprocess_slices
from covidseg.model import DenseUNet, UNetConfig, save_checkpoint
from tests.infer.analytic import calibrated_unet, toy_chest

SLICE = 64
SCAN_SHAPE = (16, 96, 96)
CLASSES = ("background", "lung", "opacity")
SPACING = (2.5, 0.8, 0.8)


def fitted_unet(size: int = SLICE, seed: int = 0) -> DenseUNet:
    """A calibrated random DenseUNet whose head is fitted (cross-entropy, LBFGS) to toy-chest labels."""
    config = UNetConfig(class_names=CLASSES, decoder_channels=(32, 32, 32, 32, 32), head_kernel_size=3)
    model = calibrated_unet(config, size=size, seed=seed)
    pre = PreprocessConfig(slice_size=(size, size))
    hu, labels = toy_chest(SCAN_SHAPE, seed=seed + 1)
    x = preprocess_slices(hu, pre)
    y = F.interpolate(torch.from_numpy(labels)[:, None].float(), size=(size, size), mode="nearest")[:, 0].long()
    features: dict[str, torch.Tensor] = {}
    hook = model.head.register_forward_hook(lambda _m, inputs, _o: features.__setitem__("x", inputs[0].detach()))
    with torch.no_grad():
        model(x)
    hook.remove()
    counts = torch.bincount(y.ravel(), minlength=len(CLASSES)).float()
    weight = counts.sum() / counts.clamp(min=1) / len(CLASSES)
    head = model.head
    optimizer = torch.optim.LBFGS(head.parameters(), lr=1, max_iter=150, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(head(features["x"]), y, weight=weight)
        loss.backward()
        return loss

    for _ in range(2):
        optimizer.step(closure)
    return model.eval()


def write_checkpoint(path: Path, model: DenseUNet, size: int = SLICE, **extra: object) -> Path:
    """A checkpoint as covidseg train writes it: classes, preprocessing, training state, run config."""
    entries: dict[str, object] = {
        "kind": "best",
        "class_names": list(model.config.class_names),
        "preprocessing": PreprocessConfig(slice_size=(size, size)).to_dict(),
        "training": {"epoch": 4, "best_epoch": 2, "best_metric": 0.8125, "monitor": "dice_opacity"},
        "config": {"train": {"epochs": 4, "lr": 0.001}, "penalty": {"name": "l2sp", "lambda0": 0.01}},
    }
    entries.update(extra)
    return save_checkpoint(path, model, model_config=model.config, extra=entries, overwrite=True)


def canonical_to_file(hu: np.ndarray, codes: str) -> tuple[np.ndarray, np.ndarray]:
    """A canonical (z, y, x) volume as a NIfTI array and affine whose voxel axes point toward ``codes``.

    Canonical axes point toward S (z), P (y), L (x). ``codes`` names the world direction of each file axis,
    e.g. "RAS" (the usual NIfTI storage) or "PSL"; the affine keeps every voxel at the same world position.
    """
    canonical = {"S": (0, 1), "P": (1, 1), "L": (2, 1), "I": (0, -1), "A": (1, -1), "R": (2, -1)}
    spacing = np.array(SPACING)
    base = np.eye(4)  # canonical index (z, y, x) -> RAS world: x toward L is -R, y toward P is -A
    base[:3, :3] = np.array([[0, 0, -1], [0, -1, 0], [1, 0, 0]], float) * spacing[None, :]
    base[:3, 3] = [30.0, 20.0, -15.0]
    data = hu
    index_map = np.zeros((4, 4))
    index_map[3, 3] = 1
    order = []
    for file_axis, code in enumerate(codes):
        axis, sign = canonical[code]
        order.append(axis)
        index_map[axis, file_axis] = sign
        if sign < 0:
            index_map[axis, 3] = hu.shape[axis] - 1
    data = np.transpose(hu, order)
    for file_axis, code in enumerate(codes):
        if canonical[code][1] < 0:
            data = np.flip(data, axis=file_axis)
    return np.ascontiguousarray(data), base @ index_map


def write_scans(folder: Path, codes: tuple[str, ...] = ("RAS", "PSL")) -> dict[str, Path]:
    """One toy chest stored in each orientation of ``codes``, as ``<codes>.nii.gz`` in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    hu, _ = toy_chest(SCAN_SHAPE, seed=5)
    out = {}
    for code in codes:
        data, affine = canonical_to_file(hu, code)
        path = folder / f"{code.lower()}.nii.gz"
        nib.save(nib.Nifti1Image(data, affine), path)
        out[code] = path
    return out


def no_covidseg_env(tmp: Path) -> tuple[list[str], dict[str, str]]:
    """Command prefix and environment of a Python that has the venv's packages but cannot import covidseg.

    ``-S`` skips ``site``, so the editable install's ``.pth`` hook never runs; the venv's site-packages folder
    is put on ``PYTHONPATH`` by hand (plain packages import from it, covidseg does not live there).
    """
    site_packages = sysconfig.get_paths()["purelib"]
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(tmp),
        "PYTHONPATH": site_packages,
        "PYTHONNOUSERSITE": "1",
        "PYTHONDONTWRITEBYTECODE": "1",
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
    }
    return [sys.executable, "-S"], env


def run(cmd: list[str], env: dict[str, str] | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run a command, capturing text output (no check)."""
    return subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=300)
