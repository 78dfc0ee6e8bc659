"""Discovery of 3-D volume datasets: a folder of image/label pairs, and the public 20-case COVID-19 dataset.

Layout "volumes"::

    root/images/<case>.nii.gz      (or imagesTr/<case>_0000.nii.gz, nnU-Net style; any format load_ct reads,
    root/labels/<case>.nii.gz       including a DICOM series folder per case)

Layout "covid20", the "COVID-19 CT Lung and Infection Segmentation Dataset" (Ma et al. 2020, Zenodo 3757476)::

    root/COVID-19-CT-Seg_20cases/<case>.nii.gz
    root/Lung_Mask/<case>.nii.gz          1 left lung, 2 right lung
    root/Infection_Mask/<case>.nii.gz     1 infection
    (or root/Lung_and_Infection_Mask/<case>.nii.gz: 1 left lung, 2 right lung, 3 infection)
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

from covidseg.data.cases import (
    CLASSES_LUNG_OPACITY,
    COVID20_DISPLAY_WINDOW,
    INTENSITY_MODES,
    CaseRecord,
    LabelSource,
)
from covidseg.errors import ConfigError, InputError
from covidseg.io.atomic import full_suffix

__all__ = [
    "COVID20_IMAGE_DIR",
    "COVID20_LABEL_DIRS",
    "VOLUME_SUFFIXES",
    "discover_covid20",
    "discover_volumes",
    "volume_class_names",
]

VOLUME_SUFFIXES = (".nii", ".nii.gz", ".mha", ".mhd", ".nrrd", ".nhdr")
"""File suffixes of volumes in a "volumes" layout (folders are read as DICOM series)."""
IMAGE_DIRS = ("images", "imagesTr")
LABEL_DIRS = ("labels", "labelsTr")
NNUNET_CHANNEL = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")
"""nnU-Net image names end in a 4-digit channel number; only channel 0000 (one CT channel) is used."""

COVID20_IMAGE_DIR = "COVID-19-CT-Seg_20cases"
COVID20_LABEL_DIRS = ("Lung_Mask", "Infection_Mask", "Lung_and_Infection_Mask")
COVID20_LUNG_MAP = ((0, 0), (1, 1), (2, 1))
"""Lung_Mask: left (1) and right (2) lung both become class 1 (lung)."""
COVID20_INFECTION_MAP = ((0, 0), (1, 2))
"""Infection_Mask: infection (1) becomes class 2 (opacity), overriding the lung class."""
COVID20_COMBINED_MAP = ((0, 0), (1, 1), (2, 1), (3, 2))
"""Lung_and_Infection_Mask: lungs (1, 2) -> lung, infection (3) -> opacity."""


def _stem(path: Path) -> str:
    suffix = full_suffix(path)
    return path.name[: len(path.name) - len(suffix)] if suffix else path.name


def _volume_entries(folder: Path) -> list[Path]:
    """Volume files and DICOM series folders in ``folder`` (hidden entries skipped), sorted by name."""
    entries = []
    for entry in sorted(folder.iterdir()):
        if entry.name.startswith("."):
            continue
        if entry.is_dir() or full_suffix(entry) in VOLUME_SUFFIXES:
            entries.append(entry)
    return entries


def _first_dir(root: Path, names: tuple[str, ...]) -> Path | None:
    for name in names:
        if (root / name).is_dir():
            return root / name
    return None


def _check_root(root: Path | None, layout: str) -> Path:
    if root is None:
        raise ConfigError(f"layout {layout!r} needs a dataset folder (root); pass the folder that holds the data")
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"{root}: no such dataset folder for layout {layout!r}; check the path")
    return root


def _value_map(label_map: Mapping[int, int] | None, n_classes: int) -> tuple[tuple[int, int], ...]:
    if label_map is None:
        return tuple((i, i) for i in range(n_classes))
    pairs = []
    for key, target in label_map.items():
        try:  # YAML gives int keys, JSON gives "255": accept integral numbers and digit strings
            value, index = int(str(key)), int(str(target))
        except ValueError:
            raise ConfigError(
                f"label_map must map integer file values to class indices, got {key!r}: {target!r}"
            ) from None
        if not 0 <= index < n_classes:
            raise ConfigError(f"label_map sends {value} to class {index}, but class indices are 0..{n_classes - 1}")
        pairs.append((value, index))
    if not pairs:
        raise ConfigError("label_map is empty; map every stored label value to a class index, e.g. {0: 0, 255: 2}")
    return tuple(sorted(pairs))


def volume_class_names(class_names: tuple[str, ...] | list[str] | None = None, **_: object) -> tuple[str, ...]:
    """Class names of the "volumes" layout: background, lung, opacity unless given.

    Examples:
        >>> volume_class_names()
        ('background', 'lung', 'opacity')
    """
    return CLASSES_LUNG_OPACITY if class_names is None else tuple(class_names)


def discover_volumes(
    root: Path,
    *,
    labelled: bool = True,
    label_map: Mapping[int, int] | None = None,
    class_names: tuple[str, ...] | list[str] | None = None,
    intensity: str = "hu",
    display_window: tuple[float, float] | None = None,
) -> list[CaseRecord]:
    """Find image/label volume pairs under ``root/images`` and ``root/labels`` (or imagesTr/labelsTr).

    Args:
        root: Dataset folder.
        labelled: Look for labels (False: images only, e.g. for unsupervised pre-training).
        label_map: ``{file value: class index}``; default: the file values are the class indices.
        class_names: Names of the class indices (default background, lung, opacity).
        intensity: "hu" (scans in HU, checked), "auto" (0..255 display-windowed scans detected and mapped back
            with ``display_window``) or "display" (always mapped).
        display_window: HU window of display-windowed scans (default (-1250, 250)).

    Returns:
        One record per image, sorted by case id. A label file that is missing is still named in the record
        (as ``labels/<case>`` with the image's suffix) so that :func:`covidseg.data.validate.validate_cases` can
        report it.

    Raises:
        InputError: Missing or empty image folder, missing label folder when ``labelled``.
        ConfigError: Invalid options.

    Examples:
        >>> import tempfile, pathlib
        >>> root = pathlib.Path(tempfile.mkdtemp())
        >>> for sub in ("imagesTr", "labelsTr"):
        ...     (root / sub).mkdir()
        >>> _ = (root / "imagesTr" / "ct1_0000.nii.gz").write_bytes(b"")
        >>> _ = (root / "labelsTr" / "ct1.nii.gz").write_bytes(b"")
        >>> [(c.case_id, c.labels[0].path.name) for c in discover_volumes(root)]
        [('ct1', 'ct1.nii.gz')]
    """
    root = _check_root(root, "volumes")
    if intensity not in INTENSITY_MODES:
        raise ConfigError(f"intensity must be one of {list(INTENSITY_MODES)}, got {intensity!r}")
    names = volume_class_names(class_names)
    value_map = _value_map(label_map, len(names))
    image_dir = _first_dir(root, IMAGE_DIRS)
    if image_dir is None:
        raise InputError(
            f"{root}: no images folder; the 'volumes' layout expects {root}/images/<case>.nii.gz and "
            f"{root}/labels/<case>.nii.gz (or nnU-Net imagesTr/labelsTr)"
        )
    label_dir = _first_dir(root, LABEL_DIRS)
    if labelled and label_dir is None:
        raise InputError(
            f"{root}: no labels folder next to {image_dir.name}/; add {root}/labels/<case>.nii.gz or discover with "
            "labelled=False"
        )
    label_files: dict[str, list[Path]] = {}
    if labelled and label_dir is not None:
        for entry in _volume_entries(label_dir):
            label_files.setdefault(_stem(entry), []).append(entry)
    cases = []
    for image in _volume_entries(image_dir):
        case_id = _stem(image)
        match = NNUNET_CHANNEL.match(case_id)
        if match and image_dir.name == "imagesTr":
            if match["channel"] != "0000":
                raise InputError(
                    f"{image}: nnU-Net channel {match['channel']} found, but covidseg reads one CT channel (_0000); "
                    "remove the other channels from the images folder"
                )
            case_id = match["case"]
        labels: tuple[LabelSource, ...] = ()
        if labelled and label_dir is not None:
            found = label_files.get(case_id, [])
            if len(found) > 1:
                raise InputError(
                    f"case {case_id}: several label files {[p.name for p in found]} in {label_dir}; keep one"
                )
            path = found[0] if found else label_dir / f"{case_id}{full_suffix(image)}"
            labels = (LabelSource(path, value_map),)
        cases.append(
            CaseRecord(
                case_id=case_id,
                layout="volumes",
                image=image,
                labels=labels,
                labelled=labelled,
                class_names=names,
                intensity=intensity,
                display_window=None if display_window is None else _window(display_window),
            )
        )
    if not cases:
        raise InputError(
            f"{image_dir}: no volumes found ({', '.join(VOLUME_SUFFIXES)} or DICOM folders); check the path"
        )
    return cases


def _window(window: tuple[float, float] | list[float]) -> tuple[float, float]:
    low, high = (float(v) for v in window)
    if not low < high:
        raise ConfigError(f"display_window must be (low, high) in HU with low < high, got {window!r}")
    return (low, high)


def covid20_class_names(**_: object) -> tuple[str, ...]:
    """Class names of the "covid20" layout.

    Examples:
        >>> covid20_class_names()
        ('background', 'lung', 'opacity')
    """
    return CLASSES_LUNG_OPACITY


def discover_covid20(root: Path, *, labelled: bool = True) -> list[CaseRecord]:
    """Find the cases of the 20-case COVID-19 CT Lung and Infection Segmentation Dataset.

    Every case is read with intensity "auto": the Radiopaedia cases stored 0..255 after the lung window
    [-1250, 250] are detected on load and mapped back to approximate HU (recorded as the case's HU mapping).
    Labels: lung (1) where the lung mask is set, opacity (2) where the infection mask is set.

    Args:
        root: The folder holding ``COVID-19-CT-Seg_20cases/`` and the mask folders.
        labelled: Require masks (False: images only).

    Raises:
        InputError: Missing image folder or masks, or no cases.

    Examples:
        >>> import tempfile, pathlib
        >>> root = pathlib.Path(tempfile.mkdtemp())
        >>> for sub in ("COVID-19-CT-Seg_20cases", "Lung_Mask", "Infection_Mask"):
        ...     (root / sub).mkdir()
        ...     _ = (root / sub / "coronacases_001.nii.gz").write_bytes(b"")
        >>> [len(c.labels) for c in discover_covid20(root)]
        [2]
    """
    root = _check_root(root, "covid20")
    image_dir = root / COVID20_IMAGE_DIR
    if not image_dir.is_dir():
        raise InputError(
            f"{root}: no {COVID20_IMAGE_DIR}/ folder; point at the folder holding {COVID20_IMAGE_DIR}/, Lung_Mask/ "
            "and Infection_Mask/ of the COVID-19 CT Lung and Infection Segmentation Dataset"
        )
    lung_dir, infection_dir, combined_dir = (root / name for name in COVID20_LABEL_DIRS)
    separate = lung_dir.is_dir() and infection_dir.is_dir()
    if labelled and not separate and not combined_dir.is_dir():
        raise InputError(
            f"{root}: no masks; expected Lung_Mask/ and Infection_Mask/ (or Lung_and_Infection_Mask/) beside "
            f"{COVID20_IMAGE_DIR}/, or discover with labelled=False"
        )
    cases = []
    for image in _volume_entries(image_dir):
        if image.is_dir():
            continue
        name = image.name
        labels: tuple[LabelSource, ...] = ()
        if labelled:
            if separate:
                labels = (
                    LabelSource(lung_dir / name, COVID20_LUNG_MAP),
                    LabelSource(infection_dir / name, COVID20_INFECTION_MAP),
                )
            else:
                labels = (LabelSource(combined_dir / name, COVID20_COMBINED_MAP),)
        cases.append(
            CaseRecord(
                case_id=_stem(image),
                layout="covid20",
                image=image,
                labels=labels,
                labelled=labelled,
                class_names=CLASSES_LUNG_OPACITY,
                intensity="auto",
                display_window=COVID20_DISPLAY_WINDOW,
            )
        )
    if not cases:
        raise InputError(f"{image_dir}: no .nii.gz scans found; check the path")
    return cases
