from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch

from covidseg.errors import InputError
from covidseg.model import DenseUNet, UNetConfig, save_checkpoint
from covidseg.train import checkpointing as C

CFG = UNetConfig(class_names=("background", "opacity"), decoder_channels=(8, 8, 8, 8, 8))


@pytest.fixture(scope="module")
def model() -> DenseUNet:
    return DenseUNet(CFG)


def test_rng_round_trip_all_generators() -> None:
    state = C.capture_rng_state()
    first = (random.random(), float(np.random.rand()), torch.rand(3))
    C.restore_rng_state(state)
    second = (random.random(), float(np.random.rand()), torch.rand(3))
    assert first[0] == second[0] and first[1] == second[1] and torch.equal(first[2], second[2])


def test_checkpoint_is_weights_only_and_complete(tmp_path: Path, model: DenseUNet) -> None:
    extra = {
        "training": C.TrainingState(epoch=2, best_metric=0.5).to_dict(),
        "rng": C.capture_rng_state(),
        "optimizer": torch.optim.Adam(model.parameters()).state_dict(),
        "scheduler": {},
        "strategy": {"strategy": "full"},
        "config": {},
        "class_names": ["background", "opacity"],
        "preprocessing": {"window": [-1000.0, 0.0]},
    }
    path = C.save_training_checkpoint(tmp_path / C.LAST_NAME, model, model_config=CFG, extra=extra)
    raw = torch.load(path, weights_only=True)
    assert raw["kind"] == "training" and raw["training"]["epoch"] == 2
    ckpt = C.load_training_checkpoint(path)
    assert C.TrainingState.from_dict(ckpt["training"]).best_metric == 0.5
    C.restore_rng_state(ckpt["rng"])
    assert not list(tmp_path.glob(".*"))  # no temporaries left


def test_failed_write_keeps_the_previous_checkpoint(tmp_path: Path, model: DenseUNet, monkeypatch) -> None:
    path = C.save_training_checkpoint(tmp_path / "last.pt", model, model_config=CFG, extra={"training": {"epoch": 1}})
    before = path.read_bytes()

    def broken_save(obj, f, *args, **kwargs):  # a crash halfway through the write
        Path(f).write_bytes(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError):
        C.save_training_checkpoint(path, model, model_config=CFG, extra={"training": {"epoch": 2}})
    assert path.read_bytes() == before
    assert not [p for p in tmp_path.iterdir() if p.name != "last.pt"]


def test_model_only_checkpoint_cannot_resume(tmp_path: Path, model: DenseUNet) -> None:
    path = save_checkpoint(tmp_path / "model.pt", model, model_config=CFG)
    with pytest.raises(InputError, match="without training state"):
        C.load_training_checkpoint(path)
    assert C.find_resume_checkpoint(path) == path
    with pytest.raises(InputError, match="does not exist"):
        C.find_resume_checkpoint(tmp_path / "missing")


def test_resume_refuses_other_settings(tmp_path: Path) -> None:
    from covidseg.config import load_config
    from covidseg.errors import ConfigError

    config = load_config(overrides=["preprocess.slice_size=[64, 64]"])
    ckpt = {
        "config": config.to_yaml_dict(),
        "model_config": config.model.to_unet_config().to_dict(),
        "preprocessing": config.preprocess.to_preprocess_config().to_dict(),
    }
    C.check_resume_compatible(config, ckpt, tmp_path / "last.pt")
    other = load_config(overrides=["preprocess.slice_size=[96, 96]", "optim.name=sgd"])
    with pytest.raises(ConfigError, match=r"other settings \(preprocess, optim.name\)"):
        C.check_resume_compatible(other, ckpt, tmp_path / "last.pt")
