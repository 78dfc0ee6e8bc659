"""Training augmentation from MONAI dictionary transforms, configured by a validated :class:`AugmentConfig`.

The transform maps a :class:`covidseg.data.datasets.SliceDataset` item (``image`` float32 ``(1, H, W)`` in
[0, 1], ``label`` int64 ``(H, W)``) to an item of the same form:

1. spatial, applied to image (bilinear) and label (nearest, so labels keep their integer values):
   ``RandAffined`` (rotation, scaling), ``RandFlipd`` (left-right), ``Rand2DElasticd`` (off by default);
2. intensity, image only: ``RandScaleIntensityd``, ``RandShiftIntensityd``, ``RandAdjustContrastd`` (gamma),
   ``RandGaussianNoised``;
3. ``ScaleIntensityRanged(0, 1, 0, 1, clip=True)``: back to the network's input range [0, 1].

Areas moved in from outside the slice are filled with zeros: air in the windowed image, background in the label.

Left-right flips: a flipped axial slice is the mirror image of a plausible chest (situs inversus aside, the
lungs are nearly symmetric; the heart moves to the other side). The slices of the shared 2-D datasets are already
stored in mixed orientations, so flips also teach invariance to how a slice was exported. Up-down flips (anterior
to posterior) are not offered: they give anatomy that does not occur.

Examples:
    >>> import torch
    >>> tf = build_train_transform(AugmentConfig(), seed=0)
    >>> item = {"image": torch.rand(1, 64, 64), "label": torch.randint(0, 3, (64, 64)), "case_id": "c"}
    >>> out = tf(item)
    >>> tuple(out["image"].shape), out["label"].dtype, out["case_id"]
    ((1, 64, 64), torch.int64, 'c')
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import (
    Compose,
    Rand2DElasticd,
    RandAdjustContrastd,
    RandAffined,
    RandFlipd,
    RandGaussianNoised,
    RandScaleIntensityd,
    RandShiftIntensityd,
    ScaleIntensityRanged,
)
from pydantic import BaseModel, ConfigDict, Field, field_validator

__all__ = ["AugmentConfig", "TrainTransform", "build_train_transform"]

LEFT_RIGHT_AXIS = 1
"""Spatial axis of a channel-first ``(1, H, W)`` axial slice that runs patient right to left (the columns)."""
IMAGE_RANGE = (0.0, 1.0)
"""Network input range after the HU window."""


class AugmentConfig(BaseModel):
    """Augmentation settings; unknown keys and out-of-range values are validation errors.

    Probabilities are per sample. Defaults are moderate and anatomically plausible for axial chest CT slices.

    Examples:
        >>> AugmentConfig(rotate_degrees=10).rotate_degrees
        10.0
        >>> from pydantic import ValidationError
        >>> try:
        ...     AugmentConfig(rotate=10)
        ... except ValidationError as err:
        ...     print(err.errors()[0]["type"], err.errors()[0]["loc"])
        extra_forbidden ('rotate',)
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = True
    """Master switch; False makes the transform the identity."""
    affine_prob: float = Field(0.5, ge=0.0, le=1.0)
    """Probability of a random rotation + scaling."""
    rotate_degrees: float = Field(15.0, ge=0.0, le=180.0)
    """Rotation angle drawn from [-rotate_degrees, rotate_degrees]."""
    scale_range: tuple[float, float] = (0.9, 1.1)
    """Scale factor range (each image axis drawn independently)."""
    flip_lr_prob: float = Field(0.5, ge=0.0, le=1.0)
    """Probability of a left-right mirror (a plausible chest; see the module notes)."""
    elastic: bool = False
    """Random elastic deformation (slow on CPU; off by default)."""
    elastic_prob: float = Field(0.2, ge=0.0, le=1.0)
    """Probability of the elastic deformation when ``elastic`` is on."""
    elastic_spacing_px: float = Field(32.0, gt=0.0)
    """Distance in pixels between the control points of the elastic grid."""
    elastic_magnitude: tuple[float, float] = (1.0, 2.0)
    """Range of the control-point displacement magnitude."""
    intensity_scale: float = Field(0.1, ge=0.0, le=1.0)
    """Intensities multiplied by (1 + f), f drawn from [-intensity_scale, intensity_scale]."""
    intensity_scale_prob: float = Field(0.3, ge=0.0, le=1.0)
    """Probability of the intensity scaling."""
    intensity_shift: float = Field(0.05, ge=0.0, le=1.0)
    """Offset drawn from [-intensity_shift, intensity_shift] added to intensities (window units, 1 = 1000 HU)."""
    intensity_shift_prob: float = Field(0.3, ge=0.0, le=1.0)
    """Probability of the intensity shift."""
    noise_std: float = Field(0.01, ge=0.0, le=1.0)
    """Largest standard deviation of additive Gaussian noise (window units)."""
    noise_prob: float = Field(0.2, ge=0.0, le=1.0)
    """Probability of additive Gaussian noise."""
    gamma_range: tuple[float, float] = (0.8, 1.25)
    """Contrast gamma range of ``RandAdjustContrastd``."""
    gamma_prob: float = Field(0.2, ge=0.0, le=1.0)
    """Probability of the contrast (gamma) change."""
    clip: bool = True
    """Clip the augmented image to [0, 1], the range the network sees at inference."""

    @field_validator("scale_range", "gamma_range", "elastic_magnitude")
    @classmethod
    def _ordered_positive(cls, value: tuple[float, float]) -> tuple[float, float]:
        low, high = value
        if not (math.isfinite(low) and math.isfinite(high)) or low <= 0 or low > high:
            raise ValueError(f"must be (low, high) with 0 < low <= high, got {value}")
        return value


