"""Outputs: exactly the input's geometry (RAS, LPS, oblique NIfTI; MHA; NRRD), names, refusal, probability files."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk  # noqa: N813
from nibabel.orientations import apply_orientation, axcodes2ornt, inv_ornt_aff, ornt_transform

from covidseg.errors import InputError, OutputExistsError
from covidseg.infer.outputs import (
    OutputOptions,
    check_outputs,
    ensure_output_dir,
    input_family,
    plan_outputs,
    scan_name,
    write_probability_map,
)
from covidseg.infer.pipeline import PredictOptions, predict_scan
from covidseg.io import CANONICAL_AXCODES, CTVolume, canonical_affine
from tests.infer.analytic import analytic_segmenter, dice, toy_chest

SHAPE = (10, 64, 72)
SPACING = (4.0, 1.5, 1.25)
OPTIONS = PredictOptions(OutputOptions(overview=False, probability="float16"))


@pytest.fixture(scope="module")
def chest() -> tuple[np.ndarray, np.ndarray]:
    return toy_chest(SHAPE)


def _rotation_z(degrees: float) -> np.ndarray:
    t = np.radians(degrees)
    rot = np.eye(4)
    rot[:2, :2] = [[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]]
    return rot


def _native(canonical: np.ndarray, axcodes: str, oblique_deg: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """The canonical array stored with native axes ``axcodes`` (e.g. 'RAS'), and that native array's affine."""
    ornt = ornt_transform(axcodes2ornt(CANONICAL_AXCODES), axcodes2ornt(tuple(axcodes)))
    native = np.ascontiguousarray(apply_orientation(canonical, ornt))
    affine = canonical_affine(SPACING, origin=(12.0, -30.0, 55.0)) @ inv_ornt_aff(ornt, canonical.shape)
    return native, _rotation_z(oblique_deg) @ affine


@pytest.mark.parametrize(("axcodes", "oblique"), [("RAS", 0.0), ("LPS", 0.0), ("PIR", 0.0), ("RAS", 12.0)])
def test_nifti_label_map_has_the_input_geometry(tmp_path, chest, axcodes, oblique):
    hu, truth = chest
    native_hu, affine = _native(hu, axcodes, oblique)
    native_truth, _ = _native(truth, axcodes, oblique)
    src = nib.Nifti1Image(native_hu, affine)
    src.set_qform(affine, code=1)
    src.set_sform(affine, code=2)
    nib.save(src, tmp_path / "scan.nii.gz")
    result = predict_scan(tmp_path / "scan.nii.gz", analytic_segmenter(64), tmp_path / "out", options=OPTIONS)
    out = nib.load(result.outputs["labels"])
    assert out.shape == native_hu.shape
    np.testing.assert_allclose(out.affine, affine, atol=1e-5)
    np.testing.assert_allclose(out.get_qform(), src.get_qform(), atol=1e-5)
    assert (int(out.header["qform_code"]), int(out.header["sform_code"])) == (1, 2)
    labels = np.asarray(out.dataobj)
    assert dice(labels == 2, native_truth == 2) > 0.9  # voxel for voxel on the native grid
    assert dice(labels > 0, native_truth > 0) > 0.8
    prob = nib.load(result.outputs["probability"])
    assert prob.get_data_dtype() == np.float32 and prob.shape == native_hu.shape
    np.testing.assert_allclose(prob.affine, affine, atol=1e-5)


