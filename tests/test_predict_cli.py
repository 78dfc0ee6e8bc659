"""``covidseg predict`` as a user meets it: a real checkpoint, batch with a bad file, shards, refusals, real CT."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from covidseg.cli import app
from covidseg.data.preprocess import PreprocessConfig
from covidseg.infer.batch import MODEL_ENV
from covidseg.io import CTVolume, canonical_affine, save_volume, write_dicom_series
from covidseg.model import UNetConfig, save_checkpoint
from tests.infer.analytic import calibrated_unet, toy_chest

runner = CliRunner()


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Run these tiny networks on one thread (restored after the module).

    With two OpenMP threads on a machine whose cores are busy with other jobs, every one of the thousands of
    small parallel regions waits for a descheduled thread: a 32 px DenseUNet batch took 5 s instead of 0.05 s.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


REAL_CT = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "real-ct" / "abdomen-small.nii.gz"
SPACING = (5.0, 1.5, 1.5)


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    """A real DenseUNet checkpoint (random, BN-calibrated weights; small decoder; 32 px slices: fast)."""
    cfg = UNetConfig(decoder_channels=(16, 16, 8, 8, 8))
    path = tmp_path_factory.mktemp("model") / "best.pt"
    pre = PreprocessConfig(slice_size=(32, 32)).to_dict()
    return save_checkpoint(path, calibrated_unet(cfg, size=32), model_config=cfg, extra={"preprocessing": pre})


@pytest.fixture
def scans(tmp_path) -> Path:
    folder = tmp_path / "scans"
    hu, _ = toy_chest((6, 64, 64))
    volume = CTVolume.from_canonical(hu, canonical_affine(SPACING))
    for name in ("b", "a"):
        save_volume(hu, volume, folder / f"{name}.nii.gz")
    write_dicom_series(volume, folder / "series")
    (folder / "broken.nii.gz").write_bytes(b"not a scan")
    return folder


def _run(args: list[str], **env: str):
    return runner.invoke(app, ["predict", *[str(a) for a in args]], env={MODEL_ENV: "", **env})


def test_batch_with_a_bad_file(model, scans, tmp_path):
    out = tmp_path / "out"
    result = _run([scans, "-o", out, "--model", model, "--no-overview", "--prob-map", "uint8", "-q"])
    assert result.exit_code == 2, result.output
    assert "broken.nii.gz" in result.output and "3 of 4 scan(s)" in result.output
    names = {p.name for p in out.iterdir()}
    assert {"a_labels.nii.gz", "b_report.json", "series_labels.nii.gz", "series_seg.dcm", "summary.csv"} <= names
    assert "a_opacity_prob.nii.gz" in names and not any(n.startswith("broken_") for n in names)
    rows = {Path(r["scan"]).name: r for r in csv.DictReader((out / "summary.csv").open())}
    assert set(rows) == {"a.nii.gz", "b.nii.gz", "broken.nii.gz", "series"} and rows["broken.nii.gz"]["error"]
    report = json.loads((out / "a_report.json").read_text())
    assert report["metadata"]["model"]["path"] == str(model.resolve())
    assert len(report["metadata"]["model"]["sha256"]) == 64
    labels = nib.load(out / "a_labels.nii.gz")
    np.testing.assert_allclose(labels.affine, nib.load(scans / "a.nii.gz").affine)


def test_single_scan_glob_model_from_env_and_refusal(model, scans, tmp_path):
    out = tmp_path / "out"
    pattern = str(scans / "a.nii*")
    first = _run([pattern, "-o", out, "--precision", "bf16", "--channels-last", "--fast"], COVIDSEG_MODEL=str(model))
    assert first.exit_code == 0, first.output
    assert sorted(p.name for p in out.iterdir()) == ["a_labels.nii.gz", "a_overview.png", "a_report.json"]
    assert json.loads((out / "a_report.json").read_text())["metadata"]["inference_spec"]["precision"] == "bf16"
    again = _run([pattern, "-o", out, "--model", model])
    assert again.exit_code == 2 and "exist already" in again.output and "--overwrite" in again.output


def test_shards_split_the_sorted_inputs(model, tmp_path):
    """Each shard writes its own summary; together they cover every input once (bad files fail fast: cheap)."""
    inputs = tmp_path / "in"
    inputs.mkdir()
    for name in ("d", "a", "c", "b", "e"):
        (inputs / f"{name}.nii.gz").write_bytes(b"not a scan")
    out = tmp_path / "out"
    seen = []
    for i in (1, 2):
        result = _run([inputs, "-o", out, "--model", model, "--shard", f"{i}/2", "-q"])
        assert result.exit_code == 2, result.output
        rows = csv.DictReader((out / f"summary_shard-{i}-of-2.csv").open())
        seen.append([Path(r["scan"]).name for r in rows])
    assert seen == [["a.nii.gz", "c.nii.gz", "e.nii.gz"], ["b.nii.gz", "d.nii.gz"]]


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (["--precision", "fp64"], "precision"),
        (["--precision", "fp16", "--device", "cpu"], "CUDA"),
        (["--shard", "3/2"], "--shard"),
        (["--prob-map", "float64"], "probability"),
        (["--device", "tpu"], "device"),
    ],
)
def test_bad_options_are_one_line_errors(model, scans, tmp_path, args, match):
    result = _run([scans / "a.nii.gz", "-o", tmp_path / "out", "--model", model, *args])
    assert result.exit_code == 2 and match in result.output
    assert len(result.output.strip().splitlines()) == 1 and "Traceback" not in result.output


def test_missing_or_bad_model(scans, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = _run([scans / "a.nii.gz", "-o", tmp_path / "out"])
    assert result.exit_code == 2 and "covidseg train" in result.output and "--model" in result.output
    fake = tmp_path / "fake.pt"
    fake.write_text("weights")
    result = _run([scans / "a.nii.gz", "-o", tmp_path / "out", "--model", fake])
    assert result.exit_code == 2 and "fake.pt" in result.output


@pytest.mark.skipif(not REAL_CT.is_file(), reason="real CT not available (../shared/data/real-ct)")
def test_real_ct(model, tmp_path):
    result = _run([REAL_CT, "-o", tmp_path, "--model", model, "--no-overview"])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "abdomen-small_report.json").read_text())
    labels = np.asarray(nib.load(tmp_path / "abdomen-small_labels.nii.gz").dataobj)
    assert labels.shape == nib.load(REAL_CT).shape
    assert report["lungs_in_view"] == bool(labels.any()) and report["message"]
