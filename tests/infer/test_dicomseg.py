"""DICOM SEG: round trip against the label map, frame geometry checked from the file itself, codes, references."""

from __future__ import annotations

from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest

from covidseg.errors import InputError, OutputExistsError
from covidseg.infer.dicomseg import read_dicom_seg_labels, write_dicom_seg
from covidseg.infer.outputs import OutputOptions
from covidseg.infer.pipeline import PredictOptions, predict_scan
from covidseg.io import CTVolume, canonical_affine, load_ct, write_dicom_series
from covidseg.io.volume import RAS_FROM_LPS
from tests.infer.analytic import analytic_segmenter, toy_chest

SPACING = (5.0, 1.5, 1.5)


@pytest.fixture(scope="module")
def series(tmp_path_factory) -> tuple[Path, np.ndarray]:
    hu, truth = toy_chest((8, 64, 64))
    folder = tmp_path_factory.mktemp("dicom") / "chest"
    write_dicom_series(CTVolume.from_canonical(hu, canonical_affine(SPACING, origin=(3.0, -7.0, 40.0))), folder)
    return folder, truth


def _frame_labels_by_position(seg: pydicom.Dataset, volume: CTVolume) -> np.ndarray:
    """Rebuild canonical labels from the SEG's own frame geometry (IPP/IOP/spacing), independent of covidseg."""
    out = np.zeros(volume.shape, np.uint8)
    shared = seg.SharedFunctionalGroupsSequence[0]
    iop = np.array(shared.PlaneOrientationSequence[0].ImageOrientationPatient, float)
    row_mm, col_mm = (float(v) for v in shared.PixelMeasuresSequence[0].PixelSpacing)
    frames = seg.pixel_array.reshape(-1, seg.Rows, seg.Columns)
    inverse = np.linalg.inv(volume.affine)
    r, c = np.mgrid[0 : seg.Rows, 0 : seg.Columns]
    for frame, group in zip(frames, seg.PerFrameFunctionalGroupsSequence, strict=True):
        ipp = np.array(group.PlanePositionSequence[0].ImagePositionPatient, float)
        segment = int(group.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        lps = ipp[:, None, None] + iop[:3, None, None] * c * col_mm + iop[3:, None, None] * r * row_mm
        ras = RAS_FROM_LPS[:3, :3] @ lps.reshape(3, -1)
        idx = np.round(inverse[:3, :3] @ ras + inverse[:3, 3:4]).astype(int)
        z, y, x = idx
        assert np.allclose(inverse[:3, :3] @ ras + inverse[:3, 3:4], idx, atol=1e-3)
        out[z, y, x] += frame.ravel().astype(np.uint8) * (1 if segment in (1, 2) else 0)
    return out


def test_seg_round_trip_and_geometry(series, tmp_path):
    folder, _ = series
    result = predict_scan(
        folder, analytic_segmenter(64), tmp_path, options=PredictOptions(OutputOptions(overview=False))
    )
    assert sorted(result.outputs) == ["dicom_seg", "labels", "report"]
    volume = load_ct(folder)
    labels = load_ct(result.outputs["labels"], assume_hu=True).hu.astype(np.uint8)
    assert (labels == 2).sum() > 100 and (labels == 1).sum() > 1000
    path = result.outputs["dicom_seg"]
    assert np.array_equal(read_dicom_seg_labels(path, volume), labels)
    ds = pydicom.dcmread(path)
    assert np.array_equal(_frame_labels_by_position(ds, volume), labels)

    assert ds.SOPClassUID == pydicom.uid.SegmentationStorage and ds.SegmentationType == "BINARY"
    assert ds.StudyInstanceUID == volume.source.study_uid
    assert ds.FrameOfReferenceUID == volume.source.frame_of_reference_uid
    assert ds.ReferencedSeriesSequence[0].SeriesInstanceUID == volume.source.series_uid
    referenced = {str(i.ReferencedSOPInstanceUID) for i in ds.ReferencedSeriesSequence[0].ReferencedInstanceSequence}
    assert referenced <= set(volume.source.sop_instance_uids)
    for group in ds.PerFrameFunctionalGroupsSequence:  # each frame lies on the plane of the image it came from
        source_uid = group.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        k = volume.source.sop_instance_uids.index(source_uid)
        source = pydicom.dcmread(volume.source.dicom_files[k], stop_before_pixels=True)
        np.testing.assert_allclose(
            [float(v) for v in group.PlanePositionSequence[0].ImagePositionPatient],
            [float(v) for v in source.ImagePositionPatient],
        )

    segments = {int(s.SegmentNumber): s for s in ds.SegmentSequence}
    assert segments[1].SegmentLabel == "Lung" and segments[2].SegmentLabel == "Opacity"
    assert segments[1].SegmentedPropertyTypeCodeSequence[0].CodeValue == "39607008"
    assert segments[1].SegmentedPropertyCategoryCodeSequence[0].CodeValue == "91723000"
    assert segments[2].SegmentedPropertyCategoryCodeSequence[0].CodeValue == "49755003"
    assert segments[2].SegmentAlgorithmType == "AUTOMATIC"
    assert hd.seg.segread(path).get_segment_numbers() == [1, 2]


def test_empty_mask_gives_a_valid_empty_seg(series, tmp_path):
    folder, _ = series
    volume = load_ct(folder)
    path = write_dicom_seg(np.zeros(volume.shape, np.uint8), volume, tmp_path / "empty.dcm")
    assert not read_dicom_seg_labels(path, volume).any()


def test_refusals(series, tmp_path):
    folder, _ = series
    volume = load_ct(folder)
    labels = np.zeros(volume.shape, np.uint8)
    write_dicom_seg(labels, volume, tmp_path / "seg.dcm")
    with pytest.raises(OutputExistsError):
        write_dicom_seg(labels, volume, tmp_path / "seg.dcm")
    synthetic = CTVolume.from_canonical(np.zeros((2, 8, 8)), canonical_affine())
    with pytest.raises(InputError, match="DICOM series"):
        write_dicom_seg(np.zeros((2, 8, 8), np.uint8), synthetic, tmp_path / "x.dcm")
