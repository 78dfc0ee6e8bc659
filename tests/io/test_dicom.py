"""DICOM series: write with write_dicom_series, read back; series choice, sorting and broken-series errors."""

from __future__ import annotations

import random
import shutil

import nibabel as nib
import numpy as np
import pydicom
import pytest

from covidseg.errors import InputError, NotHUError, OutputExistsError
from covidseg.io import CTVolume, canonical_affine, load_ct, save_mask, write_dicom_series
from covidseg.io.volume import axcodes_of
from tests.io.geometry import MARKER_HU, affine, labels_from_hu, rotation, synthetic_ct, world

SHAPE = (12, 40, 48)  # canonical (z, y, x)
MARKER = (7, 11, 30)


def _volume(shape=SHAPE, spacing=(2.5, 0.7, 0.7), linear=None, seed=0):
    hu = synthetic_ct(shape, MARKER if shape == SHAPE else (1, 2, 3), seed=seed)
    aff = canonical_affine(spacing, origin=(-17.5, 30.25, -120.0))
    if linear is not None:
        aff = affine(linear, (-17.5, 30.25, -120.0))
    return CTVolume.from_canonical(hu, aff)


def test_round_trip_hu_affine_and_uids(tmp_path):
    vol = _volume()
    files = write_dicom_series(vol, tmp_path / "ct")
    assert len(files) == SHAPE[0] and all(f.exists() for f in files)
    loaded = load_ct(tmp_path / "ct")
    assert loaded.hu.dtype == np.int16
    np.testing.assert_array_equal(loaded.hu, vol.hu)
    np.testing.assert_allclose(loaded.affine, vol.affine, atol=1e-6)
    src = loaded.source
    assert src is not None and src.format == "dicom" and src.modality == "CT"
    assert src.dicom_slice_axis == 0
    # Per-slice UIDs are in canonical z order: file k holds hu[k].
    assert list(src.sop_instance_uids) == [str(pydicom.dcmread(f).SOPInstanceUID) for f in files]
    assert src.series_uid == str(pydicom.dcmread(files[0]).SeriesInstanceUID)


def test_written_files_carry_geometry_and_rescale(tmp_path):
    vol = _volume()
    files = write_dicom_series(vol, tmp_path / "ct", series_description="demo", patient_id="P1")
    ds = pydicom.dcmread(files[3])
    assert ds.SOPClassUID == pydicom.uid.CTImageStorage
    assert ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
    assert [float(v) for v in ds.PixelSpacing] == [0.7, 0.7]
    assert float(ds.SliceThickness) == 2.5
    # canonical x -> patient Left = +x in LPS; canonical y -> Posterior = +y in LPS.
    assert [float(v) for v in ds.ImageOrientationPatient] == [1, 0, 0, 0, 1, 0]
    np.testing.assert_allclose([float(v) for v in ds.ImagePositionPatient], [17.5, -30.25, -120.0 + 3 * 2.5])
    assert (float(ds.RescaleSlope), float(ds.RescaleIntercept)) == (1.0, 0.0)
    assert ds.SeriesDescription == "demo" and ds.PatientID == "P1" and ds.Modality == "CT"
    assert ds.pixel_array.dtype == np.int16
    np.testing.assert_array_equal(ds.pixel_array, vol.hu[3])
    uids = {str(pydicom.dcmread(f).SOPInstanceUID) for f in files}
    assert len(uids) == len(files)


def test_oblique_series_round_trips(tmp_path):
    linear = rotation("x", 20) @ np.array([[0, 0, -0.7], [0, -0.7, 0], [2.5, 0, 0]])
    vol = _volume(linear=linear)
    write_dicom_series(vol, tmp_path / "ct")
    loaded = load_ct(tmp_path / "ct")
    np.testing.assert_allclose(loaded.affine, vol.affine, atol=1e-6)
    np.testing.assert_array_equal(loaded.hu, vol.hu)
    assert axcodes_of(loaded.affine) == "SPL"


def test_float_hu_round_trip_within_half_a_rescale_step(tmp_path):
    hu = synthetic_ct((4, 20, 24), (1, 2, 3)).astype(np.float32) + np.float32(0.37)
    vol = CTVolume.from_canonical(hu, canonical_affine((3.0, 0.9, 0.9)))
    files = write_dicom_series(vol, tmp_path / "ct")
    slope = float(pydicom.dcmread(files[0]).RescaleSlope)
    assert 0 < slope < 0.1
    loaded = load_ct(tmp_path / "ct")
    assert np.abs(loaded.hu.astype(np.float64) - hu).max() <= slope / 2 + 1e-3


