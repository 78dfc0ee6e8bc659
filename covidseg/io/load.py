"""``load_ct``: one entry point that reads any supported CT input into a canonical :class:`CTVolume`."""

from __future__ import annotations

import os
from pathlib import Path
from typing import cast

import numpy as np

from covidseg.errors import InputError
from covidseg.io.atomic import full_suffix
from covidseg.io.dicom_read import DicomData, dicom_series_uid, is_dicom_file, read_dicom_series
from covidseg.io.images import DEFAULT_IMAGE_SPACING_MM, IMAGE_SUFFIXES, read_image
from covidseg.io.itk import read_itk
from covidseg.io.nifti import read_nifti
from covidseg.io.sanity import check_finite, check_hu, check_modality, squeeze_to_3d
from covidseg.io.volume import CTVolume, SourceInfo, as_hu_array, canonical_affine, canonicalize

NIFTI_SUFFIXES = (".nii", ".nii.gz")
ITK_FORMATS = {".mha": "mha", ".mhd": "mhd", ".nrrd": "nrrd", ".nhdr": "nrrd"}
SUPPORTED = ".nii, .nii.gz, .mha, .mhd, .nrrd, .png, .jpg, .jpeg or a DICOM series folder"


def load_ct(
    path: str | os.PathLike[str],
    *,
    image_window: tuple[float, float] | None = None,
    assume_hu: bool = False,
    allow_non_ct: bool = False,
    series_uid: str | None = None,
) -> CTVolume:
    """Read a CT scan in Hounsfield units, in canonical ``(Z, Y, X)`` orientation, with its source geometry.

    Args:
        path: A NIfTI (.nii, .nii.gz), MHA/MHD or NRRD file, a folder of DICOM slices (or one slice file of
            the series to read), or a 2-D slice image (.png, .jpg, .jpeg).
        image_window: For slice images, the display window ``(low, high)`` in HU that 0..255 stands for;
            ``LUNG_WINDOW`` when None. Ignored (with a warning) for other formats.
        assume_hu: Skip the check that the intensities look like HU.
        allow_non_ct: Accept a recorded modality other than CT (e.g. a DICOM MR series).
        series_uid: For a DICOM folder holding several series, the SeriesInstanceUID to read; by default the
            series with the most slices (several series of equal size are an error that asks for this).

    Returns:
        The volume; ``volume.source.warnings`` lists what the user should know (e.g. ignored series).

    Raises:
        InputError: Missing path, unsupported or unreadable file, not 3-D, NaN voxels, broken DICOM series.
        NotHUError: The intensities do not look like HU, or the modality is not CT.

    Examples:
        >>> import tempfile, pathlib, nibabel as nib, numpy as np
        >>> data = np.full((6, 5, 4), -1000, np.int16)
        >>> data[2:4, 1:4, 1:3] = 40
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "ct.nii.gz"
        >>> nib.save(nib.Nifti1Image(data, np.diag([0.75, 0.75, 2.5, 1.0])), p)
        >>> vol = load_ct(p)
        >>> vol.shape, vol.spacing, vol.source.format
        ((4, 5, 6), (2.5, 0.75, 0.75), 'nifti')
    """
    p = Path(path)
    if not p.exists():
        raise InputError(f"{p}: no such file or folder; check the path")
    suffix = full_suffix(p)
    if p.is_dir():
        volume = _from_dicom(read_dicom_series(p, series_uid), p)
    elif suffix in NIFTI_SUFFIXES:
        nii = read_nifti(p)
        source = SourceInfo(format="nifti", path=p, native_affine=nii.affine, native_shape=(), nifti_header=nii.header)
        volume = _from_native(nii.array, source, nii.warnings)
    elif suffix in ITK_FORMATS:
        itk = read_itk(p)
        source = SourceInfo(
            format=ITK_FORMATS[suffix],
            path=p,
            native_affine=itk.affine,
            native_shape=(),
            modality=itk.modality,
            itk_direction=itk.direction,
            itk_origin=itk.origin,
            itk_spacing=itk.spacing,
        )
        volume = _from_native(itk.array, source, [])
    elif suffix in IMAGE_SUFFIXES:
        volume = _from_image(p, image_window)
    elif is_dicom_file(p):
        volume = _from_dicom(read_dicom_series(p.parent, dicom_series_uid(p)), p.parent)
    else:
        raise InputError(f"{p}: unsupported input '{suffix or p.name}'; pass a {SUPPORTED}")
    source = cast(SourceInfo, volume.source)  # every reader above attaches its SourceInfo
    if image_window is not None and source.format != "image":
        source.warnings.append(f"image_window {image_window} ignored: it applies to .png/.jpg slices only")
    if not allow_non_ct:
        check_modality(source.modality, p)
    if not assume_hu:
        check_hu(volume.hu, p)
    return volume


def _from_native(array: np.ndarray, source: SourceInfo, warnings: list[str]) -> CTVolume:
    """Check a native array, reorient it to canonical and attach ``source``."""
    check_finite(array, source.path)
    native = squeeze_to_3d(array, source.path)
    source.native_shape = tuple(int(s) for s in native.shape)
    source.warnings.extend(warnings)
    hu, affine = canonicalize(native, source.native_affine)
    return CTVolume(hu=as_hu_array(hu), affine=affine, source=source)


def _from_dicom(data: DicomData, folder: Path) -> CTVolume:
    source = SourceInfo(
        format="dicom",
        path=folder,
        native_affine=data.affine,
        native_shape=(),
        modality=data.modality,
        series_uid=data.series_uid,
        study_uid=data.study_uid,
        frame_of_reference_uid=data.frame_of_reference_uid,
    )
    volume = _from_native(data.array, source, data.warnings)
    # Order the per-slice UIDs and files along the canonical axis the slice stacking maps to.
    axis, flip = source.to_canonical_ornt[0]
    order = slice(None, None, -1) if flip < 0 else slice(None)
    source.dicom_slice_axis = int(axis)
    source.sop_instance_uids = data.sop_instance_uids[order]
    source.dicom_files = data.files[order]
    return volume


def _from_image(path: Path, window: tuple[float, float] | None) -> CTVolume:
    hu, warnings = read_image(path, window)
    affine = canonical_affine((DEFAULT_IMAGE_SPACING_MM,) * 3)
    source = SourceInfo(format="image", path=path, native_affine=affine, native_shape=tuple(int(s) for s in hu.shape))
    source.warnings.extend(warnings)
    # Display values are an approximation of HU anyway: keep whole HU (int16).
    return CTVolume(hu=as_hu_array(np.round(hu)), affine=affine, source=source)
