"""Writing results (label maps, HU volumes, probability maps) back in the input's own geometry.

NIfTI inputs get their header's sform, qform and codes and their array axis order back; MHA/NRRD inputs get
their exact direction, origin and spacing (as ``CopyInformation`` would); DICOM inputs, slice images and
synthetic volumes are written with the volume's geometry, arrays in (x, y, z) order. A single slice can also be
written as an 8-bit PNG in the slice image's own pixel layout (rows = canonical y, columns = canonical x), label
maps as palette PNGs whose pixel values are the labels. The output format follows the suffix of the output path.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import numpy.typing as npt
from PIL import Image

from covidseg.errors import InputError
from covidseg.io.atomic import atomic_path, full_suffix
from covidseg.io.itk import affine_to_itk, write_itk
from covidseg.io.nifti import write_nifti
from covidseg.io.volume import REVERSE_AXES, CTVolume, SourceInfo, reverse_axes

#: Output suffixes and the writer family they select. (.mhd is not offered: it writes two files.)
WRITE_FORMATS = {".nii.gz": "nifti", ".nii": "nifti", ".mha": "itk", ".nrrd": "itk", ".png": "png"}
_ITK_SOURCES = ("mha", "mhd", "nrrd")
#: Largest label a uint8 mask can hold.
MAX_LABEL = 255
#: RGB of the labels in palette PNG label maps: 0 background black, 1 lung steel blue, 2 opacity red; other
#: labels gray levels.
LABEL_PALETTE: tuple[tuple[int, int, int], ...] = ((0, 0, 0), (70, 130, 180), (220, 50, 47))


def save_volume(
    array: np.ndarray,
    volume: CTVolume,
    path: str | os.PathLike[str],
    *,
    dtype: npt.DTypeLike | None = None,
    overwrite: bool = False,
) -> Path:
    """Write a canonical ``(Z, Y, X[, C])`` array in the geometry of the file ``volume`` was read from.

    Args:
        array: Values on the canonical grid of ``volume`` (HU, probabilities, labels), optionally with one
            trailing channel axis.
        volume: The loaded (or synthetic) volume whose geometry the output takes.
        path: Output file; .nii.gz, .nii, .mha, .nrrd, or .png for a single slice of uint8 values.
        dtype: Store as this type (default: the array's; bool becomes uint8; float16 becomes float32 because
            NIfTI readers and ITK do not all support it).
        overwrite: Replace an existing file.

    Returns:
        The written path.

    Raises:
        InputError: Unsupported output suffix, or a PNG of several slices or of non-uint8 values.
        OutputExistsError: ``path`` exists and ``overwrite`` is false.
        ValueError: ``array`` does not match the volume's shape.

    Examples:
        >>> import tempfile, pathlib, numpy as np, nibabel as nib
        >>> from covidseg.io.volume import canonical_affine
        >>> vol = CTVolume.from_canonical(np.zeros((2, 3, 4)), canonical_affine((3.0, 1.0, 1.0)))
        >>> out = save_volume(vol.hu, vol, pathlib.Path(tempfile.mkdtemp()) / "hu.nii.gz")
        >>> nib.load(out).shape, nib.aff2axcodes(nib.load(out).affine)
        ((4, 3, 2), ('L', 'P', 'S'))
    """
    target = Path(path)
    suffix = full_suffix(target)
    if suffix not in WRITE_FORMATS:
        raise InputError(
            f"{target}: cannot write '{suffix or target.name}' files; use one of {', '.join(WRITE_FORMATS)}"
        )
    data = np.asarray(array)
    if data.shape[:3] != volume.shape or data.ndim > 4:
        raise ValueError(f"array shape {data.shape} must be the volume shape {volume.shape} (+ one channel axis)")
    if dtype is not None:
        data = data.astype(dtype, copy=False)
    if data.dtype == np.bool_:
        data = data.astype(np.uint8)
    if WRITE_FORMATS[suffix] == "png":
        _write_png(data, target, palette=None, overwrite=overwrite)
        return target
    if data.dtype == np.float16:
        data = data.astype(np.float32)
    ijk, affine_ijk = _file_order(data, volume)
    source = volume.source
    with atomic_path(target, overwrite=overwrite) as tmp:
        if WRITE_FORMATS[suffix] == "nifti":
            header = source.nifti_header if source is not None and source.format == "nifti" else None
            write_nifti(ijk, affine_ijk, header, tmp)
        else:
            write_itk(reverse_axes(ijk), _itk_geometry(source) or affine_to_itk(affine_ijk @ REVERSE_AXES), tmp)
    return target


def save_mask(mask: np.ndarray, volume: CTVolume, path: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
    """Write a canonical ``(Z, Y, X)`` label map as uint8 in exactly the input's geometry.

    Args:
        mask: Integer labels 0..255 (or bool) on the canonical grid of ``volume``.
        volume: The volume the mask was computed from.
        path: Output file; .nii.gz, .nii, .mha or .nrrd; or .png for a single slice (a palette PNG: pixel
            values are the labels, shown in :data:`LABEL_PALETTE` colours).
        overwrite: Replace an existing file.

    Returns:
        The written path.

    Raises:
        InputError: Unsupported output suffix, or a PNG of several slices.
        OutputExistsError: ``path`` exists and ``overwrite`` is false.
        ValueError: Labels that are not integers in 0..255, or a shape that differs from the volume's.

    Examples:
        >>> import tempfile, pathlib, numpy as np, nibabel as nib
        >>> vol = CTVolume.from_canonical(np.zeros((2, 3, 4)), np.eye(4))
        >>> out = save_mask(np.ones((2, 3, 4), bool), vol, pathlib.Path(tempfile.mkdtemp()) / "m.nii.gz")
        >>> nib.load(out).get_data_dtype().name
        'uint8'
    """
    labels = np.asarray(mask)
    if labels.dtype != np.bool_ and labels.size:
        lo, hi = float(labels.min()), float(labels.max())
        integral = np.issubdtype(labels.dtype, np.integer) or np.array_equal(labels, np.round(labels))
        if lo < 0 or hi > MAX_LABEL or not integral:
            raise ValueError(f"mask values must be integer labels in 0..{MAX_LABEL}, got range {lo:g}..{hi:g}")
    if labels.ndim != 3:
        raise ValueError(f"mask must be 3-D (Z, Y, X), got shape {labels.shape}")
    target = Path(path)
    if full_suffix(target) == ".png":
        if labels.shape != volume.shape:
            raise ValueError(f"mask shape {labels.shape} must be the volume shape {volume.shape}")
        _write_png(labels.astype(np.uint8, copy=False), target, palette=_palette_bytes(), overwrite=overwrite)
        return target
    return save_volume(labels, volume, path, dtype=np.uint8, overwrite=overwrite)


def _palette_bytes() -> bytes:
    """A 256-entry RGB palette: :data:`LABEL_PALETTE` first, gray levels for the other labels."""
    colours = [*LABEL_PALETTE, *((v, v, v) for v in range(len(LABEL_PALETTE), 256))]
    return bytes(channel for colour in colours for channel in colour)


def _write_png(data: np.ndarray, target: Path, *, palette: bytes | None, overwrite: bool) -> None:
    """Write a ``(1, H, W)`` uint8 array as an 8-bit PNG (gray, or palette-indexed when ``palette`` is given)."""
    if data.ndim != 3 or data.shape[0] != 1:
        raise InputError(
            f"{target}: PNG holds one slice, the volume has {data.shape[0]}; write .nii.gz (or .mha/.nrrd) instead"
        )
    if data.dtype != np.uint8:
        raise InputError(f"{target}: PNG holds 8-bit values, got {data.dtype}; use uint8 or write .nii.gz instead")
    image = Image.fromarray(np.ascontiguousarray(data[0]), mode="L")
    if palette is not None:
        image = image.convert("P")  # keeps the values as palette indices
        image.putpalette(palette)
    with atomic_path(target, overwrite=overwrite) as tmp:
        image.save(tmp, format="PNG")


def _itk_geometry(source: SourceInfo | None) -> tuple[tuple[float, ...], ...] | None:
    """The exact ITK (direction, origin, spacing) of an MHA/MHD/NRRD input, else None."""
    if source is None or source.format not in _ITK_SOURCES:
        return None
    if source.itk_direction is None or source.itk_origin is None or source.itk_spacing is None:
        return None
    return (source.itk_direction, source.itk_origin, source.itk_spacing)


def _file_order(data: np.ndarray, volume: CTVolume) -> tuple[np.ndarray, np.ndarray]:
    """The array in file index order (i, j, k[, c]) and the RAS+ affine of those axes."""
    source = volume.source
    if source is not None and source.format == "nifti":
        return volume.to_native(data), source.native_affine
    if source is not None and source.format in _ITK_SOURCES:
        # SimpleITK's numpy order is (k, j, i); its affine is stored for that order.
        return reverse_axes(volume.to_native(data)), source.native_affine @ REVERSE_AXES
    # DICOM, images and synthetic volumes: canonical (z, y, x) -> (x, y, z), i.e. L, P, S index axes.
    return reverse_axes(data), volume.affine @ REVERSE_AXES
