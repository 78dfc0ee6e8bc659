"""Dataset checks that run before any training: every problem a user can fix is reported up front.

:func:`validate_cases` reads image *headers* only (NIfTI, MHA/NRRD, image files; DICOM series are read whole)
and label files whole (their values must be checked), and reports missing files, duplicate case ids, labels off
the image grid and label values outside the expected set, each naming the case, the file and what to do.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import nibabel as nib
import numpy as np
import SimpleITK as sitk  # noqa: N813
from nibabel.orientations import axcodes2ornt, io_orientation, ornt_transform
from PIL import Image, UnidentifiedImageError

from covidseg.data.cases import CaseRecord, LabelSource, read_mask_image
from covidseg.errors import CovidsegError, InputError
from covidseg.io import CANONICAL_AXCODES, load_ct
from covidseg.io.atomic import full_suffix
from covidseg.io.itk import itk_to_affine
from covidseg.io.sanity import one_line

__all__ = ["canonical_shape_from_header", "label_values", "validate_cases"]

_NIFTI = (".nii", ".nii.gz")
_ITK = (".mha", ".mhd", ".nrrd", ".nhdr")
_MAX_LUT_RANGE = 1 << 16
_MAX_LISTED = 3


def _canonical(native_shape: tuple[int, ...], affine: np.ndarray) -> tuple[int, int, int] | None:
    shape = [int(s) for s in native_shape]
    while len(shape) > 3 and shape[-1] == 1:
        shape.pop()
    if len(shape) != 3:
        return None  # not a 3-D volume: the full read reports it
    ornt = ornt_transform(io_orientation(affine), axcodes2ornt(CANONICAL_AXCODES))
    out = [0, 0, 0]
    for axis, (target, _) in enumerate(ornt):
        out[int(target)] = shape[axis]
    return (out[0], out[1], out[2])


def canonical_shape_from_header(path: Path, *, is_2d: bool = False) -> tuple[int, int, int] | None:
    """Canonical ``(Z, Y, X)`` shape of an image from its header; None when only a full read would tell.

    Examples:
        >>> import tempfile, pathlib
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "a.nii.gz"
        >>> nib.save(nib.Nifti1Image(np.zeros((6, 5, 4), np.int16), np.eye(4)), p)
        >>> canonical_shape_from_header(p)
        (4, 5, 6)
    """
    suffix = full_suffix(path)
    try:
        if is_2d or suffix in (".png", ".jpg", ".jpeg"):
            with Image.open(path) as img:
                width, height = img.size
            return (1, int(height), int(width))
        if suffix in _NIFTI:
            img = nib.load(str(path))
            return _canonical(tuple(img.shape), np.asarray(img.affine, np.float64))  # type: ignore[attr-defined]
        if suffix in _ITK:
            reader = sitk.ImageFileReader()
            reader.SetFileName(str(path))
            reader.ReadImageInformation()
            size = tuple(int(s) for s in reader.GetSize())
            if len(size) != 3:
                return None
            affine = itk_to_affine(reader.GetDirection(), reader.GetOrigin(), reader.GetSpacing())
            return _canonical(tuple(reversed(size)), affine)
    except (OSError, ValueError, RuntimeError, UnidentifiedImageError, nib.filebasedimages.ImageFileError) as err:
        raise InputError(f"{path}: cannot read the header ({one_line(err)}); re-export the file") from err
    return None


def label_values(arr: np.ndarray) -> list[float]:
    """Distinct values of a label array (fast for integer labels).

    Examples:
        >>> label_values(np.array([[0, 2], [2, 255]], np.uint8))
        [0.0, 2.0, 255.0]
    """
    a = np.asarray(arr)
    if a.size and (np.issubdtype(a.dtype, np.integer) or a.dtype == np.bool_):
        lo, hi = int(a.min()), int(a.max())
        if hi - lo < _MAX_LUT_RANGE:
            counts = np.bincount((a.astype(np.int64) - lo).ravel(), minlength=hi - lo + 1)
            return [float(v + lo) for v in np.flatnonzero(counts)]
    return [float(v) for v in np.unique(a)]


def _read_label(case: CaseRecord, source: LabelSource) -> np.ndarray:
    if case.is_2d:
        return read_mask_image(source.path)
    return load_ct(source.path, assume_hu=True, allow_non_ct=True).hu


def _check_label(case: CaseRecord, source: LabelSource, image_shape: tuple[int, ...] | None) -> list[str]:
    where = f"case {case.case_id}"
    if not source.path.exists():
        image = case.image.name if case.image is not None else "the image"
        return [
            f"{where}: image {image} has no label file {source.path}; add the label, remove the image, or "
            "discover the dataset with labelled=False"
        ]
    try:
        raw = _read_label(case, source)
    except CovidsegError as err:
        return [f"{where}: {err}"]
    problems = []
    if image_shape is not None and tuple(raw.shape) != tuple(image_shape):
        problems.append(
            f"{where}: label {source.path} has shape {tuple(raw.shape)} (z, y, x) but the image {case.image} has "
            f"{tuple(image_shape)}; resample the label onto the image's voxel grid"
        )
    allowed = sorted(source.allowed_values)
    bad = [v for v in label_values(raw) if v not in source.allowed_values]
    if bad:
        shown = ", ".join(f"{v:g}" for v in bad[:5])
        problems.append(
            f"{where}: label {source.path} holds values {shown} outside the expected {allowed}; fix the labels or "
            "pass label_map={file value: class index}"
        )
    return problems


def _image_shape(case: CaseRecord) -> tuple[tuple[int, ...] | None, list[str]]:
    image = case.image
    if image is None:
        return None, []
    if not image.exists():
        return None, [f"case {case.case_id}: image {image} does not exist; check the dataset folder"]
    try:
        shape = canonical_shape_from_header(image, is_2d=case.is_2d)
        if shape is None and case.labelled:  # DICOM series and the like: only a full read tells the grid
            shape = load_ct(image, assume_hu=True, allow_non_ct=True).shape
    except CovidsegError as err:
        return None, [f"case {case.case_id}: {err}"]
    return shape, []


def validate_cases(cases: Sequence[CaseRecord]) -> None:
    """Check a dataset before training; raise one :class:`InputError` describing what to fix.

    Checks: at least one case; unique case ids; every image exists and its header is readable; every labelled
    case has its label files; labels lie on the image grid; label values are in the expected set; all cases
    carry the same class names.

    Raises:
        InputError: The first problem, with a count of the others (all are listed by case in the message tail).

    Examples:
        >>> from covidseg.data.layouts import discover_cases
        >>> validate_cases(discover_cases("phantom", None, n_cases=2))
        >>> validate_cases([])
        Traceback (most recent call last):
        ...
        covidseg.errors.InputError: no cases to train on; check the dataset folder and layout
    """
    if not cases:
        raise InputError("no cases to train on; check the dataset folder and layout")
    problems: list[str] = []
    first_of: dict[str, CaseRecord] = {}
    for case in cases:
        if case.case_id in first_of:
            problems.append(
                f"duplicate case id {case.case_id!r} ({first_of[case.case_id].image} and {case.image}); "
                "give every case a unique name"
            )
        first_of.setdefault(case.case_id, case)
    names = {case.class_names for case in cases}
    if len(names) > 1:
        problems.append(
            f"cases carry different class names {sorted(names)}; train on datasets with the same classes "
            "(e.g. map labels with label_map)"
        )
    for case in cases:
        shape, found = _image_shape(case)
        problems += found
        if case.labelled and not found:
            for source in case.labels:
                problems += _check_label(case, source, shape)
    if problems:
        more = len(problems) - 1
        tail = f" ({more} more problem(s), next: {problems[1]})" if more else ""
        raise InputError(problems[0] + tail)
