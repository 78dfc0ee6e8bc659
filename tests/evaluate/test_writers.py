from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from covidseg.errors import InputError, OutputExistsError
from covidseg.evaluate.scores import CaseEval
from covidseg.evaluate.writers import read_per_case, write_evaluation

CASES = [
    CaseEval("b", np.diag([10, 5, 5]), has_lung=True, n_slices=3, voxel_volume=0.5, volume_unit="mL"),
    CaseEval("a", np.array([[10, 0, 5], [0, 5, 0], [0, 0, 0]]), True, 3, 0.5, "mL"),
]


def test_round_trip(tmp_path: Path) -> None:
    paths = write_evaluation(tmp_path / "out", CASES, {"split": "test"})
    rows = list(csv.DictReader(paths.per_case.open()))
    assert [r["case_id"] for r in rows] == ["b", "a"]
    assert rows[1]["opacity_dice"] == "0.0" and rows[1]["opacity_volume_pred"] == "2.5"
    assert rows[1]["opacity_volume_diff"] == "2.5" and rows[0]["lung_tp"] == "10"
    summary = json.loads(paths.summary.read_text())
    assert summary["split"] == "test" and summary["structures"]["opacity"]["dice"]["mean"] == 0.5
    assert read_per_case(tmp_path / "out") == {"b": 1.0, "a": 0.0}
    assert read_per_case(paths.per_case, "lung_dice")["a"] == pytest.approx(2 * 5 / (2 * 5 + 5))


def test_existing_output_writes_nothing(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "summary.json").write_text("old")
    with pytest.raises(OutputExistsError):
        write_evaluation(out, CASES)
    assert sorted(p.name for p in out.iterdir()) == ["summary.json"] and (out / "summary.json").read_text() == "old"
    write_evaluation(out, CASES, overwrite=True)
    assert json.loads((out / "summary.json").read_text())["n_cases"] == 2


def test_bad_per_case_files(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"no per_case\.csv"):
        read_per_case(tmp_path)
    bad = tmp_path / "bad.csv"
    bad.write_text("case_id,opacity_dice\na,0.5\na,0.7\n")
    with pytest.raises(InputError, match="twice"):
        read_per_case(bad)
    bad.write_text("case_id,opacity_dice\na,\n")
    with pytest.raises(InputError, match="no number"):
        read_per_case(bad)
