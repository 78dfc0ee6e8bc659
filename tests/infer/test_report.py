import csv
import json

import numpy as np
import pytest

from covidseg.data.phantom import generate_phantom
from covidseg.errors import InputError, OutputExistsError
from covidseg.infer.report import (
    scan_report,
    severity_grade,
    software_versions,
    write_report_json,
    write_summary_csv,
)
from covidseg.io.volume import canonical_affine

SHAPE = (24, 96, 96)
SPACING = (5.0, 3.5, 3.5)
VOXEL_ML = 5.0 * 3.5 * 3.5 / 1000


@pytest.fixture(scope="module")
def phantom():
    return generate_phantom(SHAPE, SPACING, seed=5, n_lesions=5)


def test_phantom_volumes_match_the_known_labels(phantom):
    rep = scan_report(phantom.labels, SPACING, affine=phantom.affine, hu=phantom.hu)
    lung, opac = phantom.labels > 0, phantom.labels == 2
    half = SHAPE[2] // 2
    known = {
        "right": np.count_nonzero(lung[:, :, :half]) * VOXEL_ML,  # the phantom's right lung lies at small x
        "left": np.count_nonzero(lung[:, :, half:]) * VOXEL_ML,
    }
    known_opac = {
        "right": np.count_nonzero(opac[:, :, :half]) * VOXEL_ML,
        "left": np.count_nonzero(opac[:, :, half:]) * VOXEL_ML,
    }
    assert rep["lungs_in_view"] is True
    for side in ("right", "left"):
        assert rep["lung_volume_ml"][side] == pytest.approx(known[side], rel=0.05)
        assert rep["opacity_volume_ml"][side] == pytest.approx(known_opac[side], rel=0.05, abs=VOXEL_ML)
    assert rep["lung_volume_ml"]["total"] == pytest.approx(np.count_nonzero(lung) * VOXEL_ML, abs=1e-3)
    assert rep["opacity_volume_ml"]["total"] == pytest.approx(np.count_nonzero(opac) * VOXEL_ML, abs=1e-3)
    expected_pct = 100 * np.count_nonzero(opac) / np.count_nonzero(lung)
    assert rep["percent_involved"]["total"] == pytest.approx(expected_pct, abs=1e-3)
    json.dumps(rep, allow_nan=False)  # plain JSON types only


def two_lungs(n_z=30):
    """Two box lungs, 10 x 10 voxels in-plane, right at small x; each zone 10 slices = 1000 voxels."""
    lab = np.zeros((n_z, 14, 34), np.uint8)
    lab[:, 2:12, 2:12] = 1
    lab[:, 2:12, 22:32] = 1
    return lab


def fill_fraction(lab, zone_rows, x_cols, n_voxels):
    region = lab[zone_rows, 2:12, x_cols]
    flat = region.reshape(-1).copy()
    flat[:n_voxels] = 2
    lab[zone_rows, 2:12, x_cols] = flat.reshape(region.shape)


def test_zone_grades_at_the_edges_of_the_scale():
    lab = two_lungs()
    # right lung (x 2:12): lower zone (small z) 5 %, middle 25 %, upper (large z) 50 %
    fill_fraction(lab, slice(0, 10), slice(2, 12), 50)
    fill_fraction(lab, slice(10, 20), slice(2, 12), 250)
    fill_fraction(lab, slice(20, 30), slice(2, 12), 500)
    # left lung: lower 75 %, middle 4.9 %, upper 75.1 %
    fill_fraction(lab, slice(0, 10), slice(22, 32), 750)
    fill_fraction(lab, slice(10, 20), slice(22, 32), 49)
    fill_fraction(lab, slice(20, 30), slice(22, 32), 751)
    rep = scan_report(lab, (1.0, 1.0, 1.0))
    zones = rep["zones"]
    got = {side: {z: (zones[side][z]["percent"], zones[side][z]["grade"]) for z in zones[side]} for side in zones}
    assert got["right"] == {"lower": (5.0, 2), "middle": (25.0, 2), "upper": (50.0, 4)}
    assert got["left"] == {"lower": (75.0, 4), "middle": (4.9, 1), "upper": (75.1, 5)}
    assert rep["severity_score"]["right"] == 8 and rep["severity_score"]["left"] == 10
    assert rep["severity_score"]["total"] == 18 and rep["severity_score"]["max"] == 30
    assert rep["percent_involved"]["right"] == pytest.approx(100 * 800 / 3000, abs=1e-3)


