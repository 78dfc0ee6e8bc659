"""predict_scan end to end on phantoms: masks overlap lesions, volumes match, no-lung scans, fast path, refusals."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image
from scipy import ndimage as ndi

from covidseg.data.phantom import generate_phantom
from covidseg.data.preprocess import PreprocessConfig
from covidseg.errors import InputError, OutputExistsError
from covidseg.infer.masks import voxel_volume_ml
from covidseg.infer.outputs import OutputOptions
from covidseg.infer.pipeline import PredictOptions, predict_scan
from covidseg.infer.postprocess import PostprocessConfig
from covidseg.infer.segmenter import Segmenter
from covidseg.infer.spec import InferenceSpec
from covidseg.io import CTVolume, load_ct, save_volume
from tests.infer.analytic import OracleLabels, analytic_segmenter, dice

SHAPE = (24, 96, 96)
SPACING = (12.0, 3.6, 3.6)
REAL_CT = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "real-ct" / "abdomen-small.nii.gz"
NO_OVERVIEW = PredictOptions(OutputOptions(overview=False))


@pytest.fixture(scope="module")
def phantom():
    return generate_phantom(SHAPE, SPACING, seed=0, n_lesions=5, lesion_kinds=("ggo",))


@pytest.fixture(scope="module")
def phantom_file(phantom, tmp_path_factory) -> Path:
    volume = CTVolume.from_canonical(phantom.hu, phantom.affine)
    return save_volume(phantom.hu, volume, tmp_path_factory.mktemp("scan") / "phantom.nii.gz")


def _canonical(path: Path) -> np.ndarray:
    return load_ct(path, assume_hu=True).hu


def test_mask_overlaps_the_phantom_lesions(phantom, phantom_file, tmp_path):
    result = predict_scan(phantom_file, analytic_segmenter(96), tmp_path, options=PredictOptions())
    assert sorted(result.outputs) == ["labels", "overview", "report"]
    labels = _canonical(result.outputs["labels"])
    assert labels.shape == SHAPE
    assert dice(labels == 2, phantom.labels == 2) > 0.7
    assert dice(labels > 0, phantom.labels > 0) > 0.75
    assert nib.load(result.outputs["labels"]).get_data_dtype() == np.uint8
    np.testing.assert_allclose(nib.load(result.outputs["labels"]).affine, nib.load(phantom_file).affine)
    report = json.loads(result.outputs["report"].read_text())
    assert report["lungs_in_view"] is True and report["lesion_count"] >= 1
    assert report["metadata"]["inference_spec"]["preprocess"]["slice_size"] == [96, 96]
    assert report["metadata"]["inference_spec"]["class_names"] == ["background", "lung", "opacity"]
    assert {"covidseg", "torch", "numpy"} <= set(report["metadata"]["software"])
    assert report["outputs"]["labels"] == result.outputs["labels"].name
    assert result.outputs["overview"].read_bytes()[:4] == b"\x89PNG"
    assert result.timings["network"] > 0 and result.timings["total"] >= result.timings["network"]


def _known_volumes(labels: np.ndarray, spacing) -> dict[str, dict[str, float]]:
    """Per-side lung and opacity volumes of phantom labels (right lung = small x)."""
    comps, _ = ndi.label(labels > 0)
    sizes = np.bincount(comps.ravel())[1:]
    two = np.argsort(sizes)[-2:] + 1
    xs = {c: ndi.center_of_mass(comps == c)[2] for c in two}
    right, left = sorted(two, key=lambda c: xs[c])
    ml = voxel_volume_ml(spacing)
    out: dict[str, dict[str, float]] = {"lung": {}, "opacity": {}}
    for side, c in (("right", right), ("left", left)):
        out["lung"][side] = float((comps == c).sum()) * ml
        out["opacity"][side] = float(((comps == c) & (labels == 2)).sum()) * ml
    for kind in out:
        out[kind]["total"] = out[kind]["right"] + out[kind]["left"]
    return out


def test_report_volumes_match_the_phantom(phantom, phantom_file, tmp_path):
    """The phantom's own labels, pushed through predictor, post-processing and report: volumes within 5 %."""
    spec = InferenceSpec(preprocess=PreprocessConfig(slice_size=SHAPE[1:]))
    oracle = OracleLabels(phantom.labels)
    result = predict_scan(phantom_file, Segmenter(oracle, spec, device="cpu"), tmp_path, options=NO_OVERVIEW)
    report = json.loads(result.outputs["report"].read_text())
    known = _known_volumes(phantom.labels, phantom.spacing)
    for side in ("right", "left", "total"):
        assert report["lung_volume_ml"][side] == pytest.approx(known["lung"][side], rel=0.05)
        assert report["opacity_volume_ml"][side] == pytest.approx(
            known["opacity"][side], abs=0.05 * known["opacity"]["total"]
        )
    assert known["lung"]["right"] > known["lung"]["left"]  # the phantom's right lung is the larger one


