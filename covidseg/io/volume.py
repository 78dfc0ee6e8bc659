"""The in-memory CT volume: Hounsfield units in one canonical orientation plus the geometry to write back.

Canonical orientation: ``CTVolume.hu`` has shape ``(Z, Y, X)``; the x index increases toward the patient's
Left, y toward Posterior and z toward Superior (nibabel axis codes of the array axes are ``('S', 'P', 'L')``).
``hu[k]`` is therefore an axial slice in radiological display convention (patient right on the image left,
anterior on top). Oblique scans are not resampled: the axes are permuted and flipped to the nearest canonical
axes and the exact (oblique) affine is kept.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from nibabel.orientations import apply_orientation, axcodes2ornt, inv_ornt_aff, io_orientation, ornt_transform

#: nibabel axis codes of the canonical array axes (z, y, x).
CANONICAL_AXCODES: tuple[str, str, str] = ("S", "P", "L")
#: Range of the int16 type that HU arrays are stored in when the values are integral.
INT16_MIN, INT16_MAX = -32768, 32767
#: Flips between the RAS+ (NIfTI, nibabel) and LPS+ (DICOM, ITK) world coordinate systems.
RAS_FROM_LPS: np.ndarray = np.diag([-1.0, -1.0, 1.0, 1.0])
#: Index permutation (a, b, c) -> (c, b, a) as a 4x4 matrix: ``affine @ REVERSE_AXES`` is the affine of the
#: array transposed with ``(2, 1, 0)`` (numpy (k, j, i) <-> file (i, j, k); canonical (z, y, x) <-> (x, y, z)).
REVERSE_AXES: np.ndarray = np.array([[0, 0, 1, 0], [0, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 1]], dtype=np.float64)

FORMATS = ("nifti", "mha", "mhd", "nrrd", "dicom", "image")


@dataclass
class SourceInfo:
    """How a volume was read, and what is needed to write results back in the file's own geometry.

    Attributes:
        format: One of ``"nifti"``, ``"mha"``, ``"mhd"``, ``"nrrd"``, ``"dicom"``, ``"image"``.
        path: The file or folder that was read.
        native_affine: 4x4 RAS+ affine of the native array's axes (the array as the reader library returns
            it: nibabel's ``(i, j, k)``, SimpleITK's numpy ``(k, j, i)``, DICOM ``(slice, row, column)``).
        native_shape: Shape of the native array (3-D, singleton 4th dimensions removed).
        modality: DICOM Modality (``"CT"``, ``"MR"``, ...) when the file records one, else ``None``.
        nifti_header: The NIfTI header of the input (sform/qform and their codes are written back from it).
        itk_direction: ITK direction cosines (row-major 3x3, LPS) of the input image.
        itk_origin: ITK origin (LPS mm) of the input image.
        itk_spacing: ITK spacing (mm, in ITK index order i, j, k) of the input image.
        series_uid: DICOM SeriesInstanceUID of the series that was read.
        study_uid: DICOM StudyInstanceUID.
        frame_of_reference_uid: DICOM FrameOfReferenceUID.
        sop_instance_uids: SOPInstanceUID of every slice, ordered by increasing canonical index along
            ``dicom_slice_axis`` (for an axial series: canonical z order, so ``sop_instance_uids[k]`` is
            ``hu[k]``).
        dicom_files: The slice files in the same order as ``sop_instance_uids``.
        dicom_slice_axis: Canonical axis (0 = z, 1 = y, 2 = x) that the DICOM slice stacking maps to.
        warnings: Things the user should know about how the input was read.
    """

    format: str
    path: Path | None
    native_affine: np.ndarray
    native_shape: tuple[int, ...]
    modality: str | None = None
    nifti_header: object | None = None
    itk_direction: tuple[float, ...] | None = None
    itk_origin: tuple[float, ...] | None = None
    itk_spacing: tuple[float, ...] | None = None
    series_uid: str | None = None
    study_uid: str | None = None
    frame_of_reference_uid: str | None = None
    sop_instance_uids: tuple[str, ...] = ()
    dicom_files: tuple[Path, ...] = ()
    dicom_slice_axis: int | None = None
    warnings: list[str] = field(default_factory=list)

    @property
    def native_ornt(self) -> np.ndarray:
        """The nibabel orientation of the native array axes (nearest axis for oblique affines)."""
        return io_orientation(self.native_affine)

    @property
    def to_canonical_ornt(self) -> np.ndarray:
        """The nibabel orientation transform that takes the native array to the canonical one."""
        return ornt_transform(self.native_ornt, axcodes2ornt(CANONICAL_AXCODES))


@dataclass
class CTVolume:
    """A CT scan in Hounsfield units, in canonical ``(Z, Y, X)`` orientation, with its world geometry.

    Attributes:
        hu: C-contiguous ``(Z, Y, X)`` array; int16 when the data are integral and fit, else float32.
        affine: 4x4 float64 mapping the canonical index ``(z, y, x, 1)`` to RAS+ world millimetres.
        source: How the volume was read and how to write results back (``None`` for synthetic volumes).

    Examples:
        >>> import numpy as np
        >>> vol = CTVolume.from_canonical(np.full((4, 5, 6), -1000, np.int16), np.diag([2.5, 0.8, 0.8, 1.0]))
        >>> vol.shape, vol.spacing, vol.hu.dtype.name
        ((4, 5, 6), (2.5, 0.8, 0.8), 'int16')
    """

    hu: np.ndarray
    affine: np.ndarray
    source: SourceInfo | None = None

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size in mm along (z, y, x), from the norms of the affine's columns."""
        norms = np.linalg.norm(self.affine[:3, :3], axis=0)
        return (float(norms[0]), float(norms[1]), float(norms[2]))

    @property
    def shape(self) -> tuple[int, int, int]:
        """Canonical shape (Z, Y, X)."""
        z, y, x = self.hu.shape
        return (int(z), int(y), int(x))

    @classmethod
    def from_canonical(cls, hu: np.ndarray, affine: np.ndarray) -> CTVolume:
        """Wrap an array that is already in canonical ``(Z, Y, X)`` orientation (phantoms, tests).

        Args:
            hu: 3-D array in HU, axes (z, y, x) as documented in this module.
            affine: 4x4 map from canonical index ``(z, y, x, 1)`` to RAS+ mm. It is not checked to point
                the canonical directions; pass one that does (e.g. ``canonical_affine``).

        Returns:
            A volume without source information; results are written as NIfTI with this geometry.

        Raises:
            ValueError: If ``hu`` is not 3-D or ``affine`` is not an invertible 4x4 matrix.

        Examples:
            >>> import numpy as np
            >>> vol = CTVolume.from_canonical(np.zeros((2, 3, 4)), canonical_affine((3.0, 1.0, 1.0)))
            >>> vol.hu.dtype.name, float(vol.affine[2, 0])
            ('int16', 3.0)
        """
        arr = np.asarray(hu)
        if arr.ndim != 3:
            raise ValueError(f"canonical HU array must be 3-D (Z, Y, X), got shape {arr.shape}")
        aff = np.asarray(affine, dtype=np.float64)
        if aff.shape != (4, 4) or abs(np.linalg.det(aff[:3, :3])) < 1e-12:
            raise ValueError(f"affine must be an invertible 4x4 matrix, got {aff.tolist()}")
        return cls(hu=as_hu_array(arr), affine=aff.copy(), source=None)

    def to_native(self, array: np.ndarray) -> np.ndarray:
        """Reorient a canonical ``(Z, Y, X[, ...])`` array to the input file's own index order.

        Trailing dimensions (channels) are carried along. For synthetic volumes and 2-D images the
        canonical order is the native one and the array is returned unchanged. The result may be a view of
        ``array`` (transposed, with negative strides); copy it before writing into it.

        Examples:
            >>> import numpy as np
            >>> vol = CTVolume.from_canonical(np.zeros((2, 3, 4)), np.eye(4))
            >>> vol.to_native(np.ones((2, 3, 4, 5))).shape
            (2, 3, 4, 5)
        """
        arr = np.asarray(array)
        if arr.shape[:3] != self.hu.shape:
            raise ValueError(f"array shape {arr.shape} does not start with the volume shape {self.hu.shape}")
        if self.source is None or self.source.format == "image":
            return arr
        back = ornt_transform(axcodes2ornt(CANONICAL_AXCODES), self.source.native_ornt)
        # A view (no copy): writers take any memory order, and nibabel writes transposed views fastest.
        return np.asarray(apply_orientation(arr, back))


