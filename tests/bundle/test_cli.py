"""``covidseg export-bundle`` as a user meets it: help, success, and one-line exit-2 errors."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from covidseg.cli import app

runner = CliRunner()


def _error_line(result) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    return lines[0]


def test_help():
    result = runner.invoke(app, ["export-bundle", "--help"])
    assert result.exit_code == 0
    for text in ("--model", "--out", "--overwrite", "--version", "--name", "monai.bundle run"):
        assert text in result.output
    assert "export-bundle" in runner.invoke(app, ["--help"]).output


def test_export_and_verify(tmp_path, checkpoint):
    out = tmp_path / "bundle"
    result = runner.invoke(app, ["export-bundle", "--model", str(checkpoint), "--out", str(out), "--version", "2.0.1"])
    assert result.exit_code == 0, result.output
    assert f"bundle: {out}" in result.stdout
    assert "verified: verify_metadata, verify_net_in_out" in result.stdout
    assert json.loads((out / "configs" / "metadata.json").read_text())["version"] == "2.0.1"
    again = runner.invoke(app, ["export-bundle", "-m", str(checkpoint), "-o", str(out), "--no-verify"])
    assert again.exit_code == 2 and "--overwrite" in _error_line(again)
    replaced = runner.invoke(
        app, ["export-bundle", "-m", str(checkpoint), "-o", str(out), "--overwrite", "--no-verify"]
    )
    assert replaced.exit_code == 0 and "verified" not in replaced.stdout


def test_missing_checkpoint(tmp_path):
    result = runner.invoke(app, ["export-bundle", "--model", str(tmp_path / "none.pt"), "--out", str(tmp_path / "b")])
    assert result.exit_code == 2
    assert "does not exist" in _error_line(result)
    assert not (tmp_path / "b").exists()


def test_checkpoint_without_preprocessing(tmp_path, checkpoint):
    import torch

    data = torch.load(checkpoint, weights_only=True)
    del data["preprocessing"]
    broken = tmp_path / "old.pt"
    torch.save(data, broken)
    result = runner.invoke(app, ["export-bundle", "-m", str(broken), "-o", str(tmp_path / "b")])
    assert result.exit_code == 2
    assert "records no preprocessing" in _error_line(result)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old.pt"]


def test_bad_version(tmp_path, checkpoint):
    result = runner.invoke(app, ["export-bundle", "-m", str(checkpoint), "-o", str(tmp_path / "b"), "--version", "v1"])
    assert result.exit_code == 2
    assert "major.minor.patch" in _error_line(result)
