from __future__ import annotations

import csv
import os
import subprocess
import sys
import time
from pathlib import Path

import torch
import yaml
from typer.testing import CliRunner

from covidseg.cli import app
from covidseg.config import apply_overrides
from tests.train.synth import tiny_overrides, volumes_dataset

REPO = Path(__file__).parents[2]
KILL_TIMEOUT_S = 240


def _write_config(path: Path, overrides: list[str]) -> Path:
    path.write_text(yaml.safe_dump(apply_overrides({}, overrides)))
    return path


def test_cli_bad_dataset_is_one_line_exit_2(tmp_path: Path) -> None:
    root = volumes_dataset(tmp_path / "data", 3)
    (root / "labels" / "case02.nii.gz").unlink()
    config = _write_config(tmp_path / "run.yaml", tiny_overrides(tmp_path, root))
    result = CliRunner().invoke(app, ["train", "--config", str(config), "--quiet"])
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: case case02") and "no label file" in lines[0]
    assert not (tmp_path / "runs").exists()


def test_cli_bad_key_is_one_line_exit_2(tmp_path: Path, dataset_root: Path) -> None:
    config = _write_config(tmp_path / "run.yaml", tiny_overrides(tmp_path, dataset_root))
    result = CliRunner().invoke(app, ["train", "-c", str(config), "--set", "train.epoch=3"])
    assert result.exit_code == 2
    assert "unknown key 'train.epoch'" in result.output and len(result.output.strip().splitlines()) == 1


def _checkpoints_load(run_dir: Path) -> list[str]:
    names = []
    for path in sorted(run_dir.glob("*.pt")):
        torch.load(path, weights_only=True)  # raises on a truncated file
        names.append(path.name)
    return names


def test_sigkill_mid_epoch_then_resume(tmp_path: Path, dataset_root: Path, cache_dir: Path) -> None:
    overrides = [*tiny_overrides(tmp_path, dataset_root, cache_dir), "train.epochs=4", "train.steps_per_epoch=3"]
    config = _write_config(tmp_path / "run.yaml", overrides)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    command = [sys.executable, "-m", "covidseg", "train", "--config", str(config), "--quiet"]
    run_dir = tmp_path / "runs" / "run"
    proc = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + KILL_TIMEOUT_S
    while not (run_dir / "last.pt").exists():
        assert proc.poll() is None, proc.stdout.read().decode() if proc.stdout else ""
        assert time.monotonic() < deadline, "no checkpoint before the timeout"
        time.sleep(0.05)
    time.sleep(0.3)  # into the next epoch
    proc.kill()  # SIGKILL
    proc.wait()
    assert proc.returncode == -9
    killed_at = torch.load(run_dir / "last.pt", weights_only=True)["training"]["epoch"]
    assert 1 <= killed_at < 4
    assert "last.pt" in _checkpoints_load(run_dir)

    resumed = subprocess.run(
        [sys.executable, "-m", "covidseg", "train", "--resume", str(run_dir), "--quiet"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=KILL_TIMEOUT_S,
    )
    assert resumed.returncode == 0, resumed.stderr
    assert f"run: {run_dir}" in resumed.stdout and "best validation dice_opacity" in resumed.stdout
    assert set(_checkpoints_load(run_dir)) == {"last.pt", "best.pt"}
    assert not [p.name for p in run_dir.iterdir() if p.name.startswith(".")]  # no temporaries left
    assert torch.load(run_dir / "last.pt", weights_only=True)["training"]["epoch"] == 4
    with open(run_dir / "metrics.csv") as f:
        assert [int(row["epoch"]) for row in csv.DictReader(f)] == [1, 2, 3, 4]