@pytest.mark.parametrize(("suffix", "direction"), [(".mha", "identity"), (".nrrd", "oblique"), (".mha", "flipped")])
def test_itk_label_map_has_the_input_geometry(tmp_path, chest, suffix, direction):
    hu, truth = chest
    image = sitk.GetImageFromArray(hu)  # numpy (z, y, x) = ITK (k, j, i); identity direction = canonical (LPS)
    matrix = {
        "identity": np.eye(3),
        "oblique": _rotation_z(10.0)[:3, :3],
        "flipped": np.diag([-1.0, 1.0, -1.0]),
    }[direction]
    image.SetDirection(tuple(matrix.ravel()))
    image.SetOrigin((-40.0, 22.5, 101.0))
    image.SetSpacing(SPACING[::-1])
    scan = tmp_path / f"scan{suffix}"
    sitk.WriteImage(image, str(scan))
    result = predict_scan(scan, analytic_segmenter(64), tmp_path / "out", options=OPTIONS)
    assert result.outputs["labels"].name == f"scan_labels{suffix}"
    out = sitk.ReadImage(str(result.outputs["labels"]))
    assert out.GetSize() == image.GetSize()
    np.testing.assert_allclose(out.GetOrigin(), image.GetOrigin(), atol=1e-6)
    np.testing.assert_allclose(out.GetDirection(), image.GetDirection(), atol=1e-6)
    np.testing.assert_allclose(out.GetSpacing(), image.GetSpacing(), atol=1e-6)
    assert out.GetPixelID() == sitk.sitkUInt8
    labels = sitk.GetArrayFromImage(out)
    assert dice(labels == 2, truth == 2) > 0.9  # same (k, j, i) grid as the input array
    prob = sitk.ReadImage(str(result.outputs["probability"]))
    assert prob.GetPixelID() == sitk.sitkFloat32
    np.testing.assert_allclose(prob.GetDirection(), image.GetDirection(), atol=1e-6)


def test_names_families_and_plans(tmp_path):
    assert scan_name("a/b/case.nii.gz") == "case" and scan_name(tmp_path) == tmp_path.name
    assert input_family(tmp_path) == "dicom" and input_family("x.nhdr") == "nrrd"
    plan = plan_outputs(Path("ct.mhd"), tmp_path, OutputOptions(probability="float16", overview=False))
    assert plan.labels.name == "ct_labels.mha" and plan.probability is not None
    assert plan.probability.name == "ct_opacity_prob.mha" and plan.overview is None and plan.dicom_seg is None
    dicom = plan_outputs(tmp_path, tmp_path / "out", OutputOptions())
    assert dicom.labels.name.endswith("_labels.nii.gz") and dicom.dicom_seg is not None
    assert plan_outputs(Path("s.nrrd"), tmp_path, OutputOptions(), name="x").labels.name == "x_labels.nrrd"
    with pytest.raises(InputError, match="probability"):
        OutputOptions(probability="float64")


def test_check_outputs_names_every_existing_file(tmp_path):
    plan = plan_outputs(Path("s.nii.gz"), tmp_path, OutputOptions())
    check_outputs(plan, overwrite=False)
    plan.labels.write_bytes(b"")
    plan.report.write_bytes(b"")
    with pytest.raises(OutputExistsError) as err:
        check_outputs(plan, overwrite=False)
    assert "s_labels.nii.gz" in str(err.value) and "s_report.json" in str(err.value)
    check_outputs(plan, overwrite=True)


def test_output_dir_checks(tmp_path):
    assert ensure_output_dir(tmp_path / "a" / "b").is_dir()
    (tmp_path / "f").write_text("")
    with pytest.raises(InputError, match="is a file"):
        ensure_output_dir(tmp_path / "f")


def test_probability_map_types(tmp_path):
    volume = CTVolume.from_canonical(np.zeros((2, 4, 4)), canonical_affine())
    u8 = write_probability_map(np.full((2, 4, 4), 200, np.uint8), volume, tmp_path / "u.nii.gz")
    assert nib.load(u8).get_data_dtype() == np.uint8 and int(np.asarray(nib.load(u8).dataobj).max()) == 200
    with pytest.raises(ValueError, match="probability"):
        write_probability_map(np.zeros((2, 4, 4), np.float64), volume, tmp_path / "d.nii.gz")


def test_a_failed_write_is_raised_and_leaves_no_report(tmp_path, monkeypatch):
    """Files are written side by side; when one fails the others finish, the error surfaces, no report exists."""
    import covidseg.infer.overview as overview_module
    from covidseg.infer.outputs import write_outputs
    from covidseg.infer.report import scan_report

    def broken_overview(*_args, **_kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(overview_module, "save_overview", broken_overview)
    volume = CTVolume.from_canonical(np.full((4, 32, 32), -1000, np.int16), canonical_affine())
    labels = np.zeros(volume.shape, np.uint8)
    plan = plan_outputs(Path("scan.nii.gz"), tmp_path, OutputOptions())
    with pytest.raises(OSError, match="disk full"):
        write_outputs(plan, volume, labels, scan_report(labels, volume.spacing), {})
    assert plan.labels.is_file() and not plan.report.exists()
    assert plan.overview is not None and not plan.overview.exists()
