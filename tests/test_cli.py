"""The command line as a user meets it: help, info, phantom, preprocess, demo, and every bad input."""

import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from typer.testing import CliRunner

from covidseg.cli import app

runner = CliRunner()


def _ct(path: Path, shape=(32, 40, 6), seed=0) -> Path:
    rng = np.random.default_rng(seed)
    hu = rng.integers(-1024, 400, size=shape).astype(np.int16)
    affine = np.diag([0.8, 0.8, 2.5, 1.0])
    nib.save(nib.Nifti1Image(hu, affine), path)
    return path


def _listing(folder: Path) -> set[str]:
    return {p.name for p in folder.rglob("*")}


def test_help_lists_commands():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for name in ("info", "phantom", "preprocess", "demo"):
        assert name in result.output


@pytest.mark.parametrize("name", ["info", "phantom", "preprocess", "demo"])
def test_command_help(name):
    result = runner.invoke(app, [name, "--help"])
    assert result.exit_code == 0
    assert "Example:" in result.output


def test_info_json_reports_geometry_and_hu(tmp_path):
    scan = _ct(tmp_path / "scan.nii.gz")
    result = runner.invoke(app, ["info", str(scan), "--json"])
    assert result.exit_code == 0, result.output
    facts = json.loads(result.output)
    assert facts["format"] == "nifti"
    assert list(facts["spacing_mm"]) == pytest.approx([2.5, 0.8, 0.8])
    assert facts["looks_like_hu"] is True


def test_info_table(tmp_path):
    scan = _ct(tmp_path / "scan.nii.gz")
    result = runner.invoke(app, ["info", str(scan)])
    assert result.exit_code == 0, result.output
    assert "nifti" in result.output


def test_preprocess_writes_float16_slices_and_preview(tmp_path):
    scan = _ct(tmp_path / "scan.nii.gz")
    out = tmp_path / "slices.npy"
    result = runner.invoke(
        app, ["preprocess", str(scan), "-o", str(out), "--size", "64", "64", "--preview", str(tmp_path / "p.png")]
    )
    assert result.exit_code == 0, result.output
    slices = np.load(out)
    assert slices.shape == (6, 64, 64) and slices.dtype == np.float16
    assert slices.min() >= 0.0 and slices.max() <= 1.0
    assert (tmp_path / "p.png").stat().st_size > 1000


def test_preprocess_refuses_to_overwrite(tmp_path):
    scan = _ct(tmp_path / "scan.nii.gz")
    out = tmp_path / "slices.npy"
    out.write_bytes(b"keep me")
    result = runner.invoke(app, ["preprocess", str(scan), "-o", str(out), "--size", "64", "64"])
    assert result.exit_code == 2
    assert "--overwrite" in result.output
    assert out.read_bytes() == b"keep me"
    result = runner.invoke(app, ["preprocess", str(scan), "-o", str(out), "--size", "64", "64", "--overwrite"])
    assert result.exit_code == 0, result.output
    assert np.load(out).shape == (6, 64, 64)


def _bad_inputs(tmp_path: Path) -> dict[str, Path]:
    good = _ct(tmp_path / "good.nii.gz")
    empty = tmp_path / "empty.nii.gz"
    empty.write_bytes(b"")
    truncated = tmp_path / "truncated.nii.gz"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    no_dicom = tmp_path / "no_dicom"
    no_dicom.mkdir()
    (no_dicom / "notes.txt").write_text("not a dicom")
    flat = tmp_path / "flat.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((32, 32), np.int16), np.eye(4)), flat)
    four_d = tmp_path / "four_d.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((16, 16, 4, 3), np.int16), np.eye(4)), four_d)
    nan = tmp_path / "nan.nii.gz"
    data = np.full((16, 16, 4), -500.0, np.float32)
    data[3, 3, 1] = np.nan
    nib.save(nib.Nifti1Image(data, np.eye(4)), nan)
    windowed = tmp_path / "windowed.nii.gz"
    rng = np.random.default_rng(1)
    nib.save(nib.Nifti1Image(rng.integers(0, 256, (16, 16, 4)).astype(np.uint8), np.eye(4)), windowed)
    return {
        "missing": tmp_path / "does_not_exist.nii.gz",
        "empty": empty,
        "truncated": truncated,
        "no_dicom": no_dicom,
        "2d": flat,
        "4d": four_d,
        "nan": nan,
        "0..255": windowed,
    }


