from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from covidseg.errors import ConfigError, InputError
from covidseg.train.loss import MAX_WEIGHT_RATIO, SegmentationLoss, class_ratio_weights, resolve_class_weights


def test_class_ratio_weights_hand_values() -> None:
    # f = 0.6, 0.3, 0.1 -> 1/f = 5/3, 10/3, 10 (mean 5) -> 1/3, 2/3, 2
    w = class_ratio_weights([600, 300, 100])
    assert w.tolist() == pytest.approx([1 / 3, 2 / 3, 2.0], rel=1e-6)
    assert float(w.mean()) == pytest.approx(1.0)


def test_class_ratio_weights_clipped_to_max_ratio() -> None:
    # 1/f = 1.001 and 1001 -> the rare class is clipped to 20 x 1.001; mean-1 normalisation gives 2/21, 40/21
    w = class_ratio_weights([1000, 1])
    assert w.tolist() == pytest.approx([2 / 21, 40 / 21], rel=1e-6)
    assert float(w[1] / w[0]) == pytest.approx(MAX_WEIGHT_RATIO)


def test_absent_class_gets_the_rarest_weight() -> None:
    w = class_ratio_weights([90, 10, 0])
    assert float(w[2]) == pytest.approx(float(w[1]))


@pytest.mark.parametrize("counts", [[0, 0, 0], [5, -1]])
def test_class_ratio_weights_reject_empty_or_negative(counts: list[int]) -> None:
    with pytest.raises(InputError):
        class_ratio_weights(counts)


def test_resolve_class_weights() -> None:
    assert resolve_class_weights("none", None, 2) is None
    assert resolve_class_weights("class_ratio", np.array([50, 50]), 2).tolist() == [1.0, 1.0]
    with pytest.raises(ConfigError, match="3 classes"):
        resolve_class_weights([1.0, 2.0], None, 3)


def test_weighted_cross_entropy_hand_value() -> None:
    # pixel 1: logits (0, ln 3), target 0 -> p = 1/4, -ln p = 2 ln 2 (weight 1)
    # pixel 2: logits (0, 0), target 1 -> p = 1/2, -ln p = ln 2 (weight 3)
    # weighted mean: (1 * 2 ln 2 + 3 * ln 2) / (1 + 3) = 5/4 ln 2
    logits = torch.tensor([[[[0.0, 0.0]], [[math.log(3.0), 0.0]]]])  # (1, 2, 1, 2)
    target = torch.tensor([[[0, 1]]])
    loss = SegmentationLoss(torch.tensor([1.0, 3.0]))(logits, target)
    assert loss.item() == pytest.approx(1.25 * math.log(2.0), rel=1e-6)


def test_dice_term_hand_value() -> None:
    # 2 classes, logits 0 -> s = 0.5 everywhere; 4 pixels, 2 of them foreground:
    # Dice_fg = 2 * (0.5 + 0.5) / (4 * 0.5 + 2) = 0.5 -> Dice loss 0.5; CE = ln 2
    logits = torch.zeros(1, 2, 2, 2)
    target = torch.tensor([[[1, 1], [0, 0]]])
    loss = SegmentationLoss(None, dice_weight=2.0)(logits, target)
    assert loss.item() == pytest.approx(math.log(2.0) + 2.0 * 0.5, rel=1e-4)


def test_dice_term_vanishes_for_a_confident_correct_prediction() -> None:
    target = torch.tensor([[[1, 0], [2, 0]]])
    logits = torch.nn.functional.one_hot(target, 3).permute(0, 3, 1, 2).float() * 50
    loss = SegmentationLoss(None, dice_weight=1.0)(logits, target)
    assert loss.item() == pytest.approx(0.0, abs=1e-5)


def test_loss_is_float32_under_bf16_logits() -> None:
    logits = torch.randn(2, 3, 4, 4).to(torch.bfloat16)
    loss = SegmentationLoss(torch.ones(3), dice_weight=0.5)(logits, torch.randint(0, 3, (2, 4, 4)))
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
