"""MHA/MHD/NRRD reading and writing with SimpleITK; LPS direction/origin/spacing converted to a RAS+ affine.

SimpleITK's numpy arrays are indexed ``(k, j, i)`` (the reverse of ITK's index order) and ITK's physical space
is LPS+. A point is ``origin + direction @ diag(spacing) @ (i, j, k)`` in LPS; the RAS+ affine of the numpy
axes follows by flipping x and y and reversing the index order.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk  # noqa: N813

from covidseg.errors import InputError
from covidseg.io.volume import RAS_FROM_LPS, REVERSE_AXES

#: DICOM Modality tag as SimpleITK exposes it in image metadata (present in some MHA/NRRD exports).
_MODALITY_KEY = "0008|0060"


@dataclass
class ItkData:
    """An ITK image as read: numpy array ``(k, j, i)``, RAS+ affine of those axes, exact ITK geometry."""

    array: np.ndarray
    affine: np.ndarray
    direction: tuple[float, ...]
    origin: tuple[float, ...]
    spacing: tuple[float, ...]
    modality: str | None


def itk_to_affine(direction: tuple[float, ...], origin: tuple[float, ...], spacing: tuple[float, ...]) -> np.ndarray:
    """RAS+ affine of SimpleITK's numpy axes ``(k, j, i)`` for a 3-D ITK geometry.

    Examples:
        >>> itk_to_affine((1, 0, 0, 0, 1, 0, 0, 0, 1), (10.0, 20.0, 30.0), (0.5, 0.5, 2.0))[:3].tolist()
        [[0.0, 0.0, -0.5, -10.0], [0.0, -0.5, 0.0, -20.0], [2.0, 0.0, 0.0, 30.0]]
    """
    lps = np.eye(4)
    lps[:3, :3] = np.asarray(direction, np.float64).reshape(3, 3) @ np.diag(np.asarray(spacing, np.float64))
    lps[:3, 3] = np.asarray(origin, np.float64)
    return RAS_FROM_LPS @ lps @ REVERSE_AXES


def affine_to_itk(affine: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...], tuple[float, ...]]:
    """Inverse of :func:`itk_to_affine`: (direction, origin, spacing) from the RAS+ affine of ``(k, j, i)``.

    Examples:
        >>> d, o, s = affine_to_itk(itk_to_affine((0, 1, 0, 1, 0, 0, 0, 0, 1), (1.0, 2.0, 3.0), (2.0, 3.0, 4.0)))
        >>> [round(v, 6) + 0.0 for v in d], o, s
        ([0.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0], (1.0, 2.0, 3.0), (2.0, 3.0, 4.0))
    """
    lps = RAS_FROM_LPS @ np.asarray(affine, np.float64) @ REVERSE_AXES
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    direction = lps[:3, :3] / spacing
    return (
        tuple(float(v) for v in direction.ravel()),
        tuple(float(v) for v in lps[:3, 3]),
        tuple(float(v) for v in spacing),
    )


def read_itk(path: Path) -> ItkData:
    """Read an MHA, MHD or NRRD volume with SimpleITK.

    A 4-D image whose 4th dimension is 1 is reduced to 3-D; 2-D, 4-D and multi-component images are errors.

    Raises:
        InputError: For an unreadable file or an image that is not one scalar 3-D volume.

    Examples:
        >>> import tempfile, pathlib
        >>> p = str(pathlib.Path(tempfile.mkdtemp()) / "s.mha")
        >>> sitk.WriteImage(sitk.Image([4, 3, 2], sitk.sitkInt16), p)
        >>> read_itk(pathlib.Path(p)).array.shape
        (2, 3, 4)
    """
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as err:
        lines = [line.strip() for line in str(err).splitlines() if line.strip()]
        first = " ".join((lines[-1] if lines else type(err).__name__).split())
        raise InputError(
            f"{path}: SimpleITK cannot read the file, it is truncated, corrupt or not an image ({first}); "
            "re-export or re-download the scan"
        ) from err
    components = image.GetNumberOfComponentsPerPixel()
    if components != 1:
        raise InputError(
            f"{path}: voxels have {components} components (RGB or vector image); need one grayscale value per voxel"
        )
    size = tuple(int(s) for s in image.GetSize())
    dim = image.GetDimension()
    if dim == 4 and size[3] == 1:
        image = sitk.Extract(image, [*size[:3], 0], [0, 0, 0, 0])
        dim = 3
    if dim != 3:
        shape = tuple(reversed(size))
        hint = "a single axial slice can be given as a .png/.jpg image" if dim < 3 else "take one time point"
        raise InputError(f"{path}: the image is {dim}-D with shape {shape}, need 3-D; pass a 3-D volume ({hint})")
    direction = tuple(float(v) for v in image.GetDirection())
    origin = tuple(float(v) for v in image.GetOrigin())
    spacing = tuple(float(v) for v in image.GetSpacing())
    modality = image.GetMetaData(_MODALITY_KEY).strip() if image.HasMetaDataKey(_MODALITY_KEY) else None
    return ItkData(
        array=sitk.GetArrayFromImage(image),
        affine=itk_to_affine(direction, origin, spacing),
        direction=direction,
        origin=origin,
        spacing=spacing,
        modality=modality or None,
    )


def write_itk(
    array: np.ndarray,
    geometry: tuple[tuple[float, ...], ...],
    path: Path,
) -> None:
    """Write a numpy ``(k, j, i[, c])`` array with the exact ITK (direction, origin, spacing) to MHA or NRRD.

    A 4th axis is written as vector components; float16 is written as float32 (ITK has no float16).

    Examples:
        >>> import tempfile, pathlib, numpy as np
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "m.nrrd"
        >>> write_itk(np.zeros((2, 3, 4), np.uint8), ((1, 0, 0, 0, 1, 0, 0, 0, 1), (0, 0, 0), (1, 1, 2)), p)
        >>> sitk.ReadImage(str(p)).GetSpacing()
        (1.0, 1.0, 2.0)
    """
    data = np.ascontiguousarray(array)
    if data.dtype == np.bool_:
        data = data.astype(np.uint8)
    if data.dtype == np.float16:
        data = data.astype(np.float32)
    image = sitk.GetImageFromArray(data, isVector=data.ndim == 4)
    direction, origin, spacing = geometry
    image.SetDirection([float(v) for v in direction])
    image.SetOrigin([float(v) for v in origin])
    image.SetSpacing([float(v) for v in spacing])
    sitk.WriteImage(image, str(path), useCompression=True)