BAD = ["missing", "empty", "truncated", "no_dicom", "2d", "4d", "nan", "0..255"]


@pytest.mark.parametrize("kind", BAD)
def test_bad_input_one_line_exit_2_nothing_written(tmp_path, kind):
    scan = _bad_inputs(tmp_path)[kind]
    before = _listing(tmp_path)
    out = tmp_path / "out.npy"
    result = runner.invoke(app, ["preprocess", str(scan), "-o", str(out)])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert "Traceback" not in result.output
    assert _listing(tmp_path) == before


def test_windowed_volume_proceeds_with_assume_hu(tmp_path):
    scan = _bad_inputs(tmp_path)["0..255"]
    result = runner.invoke(app, ["info", str(scan), "--assume-hu", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["looks_like_hu"] is False


def test_real_subprocess_has_no_traceback(tmp_path):
    """Through the installed entry point, as a user runs it."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(
        [sys.executable, "-m", "covidseg", "info", str(tmp_path / "nope.nii.gz")],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("error: ")
    assert "nope.nii.gz" in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout


def test_version():
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output.startswith("covidseg ")


def test_threads_option_sets_torch_threads(tmp_path):
    import torch

    before = torch.get_num_threads()
    try:
        result = runner.invoke(app, ["--threads", "1", "info", str(_ct(tmp_path / "ct.nii.gz")), "--json"])
        assert result.exit_code == 0, result.output
        assert torch.get_num_threads() == 1
        torch.set_num_threads(before)
        result = runner.invoke(app, ["info", str(tmp_path / "ct.nii.gz")], env={"COVIDSEG_THREADS": "1"})
        assert result.exit_code == 0 and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    bad = runner.invoke(app, ["--threads", "0", "info", str(tmp_path / "ct.nii.gz")])
    assert bad.exit_code == 2 and "--threads" in bad.output


def _dicom_volume(n_slices: int, seed: int = 0):
    from covidseg.io import CTVolume, canonical_affine

    rng = np.random.default_rng(seed)
    hu = rng.integers(-1024, 300, size=(n_slices, 24, 20)).astype(np.int16)
    return CTVolume.from_canonical(hu, canonical_affine((2.0, 0.7, 0.7), (0.0, 0.0, 0.0)))


def test_dicom_two_series_of_equal_size_asks_for_series(tmp_path):
    from covidseg.io import write_dicom_series

    folder = tmp_path / "study"
    write_dicom_series(_dicom_volume(4, 0), folder / "a", series_uid="1.2.826.0.1.3680043.8.498.1")
    write_dicom_series(_dicom_volume(4, 1), folder / "b", series_uid="1.2.826.0.1.3680043.8.498.2")
    result = runner.invoke(app, ["info", str(folder), "--json"])
    assert result.exit_code == 2
    assert "--series" in result.output and len(result.output.strip().splitlines()) == 1
    result = runner.invoke(app, ["info", str(folder), "--json", "--series", "1.2.826.0.1.3680043.8.498.2"])
    assert result.exit_code == 0, result.output


def test_dicom_two_series_uses_larger_and_says_so(tmp_path):
    from covidseg.io import write_dicom_series

    folder = tmp_path / "study"
    write_dicom_series(_dicom_volume(5, 0), folder / "a")
    write_dicom_series(_dicom_volume(3, 1), folder / "b")
    out = tmp_path / "x.npy"
    result = runner.invoke(app, ["preprocess", str(folder), "-o", str(out), "--size", "32", "32"])
    assert result.exit_code == 0, result.output
    assert "warning: 2 series found" in result.output
    assert np.load(out).shape == (5, 32, 32)


def test_dicom_mr_series_is_refused_with_the_flag_to_proceed(tmp_path):
    from covidseg.io import write_dicom_series

    folder = tmp_path / "mr"
    write_dicom_series(_dicom_volume(3), folder, modality="MR")
    result = runner.invoke(app, ["info", str(folder)])
    assert result.exit_code == 2 and "--allow-non-ct" in result.output
    assert not list(tmp_path.glob("*.npy"))
    result = runner.invoke(app, ["info", str(folder), "--allow-non-ct", "--json"])
    assert result.exit_code == 0, result.output
