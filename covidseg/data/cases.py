"""Dataset cases: what one training case is (:class:`CaseRecord`) and how it becomes HU + class labels.

A case is one scan (a volume, or a 2-D slice as a one-slice volume, or a synthetic phantom) with optional label
files. Layouts (:mod:`covidseg.data.layouts`) discover cases in a folder; :func:`load_case` reads one case into
a :class:`LoadedCase`: canonical ``(Z, Y, X)`` Hounsfield units and a ``uint8`` class-index map of the same
shape. Every label file carries its own value map ``{file value: class index}``; several label files of one case
are combined in order, a later file's non-zero classes overriding earlier ones (the public COVID-19 dataset's
lung mask first, then its infection mask).

Examples:
    >>> import tempfile, pathlib, numpy as np, nibabel as nib
    >>> root = pathlib.Path(tempfile.mkdtemp())
    >>> hu = np.full((8, 8, 4), -1000, np.int16); hu[2:6, 2:6] = 40
    >>> nib.save(nib.Nifti1Image(hu, np.eye(4)), root / "ct.nii.gz")
    >>> nib.save(nib.Nifti1Image((hu > 0).astype(np.uint8) * 5, np.eye(4)), root / "lab.nii.gz")
    >>> case = CaseRecord("c1", "volumes", root / "ct.nii.gz", (LabelSource(root / "lab.nii.gz", ((0, 0), (5, 2))),))
    >>> loaded = load_case(case)
    >>> loaded.hu.shape, sorted(np.unique(loaded.labels).tolist())
    ((4, 8, 8), [0, 2])
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from covidseg.errors import InputError
from covidseg.io import load_ct, looks_like_hu
from covidseg.io.images import LUNG_WINDOW, window_to_hu
from covidseg.io.sanity import check_hu, one_line

__all__ = [
    "CLASSES_LUNG_OPACITY",
    "CLASSES_OPACITY",
    "COVID20_DISPLAY_WINDOW",
    "DISPLAY_MAX",
    "INTENSITY_MODES",
    "CaseRecord",
    "LabelSource",
    "LoadedCase",
    "PhantomSpec",
    "apply_value_map",
    "load_case",
    "read_mask_image",
]

CLASSES_LUNG_OPACITY: tuple[str, ...] = ("background", "lung", "opacity")
"""The paper's classes: index 0 background, 1 lung parenchyma, 2 opacity (ground glass and consolidation)."""
CLASSES_OPACITY: tuple[str, ...] = ("background", "opacity")
"""Classes of opacity-only annotations (2-D slice datasets without a lung label)."""
COVID20_DISPLAY_WINDOW: tuple[float, float] = (-1250.0, 250.0)
"""HU window that the 0..255 Radiopaedia cases of the 20-case COVID-19 dataset were stored with."""
DISPLAY_MAX = 255
"""Largest 8-bit display value."""
INTENSITY_MODES = ("hu", "auto", "display")
"""How a case's stored intensities become HU: as stored, detected per case (0..255 display data mapped back),
or always a display image mapped with ``display_window``."""


@dataclass(frozen=True)
class LabelSource:
    """One label file of a case and how its stored values map to class indices.

    Attributes:
        path: The label file (volume or 2-D mask image).
        value_map: ``((file value, class index), ...)``; values not listed are invalid (validation reports them).
    """

    path: Path
    value_map: tuple[tuple[int, int], ...]

    @property
    def allowed_values(self) -> frozenset[int]:
        """Stored values this file may contain."""
        return frozenset(value for value, _ in self.value_map)


@dataclass(frozen=True)
class PhantomSpec:
    """Parameters of a synthetic case made by :func:`covidseg.data.phantom.generate_phantom`."""

    seed: int
    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    n_lesions: int | tuple[int, int] | None = None


