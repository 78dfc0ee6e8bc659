from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

import covidseg
from covidseg.errors import ConfigError, InputError, OutputExistsError
from covidseg.model import checkpoint as ckpt_module
from covidseg.model.checkpoint import (
    CHECKPOINT_FORMAT,
    FORMAT_VERSION,
    build_model_from_checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from covidseg.model.unet import DenseUNet, UNetConfig

REPO = Path(__file__).resolve().parents[2]
CFG = UNetConfig(class_names=("background", "opacity"))


@pytest.fixture(scope="module")
def trained() -> DenseUNet:
    torch.manual_seed(2)
    model = DenseUNet(CFG)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.5, 1.5)
    return model.eval()


def test_round_trip_reproduces_outputs(tmp_path: Path, trained: DenseUNet) -> None:
    theta = {"encoder.conv0.weight": torch.ones(2)}
    path = save_checkpoint(tmp_path / "m.pt", trained, model_config=CFG, extra={"epoch": 5, "theta_bar": theta})
    raw = torch.load(path, map_location="cpu", weights_only=True)
    assert raw["format"] == CHECKPOINT_FORMAT and raw["format_version"] == FORMAT_VERSION
    assert raw["covidseg_version"] == covidseg.__version__
    assert raw["model_config"] == CFG.to_dict()
    assert raw["epoch"] == 5 and torch.equal(raw["theta_bar"]["encoder.conv0.weight"], torch.ones(2))
    assert set(raw["state_dict"]) == set(trained.state_dict())
    loaded = load_checkpoint(path)
    rebuilt = build_model_from_checkpoint(path)
    assert not rebuilt.training
    assert rebuilt.config == CFG
    x = torch.rand(1, 1, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x), trained(x), rtol=0, atol=0)
        torch.testing.assert_close(build_model_from_checkpoint(loaded)(x), trained(x), rtol=0, atol=0)


def test_wrapped_model_saves_plain_keys(tmp_path: Path, trained: DenseUNet) -> None:
    path = save_checkpoint(tmp_path / "dp.pt", torch.nn.DataParallel(trained), model_config=CFG.to_dict())
    keys = list(load_checkpoint(path)["state_dict"])
    assert keys == list(trained.state_dict())


def test_refuses_overwrite_unless_asked(tmp_path: Path, trained: DenseUNet) -> None:
    path = tmp_path / "m.pt"
    save_checkpoint(path, trained, model_config=CFG, extra={"epoch": 1})
    with pytest.raises(OutputExistsError):
        save_checkpoint(path, trained, model_config=CFG, extra={"epoch": 2})
    assert load_checkpoint(path)["epoch"] == 1
    save_checkpoint(path, trained, model_config=CFG, extra={"epoch": 2}, overwrite=True)
    assert load_checkpoint(path)["epoch"] == 2


def test_failed_write_leaves_old_file_and_no_temp(
    tmp_path: Path, trained: DenseUNet, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "m.pt"
    save_checkpoint(path, trained, model_config=CFG, extra={"epoch": 1})

    def interrupted_save(obj: object, f: Path) -> None:
        Path(f).write_bytes(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(ckpt_module.torch, "save", interrupted_save)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, trained, model_config=CFG, extra={"epoch": 2}, overwrite=True)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(tmp_path / "new.pt", trained, model_config=CFG)
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.pt"]
    assert load_checkpoint(path)["epoch"] == 1


def test_killed_mid_write_leaves_no_checkpoint(tmp_path: Path) -> None:
    target = tmp_path / "killed.pt"
    script = textwrap.dedent(
        f"""
        import time, torch
        from pathlib import Path
        from covidseg.model import checkpoint
        from covidseg.model.unet import DenseUNet, UNetConfig

        def slow_save(obj, f):
            Path(f).write_bytes(b"half a checkpoint")
            time.sleep(60)

        checkpoint.torch.save = slow_save
        cfg = UNetConfig(decoder_channels=(8, 8, 8, 8, 8))
        checkpoint.save_checkpoint({str(target)!r}, DenseUNet(cfg), model_config=cfg)
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=REPO)
    try:
        deadline = time.monotonic() + 60
        while not any(p.name.startswith(".killed.pt.") for p in tmp_path.iterdir()):
            assert proc.poll() is None, "writer exited before writing"
            assert time.monotonic() < deadline, "writer never started writing"
            time.sleep(0.1)
        time.sleep(0.2)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    assert not target.exists()
    with pytest.raises(InputError, match="does not exist"):
        load_checkpoint(target)


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ({"epoch": 1}, r"is not a covidseg checkpoint: found a dict with keys \['epoch'\]"),
        (torch.zeros(2, 3), r"is not a covidseg checkpoint: found a tensor of shape \[2, 3\]"),
        ({"format": CHECKPOINT_FORMAT, "format_version": 99}, r"format version 99, newer .*upgrade covidseg"),
        ({"format": CHECKPOINT_FORMAT, "format_version": "1"}, r"invalid format_version '1'"),
        ({"format": CHECKPOINT_FORMAT, "format_version": 1, "model_config": {}}, r"missing \['state_dict'\]"),
        (
            {"format": CHECKPOINT_FORMAT, "format_version": 1, "model_config": {"depth": 3}, "state_dict": {}},
            r"invalid model_config: unknown model config keys \['depth'\]",
        ),
        (
            {"format": CHECKPOINT_FORMAT, "format_version": 1, "model_config": {}, "state_dict": {"a": 1}},
            r"state_dict that is not a dict of tensors",
        ),
    ],
)
def test_invalid_files_name_what_was_found(tmp_path: Path, content: object, match: str) -> None:
    path = tmp_path / "bad.pt"
    torch.save(content, path)
    with pytest.raises(InputError, match=match):
        load_checkpoint(path)


def test_damaged_state_dict(tmp_path: Path, trained: DenseUNet) -> None:
    path = save_checkpoint(tmp_path / "m.pt", trained, model_config=CFG)
    ckpt = load_checkpoint(path)
    del ckpt["state_dict"]["head.bias"]
    with pytest.raises(InputError, match="does not match its model_config"):
        build_model_from_checkpoint(ckpt)


def test_save_validates_config_and_extra(tmp_path: Path, trained: DenseUNet) -> None:
    with pytest.raises(ConfigError, match="does not describe the model"):
        save_checkpoint(tmp_path / "a.pt", trained, model_config=UNetConfig())
    with pytest.raises(ConfigError, match=r"extra checkpoint keys \['state_dict'\] are reserved"):
        save_checkpoint(tmp_path / "a.pt", trained, model_config=CFG, extra={"state_dict": {}})
    with pytest.raises(ConfigError, match=r"extra\['history'\]\[1\] is a object"):
        save_checkpoint(tmp_path / "a.pt", trained, model_config=CFG, extra={"history": [1, object()]})
    assert not any(tmp_path.iterdir())
