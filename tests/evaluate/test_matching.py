from __future__ import annotations

from pathlib import Path

import pytest

from covidseg.errors import InputError
from covidseg.evaluate.matching import case_name, find_label_maps, pair_cases


def _touch(folder: Path, *names: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).write_bytes(b"")
    return folder


def test_case_names() -> None:
    assert case_name("p/case_01_labels.nii.gz") == "case_01"
    assert case_name("p/case_01.NRRD") == "case_01"
    assert case_name("p/x_mask_labels.mha") == "x_mask"  # one suffix only
    assert case_name("p/ct_seg.nii", ["_seg"]) == "ct"


def test_predict_folder_keeps_label_maps_only(tmp_path: Path) -> None:
    folder = _touch(
        tmp_path / "pred",
        "a_labels.nii.gz",
        "a_overview.png",
        "a_probability.nii.gz",
        "a_report.json",
        ".a_labels.nii.gz.tmp.nii.gz",
        "summary.csv",
    )
    assert find_label_maps(folder) == {"a": folder / "a_labels.nii.gz"}
    plain = _touch(tmp_path / "ref", "a.png", "b.png", "b.jpg")
    assert sorted(find_label_maps(plain)) == ["a", "b"]


def test_duplicates_and_bad_paths(tmp_path: Path) -> None:
    folder = _touch(tmp_path / "dup", "a.nii.gz", "a.mha")
    with pytest.raises(InputError, match="both case 'a'"):
        find_label_maps(folder)
    with pytest.raises(InputError, match="holds no label maps"):
        find_label_maps(_touch(tmp_path / "empty", "x.txt"))
    with pytest.raises(InputError, match="not a label map"):
        find_label_maps(_touch(tmp_path / "j", "x.jpg") / "x.jpg")


def test_pairing(tmp_path: Path) -> None:
    a = _touch(tmp_path, "pred.nii.gz", "ref.nii.gz")
    single = pair_cases({"pred": a / "pred.nii.gz"}, {"ref": a / "ref.nii.gz"})
    assert [(p.case_id, p.prediction.name) for p in single.pairs] == [("ref", "pred.nii.gz")]
    names = {n: Path(f"{n}.nii.gz") for n in ("c1", "c2", "c3", "c4", "c5", "c6", "c7")}
    with pytest.raises(InputError, match=r"6 reference\(s\) without a prediction \(c2, c3, c4, c5, c6 and 1 more\)"):
        pair_cases({"c1": names["c1"], "x": names["c1"]}, names)