@dataclass(frozen=True)
class CaseRecord:
    """One case of a dataset: where its image and labels are and how to read them.

    Attributes:
        case_id: Unique name within the dataset (used in splits, cache entries, reports).
        layout: Name of the layout that discovered it (see :data:`covidseg.data.layouts.LAYOUTS`).
        image: The scan (file or DICOM folder); None for phantom cases.
        labels: Label files, combined in order (empty for unlabelled or phantom cases).
        labelled: Whether the case has labels (phantoms are labelled without files).
        class_names: Names of the class indices the labels map to.
        group: Patient (or other grouping) id; splits never put one group in two subsets. None: the case is its
            own group.
        intensity: One of :data:`INTENSITY_MODES`.
        display_window: HU window of 0..255 display data (``intensity`` "auto" or "display").
        phantom: Parameters of a synthetic case (layout "phantom").
        is_2d: The image is a 2-D slice (read as a one-slice volume).

    Examples:
        >>> CaseRecord("p0", "phantom", None, phantom=PhantomSpec(0, (16, 64, 64), (5.0, 1.0, 1.0))).files
        ()
    """

    case_id: str
    layout: str
    image: Path | None
    labels: tuple[LabelSource, ...] = ()
    labelled: bool = True
    class_names: tuple[str, ...] = CLASSES_LUNG_OPACITY
    group: str | None = None
    intensity: str = "hu"
    display_window: tuple[float, float] | None = None
    phantom: PhantomSpec | None = None
    is_2d: bool = False

    def __post_init__(self) -> None:
        if self.intensity not in INTENSITY_MODES:
            raise ValueError(f"intensity must be one of {INTENSITY_MODES}, got {self.intensity!r}")
        if self.image is None and self.phantom is None:
            raise ValueError(f"case {self.case_id!r} has neither an image file nor phantom parameters")

    @property
    def files(self) -> tuple[Path, ...]:
        """The image and label files of the case (what a cache key fingerprints)."""
        image = () if self.image is None else (self.image,)
        return image + tuple(source.path for source in self.labels)

    @property
    def group_id(self) -> str:
        """The group the case belongs to for splitting (its own id when it has no group)."""
        return self.group if self.group is not None else self.case_id


@dataclass
class LoadedCase:
    """A case in memory: canonical HU and class labels.

    Attributes:
        hu: ``(Z, Y, X)`` HU (int16 or float32).
        labels: ``(Z, Y, X)`` uint8 class indices, or None for unlabelled cases.
        affine: 4x4 canonical-index-to-RAS+ affine.
        hu_mapping: How stored values were mapped to HU (None when they were HU already).
    """

    hu: np.ndarray
    labels: np.ndarray | None
    affine: np.ndarray
    hu_mapping: str | None = None

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size in mm along (z, y, x)."""
        norms = np.linalg.norm(self.affine[:3, :3], axis=0)
        return (float(norms[0]), float(norms[1]), float(norms[2]))


def apply_value_map(
    raw: np.ndarray, value_map: tuple[tuple[int, int], ...], path: str | os.PathLike[str]
) -> np.ndarray:
    """Map stored label values to uint8 class indices with a lookup table.

    Raises:
        InputError: If ``raw`` holds a value that the map does not list, or a non-integer value.

    Examples:
        >>> apply_value_map(np.array([[0, 255], [255, 0]]), ((0, 0), (255, 1)), "m.png").tolist()
        [[0, 1], [1, 0]]
    """
    arr = np.asarray(raw)
    allowed = sorted(value for value, _ in value_map)
    if np.issubdtype(arr.dtype, np.floating):
        if not np.array_equal(arr, np.round(arr)):
            raise InputError(f"{path}: label values are not integers; labels must be class values {allowed}")
        arr = arr.astype(np.int64)
    lo, hi = min(allowed), max(allowed)
    bad = (arr < lo) | (arr > hi)
    lut = np.full(hi - lo + 1, -1, np.int16)
    for value, index in value_map:
        lut[value - lo] = index
    mapped = lut[np.where(bad, lo, arr) - lo]
    bad |= mapped < 0
    if bad.any():
        found = sorted(int(v) for v in np.unique(arr[bad])[:5])
        raise InputError(
            f"{path}: label values {found} are outside the expected set {allowed}; fix the labels or give the "
            "layout option label_map={file value: class index}"
        )
    return mapped.astype(np.uint8)


def read_mask_image(path: Path) -> np.ndarray:
    """Read a 2-D mask image's stored values (palette indices for palette PNGs) as a ``(1, H, W)`` array.

    Examples:
        >>> import tempfile, pathlib
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "m.png"
        >>> Image.fromarray(np.array([[0, 255]], np.uint8)).save(p)
        >>> read_mask_image(p).tolist()
        [[[0, 255]]]
    """
    try:
        with Image.open(path) as img:
            img.load()
            values = np.asarray(img if img.mode in ("P", "L", "1", "I", "I;16") else img.convert("L"))
    except (UnidentifiedImageError, OSError, ValueError) as err:
        raise InputError(f"{path}: cannot read the mask image ({one_line(err)}); pass a valid .png mask") from err
    return values.astype(np.uint8 if values.dtype == np.bool_ else values.dtype)[None]


def _load_phantom(spec: PhantomSpec) -> LoadedCase:
    from covidseg.data.phantom import generate_phantom

    if spec.n_lesions is None:
        phantom = generate_phantom(spec.shape, spec.spacing, seed=spec.seed)
    else:
        phantom = generate_phantom(spec.shape, spec.spacing, seed=spec.seed, n_lesions=spec.n_lesions)
    return LoadedCase(
        hu=np.ascontiguousarray(phantom.hu),
        labels=np.ascontiguousarray(phantom.labels, dtype=np.uint8),
        affine=np.asarray(phantom.affine, np.float64),
    )


def _load_image(case: CaseRecord) -> tuple[np.ndarray, np.ndarray, str | None]:
    """HU, affine and the mapping applied for the case's image."""
    if case.image is None:
        raise ValueError(f"case {case.case_id!r} has no image file")
    if case.is_2d:
        window = case.display_window or LUNG_WINDOW
        volume = load_ct(case.image, image_window=window, assume_hu=True)
        return volume.hu, volume.affine, f"display values 0..255 mapped to HU with window {list(window)}"
    if case.intensity == "hu":
        volume = load_ct(case.image)
        return volume.hu, volume.affine, None
    volume = load_ct(case.image, assume_hu=True)
    window = case.display_window or COVID20_DISPLAY_WINDOW
    hu = volume.hu
    if case.intensity == "auto":
        is_hu, _ = looks_like_hu(hu)
        if is_hu:
            return hu, volume.affine, None
        if float(hu.min()) < 0 or float(hu.max()) > DISPLAY_MAX:
            check_hu(hu, case.image)  # raises NotHUError with the loader's explanation
    mapped = np.round(window_to_hu(hu, window)).astype(np.int16)
    return mapped, volume.affine, f"display values 0..255 mapped to HU with window {list(window)}"


