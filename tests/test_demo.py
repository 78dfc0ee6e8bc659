"""The README's main command (covidseg demo) and the phantom command, as a user runs them."""

import numpy as np
from typer.testing import CliRunner

from covidseg.cli import app
from covidseg.io import load_ct

runner = CliRunner()


def test_demo_writes_everything_and_refuses_to_overwrite(tmp_path):
    out = tmp_path / "demo"
    result = runner.invoke(app, ["demo", "--out", str(out)])
    assert result.exit_code == 0, result.output
    scan = load_ct(out / "phantom.nii.gz")
    slices = np.load(out / "phantom_preprocessed.npy")
    assert slices.shape == (scan.shape[0], 384, 384)
    assert (out / "phantom_montage.png").stat().st_size > 10_000
    result = runner.invoke(app, ["demo", "--out", str(out)])
    assert result.exit_code == 2 and "--overwrite" in result.output
    result = runner.invoke(app, ["demo", "--out", str(out), "--overwrite"])
    assert result.exit_code == 0, result.output
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folders left


def test_phantom_command_writes_nifti_and_dicom(tmp_path):
    result = runner.invoke(
        app,
        [
            "phantom",
            str(tmp_path),
            "--shape",
            "8",
            "64",
            "64",
            "--spacing",
            "10",
            "5",
            "5",
            "--format",
            "nifti",
            "--format",
            "dicom",
            "--seed",
            "2",
        ],
    )
    assert result.exit_code == 0, result.output
    nifti, dicom = load_ct(tmp_path / "phantom.nii.gz"), load_ct(tmp_path / "phantom_dicom")
    np.testing.assert_array_equal(nifti.hu, dicom.hu)
    np.testing.assert_allclose(nifti.affine, dicom.affine, atol=1e-4)
    assert (tmp_path / "phantom_montage.png").exists()


def test_phantom_command_rejects_unknown_format(tmp_path):
    result = runner.invoke(app, ["phantom", str(tmp_path), "--format", "jpeg"])
    assert result.exit_code == 2 and "nifti" in result.output
    assert not list(tmp_path.iterdir())
