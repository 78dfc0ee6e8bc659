from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk  # noqa: N813

from covidseg.data.cases import CLASSES_LUNG_OPACITY, CaseRecord, LabelSource, apply_value_map, load_case
from covidseg.data.layouts import LAYOUTS, discover_cases, get_layout, layout_class_names
from covidseg.errors import ConfigError, InputError, NotHUError
from tests.data import synth


@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_registry_entries_are_consistent(name: str) -> None:
    layout = get_layout(name)
    assert layout.name == name
    names = layout_class_names(name)
    assert names[0] == "background" and len(set(names)) == len(names) >= 2
    assert "labelled" in layout.options or name == "phantom"


def test_unknown_layout_lists_valid_names() -> None:
    with pytest.raises(
        ConfigError, match=r"unknown dataset layout 'nifti'.*\['covid20', 'phantom', 'slices', 'volumes'\]"
    ):
        discover_cases("nifti", Path("."))


def test_unknown_option_lists_valid_options(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"unknown option\(s\) \['labels'\].*'volumes'.*label_map"):
        discover_cases("volumes", tmp_path, labels=True)
    with pytest.raises(ConfigError, match="unknown option"):
        layout_class_names("slices", colour=True)


# ----- volumes -----


@pytest.mark.parametrize("nnunet", [False, True])
def test_volumes_discovers_pairs_and_loads_canonical_arrays(tmp_path: Path, nnunet: bool) -> None:
    data = synth.volumes_dataset(tmp_path, n=2, nnunet=nnunet)
    cases = discover_cases("volumes", tmp_path)
    assert [c.case_id for c in cases] == ["case00", "case01"]
    assert all(c.labelled and c.class_names == CLASSES_LUNG_OPACITY and c.layout == "volumes" for c in cases)
    loaded = load_case(cases[1])
    hu, labels = data["case01"]
    np.testing.assert_array_equal(loaded.hu, hu)
    np.testing.assert_array_equal(loaded.labels, labels)
    assert loaded.spacing == pytest.approx(synth.SPACING)
    assert loaded.hu_mapping is None


def test_volumes_label_map_translates_file_values(tmp_path: Path) -> None:
    hu, labels = synth.chest()
    synth.save_nifti(hu, tmp_path / "images" / "a.nii.gz")
    stored = np.select([labels == 1, labels == 2], [10, 20], 0).astype(np.uint8)
    synth.save_nifti(stored, tmp_path / "labels" / "a.nii.gz")
    (case,) = discover_cases("volumes", tmp_path, label_map={0: 0, 10: 1, 20: 2})
    np.testing.assert_array_equal(load_case(case).labels, labels)
    (from_json,) = discover_cases("volumes", tmp_path, label_map={"0": 0, "10": 1, "20": "2"})
    assert from_json == case
    with pytest.raises(ConfigError, match="integer file values"):
        discover_cases("volumes", tmp_path, label_map={"lung": 1})
    with pytest.raises(ConfigError, match="class 5"):
        discover_cases("volumes", tmp_path, label_map={0: 0, 10: 5})
    (case,) = discover_cases("volumes", tmp_path)  # identity map: 10 and 20 are invalid
    with pytest.raises(InputError, match=r"label values \[10, 20\] are outside the expected set \[0, 1, 2\]"):
        load_case(case)


def test_volumes_reads_mha_and_unlabelled(tmp_path: Path) -> None:
    hu, _ = synth.chest()
    (tmp_path / "images").mkdir()
    image = sitk.GetImageFromArray(hu)  # numpy (k, j, i) with the identity LPS direction: canonical (S, P, L)
    sitk.WriteImage(image, str(tmp_path / "images" / "m.mha"))
    (case,) = discover_cases("volumes", tmp_path, labelled=False)
    assert not case.labelled and case.labels == ()
    loaded = load_case(case)
    assert loaded.labels is None
    np.testing.assert_array_equal(loaded.hu, hu)


