"""The ``covidseg pretrain`` and ``covidseg sweep`` commands: one-line errors, a source for train, retraining."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from covidseg.cli import app
from covidseg.config import apply_overrides
from tests.train.synth import TINY_DECODER, tiny_overrides, volumes_dataset


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return volumes_dataset(tmp_path_factory.mktemp("data"), 3)


def _one_line_error(output: str) -> str:
    lines = [line for line in output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), output
    return lines[0]


def test_pretrain_errors_are_one_line(tmp_path: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(app, ["pretrain"])
    assert result.exit_code == 2 and "needs --config" in _one_line_error(result.output)
    config = tmp_path / "p.yaml"
    config.write_text("tasks: [{name: a, data: {layout: phantom}, colour: red}]\n")
    result = runner.invoke(app, ["pretrain", "-c", str(config)])
    assert result.exit_code == 2 and "unknown key 'tasks.0.colour'" in _one_line_error(result.output)
    result = runner.invoke(app, ["pretrain", "--resume", str(tmp_path)])
    assert result.exit_code == 2 and "not a pretrain run folder" in _one_line_error(result.output)


def test_pretrain_output_is_a_source_for_train(tmp_path: Path, data_root: Path) -> None:
    config = tmp_path / "p.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "tasks": [{"name": "toy", "data": {"layout": "volumes", "root": str(data_root), "val_fraction": 0.34}}],
                "preprocess": {"slice_size": [64, 64]},
                "model": {"decoder_channels": yaml.safe_load(TINY_DECODER)},
                "augment": {"enabled": False},
                "train": {"epochs": 1, "batch_size": 2, "steps_per_epoch": 1, "device": "cpu"},
                "output": {"root": str(tmp_path / "runs"), "name": "pre", "tensorboard": False},
            }
        )
    )
    out = tmp_path / "source.pt"
    runner = CliRunner()
    result = runner.invoke(app, ["pretrain", "-c", str(config), "-o", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    assert f"source checkpoint: {out}" in result.output and out.is_file()
    again = runner.invoke(app, ["pretrain", "-c", str(config), "-o", str(out), "--set", "output.name=pre2"])
    assert again.exit_code == 2 and "--overwrite" in _one_line_error(again.output)
    train_cfg = tmp_path / "t.yaml"
    overrides = [*tiny_overrides(tmp_path / "ft", data_root), "train.epochs=1", "train.steps_per_epoch=1"]
    train_cfg.write_text(yaml.safe_dump(apply_overrides({}, overrides)))
    trained = runner.invoke(app, ["train", "-c", str(train_cfg), "--source", str(out)])
    assert trained.exit_code == 0, trained.output
    shown = " ".join(trained.output.split())  # rich wraps long lines
    assert "loaded 797 tensors (encoder 725) from a covidseg-checkpoint; missing 0 (encoder 0, decoder/head 0)" in shown


def test_sweep_cli_retrains_the_best(tmp_path: Path, data_root: Path) -> None:
    runner = CliRunner()
    bad = tmp_path / "bad.yaml"
    bad.write_text("base: [b.yaml]\ngrid: {lambda0: [1.0]}\n")
    result = runner.invoke(app, ["sweep", "-c", str(bad)])
    assert result.exit_code == 2 and "go together" in _one_line_error(result.output)
    (tmp_path / "base.yaml").write_text("output: {tensorboard: false}\n")
    sets = [o for o in tiny_overrides(tmp_path, data_root) if not o.startswith("output.")]
    spec = tmp_path / "sweep.yaml"
    spec.write_text(
        yaml.safe_dump(
            {
                "base": ["base.yaml"],
                "set": [*sets, "train.epochs=1", "train.steps_per_epoch=1"],
                "grid": {"lambda0": [20.0], "alpha": [1.5]},
            }
        )
    )
    no_source = runner.invoke(app, ["sweep", "-c", str(spec), "-o", str(tmp_path / "out")])
    assert no_source.exit_code == 2 and "source.path" in _one_line_error(no_source.output)
    source = tmp_path / "src.pt"
    import torch

    from covidseg.model import DenseUNet, UNetConfig

    torch.save(DenseUNet(UNetConfig(decoder_channels=(16, 16, 16, 16, 16))).state_dict(), source)
    args = ["sweep", "-c", str(spec), "-o", str(tmp_path / "out"), "--set", f"source.path={source}", "--quiet"]
    result = runner.invoke(app, [*args, "--retrain-epochs", "2"])
    assert result.exit_code == 0, result.output
    assert "best: layerwise_l0-20_a-1.5 dice_opacity" in result.output and "retrained:" in result.output
    retrained = tmp_path / "out" / "best-retrained"
    assert (retrained / "sweep_result.json").is_file()
    assert yaml.safe_load((retrained / "config.yaml").read_text())["train"]["epochs"] == 2