def _load_labels(case: CaseRecord, shape: tuple[int, ...]) -> np.ndarray:
    out = np.zeros(shape, np.uint8)
    for source in case.labels:
        if not source.path.exists():
            raise InputError(f"case {case.case_id}: label file {source.path} does not exist; add it or remove the case")
        raw = read_mask_image(source.path) if case.is_2d else load_ct(source.path, assume_hu=True).hu
        if raw.shape != shape:
            raise InputError(
                f"case {case.case_id}: label {source.path} has shape {raw.shape} but the image has {shape}; "
                "labels must be on the image's voxel grid"
            )
        mapped = apply_value_map(raw, source.value_map, source.path)
        np.copyto(out, mapped, where=mapped > 0)
    return out


def load_case(case: CaseRecord) -> LoadedCase:
    """Read a case into canonical HU and uint8 class labels (None when unlabelled).

    Raises:
        InputError: Missing or unreadable files, labels off the image grid or with unexpected values.
        NotHUError: A volume declared (or detected) as HU whose intensities are not HU.

    Examples:
        >>> import tempfile, pathlib
        >>> root = pathlib.Path(tempfile.mkdtemp())
        >>> Image.fromarray(np.array([[0, 255, 255]], np.uint8)).save(root / "s.png")
        >>> Image.fromarray(np.array([[0, 0, 255]], np.uint8)).save(root / "m.png")
        >>> case = CaseRecord("s", "slices", root / "s.png", (LabelSource(root / "m.png", ((0, 0), (255, 1))),),
        ...                   class_names=("background", "opacity"), intensity="display", is_2d=True,
        ...                   display_window=(-1000.0, 0.0))
        >>> loaded = load_case(case)
        >>> loaded.hu.tolist(), loaded.labels.tolist()
        ([[[-1000, 0, 0]]], [[[0, 0, 1]]])
    """
    if case.phantom is not None:
        return _load_phantom(case.phantom)
    hu, affine, mapping = _load_image(case)
    labels = _load_labels(case, hu.shape) if case.labelled else None
    return LoadedCase(hu=hu, labels=labels, affine=affine, hu_mapping=mapping)