def canonical_affine(
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0),
    origin: tuple[float, float, float] = (0.0, 0.0, 0.0),
) -> np.ndarray:
    """Axis-aligned affine for canonical ``(z, y, x)`` indices: +x to Left, +y to Posterior, +z to Superior.

    Args:
        spacing: Voxel size in mm along (z, y, x).
        origin: RAS+ world position (mm) of voxel ``(0, 0, 0)``.

    Examples:
        >>> canonical_affine((5.0, 0.7, 0.7))[:3, :3].tolist()
        [[0.0, 0.0, -0.7], [0.0, -0.7, 0.0], [5.0, 0.0, 0.0]]
    """
    sz, sy, sx = (float(s) for s in spacing)
    aff = np.zeros((4, 4))
    aff[0, 2] = -sx  # x index -> toward Left = -R
    aff[1, 1] = -sy  # y index -> toward Posterior = -A
    aff[2, 0] = sz  # z index -> Superior
    aff[:3, 3] = origin
    aff[3, 3] = 1.0
    return aff


def canonicalize(native: np.ndarray, native_affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Permute and flip a 3-D array to canonical orientation; return it (C-contiguous) and its affine.

    Examples:
        >>> import numpy as np
        >>> ras = np.arange(24).reshape(2, 3, 4)  # (x, y, z), RAS affine
        >>> arr, aff = canonicalize(ras, np.eye(4))
        >>> arr.shape, int(arr[0, 0, 0]) == int(ras[1, 2, 0])
        ((4, 3, 2), True)
    """
    ornt = ornt_transform(io_orientation(native_affine), axcodes2ornt(CANONICAL_AXCODES))
    arr = np.ascontiguousarray(apply_orientation(native, ornt))
    aff = np.asarray(native_affine, dtype=np.float64) @ inv_ornt_aff(ornt, native.shape[:3])
    return arr, aff


def as_hu_array(arr: np.ndarray) -> np.ndarray:
    """Return ``arr`` as int16 when its values are finite, integral and fit int16; otherwise as float32.

    Examples:
        >>> import numpy as np
        >>> as_hu_array(np.array([-1024.0, 40.0])).dtype.name, as_hu_array(np.array([0.5])).dtype.name
        ('int16', 'float32')
        >>> as_hu_array(np.array([40000], np.int32)).dtype.name
        'float32'
    """
    a = np.asarray(arr)
    if a.dtype == np.int16:
        return np.ascontiguousarray(a)
    if a.size == 0:
        return np.ascontiguousarray(a.astype(np.float32))
    if np.issubdtype(a.dtype, np.integer) or a.dtype == np.bool_:
        lo, hi = int(a.min()), int(a.max())
        if lo >= INT16_MIN and hi <= INT16_MAX:
            return np.ascontiguousarray(a.astype(np.int16))
        return np.ascontiguousarray(a.astype(np.float32))
    if not np.issubdtype(a.dtype, np.floating):
        raise ValueError(f"cannot interpret voxel type {a.dtype} as Hounsfield units")
    if np.isfinite(a).all():
        lo_f, hi_f = float(a.min()), float(a.max())
        if lo_f >= INT16_MIN and hi_f <= INT16_MAX and np.array_equal(a, np.round(a)):
            return np.ascontiguousarray(a.astype(np.int16))
    return np.ascontiguousarray(a.astype(np.float32))


def axcodes_of(affine: np.ndarray) -> str:
    """The nibabel axis codes (direction each array index increases toward) as a string, e.g. ``'RAS'``.

    Examples:
        >>> axcodes_of(np.diag([-1.0, -1.0, 1.0, 1.0]))
        'LPS'
    """
    from nibabel.orientations import ornt2axcodes

    return "".join(str(c) for c in ornt2axcodes(io_orientation(affine)))


def reverse_axes(array: np.ndarray) -> np.ndarray:
    """Transpose the first three axes ``(a, b, c) -> (c, b, a)``, keeping trailing axes (a view).

    Examples:
        >>> reverse_axes(np.zeros((2, 3, 4, 5))).shape
        (4, 3, 2, 5)
    """
    return np.asarray(array).transpose((2, 1, 0, *range(3, np.ndim(array))))
