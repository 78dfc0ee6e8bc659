"""The README's main command (covidseg demo) and the phantom command, as a user runs them.

The quick demo (configs/demo/quick.yaml: the same five steps at 64 px) runs once per module through the CLI;
the tests check what it wrote by value. The full-size demo is timed by hand (see the report in the commit log):
it takes several minutes, too long for the test suite.
"""

import json
import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from typer.testing import CliRunner

from covidseg.bundle.verify import verify_bundle
from covidseg.cli import app
from covidseg.demo_steps import CLASS_NAMES
from covidseg.io import load_ct
from covidseg.train.metrics import case_scores

runner = CliRunner()


@pytest.fixture(scope="module")
def quick_demo(tmp_path_factory):
    """The quick demo run through the CLI into a folder that held an unrelated file (replaced: --overwrite)."""
    parent = tmp_path_factory.mktemp("demo")
    out = parent / "demo-output"
    out.mkdir()
    (out / "old.txt").write_text("from an earlier run")
    result = runner.invoke(app, ["demo", "--out", str(out), "--quick", "--overwrite"])
    assert result.exit_code == 0, result.output
    return out, result.output


def _printed_paths(output: str, out: Path) -> list[Path]:
    return [Path(m) for m in re.findall(rf"^\s+[a-zA-Z -]+?\s{{2,}}({re.escape(str(out))}\S*?)/?$", output, re.M)]


def test_every_printed_path_exists_and_the_folder_was_replaced(quick_demo):
    out, output = quick_demo
    printed = _printed_paths(output, out)
    assert len(printed) == 13, output
    assert all(p.exists() for p in printed), [p for p in printed if not p.exists()]
    assert not (out / "old.txt").exists()
    assert [p.name for p in out.parent.iterdir()] == ["demo-output"]  # no temporary folders left
    for step in range(1, 6):
        assert f"Step {step}/5" in output
    assert "covidseg demo finished in" in output and "opacity Dice" in output


def test_summary_lists_relative_paths_scores_and_timings(quick_demo):
    out, _ = quick_demo
    summary = json.loads((out / "demo_summary.json").read_text())
    assert summary["quick"] is True
    assert all(not Path(p).is_absolute() and (out / p).exists() for p in summary["paths"].values())
    assert set(summary["timings_s"]) == {"dataset", "pretrain", "finetune", "predict", "bundle", "total"}
    assert summary["timings_s"]["total"] >= sum(v for k, v in summary["timings_s"].items() if k != "total") - 0.5
    assert summary["finetune"]["regularization"] == "l2sp_layerwise"
    assert summary["bundle"]["checks"] == ["verify_metadata", "verify_net_in_out"]


def test_dataset_is_a_volumes_layout_of_phantoms(quick_demo):
    out, _ = quick_demo
    images = sorted(p.name for p in (out / "data" / "images").iterdir())
    labels = sorted(p.name for p in (out / "data" / "labels").iterdir())
    assert images == labels == [f"phantom_{i:03d}.nii.gz" for i in range(4)]
    label = load_ct(out / "data" / "labels" / "phantom_000.nii.gz", assume_hu=True)
    assert set(np.unique(label.hu)) == {0, 1, 2}
    splits = json.loads((out / "runs" / "finetune" / "splits.json").read_text())
    assert "heldout_phantom" not in json.dumps(splits)


def test_mask_lies_on_the_heldout_scans_grid_and_dice_matches_the_truth(quick_demo):
    out, _ = quick_demo
    scan = out / "heldout" / "heldout_phantom.nii.gz"
    mask = out / "prediction" / "heldout_phantom_labels.nii.gz"
    truth = out / "heldout" / "truth" / "heldout_phantom_labels.nii.gz"
    scan_img, mask_img = nib.load(scan), nib.load(mask)
    assert mask_img.shape == scan_img.shape
    np.testing.assert_allclose(mask_img.affine, scan_img.affine, atol=1e-6)
    assert np.asarray(mask_img.dataobj).dtype == np.uint8
    predicted = load_ct(mask, assume_hu=True).hu.astype(np.int64)
    reference = load_ct(truth, assume_hu=True).hu.astype(np.int64)
    expected = case_scores(predicted, reference, CLASS_NAMES).dice
    summary = json.loads((out / "demo_summary.json").read_text())
    assert summary["heldout"]["dice"] == pytest.approx({k: expected[k] for k in ("lung", "opacity")})


def test_report_has_the_clinical_fields_and_relative_provenance(quick_demo):
    out, _ = quick_demo
    report = json.loads((out / "prediction" / "heldout_phantom_report.json").read_text())
    for key in ("lung_volume_ml", "opacity_volume_ml", "percent_involved", "zones", "message", "lungs_in_view"):
        assert key in report, key
    assert report["scan"] == "heldout/heldout_phantom.nii.gz"
    assert report["metadata"]["model"]["path"] == "runs/finetune/best.pt"
    text = "\n".join(p.read_text() for p in out.rglob("*") if p.suffix in (".json", ".yaml", ".csv", ".md"))
    assert ".demo-output." not in text  # nothing names the temporary folder the demo was built in
    assert (out / "prediction" / "heldout_phantom_overview.png").stat().st_size > 10_000


def test_finetune_run_started_from_the_source_with_layerwise_l2sp(quick_demo):
    out, _ = quick_demo
    config = (out / "runs" / "finetune" / "config.yaml").read_text()
    assert "path: runs/pretrain/source.pt" in config and "name: l2sp_layerwise" in config
    drift = (out / "runs" / "finetune" / "drift.csv").read_text().splitlines()
    assert drift[0].startswith("layer,relative_drift") and len(drift) == 1 + 120


def test_bundle_is_complete_and_verifies_again(quick_demo):
    out, _ = quick_demo
    bundle = out / "bundle"
    for name in ("configs/metadata.json", "configs/inference.json", "models/model.pt", "models/model.ts", "LICENSE"):
        assert (bundle / name).is_file(), name
    assert verify_bundle(bundle) == ["verify_metadata", "verify_net_in_out"]


def test_demo_refuses_an_existing_folder_without_overwrite(tmp_path):
    out = tmp_path / "demo"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    result = runner.invoke(app, ["demo", "--out", str(out), "--quick"])
    assert result.exit_code == 2 and "--overwrite" in result.output
    assert [p.name for p in tmp_path.iterdir()] == ["demo"] and (out / "keep.txt").read_text() == "mine"


def test_demo_rejects_a_bad_recipe_before_writing(tmp_path):
    out = tmp_path / "demo"
    result = runner.invoke(app, ["demo", "--out", str(out), "--quick", "--set", "heldout.seed=1"])
    assert result.exit_code == 2 and "heldout.seed 1 is the seed of a training case" in result.output
    result = runner.invoke(app, ["demo", "--out", str(out), "--set", "finetune.train.epoch=2"])
    assert result.exit_code == 2 and "unknown key 'train.epoch'" in result.output
    assert not list(tmp_path.iterdir())


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
