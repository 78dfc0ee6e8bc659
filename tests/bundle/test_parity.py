"""The bundle, run by MONAI where covidseg cannot be imported, writes the mask covidseg predict writes.

The model is decisive (tests/bundle/helpers.py), so float-rounding differences between the two pipelines (eager
vs. TorchScript network, 2-D vs. 3-D resize kernels) cannot flip labels; the masks hold body, lungs and a lesion,
so a flipped, transposed or shifted mask would fail the agreement check (see the control test).
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from covidseg.infer.outputs import OutputOptions
from covidseg.infer.pipeline import PredictOptions, predict_scan
from covidseg.infer.segmenter import Segmenter
from tests.bundle.helpers import no_covidseg_env, run

MIN_AGREEMENT = 0.999


def agreement(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean(a == b))


@pytest.fixture(scope="module")
def predicted(tmp_path_factory: pytest.TempPathFactory, checkpoint: Path, scans: dict[str, Path]) -> dict[str, Path]:
    """``covidseg predict`` (fp32, fast path off, as the bundle runs) on every scan."""
    segmenter = Segmenter.from_checkpoint(checkpoint, device="cpu", precision="fp32", skip_empty_slices=False)
    out = tmp_path_factory.mktemp("predict")
    options = PredictOptions(OutputOptions(overview=False))
    return {code: predict_scan(path, segmenter, out, options=options).outputs["labels"] for code, path in scans.items()}


def test_environment_cannot_import_covidseg(tmp_path):
    prefix, env = no_covidseg_env(tmp_path)
    blocked = run([*prefix, "-c", "import covidseg"], env=env, cwd=tmp_path)
    assert blocked.returncode != 0 and "No module named 'covidseg'" in blocked.stderr
    works = run([*prefix, "-c", "import monai.bundle, nibabel, scipy, torch"], env=env, cwd=tmp_path)
    assert works.returncode == 0, works.stderr


@pytest.mark.parametrize("code", ["RAS", "PSL"])
def test_bundle_mask_equals_covidseg_predict(code, scans, predicted, bundle_outputs):
    ours = nib.load(predicted[code])
    theirs = nib.load(bundle_outputs / f"{scans[code].name.split('.')[0]}_labels.nii.gz")
    a, b = np.asarray(ours.dataobj), np.asarray(theirs.dataobj)
    assert b.dtype == np.uint8
    assert a.shape == b.shape == nib.load(scans[code]).shape
    np.testing.assert_allclose(theirs.affine, nib.load(scans[code]).affine, atol=1e-5)
    np.testing.assert_allclose(theirs.affine, ours.affine, atol=1e-5)
    counts = np.bincount(a.ravel(), minlength=3) / a.size
    assert counts[1] > 0.1 and counts[2] > 0.01, f"the mask must hold lungs and opacity, got fractions {counts}"
    score = agreement(a, b)
    print(f"{code}: bundle vs covidseg predict agree on {score:.6%} of {a.size} voxels")
    assert score >= MIN_AGREEMENT


def test_agreement_detects_a_flipped_mask(scans, predicted):
    a = np.asarray(nib.load(predicted["RAS"]).dataobj)
    assert agreement(a, a[::-1]) < MIN_AGREEMENT
    assert agreement(a, np.roll(a, 2, axis=1)) < MIN_AGREEMENT


def test_one_scan_from_another_folder(tmp_path, exported, scans, predicted):
    """``--datalist`` names one file and ``--bundle_root`` the bundle, run from an unrelated folder."""
    prefix, env = no_covidseg_env(tmp_path)
    bundle = exported.path
    result = run(
        [
            *prefix,
            "-m",
            "monai.bundle",
            "run",
            "--config_file",
            str(bundle / "configs" / "inference.json"),
            "--meta_file",
            str(bundle / "configs" / "metadata.json"),
            "--bundle_root",
            str(bundle),
            "--datalist",
            f"['{scans['PSL']}']",
            "--output_dir",
            str(tmp_path / "out"),
        ],
        env=env,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["psl_labels.nii.gz"]
    a = np.asarray(nib.load(predicted["PSL"]).dataobj)
    assert agreement(a, np.asarray(nib.load(tmp_path / "out" / "psl_labels.nii.gz").dataobj)) >= MIN_AGREEMENT
