"""Reading a DICOM CT series from a folder with pydicom.

Files are grouped by SeriesInstanceUID; the series with the most slices is used (the others are named in a
warning). Slices are sorted by the projection of ImagePositionPatient on the slice normal, RescaleSlope and
RescaleIntercept are applied per slice, and missing slices or uneven spacing are errors, because a volume
stacked from them would have wrong geometry.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import FileMetaDataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from covidseg.errors import InputError
from covidseg.io.images import IMAGE_SUFFIXES
from covidseg.io.sanity import one_line
from covidseg.io.volume import INT16_MAX, INT16_MIN, RAS_FROM_LPS, as_hu_array

#: Relative deviation of a slice step from the median step that makes the spacing "uneven".
MAX_SPACING_DEVIATION = 0.10
#: A step this many times the median step means at least one slice is missing.
GAP_FACTOR = 1.5
#: Tolerance on direction cosines when checking that all slices share one orientation.
ORIENTATION_TOL = 1e-4
_HEADER_ERRORS = (OSError, EOFError, ValueError, TypeError, AttributeError, KeyError)


@dataclass
class _Slice:
    path: Path
    series_uid: str
    position: np.ndarray
    orientation: np.ndarray
    rows: int
    cols: int
    pixel_spacing: tuple[float, float]
    slope: float
    intercept: float
    sop_uid: str
    ds: pydicom.Dataset


@dataclass
class DicomData:
    """A DICOM series as read: HU array ``(slice, row, column)`` in position order and its RAS+ affine."""

    array: np.ndarray
    affine: np.ndarray
    modality: str | None
    series_uid: str
    study_uid: str | None
    frame_of_reference_uid: str | None
    sop_instance_uids: tuple[str, ...]
    files: tuple[Path, ...]
    warnings: list[str] = field(default_factory=list)


def is_dicom_file(path: Path) -> bool:
    """Return True when ``path`` is a readable DICOM file (by its content, not its name).

    Examples:
        >>> import tempfile, pathlib
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "notes.txt"
        >>> _ = p.write_text("hello")
        >>> is_dicom_file(p)
        False
    """
    return _read_header(path) is not None


def read_dicom_series(folder: Path, series_uid: str | None = None) -> DicomData:
    """Read one CT series from ``folder`` (searched recursively).

    Args:
        folder: Folder holding the slice files (any names, any order).
        series_uid: Read this series; by default the series with the most slices.

    Raises:
        InputError: No DICOM images in the folder, slices of different size or orientation, duplicated or
            missing slices, uneven spacing, or pixel data pydicom cannot decode.

    Examples:
        >>> import tempfile, pathlib, numpy as np
        >>> from covidseg.io.volume import CTVolume, canonical_affine
        >>> from covidseg.io.dicom_write import write_dicom_series
        >>> vol = CTVolume.from_canonical(np.full((3, 4, 5), -1000, np.int16), canonical_affine((2.0, 1.0, 1.0)))
        >>> out = pathlib.Path(tempfile.mkdtemp()) / "series"
        >>> _ = write_dicom_series(vol, out)
        >>> read_dicom_series(out).array.shape
        (3, 4, 5)
    """
    series, skipped, n_images = _scan(folder)
    if not series:
        raise InputError(_no_dicom_message(folder, skipped, n_images))
    ranked = sorted(series.items(), key=lambda kv: (-len(kv[1]), kv[0]))
    warnings: list[str] = []
    if series_uid is None:
        series_uid, slices = ranked[0]
        tied = [uid for uid, s in ranked[1:] if len(s) == len(slices)]
        if tied:
            raise InputError(
                f"{folder}: {len(tied) + 1} series with {len(slices)} slices each ({', '.join([series_uid, *tied])}); "
                "choose one with --series UID"
            )
        if len(ranked) > 1:
            others = ", ".join(f"{uid} ({len(s)} slices)" for uid, s in ranked[1:])
            warnings.append(
                f"{len(ranked)} series found in {folder}, using {series_uid} with {len(slices)} slices; "
                f"ignored: {others}"
            )
    elif series_uid in series:
        slices = series[series_uid]
    else:
        raise InputError(
            f"{folder}: no image slices of series {series_uid}; found {', '.join(series)}; choose one with --series UID"
        )
    if skipped:
        warnings.append(f"{skipped} file(s) in {folder} are not DICOM image slices and were ignored")
    slices = _sorted_checked(slices, folder, series_uid)
    first = slices[0].ds
    return DicomData(
        array=_stack_pixels(slices, folder),
        affine=_affine(slices),
        modality=str(first.get("Modality", "")).strip() or None,
        series_uid=series_uid,
        study_uid=str(first.get("StudyInstanceUID", "")) or None,
        frame_of_reference_uid=str(first.get("FrameOfReferenceUID", "")) or None,
        sop_instance_uids=tuple(s.sop_uid for s in slices),
        files=tuple(s.path for s in slices),
        warnings=warnings,
    )


def dicom_series_uid(path: Path) -> str:
    """SeriesInstanceUID of one DICOM file (used when a single slice file is passed)."""
    ds = _read_header(path)
    return str(ds.get("SeriesInstanceUID", "")) if ds is not None else ""


def _scan(folder: Path) -> tuple[dict[str, list[_Slice]], int, int]:
    """Group the image slices under ``folder`` by series; count skipped files and non-DICOM images."""
    series: dict[str, list[_Slice]] = {}
    skipped = n_images = 0
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        ds = _read_header(path)
        if ds is None:
            n_images += path.suffix.lower() in IMAGE_SUFFIXES
            skipped += 1
            continue
        parsed = _parse_slice(path, ds)
        if parsed is None:
            skipped += 1
            continue
        series.setdefault(parsed.series_uid, []).append(parsed)
    return series, skipped, n_images


def _read_header(path: Path) -> pydicom.Dataset | None:
    """The header of a DICOM file, or None if it is not one.

    Files without the 128-byte preamble and "DICM" marker (older exports) are parsed with ``force=True`` and
    accepted only if they carry a SOPClassUID, so arbitrary files are not mistaken for DICOM.
    """
    try:
        return pydicom.dcmread(path, stop_before_pixels=True)
    except InvalidDicomError:
        pass
    except _HEADER_ERRORS:
        return None
    if path.suffix.lower() in IMAGE_SUFFIXES:
        return None
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
        return ds if "SOPClassUID" in ds and ds.get("SOPClassUID") else None
    except Exception:  # a forced parse of a non-DICOM file can fail in many ways
        return None


def _parse_slice(path: Path, ds: pydicom.Dataset) -> _Slice | None:
    """Geometry of one single-frame image slice, or None for non-image objects (DICOMDIR, SEG, SR, ...)."""
    needed = ("SeriesInstanceUID", "ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "Rows")
    if any(ds.get(k) is None for k in needed) or int(ds.get("NumberOfFrames", 1) or 1) > 1:
        return None
    try:
        return _Slice(
            path=path,
            series_uid=str(ds.SeriesInstanceUID),
            position=np.asarray([float(v) for v in ds.ImagePositionPatient], np.float64),
            orientation=np.asarray([float(v) for v in ds.ImageOrientationPatient], np.float64),
            rows=int(ds.Rows),
            cols=int(ds.Columns),
            pixel_spacing=(float(ds.PixelSpacing[0]), float(ds.PixelSpacing[1])),
            slope=float(ds.get("RescaleSlope", 1.0) or 1.0),
            intercept=float(ds.get("RescaleIntercept", 0.0) or 0.0),
            sop_uid=str(ds.get("SOPInstanceUID", "")),
            ds=ds,
        )
    except (TypeError, ValueError, AttributeError, IndexError):
        return None


def _no_dicom_message(folder: Path, skipped: int, n_images: int) -> str:
    if n_images:
        return (
            f"{folder}: the folder holds {n_images} slice image(s) (.png/.jpg) but no DICOM files; pass one image "
            "file at a time, or a folder of DICOM slices"
        )
    return (
        f"{folder}: no DICOM image slices found ({skipped} file(s) checked); pass a folder with the DICOM files "
        "of one CT series, or a .nii/.nii.gz/.mha/.mhd/.nrrd file"
    )


def _sorted_checked(slices: list[_Slice], folder: Path, uid: str) -> list[_Slice]:
    """Sort slices along the normal and check shape, orientation and spacing."""
    where = f"{folder}: series {uid}"
    first = slices[0]
    for s in slices[1:]:
        if (s.rows, s.cols) != (first.rows, first.cols):
            raise InputError(
                f"{where}: slices differ in size ({first.rows}x{first.cols} and {s.rows}x{s.cols}); "
                "pass a folder with one consistent series"
            )
        if not np.allclose(s.orientation, first.orientation, atol=ORIENTATION_TOL):
            raise InputError(
                f"{where}: slices have different ImageOrientationPatient (e.g. {s.path.name}); "
                "remove localizer or reformatted images and keep one acquisition"
            )
        if not np.allclose(s.pixel_spacing, first.pixel_spacing, rtol=1e-4):
            raise InputError(f"{where}: slices differ in PixelSpacing; pass a folder with one consistent series")
    normal = np.cross(first.orientation[:3], first.orientation[3:])
    slices = sorted(slices, key=lambda s: float(s.position @ normal))
    if len(slices) < 2:
        return slices
    pos = np.asarray([float(s.position @ normal) for s in slices])
    steps = np.diff(pos)
    median = float(np.median(steps))
    n_dup = int(np.count_nonzero(steps < 1e-3 * abs(median) + 1e-6))
    if n_dup:
        raise InputError(
            f"{where}: {n_dup} slice(s) share a position with another (several acquisitions or duplicated "
            "files in one series); keep one acquisition and remove the duplicates"
        )
    gaps = np.flatnonzero(steps > GAP_FACTOR * median)
    if gaps.size:
        i = int(gaps[0])
        missing = round(float(steps[gaps].sum()) / median) - int(gaps.size)
        raise InputError(
            f"{where}: about {max(missing, 1)} slice(s) missing: a {steps[i]:.2f} mm gap between slice positions "
            f"{pos[i]:.2f} and {pos[i + 1]:.2f} mm where slices are {median:.2f} mm apart; re-export the "
            "complete series"
        )
    deviation = np.abs(steps - median) / median
    if deviation.max() > MAX_SPACING_DEVIATION:
        raise InputError(
            f"{where}: uneven slice spacing ({steps.min():.3g} to {steps.max():.3g} mm, more than "
            f"{100 * MAX_SPACING_DEVIATION:.0f}% from the median {median:.3g} mm); resample the series to even "
            "spacing (or convert it to NIfTI with a tool that does) and pass the result"
        )
    return slices


def _affine(slices: list[_Slice]) -> np.ndarray:
    """RAS+ affine of the stacked array's axes (slice, row, column)."""
    first = slices[0]
    row_cos, col_cos = first.orientation[:3], first.orientation[3:]
    if len(slices) > 1:
        step = (slices[-1].position - first.position) / (len(slices) - 1)
    else:
        thickness = float(first.ds.get("SpacingBetweenSlices", 0) or first.ds.get("SliceThickness", 0) or 1.0)
        step = np.cross(row_cos, col_cos) * thickness
    lps = np.eye(4)
    lps[:3, 0] = step
    lps[:3, 1] = col_cos * first.pixel_spacing[0]  # rows advance along the column direction cosines
    lps[:3, 2] = row_cos * first.pixel_spacing[1]
    lps[:3, 3] = first.position
    return RAS_FROM_LPS @ lps


