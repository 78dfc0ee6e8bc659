"""The evaluation commands end to end through typer, registered as covidseg.cli registers commands."""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import typer
from typer.testing import CliRunner

from covidseg import cli_eval
from covidseg.cli_common import user_errors
from covidseg.evaluate.scores import CaseEval
from covidseg.io import CTVolume, canonical_affine, save_volume
from covidseg.model import DenseUNet, UNetConfig, save_checkpoint
from tests.evaluate.synth import SPACING, cube_labels, write_map

app = typer.Typer(pretty_exceptions_enable=False, add_completion=False)


def command(name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    def decorator(fn: Callable[..., Any]) -> Callable[..., Any]:
        app.command(name)(user_errors(fn))
        return fn

    return decorator


command("evaluate")(cli_eval.evaluate)
command("compare")(cli_eval.compare)
command("figure-drift")(cli_eval.figure_drift)
command("figure-overlays")(cli_eval.figure_overlays)


def run(*args: str | Path) -> Any:
    return CliRunner().invoke(app, [str(a) for a in args])


def one_error_line(result: Any, *fragments: str) -> None:
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


@pytest.fixture()
def folders(tmp_path: Path) -> tuple[Path, Path]:
    """Three cases: perfect, opacity shifted by 5 of 10 columns, and no opacity predicted."""
    pred, ref = tmp_path / "pred", tmp_path / "ref"
    for name, labels in (("c1", cube_labels()), ("c2", cube_labels(shift=5)), ("c3", cube_labels().clip(0, 1))):
        write_map(labels, pred / f"{name}_labels.nii.gz")
        write_map(cube_labels(), ref / f"{name}.nii.gz")
    return pred, ref


def test_evaluate_writes_per_case_and_summary(folders: tuple[Path, Path], tmp_path: Path) -> None:
    pred, ref = folders
    out = tmp_path / "eval"
    result = run("evaluate", pred, ref, "-o", out, "--quiet")
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader((out / "per_case.csv").open()))
    assert [r["case_id"] for r in rows] == ["c1", "c2", "c3"]
    assert [float(r["opacity_dice"]) for r in rows] == [1.0, 0.5, 0.0]
    assert [float(r["lung_dice"]) for r in rows] == [1.0, 1.0, 1.0]
    assert rows[0]["volume_unit"] == "mL"
    assert float(rows[2]["opacity_volume_ref"]) == pytest.approx(400 * np.prod(SPACING) / 1000, rel=1e-6)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_cases"] == 3 and summary["structures"]["opacity"]["dice"]["mean"] == pytest.approx(0.5)
    assert summary["structures"]["opacity"]["dice"]["median"] == pytest.approx(0.5)
    assert summary["pooled"]["opacity"]["tp"] == 400 + 200
    assert summary["reference_labels"].startswith("multiclass")
    # again without --overwrite: one line, exit 2, files unchanged; with it: replaced
    before = (out / "summary.json").read_text()
    one_error_line(run("evaluate", pred, ref, "-o", out, "--quiet"), "already exists", "--overwrite")
    assert (out / "summary.json").read_text() == before
    assert run("evaluate", pred, ref, "-o", out, "--quiet", "--overwrite").exit_code == 0


def test_evaluate_prints_a_table(folders: tuple[Path, Path], tmp_path: Path) -> None:
    pred, ref = folders
    result = run("evaluate", pred, ref, "-o", tmp_path / "eval")
    assert result.exit_code == 0, result.output
    assert "opacity" in result.output and "dice" in result.output and "pooled" in result.output


def test_evaluate_bad_inputs_are_one_line_and_write_nothing(folders: tuple[Path, Path], tmp_path: Path) -> None:
    pred, ref = folders
    out = tmp_path / "eval"
    (pred / "c3_labels.nii.gz").unlink()
    write_map(cube_labels()[:, :, :-2], pred / "c3_labels.nii.gz")  # the last case: another shape
    one_error_line(run("evaluate", pred, ref, "-o", out, "-q"), "c3_labels.nii.gz has shape (8, 24, 30)")
    assert not out.exists() or not any(out.iterdir())
    write_map(cube_labels(), pred / "c4_labels.nii.gz")
    (pred / "c3_labels.nii.gz").unlink()
    one_error_line(run("evaluate", pred, ref, "-o", out, "-q"), "(c4)", "(c3)", "--allow-missing")
    allowed = run("evaluate", pred, ref, "-o", out, "-q", "--allow-missing")
    assert allowed.exit_code == 0 and "left out" in allowed.output
    assert json.loads((out / "summary.json").read_text())["missing"] == {
        "prediction_only": ["c4"],
        "reference_only": ["c3"],
    }
    one_error_line(run("evaluate", pred, tmp_path / "nowhere", "-o", tmp_path / "e2"), "no such file or folder")
    one_error_line(run("evaluate", pred, ref, "--ref-labels", "rgb", "-o", tmp_path / "e2"), "--ref-labels 'rgb'")
    one_error_line(run("evaluate", "-o", tmp_path / "e2"), "pass PRED and REF")
    one_error_line(run("evaluate", pred, ref, "--checkpoint", tmp_path / "m.pt"), "not both")
    one_error_line(run("evaluate", "--checkpoint", tmp_path / "m.pt"), "--checkpoint needs --config")
    assert not (tmp_path / "e2").exists()