def test_severity_grade_scale():
    cases = {0: 0, 1e-6: 1, 4.999: 1, 5: 2, 25: 2, 25.001: 3, 26: 3, 49: 3, 50: 4, 75: 4, 75.01: 5, 100: 5}
    assert {p: severity_grade(p) for p in cases} == cases
    with pytest.raises(ValueError):
        severity_grade(-1)


def test_sides_follow_the_affine():
    lab = two_lungs()
    lab[:, 4:8, 4:8] = 2  # opacity in the lung at small x
    canonical = scan_report(lab, (1.0, 1.0, 1.0), affine=canonical_affine((1.0, 1.0, 1.0)))
    assert canonical["opacity_volume_ml"]["right"] > 0 and canonical["opacity_volume_ml"]["left"] == 0
    flipped_x = canonical_affine((1.0, 1.0, 1.0)) @ np.diag([1.0, 1.0, -1.0, 1.0])  # x index toward the right
    flipped = scan_report(lab, (1.0, 1.0, 1.0), affine=flipped_x)
    assert flipped["opacity_volume_ml"]["left"] > 0 and flipped["opacity_volume_ml"]["right"] == 0
    # z toward inferior: "upper" becomes small z
    lab2 = two_lungs()
    lab2[:10, 2:12, 2:12] = 2
    up = scan_report(lab2, (1.0, 1.0, 1.0))["zones"]["right"]
    down = scan_report(lab2, (1.0, 1.0, 1.0), affine=np.diag([-1.0, -1.0, -1.0, 1.0])[:, [2, 1, 0, 3]])
    assert up["lower"]["percent"] == 100.0 and down["zones"]["right"]["upper"]["percent"] == 100.0
    with pytest.raises(InputError, match="canonical"):
        scan_report(lab, (1.0, 1.0, 1.0), affine=np.eye(4))


def test_single_merged_component_is_split_at_the_junction():
    lab = two_lungs()
    lab[:, 6:8, 12:22] = 1  # a bridge joins the lungs
    rep = scan_report(lab, (1.0, 1.0, 1.0))
    assert rep["lung_volume_ml"]["right"] == pytest.approx(rep["lung_volume_ml"]["left"], rel=0.1)


def test_lesion_count_and_warnings():
    lab = two_lungs(n_z=32)
    lab[:, :, :] = 0
    lab[1:31, 2:12, 2:12] = lab[1:31, 2:12, 22:32] = 1
    lab[5:8, 3:6, 3:6] = 2
    lab[20:22, 8:10, 8:10] = 2
    lab[10:12, 4:6, 25:28] = 2
    rep = scan_report(lab, (1.0, 1.0, 1.0))
    assert rep["lesion_count"] == 3 and rep["warnings"] == []
    cut = scan_report(two_lungs(), (1.0, 1.0, 1.0))
    assert any("first and last slice" in w for w in cut["warnings"])
    one = two_lungs()
    one[:, :, 20:] = 0
    rep_one = scan_report(one, (1.0, 1.0, 1.0), hu=np.where(one > 0, -850, 40))
    assert rep_one["lung_volume_ml"]["left"] == 0 and any("no left lung" in w for w in rep_one["warnings"])
    assert rep_one["percent_involved"]["left"] is None


