"""NIfTI (.nii, .nii.gz) reading and writing with nibabel, keeping the input's header geometry exactly."""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import nibabel as nib
import numpy as np
from isal import igzip
from isal.igzip_lib import IsalError
from nibabel.filebasedimages import FileBasedImage, ImageFileError
from nibabel.spatialimages import HeaderDataError

from covidseg.errors import InputError
from covidseg.io.sanity import one_line

#: ISA-L compression level of written .nii.gz files (0-3; 1 is nibabel's own default zlib level).
GZIP_LEVEL = 1
#: NIfTI xform code "scanner anatomical", used for outputs that have no NIfTI input to copy codes from.
XFORM_SCANNER = 1

# isal's stubs declare IsalError an Exception instance; it is the class of its decompression errors.
_ISAL_ERROR = cast(type[Exception], IsalError)
# Errors nibabel and the gzip layer raise on empty, truncated or corrupt files.
_READ_ERRORS = (ImageFileError, HeaderDataError, OSError, EOFError, ValueError, zlib.error, _ISAL_ERROR, KeyError)
#: ``sizeof_hdr`` of NIfTI-1 and NIfTI-2 headers (the first four bytes, either byte order).
_HEADER_SIZES = {348: nib.Nifti1Image, 540: nib.Nifti2Image}


def _load_image(path: Path) -> FileBasedImage:
    """Load with nibabel; ``.gz`` files are decompressed with ISA-L (about twice as fast as zlib) first."""
    if not path.name.lower().endswith(".gz"):
        return nib.load(str(path), mmap=False)
    data = igzip.decompress(path.read_bytes())
    for byteorder in ("little", "big"):
        image_class = _HEADER_SIZES.get(int.from_bytes(data[:4], byteorder))
        if image_class is not None:
            return image_class.from_bytes(data)
    return nib.load(str(path), mmap=False)  # not NIfTI inside: nibabel says what it is


@dataclass
class NiftiData:
    """A NIfTI file as read: the (scaled) voxel array in file index order, its affine and header."""

    array: np.ndarray
    affine: np.ndarray
    header: nib.Nifti1Header
    warnings: list[str]


def read_nifti(path: Path) -> NiftiData:
    """Read a NIfTI-1/2 file, applying ``scl_slope``/``scl_inter``; the affine is the one nibabel picks.

    nibabel uses the sform when its code is non-zero, else the qform, else a scaling-only fallback (which gets a
    warning because the orientation is then unknown).

    Raises:
        InputError: For an empty, truncated or otherwise unreadable file.

    Examples:
        >>> import tempfile, pathlib, nibabel as nib, numpy as np
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "s.nii.gz"
        >>> nib.save(nib.Nifti1Image(np.zeros((2, 3, 4), np.int16), np.eye(4)), p)
        >>> read_nifti(p).array.shape
        (2, 3, 4)
    """
    try:
        if path.stat().st_size == 0:
            raise InputError(f"{path}: the file is empty (0 bytes); re-export or re-download the scan")
        img = _load_image(path)
        if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
            raise InputError(f"{path}: not a NIfTI image ({type(img).__name__}); pass a .nii or .nii.gz file")
        array = np.asanyarray(img.dataobj)
    except _READ_ERRORS as err:
        raise InputError(
            f"{path}: cannot read the NIfTI file, it is truncated or corrupt ({one_line(err)}); "
            "re-export or re-download the scan"
        ) from err
    if array.dtype.fields is not None:
        raise InputError(f"{path}: voxels are {array.dtype} (RGB/structured), need one grayscale value per voxel")
    header = img.header
    warnings: list[str] = []
    if int(header["sform_code"]) == 0 and int(header["qform_code"]) == 0:
        warnings.append(
            "the NIfTI header has no sform or qform: orientation unknown, assuming the voxel axes are "
            "aligned with R, A, S"
        )
    return NiftiData(
        array=np.asarray(array), affine=np.asarray(img.affine, np.float64), header=header, warnings=warnings
    )


def write_nifti(array: np.ndarray, affine: np.ndarray, header: object | None, path: Path) -> None:
    """Write ``array`` (file index order) as NIfTI; with ``header``, keep its sform, qform and their codes.

    Args:
        array: Voxel array in the index order that ``affine`` describes. float16 is written as float32
            because many NIfTI readers do not support it.
        affine: 4x4 RAS+ affine of the array's index axes.
        header: The input's NIfTI header, or None for a new header with ``affine`` as sform and qform.
        path: Destination (.nii or .nii.gz).

    Examples:
        >>> import tempfile, pathlib, numpy as np
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "m.nii.gz"
        >>> write_nifti(np.ones((2, 3, 4), np.uint8), np.diag([2.0, 2.0, 3.0, 1.0]), None, p)
        >>> nib.load(p).header.get_sform(coded=True)[1]
        1
    """
    data = np.asarray(array)
    if data.dtype == np.float16:
        data = data.astype(np.float32)
    if data.dtype == np.bool_:
        data = data.astype(np.uint8)
    if isinstance(header, (nib.Nifti1Header, nib.Nifti2Header)):
        hdr = header.copy()
        image_class = nib.Nifti2Image if isinstance(header, nib.Nifti2Header) else nib.Nifti1Image
        hdr.set_data_dtype(data.dtype)
        hdr.set_slope_inter(np.nan, np.nan)
        hdr["cal_min"], hdr["cal_max"] = 0.0, 0.0
        hdr.set_intent("none")
        # With the header's own best affine, nibabel leaves sform, qform and both codes exactly as they were.
        img = image_class(data, hdr.get_best_affine(), header=hdr)
    else:
        img = nib.Nifti1Image(data, np.asarray(affine, np.float64))
        img.set_sform(np.asarray(affine, np.float64), code=XFORM_SCANNER)
        img.set_qform(np.asarray(affine, np.float64), code=XFORM_SCANNER)
        img.header.set_data_dtype(data.dtype)
    img.header["descrip"] = b"covidseg"
    if str(path).lower().endswith(".gz"):
        # ISA-L: about twice as fast as nibabel's zlib at the same level, and the file is no larger.
        with igzip.open(path, "wb", compresslevel=GZIP_LEVEL) as stream:
            img.to_stream(stream)
    else:
        nib.save(img, str(path))
