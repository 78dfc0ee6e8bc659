"""Test helpers for the predictor: an analytic "model" that gives meaningful masks for free, and a toy chest.

:class:`AnalyticCT` maps the windowed intensity (HU window [-1000, 0] -> [0, 1]) to class logits: lung for
dark parenchyma (about -980 to -730 HU), opacity for the ground-glass range (-730 to -150 HU), background
otherwise (air outside the body, soft tissue, bone). A 3 x 3 mean filter first removes voxel noise,
and each class region is opened with a 5 x 5 square, so the thin partial-volume rims between air, lung and soft
tissue (whose intensities pass through the other bands) are not called lung or opacity.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from covidseg.data.preprocess import PreprocessConfig
from covidseg.infer.segmenter import Segmenter
from covidseg.infer.spec import InferenceSpec
from covidseg.model import DenseUNet, UNetConfig

LUNG_BAND = (0.02, 0.27)
"""Windowed-intensity range the fixture calls lung (-980 to -730 HU)."""
OPACITY_BAND = (0.27, 0.85)
"""Windowed-intensity range the fixture calls opacity (-730 to -150 HU: ground glass, not consolidation, which
shares soft tissue's HU and needs a trained network)."""
SHARPNESS = 60.0
OPENING = 5

HU_AIR, HU_LUNG, HU_LESION, HU_TISSUE = -1000, -850, -300, 40


class AnalyticCT(nn.Module):
    """Class logits from the windowed intensity; outputs ``len(classes)`` channels in ``classes`` order."""

    def __init__(self, classes: tuple[str, ...] = ("background", "lung", "opacity")) -> None:
        super().__init__()
        self.classes = classes
        self.scale = nn.Parameter(torch.tensor(SHARPNESS), requires_grad=False)  # so .to() / dtype apply

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.avg_pool2d(x[:, :1], 3, stride=1, padding=1, count_include_pad=False)
        band = {
            "background": torch.zeros_like(x),
            "lung": _opened_band(x, LUNG_BAND) * self.scale,
            "opacity": _opened_band(x, OPACITY_BAND) * self.scale,
        }
        return torch.cat([band[c] for c in self.classes], dim=1)


def _opened_band(x: torch.Tensor, band: tuple[float, float]) -> torch.Tensor:
    """Positive where x is in ``band`` and inside a 5 x 5 square that lies entirely in the band."""
    pad = OPENING // 2
    low = -F.max_pool2d(-x, OPENING, stride=1, padding=pad)
    high = F.max_pool2d(x, OPENING, stride=1, padding=pad)
    core = torch.minimum(low - band[0], band[1] - high)
    opened = F.max_pool2d(core, OPENING, stride=1, padding=pad)
    return torch.minimum(opened, torch.minimum(x - band[0], band[1] - x))


def analytic_segmenter(
    slice_size: int = 64,
    classes: tuple[str, ...] = ("background", "lung", "opacity"),
    **spec_kwargs: object,
) -> Segmenter:
    """A CPU Segmenter running :class:`AnalyticCT` at ``slice_size``."""
    spec = InferenceSpec(
        class_names=classes, preprocess=PreprocessConfig(slice_size=(slice_size, slice_size)), **spec_kwargs
    )
    return Segmenter(AnalyticCT(classes), spec, device="cpu", batch_size=4)


def toy_chest(shape: tuple[int, int, int] = (12, 64, 64), seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Canonical (Z, Y, X) int16 HU and uint8 labels: body, two lungs, one lesion in the left lung (large x)."""
    rng = np.random.default_rng(seed)
    axes = [np.linspace(-1, 1, n) for n in shape]
    z, y, x = np.meshgrid(*axes, indexing="ij")
    hu = np.full(shape, HU_AIR, np.int16)
    labels = np.zeros(shape, np.uint8)
    hu[(y / 0.85) ** 2 + (x / 0.92) ** 2 < 1] = HU_TISSUE
    for cx in (-0.42, 0.42):
        lung = ((y / 0.6) ** 2 + ((x - cx) / 0.32) ** 2 < 1) & (np.abs(z) < 0.85)
        hu[lung], labels[lung] = HU_LUNG, 1
    lesion = ((z / 0.6) ** 2 + ((y - 0.1) / 0.35) ** 2 + ((x - 0.42) / 0.22) ** 2 < 1) & (labels == 1)
    hu[lesion], labels[lesion] = HU_LESION, 2
    hu += rng.integers(-15, 15, shape, dtype=np.int16)
    return hu, labels


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice overlap of two boolean masks (1.0 when both are empty)."""
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int((a & b).sum()) / total


def calibrated_unet(config: UNetConfig, size: int = 64, seed: int = 0) -> DenseUNet:
    """A random-weight DenseUNet whose BatchNorm statistics come from one train-mode pass, as training would set
    them (instead of the defaults, mean 0 and variance 1), so its activations have the scale of a trained model's.
    """
    torch.manual_seed(seed)
    model = DenseUNet(config)
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.reset_running_stats()
            module.momentum = None  # cumulative average over the calibration pass
    model.train()
    with torch.no_grad():
        model(torch.rand(4, config.in_channels, size, size))
    return model.eval()


class OracleLabels(nn.Module):
    """Returns one-hot logits of known labels, slice batch by slice batch in z order (network size = native size).

    Pushes a phantom's own labels through the predictor, post-processing and outputs, so volumes can be checked
    against the phantom's known volumes. Call :meth:`rewind` before each volume.
    """

    def __init__(self, labels: np.ndarray, n_classes: int = 3) -> None:
        super().__init__()
        self.labels = torch.as_tensor(labels.astype(np.int64))
        self.n_classes = n_classes
        self.position = 0

    def rewind(self) -> None:
        self.position = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = self.labels[self.position : self.position + x.shape[0]]
        self.position += x.shape[0]
        if tuple(rows.shape[1:]) != tuple(x.shape[2:]):
            raise ValueError("the oracle needs the network size to equal the native slice size")
        return F.one_hot(rows, self.n_classes).permute(0, 3, 1, 2).float() * 50.0