def test_shuffled_file_names_sort_by_position(tmp_path):
    vol = _volume()
    files = write_dicom_series(vol, tmp_path / "ct")
    shuffled = tmp_path / "shuffled"
    shuffled.mkdir()
    names = [f"IM{n:03d}" for n in range(len(files))]
    random.Random(3).shuffle(names)
    for f, name in zip(files, names, strict=True):
        shutil.copy(f, shuffled / name)
    loaded = load_ct(shuffled)
    np.testing.assert_array_equal(loaded.hu, vol.hu)
    np.testing.assert_allclose(loaded.affine, vol.affine, atol=1e-6)


def test_two_series_picks_larger_and_warns(tmp_path):
    big, small = _volume(), _volume(shape=(5, 40, 48), seed=1)
    write_dicom_series(big, tmp_path / "a", series_uid="1.2.826.0.1.3680043.8.498.1")
    write_dicom_series(small, tmp_path / "b", series_uid="1.2.826.0.1.3680043.8.498.2")
    mixed = tmp_path / "mixed"
    shutil.copytree(tmp_path / "a", mixed)
    for f in (tmp_path / "b").iterdir():
        shutil.copy(f, mixed / f"b_{f.name}")
    loaded = load_ct(mixed)
    np.testing.assert_array_equal(loaded.hu, big.hu)
    assert loaded.source is not None and loaded.source.series_uid == "1.2.826.0.1.3680043.8.498.1"
    (warning,) = [w for w in loaded.source.warnings if "series found" in w]
    assert "2 series found" in warning and "1.2.826.0.1.3680043.8.498.2 (5 slices)" in warning


def test_single_slice_file_loads_its_own_series(tmp_path):
    big, small = _volume(), _volume(shape=(5, 40, 48), seed=1)
    write_dicom_series(big, tmp_path / "a")
    small_files = write_dicom_series(small, tmp_path / "b")
    for f in small_files:
        shutil.copy(f, tmp_path / "a" / f"small_{f.name}")
    loaded = load_ct(tmp_path / "a" / f"small_{small_files[2].name}")
    np.testing.assert_array_equal(loaded.hu, small.hu)


def test_missing_slice_is_an_error(tmp_path):
    files = write_dicom_series(_volume(), tmp_path / "ct")
    files[5].unlink()
    with pytest.raises(InputError, match=r"about 1 slice\(s\) missing: a 5\.00 mm gap .* re-export the complete"):
        load_ct(tmp_path / "ct")


def test_uneven_spacing_is_an_error(tmp_path):
    files = write_dicom_series(_volume(), tmp_path / "ct")
    for f in files[6:]:  # shift the upper half by 0.6 mm: one step of 3.1 mm among 2.5 mm steps
        ds = pydicom.dcmread(f)
        ds.ImagePositionPatient = [*ds.ImagePositionPatient[:2], float(ds.ImagePositionPatient[2]) + 0.6]
        ds.save_as(f)
    with pytest.raises(InputError, match=r"uneven slice spacing \(2\.5 to 3\.1 mm.*resample"):
        load_ct(tmp_path / "ct")


def test_duplicate_positions_are_an_error(tmp_path):
    files = write_dicom_series(_volume(), tmp_path / "ct")
    ds = pydicom.dcmread(files[4])
    ds.SOPInstanceUID = pydicom.uid.generate_uid()
    ds.save_as(tmp_path / "ct" / "copy.dcm")
    with pytest.raises(InputError, match="share a position"):
        load_ct(tmp_path / "ct")


def test_mr_series_needs_allow_non_ct(tmp_path):
    write_dicom_series(_volume(), tmp_path / "mr", modality="MR")
    with pytest.raises(NotHUError, match=r"modality is MR, not CT.*--allow-non-ct"):
        load_ct(tmp_path / "mr")
    loaded = load_ct(tmp_path / "mr", allow_non_ct=True)
    assert loaded.source is not None and loaded.source.modality == "MR"


def test_folder_without_dicom_is_an_input_error(tmp_path):
    (tmp_path / "notes.txt").write_text("not dicom")
    with pytest.raises(InputError, match=r"no DICOM image slices found \(1 file\(s\) checked\)"):
        load_ct(tmp_path)


def test_empty_folder_is_an_input_error(tmp_path):
    with pytest.raises(InputError, match="no DICOM image slices found"):
        load_ct(tmp_path)


def test_folder_with_images_but_no_dicom_says_so(tmp_path):
    from PIL import Image

    for n in range(2):
        Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / f"s{n}.png")
    with pytest.raises(InputError, match=r"2 slice image\(s\) .* but no DICOM files; pass one image file"):
        load_ct(tmp_path)


def test_write_refuses_existing_folder(tmp_path):
    vol = _volume()
    write_dicom_series(vol, tmp_path / "ct")
    with pytest.raises(OutputExistsError):
        write_dicom_series(vol, tmp_path / "ct")
    files = write_dicom_series(vol, tmp_path / "ct", overwrite=True)
    assert sorted(p.name for p in (tmp_path / "ct").iterdir()) == sorted(f.name for f in files)


