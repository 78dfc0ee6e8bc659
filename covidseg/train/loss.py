"""The training loss: cross-entropy weighted by the class ratio of the training set, plus an optional soft Dice.

Class-ratio weights (the paper weights the cross-entropy "by the class ratio of the training set"). From the
pixel count ``n_c`` of every class over the training slices (after preprocessing, before augmentation):

1. frequency ``f_c = n_c / Σ_k n_k``; inverse frequency ``r_c = 1 / f_c``;
2. a class with no pixel at all (``n_c = 0``) gets the largest ``r`` of the present classes (it never occurs in
   a target, so its weight only matters for the normalisation below);
3. clipping: ``r_c = min(r_c, MAX_WEIGHT_RATIO · min_k r_k)``, so no class weighs more than
   :data:`MAX_WEIGHT_RATIO` times the most frequent one (an opacity covering 0.1 % of the pixels would otherwise
   weigh 1000 times the background and the network would paint opacity everywhere near a lesion);
4. normalisation to mean 1: ``w_c = r_c / mean_k r_k``.

The weighted cross-entropy is PyTorch's ``F.cross_entropy(logits, target, weight=w)`` with mean reduction,
``Σ_p w_{y_p} · (−log softmax(z_p)_{y_p}) / Σ_p w_{y_p}`` over all pixels ``p`` of the batch.

Soft Dice (``dice_weight > 0``): MONAI's ``DiceLoss`` on the softmax over the foreground classes (background
excluded), Dice computed over the whole batch per class (``batch=True``) and averaged over the foreground
classes: ``1 − mean_c (2 Σ_p s_pc g_pc + ε) / (Σ_p s_pc + Σ_p g_pc + ε)`` with ``ε`` = :data:`DICE_SMOOTH`.
The loss is ``CE_w + dice_weight · Dice``. Both terms are computed in float32, also under autocast.

Examples:
    >>> class_ratio_weights([900, 90, 10]).tolist()  # 1/f = 1.11, 11.1, 100 -> clipped to 20 x 1.11
    [0.0967..., 0.967..., 1.935...]
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from monai.losses import DiceLoss
from torch import nn

from covidseg.errors import ConfigError, InputError

__all__ = ["DICE_SMOOTH", "MAX_WEIGHT_RATIO", "SegmentationLoss", "class_ratio_weights", "resolve_class_weights"]

MAX_WEIGHT_RATIO = 20.0
"""Largest ratio between two class weights (rarest class / most frequent class) of class-ratio weighting."""
DICE_SMOOTH = 1e-5
"""Smoothing ε of the soft Dice numerator and denominator."""


def class_ratio_weights(counts: Sequence[int] | np.ndarray, *, max_ratio: float = MAX_WEIGHT_RATIO) -> torch.Tensor:
    """Cross-entropy class weights from training-set pixel counts (the formula is in the module docstring).

    Args:
        counts: Pixels of each class (index = class).
        max_ratio: Largest allowed ratio between two weights (>= 1).

    Returns:
        float32 weights of mean 1.

    Raises:
        InputError: No pixel at all, or a negative count.

    Examples:
        >>> class_ratio_weights([50, 50]).tolist()
        [1.0, 1.0]
        >>> class_ratio_weights([75, 25, 0]).tolist()  # 1/f = 4/3, 4 and 4 for the absent class
        [0.428..., 1.285..., 1.285...]
    """
    n = np.asarray(counts, dtype=np.float64)
    if n.ndim != 1 or n.size < 2:
        raise InputError(f"class counts must be one count per class (at least two), got {n.tolist()}")
    if (n < 0).any() or n.sum() <= 0:
        raise InputError(
            f"class pixel counts {n.astype(np.int64).tolist()} have no labelled pixel; the training labels are empty"
        )
    if max_ratio < 1:
        raise ConfigError(f"max_ratio must be >= 1, got {max_ratio}")
    present = n > 0
    inverse = np.zeros_like(n)
    inverse[present] = n.sum() / n[present]
    inverse[~present] = inverse[present].max()
    inverse = np.minimum(inverse, max_ratio * inverse.min())
    return torch.tensor(inverse / inverse.mean(), dtype=torch.float32)


def resolve_class_weights(
    spec: str | Sequence[float], counts: Sequence[int] | np.ndarray | None, num_classes: int
) -> torch.Tensor | None:
    """Turn ``loss.class_weights`` into a weight tensor (or None for unweighted cross-entropy).

    Args:
        spec: ``"class_ratio"``, ``"none"`` or one weight per class.
        counts: Training-set pixel counts per class (needed for ``"class_ratio"``).
        num_classes: Number of classes of the model.

    Examples:
        >>> resolve_class_weights("none", None, 3) is None
        True
        >>> resolve_class_weights([1, 2, 3], None, 3).tolist()
        [1.0, 2.0, 3.0]
    """
    if isinstance(spec, str):
        if spec == "none":
            return None
        if spec != "class_ratio":
            raise ConfigError(f"loss.class_weights must be 'class_ratio', 'none' or a list, got {spec!r}")
        if counts is None:
            raise ConfigError("class_ratio weights need the training-set class counts")
        if len(counts) != num_classes:
            raise ConfigError(f"{len(counts)} class counts for a model with {num_classes} classes")
        return class_ratio_weights(counts)
    weights = [float(w) for w in spec]
    if len(weights) != num_classes:
        raise ConfigError(f"loss.class_weights has {len(weights)} values for {num_classes} classes")
    return torch.tensor(weights, dtype=torch.float32)


class SegmentationLoss(nn.Module):
    """Weighted cross-entropy plus ``dice_weight`` times a soft Dice over the foreground classes.

    Args:
        class_weights: Per-class cross-entropy weights, or None for unweighted.
        dice_weight: Weight of the Dice term (0 = cross-entropy only).

    Examples:
        >>> loss = SegmentationLoss(torch.tensor([1.0, 3.0]))
        >>> logits = torch.zeros(1, 2, 1, 2)  # p = 0.5 everywhere: -log p = log 2 for every pixel
        >>> round(loss(logits, torch.tensor([[[0, 1]]])).item(), 6) == round(float(np.log(2)), 6)
        True
    """

    weight: torch.Tensor | None

    def __init__(self, class_weights: torch.Tensor | None = None, dice_weight: float = 0.0) -> None:
        super().__init__()
        if dice_weight < 0:
            raise ConfigError(f"loss.dice_weight must be >= 0, got {dice_weight}")
        self.register_buffer("weight", None if class_weights is None else class_weights.to(torch.float32))
        self.dice_weight = float(dice_weight)
        self.dice = DiceLoss(
            include_background=False,
            to_onehot_y=True,
            softmax=True,
            batch=True,
            smooth_nr=DICE_SMOOTH,
            smooth_dr=DICE_SMOOTH,
        )

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Return the scalar loss of logits ``(N, C, H, W)`` against class indices ``(N, H, W)``."""
        logits = logits.float()
        loss = F.cross_entropy(logits, target, weight=self.weight)
        if self.dice_weight > 0:
            loss = loss + self.dice_weight * self.dice(logits, target.unsqueeze(1))
        return loss