def _plain(value: Any) -> torch.Tensor:
    return value.as_tensor() if isinstance(value, MetaTensor) else torch.as_tensor(value)


class TrainTransform:
    """Callable ``item -> item`` wrapping a MONAI ``Compose``; the identity when built without one.

    Keys other than ``image`` and ``label`` pass through unchanged; items without ``label`` are accepted.
    """

    def __init__(self, compose: Compose | None, seed: int = 0) -> None:
        self.compose = compose
        self.set_random_state(seed)

    def set_random_state(self, seed: int) -> None:
        """Reseed every random transform (deterministic from here on for the same sequence of items)."""
        if self.compose is not None:
            self.compose.set_random_state(seed=int(seed) % (2**32))

    def __call__(self, item: dict[str, Any]) -> dict[str, Any]:
        """Augment ``item`` (image and label together); other keys are copied unchanged."""
        if self.compose is None:
            return item
        data: dict[str, Any] = {"image": item["image"]}
        if "label" in item:
            data["label"] = item["label"].unsqueeze(0).to(torch.float32)
        out = self.compose(data)
        result = dict(item)
        result["image"] = _plain(out["image"]).to(torch.float32).contiguous()
        if "label" in item:
            result["label"] = _plain(out["label"])[0].round().to(torch.int64).contiguous()
        return result


def build_train_transform(cfg: AugmentConfig, seed: int) -> TrainTransform:
    """Build the training augmentation described by ``cfg``, seeded with ``seed``.

    The same config and seed give the same augmentations for the same sequence of items. With DataLoader
    workers, use ``monai.data.DataLoader`` (or ``worker_init_fn=monai.data.utils.worker_init_fn``) so each worker
    reseeds its copy; see :meth:`covidseg.data.datasets.SliceDataset.set_random_state`.

    Examples:
        >>> import torch
        >>> item = {"image": torch.rand(1, 32, 32), "label": torch.zeros(32, 32, dtype=torch.int64)}
        >>> build_train_transform(AugmentConfig(enabled=False), seed=0)(item) is item
        True
    """
    if not cfg.enabled:
        return TrainTransform(None, seed)
    keys = ["image", "label"]
    modes = ["bilinear", "nearest"]
    angle = math.radians(cfg.rotate_degrees)
    scale = (cfg.scale_range[0] - 1.0, cfg.scale_range[1] - 1.0)
    transforms: list[Any] = [
        RandAffined(
            keys=keys,
            prob=cfg.affine_prob,
            rotate_range=(angle,),
            scale_range=(scale, scale),
            mode=modes,
            padding_mode="zeros",
            allow_missing_keys=True,
        ),
        RandFlipd(keys=keys, prob=cfg.flip_lr_prob, spatial_axis=LEFT_RIGHT_AXIS, allow_missing_keys=True),
    ]
    if cfg.elastic:
        transforms.append(
            Rand2DElasticd(
                keys=keys,
                spacing=(cfg.elastic_spacing_px, cfg.elastic_spacing_px),
                magnitude_range=cfg.elastic_magnitude,
                prob=cfg.elastic_prob,
                mode=modes,
                padding_mode="zeros",
                allow_missing_keys=True,
            )
        )
    transforms += [
        RandScaleIntensityd(keys="image", factors=cfg.intensity_scale, prob=cfg.intensity_scale_prob),
        RandShiftIntensityd(keys="image", offsets=cfg.intensity_shift, prob=cfg.intensity_shift_prob),
        RandAdjustContrastd(keys="image", gamma=cfg.gamma_range, prob=cfg.gamma_prob),
        RandGaussianNoised(keys="image", std=cfg.noise_std, prob=cfg.noise_prob, dtype=np.float32),
    ]
    if cfg.clip:
        low, high = IMAGE_RANGE
        transforms.append(ScaleIntensityRanged(keys="image", a_min=low, a_max=high, b_min=low, b_max=high, clip=True))
    return TrainTransform(Compose(transforms), seed)