def test_volumes_folder_errors(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no such dataset folder"):
        discover_cases("volumes", tmp_path / "missing")
    with pytest.raises(InputError, match="no images folder"):
        discover_cases("volumes", tmp_path)
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    with pytest.raises(InputError, match="no volumes found"):
        discover_cases("volumes", tmp_path)
    (tmp_path / "labels").rmdir()
    synth.save_nifti(synth.chest()[0], tmp_path / "images" / "a.nii.gz")
    with pytest.raises(InputError, match=r"no labels folder.*labelled=False"):
        discover_cases("volumes", tmp_path)


def test_volumes_duplicate_case_ids(tmp_path: Path) -> None:
    hu, labels = synth.chest()
    synth.save_nifti(hu, tmp_path / "images" / "a.nii.gz")
    synth.save_nifti(hu, tmp_path / "images" / "a.nii")
    synth.save_nifti(labels, tmp_path / "labels" / "a.nii.gz")
    with pytest.raises(InputError, match="duplicate case id 'a'"):
        discover_cases("volumes", tmp_path)


def test_volumes_hu_check_and_display_intensity(tmp_path: Path) -> None:
    hu, labels = synth.chest()
    display = np.round((np.clip(hu, -1250, 250) + 1250) / 1500 * 255).astype(np.int16)
    synth.save_nifti(display, tmp_path / "images" / "a.nii.gz")
    synth.save_nifti(labels, tmp_path / "labels" / "a.nii.gz")
    (case,) = discover_cases("volumes", tmp_path)
    with pytest.raises(NotHUError, match="display-windowed"):
        load_case(case)
    (case,) = discover_cases("volumes", tmp_path, intensity="auto")
    loaded = load_case(case)
    assert np.abs(loaded.hu.astype(int) - hu).max() <= 3
    with pytest.raises(ConfigError, match="intensity"):
        discover_cases("volumes", tmp_path, intensity="raw")


# ----- covid20 -----


@pytest.mark.parametrize("combined", [False, True])
def test_covid20_labels_and_display_cases_mapped_back(tmp_path: Path, combined: bool) -> None:
    data = synth.covid20_dataset(tmp_path, combined=combined)
    cases = discover_cases("covid20", tmp_path)
    assert [c.case_id for c in cases] == ["coronacases_001", "radiopaedia_4_85506_1"]
    assert [len(c.labels) for c in cases] == [1 if combined else 2] * 2
    hu_case, display_case = (load_case(c) for c in cases)
    np.testing.assert_array_equal(hu_case.hu, data["coronacases_001"][0])
    assert hu_case.hu_mapping is None
    hu = data["radiopaedia_4_85506_1"][0]
    # 8-bit quantisation of a 1500 HU window: at most half a step (2.94 HU) off, plus rounding.
    assert np.abs(display_case.hu.astype(int) - hu).max() <= 3
    assert display_case.hu_mapping is not None and "-1250" in display_case.hu_mapping
    for loaded, name in ((hu_case, "coronacases_001"), (display_case, "radiopaedia_4_85506_1")):
        np.testing.assert_array_equal(loaded.labels, data[name][1])
        assert set(np.unique(loaded.labels)) == {0, 1, 2}


def test_covid20_missing_masks(tmp_path: Path) -> None:
    synth.save_nifti(synth.chest()[0], tmp_path / "COVID-19-CT-Seg_20cases" / "coronacases_001.nii.gz")
    with pytest.raises(InputError, match="Lung_Mask/ and Infection_Mask/"):
        discover_cases("covid20", tmp_path)
    assert len(discover_cases("covid20", tmp_path, labelled=False)) == 1
    with pytest.raises(InputError, match="no COVID-19-CT-Seg_20cases/"):
        discover_cases("covid20", tmp_path / "COVID-19-CT-Seg_20cases")


# ----- slices -----


def test_slices_binary_masks_map_to_opacity(tmp_path: Path) -> None:
    data = synth.slices_dataset(tmp_path, n=3)
    cases = discover_cases("slices", tmp_path)
    assert [c.case_id for c in cases] == ["0", "1", "2"]
    assert all(c.is_2d and c.class_names == ("background", "opacity") for c in cases)
    loaded = load_case(cases[1])
    display, multi = data["1"]
    assert loaded.hu.shape == (1, *display.shape)
    np.testing.assert_allclose(loaded.hu[0], np.round(-1350 + display / 255 * 1500), atol=1)
    np.testing.assert_array_equal(loaded.labels[0], (multi > 0).astype(np.uint8))
    assert loaded.hu_mapping is not None and "-1350" in loaded.hu_mapping


def test_slices_multiclass_merged_or_kept(tmp_path: Path) -> None:
    data = synth.slices_dataset(tmp_path, n=2)
    merged = load_case(discover_cases("slices", tmp_path, masks="multiclass")[0])
    np.testing.assert_array_equal(merged.labels[0], (data["0"][1] > 0).astype(np.uint8))
    cases = discover_cases("slices", tmp_path, masks="multiclass", merge_opacity=False)
    assert cases[0].class_names == ("background", "ground_glass", "consolidation")
    np.testing.assert_array_equal(load_case(cases[0]).labels[0], data["0"][1])


def test_slices_display_window_option(tmp_path: Path) -> None:
    data = synth.slices_dataset(tmp_path, n=1)
    (case,) = discover_cases("slices", tmp_path, display_window=(-1000, 0))
    loaded = load_case(case)
    np.testing.assert_allclose(loaded.hu[0], np.round(-1000 + data["0"][0] / 255 * 1000), atol=1)
    with pytest.raises(ConfigError, match="low < high"):
        discover_cases("slices", tmp_path, display_window=(0, -1000))


def test_slices_unlabelled_groups_from_names(tmp_path: Path) -> None:
    names = ["Data-1_coronacases_org_001_1", "Data-1_coronacases_org_001_2", "Data-1_radiopaedia_x-dcm_7"]
    synth.slices_dataset(tmp_path, names=names)
    for sub in ("masks", "masks-multiclass"):
        for f in (tmp_path / sub).iterdir():
            f.unlink()
        (tmp_path / sub).rmdir()
    with pytest.raises(InputError, match=r"no masks/ folder.*labelled=False"):
        discover_cases("slices", tmp_path)
    cases = discover_cases("slices", tmp_path, labelled=False)
    assert [c.group for c in cases] == ["coronacases_org_001", "coronacases_org_001", "radiopaedia_x-dcm"]
    assert load_case(cases[0]).labels is None
    custom = discover_cases("slices", tmp_path, labelled=False, group_pattern=r"^Data-1_(\w+?)_")
    assert [c.group for c in custom] == ["coronacases", "coronacases", "radiopaedia"]
    with pytest.raises(InputError, match="does not match group_pattern"):
        discover_cases("slices", tmp_path, labelled=False, group_pattern=r"^case(?P<group>\d+)$")
    with pytest.raises(ConfigError, match="not a valid regular expression"):
        discover_cases("slices", tmp_path, labelled=False, group_pattern="(")
    with pytest.raises(ConfigError, match="capture group"):
        discover_cases("slices", tmp_path, labelled=False, group_pattern="Data")


def test_slices_empty_folder(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "notes.txt").write_text("x")
    with pytest.raises(InputError, match="no slice images"):
        discover_cases("slices", tmp_path, labelled=False)


# ----- phantom and helpers -----


def test_phantom_records_carry_seeds_and_options() -> None:
    cases = discover_cases("phantom", None, n_cases=3, base_seed=10, shape=(16, 64, 64), spacing=(5, 2, 2))
    assert [c.phantom.seed for c in cases if c.phantom] == [10, 11, 12]
    assert all(c.image is None and c.labelled and c.files == () for c in cases)
    assert cases[0].phantom is not None and cases[0].phantom.spacing == (5.0, 2.0, 2.0)
    with pytest.raises(ConfigError, match="n_cases"):
        discover_cases("phantom", None, n_cases=0)
    with pytest.raises(ConfigError, match="shape"):
        discover_cases("phantom", None, shape=(16, 64))


def test_phantom_cases_load_deterministically() -> None:
    pytest.importorskip("covidseg.data.phantom", reason="covidseg.data.phantom not available yet")
    a, b = discover_cases("phantom", None, n_cases=2, shape=(16, 64, 64))
    first, again, other = load_case(a), load_case(a), load_case(b)
    np.testing.assert_array_equal(first.hu, again.hu)
    assert not np.array_equal(first.hu, other.hu)
    assert first.hu.shape == first.labels.shape == (16, 64, 64)
    assert set(np.unique(first.labels)) <= {0, 1, 2}


def test_apply_value_map_rejects_fractional_labels() -> None:
    with pytest.raises(InputError, match="not integers"):
        apply_value_map(np.array([0.0, 0.5]), ((0, 0), (1, 1)), "x.nii")


def test_load_case_missing_label_file(tmp_path: Path) -> None:
    path = synth.save_nifti(synth.chest()[0], tmp_path / "a.nii.gz")
    case = CaseRecord("a", "volumes", path, (LabelSource(tmp_path / "nope.nii.gz", ((0, 0), (1, 1))),))
    with pytest.raises(InputError, match=r"case a: label file .*nope.nii.gz does not exist"):
        load_case(case)
