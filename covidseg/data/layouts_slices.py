"""Discovery of 2-D slice datasets: folders of slice images with (optional) masks.

Layout "slices" (the layout of the MedSeg COVID-19 slices)::

    root/images/<id>.jpg                 8-bit display images of axial CT slices (lung window)
    root/masks/<id>.png                  binary infection mask, 0 / 255 -> background / opacity
    root/masks-multiclass/<id>.png       optional palette PNG, 0 background, 1 ground glass, 2 consolidation

Each image is one case (a one-slice volume). Display values are mapped back to approximate HU with a declared
window (``covidseg.io.LUNG_WINDOW`` by default). Unlabelled folders (no mask folder) are read with
``labelled=False``; their names often carry the patient, e.g. ``Data-1_<patient>_<n>.jpg``, which the
``group_pattern`` regex extracts so that splits keep each patient in one subset.
"""

from __future__ import annotations

import re
from pathlib import Path

from covidseg.data.cases import CLASSES_OPACITY, CaseRecord, LabelSource
from covidseg.data.layouts_volumes import _check_root, _window
from covidseg.errors import ConfigError, InputError
from covidseg.io.images import IMAGE_SUFFIXES, LUNG_WINDOW

__all__ = [
    "BINARY_MASK_MAP",
    "CLASSES_GGO_CONSOLIDATION",
    "DEFAULT_GROUP_PATTERN",
    "MASK_KINDS",
    "discover_slices",
    "slice_class_names",
]

DEFAULT_GROUP_PATTERN = r"^(?:Data-\d+_)?(?P<group>.+)_\d+$"
"""Patient id of names like ``Data-1_coronacases_org_001_17`` (``coronacases_org_001``); names that do not
match (e.g. ``17``) are their own group."""
MASK_KINDS = {"binary": "masks", "multiclass": "masks-multiclass"}
"""Mask kind -> folder name under the dataset root."""
BINARY_MASK_MAP = ((0, 0), (255, 1))
"""Binary masks: 0 background, 255 opacity (class 1 of background/opacity)."""
MULTICLASS_MERGED_MAP = ((0, 0), (1, 1), (2, 1))
"""Multi-class masks with ground glass and consolidation merged into opacity."""
MULTICLASS_MAP = ((0, 0), (1, 1), (2, 2))
CLASSES_GGO_CONSOLIDATION: tuple[str, ...] = ("background", "ground_glass", "consolidation")
"""Classes of multi-class slice masks kept apart (``merge_opacity=False``)."""


def slice_class_names(*, masks: str = "binary", merge_opacity: bool = True, **_: object) -> tuple[str, ...]:
    """Class names of the "slices" layout for the given mask options.

    Examples:
        >>> slice_class_names(), slice_class_names(masks="multiclass", merge_opacity=False)[1:]
        (('background', 'opacity'), ('ground_glass', 'consolidation'))
    """
    if masks == "multiclass" and not merge_opacity:
        return CLASSES_GGO_CONSOLIDATION
    return CLASSES_OPACITY


def _group_regex(pattern: str) -> re.Pattern[str]:
    try:
        regex = re.compile(pattern)
    except re.error as err:
        raise ConfigError(f"group_pattern {pattern!r} is not a valid regular expression ({err})") from err
    if "group" not in regex.groupindex and regex.groups == 0:
        raise ConfigError(f"group_pattern {pattern!r} needs a capture group, e.g. (?P<group>...), for the patient id")
    return regex


def _group_of(regex: re.Pattern[str], stem: str, strict: bool, path: Path) -> str | None:
    match = regex.match(stem)
    if match is None:
        if strict:
            raise InputError(f"{path}: the name does not match group_pattern {regex.pattern!r}; fix the pattern")
        return None
    return match["group"] if "group" in regex.groupindex else match.group(1)


def discover_slices(
    root: Path,
    *,
    labelled: bool = True,
    masks: str = "binary",
    merge_opacity: bool = True,
    display_window: tuple[float, float] | list[float] = LUNG_WINDOW,
    group_pattern: str | None = None,
    image_dir: str = "images",
) -> list[CaseRecord]:
    """Find slice images (and their masks) under ``root``.

    Args:
        root: Dataset folder.
        labelled: Require a mask for every image (False: images only, no mask folder needed).
        masks: "binary" (``masks/``, 0/255) or "multiclass" (``masks-multiclass/``, 0/1/2).
        merge_opacity: With multi-class masks, merge ground glass and consolidation into one opacity class.
        display_window: HU window ``(low, high)`` that display values 0..255 stand for.
        group_pattern: Regex whose ``group`` (or first) capture group is the patient id in an image's stem. By
            default :data:`DEFAULT_GROUP_PATTERN`, applied leniently (non-matching names are their own group);
            a pattern given here must match every name.
        image_dir: Name of the image folder under ``root``.

    Raises:
        InputError: Missing or empty image folder, missing mask folder when ``labelled``.
        ConfigError: Invalid options.

    Examples:
        >>> import tempfile, pathlib
        >>> root = pathlib.Path(tempfile.mkdtemp())
        >>> (root / "images").mkdir()
        >>> for name in ("Data-1_caseA_1.jpg", "Data-1_caseA_2.jpg", "Data-1_caseB_1.jpg"):
        ...     _ = (root / "images" / name).write_bytes(b"")
        >>> [c.group for c in discover_slices(root, labelled=False)]
        ['caseA', 'caseA', 'caseB']
    """
    root = _check_root(root, "slices")
    if masks not in MASK_KINDS:
        raise ConfigError(f"masks must be one of {sorted(MASK_KINDS)}, got {masks!r}")
    window = _window(display_window)
    strict = group_pattern is not None
    regex = _group_regex(group_pattern if group_pattern is not None else DEFAULT_GROUP_PATTERN)
    images_path = root / image_dir
    if not images_path.is_dir():
        raise InputError(f"{root}: no {image_dir}/ folder; the 'slices' layout expects {root}/{image_dir}/<id>.jpg")
    mask_dir = root / MASK_KINDS[masks]
    if labelled and not mask_dir.is_dir():
        raise InputError(
            f"{root}: no {MASK_KINDS[masks]}/ folder with masks; add {mask_dir}/<id>.png or discover with "
            "labelled=False"
        )
    value_map: tuple[tuple[int, int], ...] = BINARY_MASK_MAP
    if masks == "multiclass":
        value_map = MULTICLASS_MERGED_MAP if merge_opacity else MULTICLASS_MAP
    names = slice_class_names(masks=masks, merge_opacity=merge_opacity)
    cases = []
    for image in sorted(images_path.iterdir()):
        if image.name.startswith(".") or image.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        labels = (LabelSource(mask_dir / f"{image.stem}.png", value_map),) if labelled else ()
        cases.append(
            CaseRecord(
                case_id=image.stem,
                layout="slices",
                image=image,
                labels=labels,
                labelled=labelled,
                class_names=names,
                group=_group_of(regex, image.stem, strict, image),
                intensity="display",
                display_window=window,
                is_2d=True,
            )
        )
    if not cases:
        raise InputError(f"{images_path}: no slice images ({', '.join(IMAGE_SUFFIXES)}) found; check the path")
    return cases