def test_scan_without_lungs_gives_an_empty_mask_and_says_so(phantom, tmp_path):
    abdomen = np.where(phantom.hu > -500, np.int16(40), np.int16(-1000))
    abdomen[:, 40:50, 40:50] = -1000  # bowel gas
    scan = save_volume(abdomen, CTVolume.from_canonical(abdomen, phantom.affine), tmp_path / "abdomen.nii.gz")
    result = predict_scan(scan, analytic_segmenter(96), tmp_path / "out", options=PredictOptions())
    assert not _canonical(result.outputs["labels"]).any()
    report = json.loads(result.outputs["report"].read_text())
    assert report["lungs_in_view"] is False and "no lungs in view" in report["message"]
    assert report["lung_volume_ml"]["total"] == 0 and report["lesion_count"] == 0


def test_fast_path_skips_slices_beyond_the_lungs(phantom, tmp_path):
    below = np.where(phantom.hu[0] > -500, np.int16(40), np.int16(-1000))
    hu = np.concatenate([np.repeat(below[None], 8, axis=0), phantom.hu], axis=0)
    affine = phantom.affine.copy()
    affine[:3, 3] -= affine[:3, 0] * 8
    scan = save_volume(hu, CTVolume.from_canonical(hu, affine), tmp_path / "long.nii.gz")
    full = predict_scan(scan, analytic_segmenter(96), tmp_path / "full", options=NO_OVERVIEW)
    fast_seg = analytic_segmenter(96, skip_empty_slices={"enabled": True})
    fast = predict_scan(scan, fast_seg, tmp_path / "fast", options=NO_OVERVIEW)
    assert full.skipped_slices == 0 and fast.skipped_slices >= 6
    a, b = _canonical(full.outputs["labels"]) == 2, _canonical(fast.outputs["labels"]) == 2
    assert a.sum() > 100
    assert np.count_nonzero(a != b) <= 0.001 * np.count_nonzero(a)
    report = json.loads(fast.outputs["report"].read_text())
    assert report["skipped_slices"] == fast.skipped_slices
    assert any("fast path" in w for w in report["warnings"])


def test_existing_outputs_are_refused_before_any_work(phantom_file, tmp_path):
    (tmp_path / "phantom_overview.png").write_bytes(b"old")
    with pytest.raises(OutputExistsError, match=r"phantom_overview\.png"):
        predict_scan(phantom_file, analytic_segmenter(96), tmp_path)
    assert not (tmp_path / "phantom_labels.nii.gz").exists()
    assert (tmp_path / "phantom_overview.png").read_bytes() == b"old"
    options = PredictOptions(OutputOptions(overwrite=True))
    result = predict_scan(phantom_file, analytic_segmenter(96), tmp_path, options=options)
    assert result.outputs["overview"].read_bytes()[:4] == b"\x89PNG"


def test_bad_inputs_and_output_folders(phantom_file, tmp_path):
    with pytest.raises(InputError, match="no such file"):
        predict_scan(tmp_path / "missing.nii.gz", analytic_segmenter(96), tmp_path / "out")
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(InputError, match="is a file"):
        predict_scan(phantom_file, analytic_segmenter(96), blocker)
    with pytest.raises(InputError, match="cannot create"):
        predict_scan(phantom_file, analytic_segmenter(96), blocker / "sub")


