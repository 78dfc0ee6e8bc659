"""Validation as the paper evaluates: every slice of a case predicted, stacked, scored in 3-D per case.

For each validation case, all its slices are predicted in batches (eval mode, no gradients, the training
precision and memory format), the argmax class maps are stacked into a ``(Z, H, W)`` volume on the cached grid
and scored against the case's labels with :func:`covidseg.train.metrics.case_scores` (3-D Dice, sensitivity,
precision per class). The run's metrics are the means over cases (:func:`covidseg.train.metrics.mean_scores`):
``dice_opacity``, ``dice_lung`` (where the classes have it), ``dice_mean`` over the foreground classes, ...
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from covidseg.data.datasets import CaseStack, CaseStackDataset
from covidseg.train.build import AmpSettings
from covidseg.train.metrics import CaseScores, case_scores, mean_scores

__all__ = ["DEFAULT_VAL_BATCH", "ValidationResult", "predict_stack", "validate"]

DEFAULT_VAL_BATCH = 8
"""Slices predicted at once during validation (at least the training batch size)."""


@dataclass(frozen=True)
class ValidationResult:
    """Mean metrics over the validation cases, and each case's scores.

    Attributes:
        metrics: ``{"dice_<class>": ..., "dice_mean": ..., ...}`` means over cases.
        cases: Per-case scores.
    """

    metrics: dict[str, float]
    cases: list[CaseScores]


@torch.inference_mode()
def predict_stack(
    model: nn.Module,
    stack: CaseStack,
    *,
    device: torch.device,
    amp: AmpSettings,
    batch_size: int = DEFAULT_VAL_BATCH,
    channels_last: bool = False,
) -> torch.Tensor:
    """Class maps ``(Z, H, W)`` uint8 of every slice of a case (the model must already be in eval mode).

    Examples:
        >>> import numpy as np
        >>> from covidseg.model import DenseUNet, UNetConfig
        >>> model = DenseUNet(UNetConfig(class_names=("background", "opacity"))).eval()
        >>> stack = CaseStack("c", np.zeros((3, 32, 32), np.float16), None, (1.0, 1.0, 1.0), ("background", "opacity"))
        >>> amp = AmpSettings("cpu", None, False)
        >>> predict_stack(model, stack, device=torch.device("cpu"), amp=amp, batch_size=2).shape
        torch.Size([3, 32, 32])
    """
    out = torch.empty((stack.n_slices, *stack.image_slices.shape[1:]), dtype=torch.uint8)
    for rows, images in stack.batches(batch_size):
        images = images.to(device, non_blocking=True)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with amp.autocast():
            logits = model(images)
        out[rows] = logits.argmax(dim=1).to(torch.uint8).cpu()
    return out


def validate(
    model: nn.Module,
    dataset: CaseStackDataset,
    *,
    device: torch.device,
    amp: AmpSettings,
    batch_size: int = DEFAULT_VAL_BATCH,
    channels_last: bool = False,
) -> ValidationResult:
    """Predict and score every validation case; the model's train/eval mode is restored afterwards."""
    was_training = model.training
    model.eval()
    scores: list[CaseScores] = []
    try:
        for i in range(len(dataset)):
            stack = dataset[i]
            labels = stack.labels
            if labels is None:
                continue
            prediction = predict_stack(
                model, stack, device=device, amp=amp, batch_size=batch_size, channels_last=channels_last
            )
            scores.append(case_scores(prediction, labels, stack.class_names, case_id=stack.case_id))
    finally:
        model.train(was_training)
    return ValidationResult(metrics=mean_scores(scores), cases=scores)
