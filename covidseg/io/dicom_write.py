"""Writing a volume as a DICOM series: one CT Image Storage file per canonical axial slice."""

from __future__ import annotations

import datetime
import os
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import FileMetaDataset
from pydicom.uid import (
    CTImageStorage,
    ExplicitVRLittleEndian,
    MRImageStorage,
    SecondaryCaptureImageStorage,
    generate_uid,
)
from pydicom.valuerep import format_number_as_ds

from covidseg.errors import InputError
from covidseg.io.atomic import atomic_dir
from covidseg.io.volume import INT16_MAX, RAS_FROM_LPS, CTVolume

#: Storage SOP class per modality; other modalities are written as Secondary Capture.
SOP_CLASS_BY_MODALITY = {"CT": CTImageStorage, "MR": MRImageStorage}
#: Display window (center, width) put in the files: a lung window.
DEFAULT_WINDOW = (-600.0, 1500.0)
#: Largest |stored value| used when float HU need a non-unit RescaleSlope.
_STORED_LIMIT = INT16_MAX


def write_dicom_series(
    volume: CTVolume,
    folder: str | os.PathLike[str],
    *,
    modality: str = "CT",
    series_description: str = "covidseg",
    patient_id: str = "ANON",
    series_uid: str | None = None,
    overwrite: bool = False,
) -> list[Path]:
    """Write ``volume`` as a DICOM series, one file per axial slice ``volume.hu[k]``, into a new folder.

    Geometry (ImagePositionPatient, ImageOrientationPatient, PixelSpacing, SliceThickness) comes from the
    canonical affine, so loading the folder gives back the same array and affine. Pixels are stored as int16;
    integral HU are stored as they are (RescaleSlope 1, RescaleIntercept 0) and round-trip exactly; float HU
    get a slope/intercept that spans their range (error at most half a slope step).

    Args:
        volume: The volume to write.
        folder: Destination folder, created atomically (complete or absent).
        modality: DICOM Modality; "CT" gives CT Image Storage objects ("MR" and others exist for testing the
            loader's modality check).
        series_description: SeriesDescription of the series.
        patient_id: PatientID (and PatientName).
        series_uid: SeriesInstanceUID; a new UID by default.
        overwrite: Replace an existing folder.

    Returns:
        The written files in canonical z order (inferior to superior).

    Raises:
        OutputExistsError: ``folder`` exists and ``overwrite`` is false.
        InputError: The in-plane axes are not orthogonal (DICOM cannot represent the geometry).

    Examples:
        >>> import tempfile, pathlib, numpy as np
        >>> from covidseg.io.volume import canonical_affine
        >>> vol = CTVolume.from_canonical(np.full((2, 4, 5), -1000, np.int16), canonical_affine((3.0, 0.8, 0.8)))
        >>> files = write_dicom_series(vol, pathlib.Path(tempfile.mkdtemp()) / "ct")
        >>> [float(v) for v in pydicom.dcmread(files[1]).ImagePositionPatient]
        [0.0, 0.0, 3.0]
    """
    lps = RAS_FROM_LPS @ volume.affine
    spacing_y, spacing_x = float(np.linalg.norm(lps[:3, 1])), float(np.linalg.norm(lps[:3, 2]))
    row_cos, col_cos = lps[:3, 2] / spacing_x, lps[:3, 1] / spacing_y
    if abs(float(row_cos @ col_cos)) > 1e-4:
        raise InputError("cannot write DICOM: the volume's in-plane axes are not orthogonal (sheared affine)")
    normal = np.cross(row_cos, col_cos)
    thickness = abs(float(lps[:3, 0] @ normal))
    stored, slope, intercept = _stored_values(volume.hu)
    uids = {
        "study": generate_uid(),
        "series": series_uid or generate_uid(),
        "frame": generate_uid(),
    }
    now = datetime.datetime.now()
    names = [f"slice_{k:04d}.dcm" for k in range(volume.shape[0])]
    with atomic_dir(folder, overwrite=overwrite) as tmp:
        for k, name in enumerate(names):
            position = (lps @ np.array([k, 0.0, 0.0, 1.0]))[:3]
            ds = _slice_dataset(modality, uids, now)
            ds.PatientID = patient_id
            ds.PatientName = f"{patient_id}^"  # family name only; the caret marks a one-component name
            ds.SeriesDescription = series_description
            ds.InstanceNumber = k + 1
            ds.ImagePositionPatient = [format_number_as_ds(float(v)) for v in position]
            ds.ImageOrientationPatient = [format_number_as_ds(float(v)) for v in (*row_cos, *col_cos)]
            ds.PixelSpacing = [format_number_as_ds(spacing_y), format_number_as_ds(spacing_x)]
            ds.SliceThickness = format_number_as_ds(thickness)
            ds.SpacingBetweenSlices = format_number_as_ds(thickness)
            ds.SliceLocation = format_number_as_ds(float(position @ normal))
            ds.RescaleSlope = slope
            ds.RescaleIntercept = intercept
            ds.Rows, ds.Columns = (int(n) for n in volume.hu.shape[1:])
            ds.PixelData = np.ascontiguousarray(stored[k], dtype="<i2").tobytes()
            ds.save_as(tmp / name, enforce_file_format=True)
    return [Path(folder) / name for name in names]