def test_probability_map_output(phantom_file, tmp_path):
    options = PredictOptions(OutputOptions(probability="uint8", overview=False))
    result = predict_scan(phantom_file, analytic_segmenter(96), tmp_path, options=options)
    prob = nib.load(result.outputs["probability"])
    assert prob.get_data_dtype() == np.uint8
    np.testing.assert_allclose(prob.affine, nib.load(phantom_file).affine)
    labels = np.asarray(nib.load(result.outputs["labels"]).dataobj)
    assert np.asarray(prob.dataobj)[labels == 2].min() > 255 / 3


def test_slice_image_input(phantom, tmp_path):
    z = int(np.argmax((phantom.labels == 2).sum(axis=(1, 2))))
    gray = np.clip((phantom.hu[z].astype(np.float32) + 1350) / 1500 * 255, 0, 255).astype(np.uint8)
    Image.fromarray(gray).save(tmp_path / "slice.png")
    options = PredictOptions(OutputOptions(probability="uint8"))  # with the overview, as users run it
    result = predict_scan(tmp_path / "slice.png", analytic_segmenter(96), tmp_path / "out", options=options)
    assert result.outputs["overview"].read_bytes()[:4] == b"\x89PNG"
    assert result.outputs["labels"].name == "slice_labels.png"
    assert result.outputs["probability"].name == "slice_opacity_prob.png"
    with Image.open(result.outputs["labels"]) as image:
        assert image.mode == "P" and image.getpalette()[3:9] == [70, 130, 180, 220, 50, 47]
        labels = np.asarray(image)
    # The label map lies on the input image's pixels: its opacity covers the phantom's lesions on that slice.
    truth = phantom.labels[z] == 2
    assert labels.shape == gray.shape and set(np.unique(labels)) <= {0, 1, 2}
    assert 2 * np.sum((labels == 2) & truth) / (np.sum(labels == 2) + np.sum(truth)) > 0.5
    with Image.open(result.outputs["probability"]) as image:
        assert image.mode == "L" and np.asarray(image)[labels == 2].min() > 255 / 3
    assert any("single-slice" in w for w in result.report["warnings"])
    float_maps = PredictOptions(OutputOptions(probability="float16", overview=False))
    again = predict_scan(tmp_path / "slice.png", analytic_segmenter(96), tmp_path / "float", options=float_maps)
    assert again.outputs["probability"].name == "slice_opacity_prob.nii.gz"


@pytest.mark.skipif(not REAL_CT.is_file(), reason="real CT not available (../shared/data/real-ct)")
def test_real_ct_runs_and_reports_truthfully(tmp_path):
    result = predict_scan(REAL_CT, analytic_segmenter(64), tmp_path, options=PredictOptions())
    labels_img, source = nib.load(result.outputs["labels"]), nib.load(REAL_CT)
    assert labels_img.shape == source.shape
    np.testing.assert_allclose(labels_img.affine, source.affine)
    labels = np.asarray(labels_img.dataobj)
    report = json.loads(result.outputs["report"].read_text())
    assert report["lungs_in_view"] == bool(labels.any())
    assert report["lung_volume_ml"]["total"] == pytest.approx(
        float((labels > 0).sum()) * float(np.prod(source.header.get_zooms()[:3])) / 1000, rel=1e-3
    )
    # The analytic model calls the table cushion's foam (about -900 HU) lung: about 0.57 L below the patient's
    # back, all outside the body outline, so none of it may reach the label map (the lung bases in the top
    # slices are too thin for it to see).
    assert not report["lungs_in_view"] and "no lungs in view" in report["message"]
    trusting = analytic_segmenter(64, postprocess=PostprocessConfig(within_body=False))
    foam = predict_scan(REAL_CT, trusting, tmp_path / "no-body", options=PredictOptions())
    foam_labels = np.asarray(nib.load(foam.outputs["labels"]).dataobj)
    assert np.count_nonzero(foam_labels) * float(np.prod(source.header.get_zooms()[:3])) / 1000 > 0.3
