from __future__ import annotations

import pytest
import torch

from covidseg.model.unet import DenseUNet, UNetConfig


@pytest.fixture(scope="module")
def model() -> DenseUNet:
    """A default DenseUNet in eval mode with fixed random weights, shared within a test module."""
    torch.manual_seed(0)
    return DenseUNet(UNetConfig()).eval()
