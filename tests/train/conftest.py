from __future__ import annotations

from pathlib import Path

import pytest
import torch

from covidseg.model import DenseUNet, UNetConfig
from tests.train.synth import volumes_dataset


@pytest.fixture(scope="session")
def dataset_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three toy chests of 8 x 64 x 64 in the "volumes" layout (2 train, 1 validation)."""
    return volumes_dataset(tmp_path_factory.mktemp("data"), 3)


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A slice cache shared by the tests (entries are keyed, so sharing is safe)."""
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="session")
def source_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A source model file: a DenseUNet state dict with the tiny decoder of the test configs."""
    torch.manual_seed(123)
    path = tmp_path_factory.mktemp("source") / "source.pt"
    torch.save(DenseUNet(UNetConfig(decoder_channels=(16, 16, 16, 16, 16))).state_dict(), path)
    return path