def _read_pixels(path: Path) -> np.ndarray:
    """Stored pixel values of one slice; files without file meta get the transfer syntax they were parsed as."""
    ds = pydicom.dcmread(path, force=True)
    meta = getattr(ds, "file_meta", None)
    if meta is None or "TransferSyntaxUID" not in meta:
        implicit, little = ds.original_encoding
        if meta is None:
            ds.file_meta = meta = FileMetaDataset()
        if implicit:
            meta.TransferSyntaxUID = ImplicitVRLittleEndian
        else:
            meta.TransferSyntaxUID = ExplicitVRLittleEndian if little else ExplicitVRBigEndian
    return np.asarray(ds.pixel_array)


def _stack_pixels(slices: list[_Slice], folder: Path) -> np.ndarray:
    """Read pixel data, apply RescaleSlope/Intercept, stack; int16 when the HU values are integral."""
    first = slices[0]
    integral = all(s.slope == 1.0 and float(s.intercept).is_integer() for s in slices)
    out = np.empty((len(slices), first.rows, first.cols), np.int16 if integral else np.float32)
    for k, s in enumerate(slices):
        try:
            pixels = _read_pixels(s.path)
        except Exception as err:  # pydicom raises many types for unsupported or broken pixel data
            raise InputError(
                f"{folder}: cannot decode the pixel data of {s.path.name} ({one_line(err)}); "
                "install the pydicom pixel handler it names or convert the series to uncompressed DICOM or NIfTI"
            ) from err
        if pixels.shape != (first.rows, first.cols):
            raise InputError(f"{folder}: {s.path.name} has pixel array {pixels.shape}, expected one 2-D frame")
        if integral:
            values = pixels.astype(np.int32) + int(s.intercept)
            if values.min() < INT16_MIN or values.max() > INT16_MAX:
                out, integral = out.astype(np.float32), False
            out[k] = values
        else:
            out[k] = pixels.astype(np.float32) * np.float32(s.slope) + np.float32(s.intercept)
    return as_hu_array(out)
