from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from covidseg.errors import InputError
from covidseg.evaluate.reading import check_same_grid, joint_counts, read_label_map
from tests.evaluate.synth import cube_labels, volume_like, write_map, write_png


def test_volume_and_png_reading(tmp_path: Path) -> None:
    labels = cube_labels()
    m = read_label_map(write_map(labels, tmp_path / "m.nrrd"))
    assert np.array_equal(m.array, labels) and m.spacing == pytest.approx((2.5, 0.75, 0.5))
    assert np.allclose(m.affine, volume_like(labels).affine)
    png = read_label_map(write_png(np.array([[0, 255], [255, 0]]), tmp_path / "m.png"))
    assert png.is_2d and png.spacing is None and png.array.tolist() == [[[0, 255], [255, 0]]]


def test_invalid_values(tmp_path: Path) -> None:
    import nibabel as nib

    nib.save(nib.Nifti1Image(np.full((2, 2, 2), 0.5, np.float32), np.eye(4)), tmp_path / "f.nii.gz")
    with pytest.raises(InputError, match="non-integer"):
        read_label_map(tmp_path / "f.nii.gz")
    nib.save(nib.Nifti1Image(np.full((2, 2, 2), 300, np.int16), np.eye(4)), tmp_path / "big.nii.gz")
    with pytest.raises(InputError, match=r"values 300\.\.300"):
        read_label_map(tmp_path / "big.nii.gz")


def test_grid_tolerance(tmp_path: Path) -> None:
    labels = cube_labels()
    a = read_label_map(write_map(labels, tmp_path / "a.nii.gz"))
    b = read_label_map(write_map(labels, tmp_path / "b.nii.gz", spacing=(2.5, 0.75, 0.5005)))
    check_same_grid(a, b, tolerance_mm=0.05)  # 0.0005 mm x 31 voxels of origin shift... within 0.05
    with pytest.raises(InputError, match="different grids"):
        check_same_grid(a, b, tolerance_mm=1e-4)


def test_joint_counts_in_chunks() -> None:
    rng = np.random.default_rng(1)
    ref = rng.choice([0, 255], size=(40, 300, 300)).astype(np.uint8)  # several chunks of 4 M voxels
    pred = rng.integers(0, 3, size=ref.shape).astype(np.uint8)
    counts = joint_counts(ref, pred)
    assert sum(counts.values()) == ref.size
    assert counts[(255, 2)] == int(np.count_nonzero((ref == 255) & (pred == 2)))