def test_evaluate_checkpoint_mode_passes_options(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    calls: list[tuple[Any, ...]] = []

    def fake(checkpoint: Path, config: Path, split: str, **kwargs: Any) -> list[CaseEval]:
        calls.append((checkpoint, config, split, kwargs))
        return [CaseEval("case07", np.diag([50, 10, 5]), True, n_slices=4, voxel_volume=0.01, volume_unit="mL")]

    monkeypatch.setattr("covidseg.evaluate.checkpoint_eval.evaluate_checkpoint", fake)
    out = tmp_path / "eval"
    args = ["--checkpoint", tmp_path / "best.pt", "--config", tmp_path, "--split", "val", "--device", "cpu"]
    result = run("evaluate", *args, "-o", out, "-q")
    assert result.exit_code == 0, result.output
    ((ckpt, config, split, kwargs),) = calls
    assert (ckpt, config, split, kwargs["device"]) == (tmp_path / "best.pt", tmp_path, "val", "cpu")
    summary = json.loads((out / "summary.json").read_text())
    assert summary["split"] == "val" and summary["structures"]["opacity"]["volume_ref"]["mean"] == 0.05


def test_compare(folders: tuple[Path, Path], tmp_path: Path) -> None:
    pred, ref = folders
    assert run("evaluate", pred, ref, "-o", tmp_path / "a", "-q").exit_code == 0
    same = run("compare", tmp_path / "a", tmp_path / "a" / "per_case.csv", "--n-bootstrap", "200")
    assert same.exit_code == 0, same.output
    report = json.loads(same.output)
    assert report["p_value"] == 1.0 and report["ties"] == 3 and report["difference"] == "b - a"
    # run B: every case perfect
    assert run("evaluate", ref, ref, "-o", tmp_path / "b", "-q").exit_code == 0
    out = tmp_path / "cmp.json"
    better = run("compare", tmp_path / "a", tmp_path / "b", "--n-bootstrap", "500", "-o", out)
    assert better.exit_code == 0, better.output
    report = json.loads(out.read_text())
    assert report["mean_difference"] == pytest.approx(0.5) and report["wins"] == 2 and report["ties"] == 1
    assert report["ci_low"] >= 0.0 and report["ci_high"] <= 1.0
    one_error_line(run("compare", tmp_path / "a", tmp_path / "b", "-o", out), "already exists")
    one_error_line(run("compare", tmp_path / "a", tmp_path / "b", "--metric", "hd95"), "no column 'hd95'")
    rows = (tmp_path / "b" / "per_case.csv").read_text().splitlines()
    (tmp_path / "b" / "per_case.csv").write_text("\n".join(rows[:-1]) + "\n")  # drop c3 from run B
    one_error_line(run("compare", tmp_path / "a", tmp_path / "b"), "1 only in A", "--allow-missing")
    dropped = run("compare", tmp_path / "a", tmp_path / "b", "--allow-missing", "--n-bootstrap", "100")
    assert dropped.exit_code == 0 and "1 case(s) scored by one run only were dropped" in dropped.output


def test_figure_overlays(tmp_path: Path) -> None:
    labels = cube_labels()
    hu = np.where(labels > 0, -800, 40).astype(np.int16)
    save_volume(hu, CTVolume.from_canonical(hu, canonical_affine(SPACING, (10.0, -20.0, 5.0))), tmp_path / "ct.nii.gz")
    ref = write_map(labels, tmp_path / "ct_ref.nii.gz")
    a = write_map(labels, tmp_path / "a" / "ct_labels.nii.gz")
    b = write_map(cube_labels(shift=3), tmp_path / "b" / "ct_labels.nii.gz")
    out = tmp_path / "fig2.png"
    args = ["--image", tmp_path / "ct.nii.gz", "--ref", ref, "--ref-labels", "multiclass", "--n-slices", "2"]
    result = run("figure-overlays", a, b, *args, "-o", out)
    assert result.exit_code == 0, result.output
    assert "slices: 2, 3" in result.output and out.is_file()
    one_error_line(run("figure-overlays", a, b, *args, "-o", out), "already exists")
    two_labels = ["--label", "x", "--label", "y"]
    one_error_line(run("figure-overlays", a, *args, *two_labels, "-o", tmp_path / "f.png"), "one per")
    one_error_line(run("figure-overlays", a, *args, "--slices", "40", "-o", tmp_path / "f.png"), "outside")
    assert not (tmp_path / "f.png").exists()


def test_figure_drift(tmp_path: Path) -> None:
    config = UNetConfig(decoder_channels=(8, 8, 8, 8, 8))
    torch.manual_seed(0)
    model = DenseUNet(config)
    save_checkpoint(tmp_path / "source.pt", model, model_config=config)
    with torch.no_grad():
        model.encoder.conv0.weight.mul_(1.2)
    save_checkpoint(tmp_path / "run" / "best.pt", model, model_config=config)
    out = tmp_path / "fig1.png"
    result = run("figure-drift", tmp_path / "run", "--source", tmp_path / "source.pt", "-o", out)
    assert result.exit_code == 0, result.output
    assert "run: 120 layers" in result.output and out.is_file()
    missing = run("figure-drift", tmp_path / "nothing", "--source", tmp_path / "source.pt", "-o", tmp_path / "x.png")
    one_error_line(missing, "no such checkpoint or run folder")