def test_mask_of_dicom_input_is_nifti_with_same_world_positions(tmp_path):
    vol = _volume(linear=rotation("z", 15) @ np.array([[0, 0, -0.7], [0, -0.7, 0], [2.5, 0, 0]]))
    write_dicom_series(vol, tmp_path / "ct")
    loaded = load_ct(tmp_path / "ct")
    out = save_mask(labels_from_hu(loaded.hu), loaded, tmp_path / "mask.nii.gz")
    img = nib.load(out)
    mask = np.asarray(img.dataobj)
    (ijk,) = np.argwhere(mask == 2)
    assert loaded.hu[MARKER] == MARKER_HU
    np.testing.assert_allclose(world(img.affine, ijk), world(vol.affine, MARKER), atol=1e-4)
    assert "".join(nib.aff2axcodes(img.affine)) == "LPS"


def test_series_is_usable_by_highdicom(tmp_path):
    hd = pytest.importorskip("highdicom")
    vol = _volume(shape=(3, 16, 20), spacing=(2.0, 0.8, 0.8))
    files = write_dicom_series(vol, tmp_path / "ct")
    sources = [pydicom.dcmread(f) for f in files]
    mask = np.zeros((3, 16, 20), bool)
    mask[1, 4:9, 5:12] = True
    seg = hd.seg.Segmentation(
        source_images=sources,
        pixel_array=mask,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[
            hd.seg.SegmentDescription(
                segment_number=1,
                segment_label="lesion",
                segmented_property_category=hd.sr.CodedConcept("49755003", "SCT", "Morphologically Altered Structure"),
                segmented_property_type=hd.sr.CodedConcept("4147007", "SCT", "Mass"),
                algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL,
            )
        ],
        series_instance_uid=hd.UID(),
        series_number=2,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="covidseg",
        manufacturer_model_name="test",
        software_versions="0",
        device_serial_number="0",
    )
    assert seg.SOPClassUID == "1.2.840.10008.5.1.4.1.1.66.4"


def test_files_without_preamble_or_file_meta_are_read(tmp_path):
    vol = _volume(shape=(5, 40, 48), seed=2)
    files = write_dicom_series(vol, tmp_path / "ct")
    raw = tmp_path / "raw"
    raw.mkdir()
    for f in files:  # old ACR-NEMA style: no 128-byte preamble, no "DICM", no file meta, implicit VR
        ds = pydicom.dcmread(f)
        del ds.file_meta
        ds.preamble = None
        ds.save_as(raw / f.stem, implicit_vr=True, little_endian=True)
    assert (raw / files[0].stem).read_bytes()[128:132] != b"DICM"
    loaded = load_ct(raw)
    np.testing.assert_array_equal(loaded.hu, vol.hu)
    np.testing.assert_allclose(loaded.affine, vol.affine, atol=1e-6)


def test_non_dicom_files_beside_a_series_are_skipped_with_a_warning(tmp_path):
    vol = _volume(shape=(5, 40, 48), seed=2)
    write_dicom_series(vol, tmp_path / "ct")
    (tmp_path / "ct" / "README.txt").write_text("exported by PACS")
    (tmp_path / "ct" / "noise.bin").write_bytes(bytes(range(256)) * 8)
    loaded = load_ct(tmp_path / "ct")
    np.testing.assert_array_equal(loaded.hu, vol.hu)
    assert any("2 file(s)" in w and "ignored" in w for w in loaded.source.warnings)


def test_mirrored_in_plane_axes_keep_uids_in_canonical_z_order(tmp_path):
    # x pointing to patient Right makes the slice normal point Inferior: files sort superior-first.
    aff = canonical_affine((2.5, 0.7, 0.7))
    aff[:3, 2] = (0.7, 0.0, 0.0)
    vol = CTVolume.from_canonical(synthetic_ct(SHAPE, MARKER), aff)
    files = write_dicom_series(vol, tmp_path / "ct")
    loaded = load_ct(tmp_path / "ct")
    np.testing.assert_array_equal(loaded.hu, vol.hu[:, :, ::-1])
    assert axcodes_of(loaded.affine) == "SPL"
    assert loaded.source is not None and loaded.source.dicom_slice_axis == 0
    assert list(loaded.source.dicom_files) == files
    assert list(loaded.source.sop_instance_uids) == [str(pydicom.dcmread(f).SOPInstanceUID) for f in files]


def test_single_slice_series_takes_thickness_as_spacing(tmp_path):
    vol = CTVolume.from_canonical(synthetic_ct((1, 40, 48), (0, 5, 6)), canonical_affine((3.0, 0.7, 0.7)))
    write_dicom_series(vol, tmp_path / "ct")
    loaded = load_ct(tmp_path / "ct")
    np.testing.assert_allclose(loaded.affine, vol.affine, atol=1e-6)