def test_empty_mask_reports_no_lungs():
    rep = scan_report(np.zeros((5, 8, 8), np.uint8), (2.0, 1.0, 1.0))
    assert rep["lungs_in_view"] is False and "no lungs in view" in rep["message"]
    assert rep["lung_volume_ml"]["total"] == 0 and rep["percent_involved"]["total"] is None
    assert rep["severity_score"]["total"] == 0 and rep["lesion_count"] == 0
    assert all(z["percent"] is None for side in rep["zones"].values() for z in side.values())
    json.dumps(rep, allow_nan=False)


def test_bad_input():
    with pytest.raises(InputError, match="spacing"):
        scan_report(np.zeros((2, 2, 2), np.uint8), (1.0, -1.0, 1.0))
    with pytest.raises(InputError, match=r"\(Z, Y, X\)"):
        scan_report(np.zeros((2, 2), np.uint8), (1.0, 1.0, 1.0))


def test_write_report_json_is_atomic_and_refuses_overwrite(tmp_path, phantom):
    rep = scan_report(phantom.labels, SPACING)
    path = write_report_json(rep, tmp_path / "scan.json", metadata={"model": {"sha256": "abc"}, "config": {"x": 1}})
    data = json.loads(path.read_text())
    assert data["lung_volume_ml"] == rep["lung_volume_ml"]
    assert data["metadata"]["model"] == {"sha256": "abc"}
    assert data["metadata"]["software"]["numpy"] == np.__version__ and "created_utc" in data["metadata"]
    with pytest.raises(OutputExistsError):
        write_report_json(rep, path, metadata={})
    write_report_json({"n": np.int64(3)}, path, metadata={"software": {"x": "1"}}, overwrite=True)
    assert json.loads(path.read_text())["n"] == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scan.json"]  # no temporary files left
    assert "covidseg" in software_versions()


def test_write_summary_csv(tmp_path, phantom):
    rep = scan_report(phantom.labels, SPACING)
    empty = scan_report(np.zeros((3, 4, 4), np.uint8), SPACING)
    path = write_summary_csv(
        [("a.nii.gz", rep), ("b.nii.gz", empty), ("c.nii.gz", {"error": "bad file"})], tmp_path / "summary.csv"
    )
    rows = list(csv.DictReader(path.open()))
    assert [r["scan"] for r in rows] == ["a.nii.gz", "b.nii.gz", "c.nii.gz"]
    assert float(rows[0]["lung_volume_ml.total"]) == pytest.approx(rep["lung_volume_ml"]["total"])
    assert rows[0]["zones.right.upper.grade"] == str(rep["zones"]["right"]["upper"]["grade"])
    assert rows[1]["lungs_in_view"] == "False" and rows[1]["percent_involved.total"] == ""
    assert rows[2]["error"] == "bad file" and rows[2]["lung_volume_ml.total"] == ""
    assert "severity_score.scheme" not in rows[0]
    with pytest.raises(OutputExistsError):
        write_summary_csv({}, path)


@pytest.mark.parametrize("with_hu", [False, True])
def test_report_does_not_depend_on_the_empty_space_around_the_lungs(phantom, with_hu):
    """Counting on the lungs' bounding box: padding the scan changes only its shape and the midline index."""
    pad = ((3, 5), (7, 2), (11, 4))
    padded = np.pad(phantom.labels, pad)
    hu = phantom.hu if with_hu else None
    padded_hu = np.pad(phantom.hu, pad, constant_values=-1000) if with_hu else None
    rep = scan_report(phantom.labels, SPACING, affine=phantom.affine, hu=hu)
    rep_padded = scan_report(padded, SPACING, affine=phantom.affine, hu=padded_hu)
    assert rep_padded["midline"]["x_index"] == pytest.approx(rep["midline"]["x_index"] + pad[2][0], abs=0.01)
    for key in ("shape_zyx", "midline", "warnings", "message"):
        rep.pop(key), rep_padded.pop(key)
    assert rep_padded == rep
    zone_lung = sum(z["lung_ml"] for side in rep["zones"].values() for z in side.values())
    assert zone_lung == pytest.approx(np.count_nonzero(phantom.labels) * VOXEL_ML, abs=1e-2)