def _stored_values(hu: np.ndarray) -> tuple[np.ndarray, str, str]:
    """int16 stored values and the RescaleSlope/Intercept (as DICOM DS strings) that map them to HU."""
    if np.issubdtype(hu.dtype, np.integer) and hu.dtype.itemsize <= 2 and hu.dtype != np.uint16:
        return hu.astype(np.int16, copy=False), "1", "0"
    values = np.asarray(hu, np.float64)
    lo, hi = float(values.min()), float(values.max())
    if np.array_equal(values, np.round(values)) and lo >= -_STORED_LIMIT - 1 and hi <= _STORED_LIMIT:
        return values.astype(np.int16), "1", "0"
    slope_s = format_number_as_ds((hi - lo) / (2 * _STORED_LIMIT) if hi > lo else 1.0)
    slope = float(slope_s)
    intercept_s = format_number_as_ds((lo + hi) / 2.0)
    intercept = float(intercept_s)
    stored = np.clip(np.round((values - intercept) / slope), -_STORED_LIMIT, _STORED_LIMIT).astype(np.int16)
    return stored, slope_s, intercept_s


def _slice_dataset(modality: str, uids: dict[str, str], now: datetime.datetime) -> pydicom.Dataset:
    """A dataset with the per-series attributes of one slice (geometry and pixels are added by the caller)."""
    sop_class = SOP_CLASS_BY_MODALITY.get(modality.upper(), SecondaryCaptureImageStorage)
    sop_uid = generate_uid()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid
    ds.StudyInstanceUID = uids["study"]
    ds.SeriesInstanceUID = uids["series"]
    ds.FrameOfReferenceUID = uids["frame"]
    ds.Modality = modality.upper()
    ds.ImageType = ["DERIVED", "SECONDARY", "AXIAL"]
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = now.strftime("%Y%m%d")
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = now.strftime("%H%M%S")
    ds.PatientBirthDate = ""
    ds.PatientSex = ""
    ds.ReferringPhysicianName = ""
    ds.AccessionNumber = ""
    ds.StudyID = "1"
    ds.SeriesNumber = 1
    ds.AcquisitionNumber = 1
    ds.Manufacturer = "covidseg"
    ds.PositionReferenceIndicator = ""
    ds.PatientPosition = "HFS"
    ds.KVP = ""
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1
    if ds.Modality == "CT":
        ds.RescaleType = "HU"
    ds.WindowCenter = format_number_as_ds(DEFAULT_WINDOW[0])
    ds.WindowWidth = format_number_as_ds(DEFAULT_WINDOW[1])
    return ds
