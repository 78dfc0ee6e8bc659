from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from covidseg.data.cases import load_case
from covidseg.data.layouts import discover_cases, validate_cases
from covidseg.data.validate import canonical_shape_from_header, label_values
from covidseg.errors import InputError
from tests.data import synth


def test_valid_datasets_pass(tmp_path: Path) -> None:
    synth.volumes_dataset(tmp_path / "v", n=2)
    synth.covid20_dataset(tmp_path / "c")
    synth.slices_dataset(tmp_path / "s", n=2)
    validate_cases(discover_cases("volumes", tmp_path / "v"))
    validate_cases(discover_cases("covid20", tmp_path / "c"))
    validate_cases(discover_cases("slices", tmp_path / "s"))
    validate_cases(discover_cases("slices", tmp_path / "s", masks="multiclass"))
    validate_cases(discover_cases("phantom", None, n_cases=2))


def test_missing_label_names_case_and_file(tmp_path: Path) -> None:
    synth.volumes_dataset(tmp_path, n=2)
    (tmp_path / "labels" / "case01.nii.gz").unlink()
    cases = discover_cases("volumes", tmp_path)
    with pytest.raises(InputError, match=r"case case01: image case01.nii.gz has no label file .*labels/case01.nii.gz"):
        validate_cases(cases)


def test_shape_mismatch(tmp_path: Path) -> None:
    synth.volumes_dataset(tmp_path, n=1)
    synth.save_nifti(synth.chest((16, 64, 60))[1], tmp_path / "labels" / "case00.nii.gz")
    with pytest.raises(
        InputError, match=r"case case00: label .* has shape \(16, 64, 60\).*has \(16, 64, 64\); resample"
    ):
        validate_cases(discover_cases("volumes", tmp_path))


def test_shape_compared_in_canonical_orientation(tmp_path: Path) -> None:
    import nibabel as nib

    synth.volumes_dataset(tmp_path, n=1)
    # The same label stored in LPS file order (x flipped) with the matching affine: same canonical grid.
    labels = synth.chest()[1]
    file_ras = synth.to_file(labels)
    affine = synth.file_affine(labels.shape)
    flipped = np.diag([-1.0, 1.0, 1.0, 1.0]) @ affine
    flipped[0, 3] = affine[0, 0] * (file_ras.shape[0] - 1)
    nib.save(nib.Nifti1Image(file_ras[::-1].copy(), flipped), str(tmp_path / "labels" / "case00.nii.gz"))
    (case,) = discover_cases("volumes", tmp_path)
    validate_cases([case])
    assert canonical_shape_from_header(tmp_path / "labels" / "case00.nii.gz") == (16, 64, 64)
    np.testing.assert_array_equal(load_case(case).labels, labels)


def test_values_outside_expected_set(tmp_path: Path) -> None:
    synth.volumes_dataset(tmp_path, n=1)
    labels = synth.chest()[1].copy()
    labels[0, 0, :3] = 7
    synth.save_nifti(labels, tmp_path / "labels" / "case00.nii.gz")
    with pytest.raises(InputError, match=r"case case00: label .* holds values 7 outside the expected \[0, 1, 2\]"):
        validate_cases(discover_cases("volumes", tmp_path))


def test_slice_mask_problems(tmp_path: Path) -> None:
    synth.slices_dataset(tmp_path, n=2)
    Image.fromarray(np.full((70, 90), 128, np.uint8)).save(tmp_path / "masks" / "0.png")
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(tmp_path / "masks" / "1.png")
    with pytest.raises(InputError, match=r"case 0: .* holds values 128 .*\(1 more problem\(s\), next: case 1: .*shape"):
        validate_cases(discover_cases("slices", tmp_path))


def test_duplicates_missing_image_mixed_classes_and_empty(tmp_path: Path) -> None:
    synth.volumes_dataset(tmp_path, n=1)
    (case,) = discover_cases("volumes", tmp_path)
    with pytest.raises(InputError, match="duplicate case id 'case00'"):
        validate_cases([case, case])
    with pytest.raises(InputError, match=r"image .*gone.nii.gz does not exist"):
        validate_cases([replace(case, image=tmp_path / "gone.nii.gz")])
    with pytest.raises(InputError, match="different class names"):
        validate_cases([case, replace(case, case_id="x", class_names=("background", "opacity"))])
    with pytest.raises(InputError, match="no cases"):
        validate_cases([])


def test_unreadable_header(tmp_path: Path) -> None:
    synth.volumes_dataset(tmp_path, n=1)
    (tmp_path / "images" / "case00.nii.gz").write_bytes(b"not a nifti")
    with pytest.raises(InputError, match=r"case case00: .*case00.nii.gz"):
        validate_cases(discover_cases("volumes", tmp_path))


def test_label_values_fast_path_and_float() -> None:
    assert label_values(np.array([3, 1, 3], np.int16)) == [1.0, 3.0]
    assert label_values(np.array([0.0, 0.5])) == [0.0, 0.5]
