"""Finding label maps and pairing predictions with references by case name.

A case name is the file name without its format suffix (``.nii.gz``, ``.mha``, ``.png``, ...) and without one
*strip suffix* at its end (default ``_labels``, as ``covidseg predict`` names its label maps, and ``_mask``):
``case01_labels.nii.gz`` and ``case01.nii.gz`` are both case ``case01``.

In a folder, the label maps are the files with a label-map format suffix; when some of them end with a strip
suffix, only those are taken (a ``covidseg predict`` folder also holds overview PNGs and probability maps). Two
files with the same case name are an error. Two single files are paired whatever their names.

Examples:
    >>> case_name("out/case01_labels.nii.gz"), case_name("ref/case01.png"), case_name("a_mask.mha")
    ('case01', 'case01', 'a')
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from covidseg.errors import InputError
from covidseg.io.atomic import full_suffix

__all__ = [
    "DEFAULT_STRIP_SUFFIXES",
    "LABEL_SUFFIXES",
    "CasePair",
    "Pairing",
    "case_name",
    "find_label_maps",
    "pair_cases",
]

LABEL_SUFFIXES = (".nii.gz", ".nii", ".mha", ".mhd", ".nrrd", ".nhdr", ".png")
"""Formats a label map may have (2-D masks as PNG: JPEG is lossy and cannot hold labels)."""
DEFAULT_STRIP_SUFFIXES: tuple[str, ...] = ("_labels", "_mask")
"""Name endings removed to get the case name."""
_MAX_LISTED = 5


def _stem(path: str | os.PathLike[str]) -> str:
    name = Path(path).name
    suffix = full_suffix(name)
    return name[: -len(suffix)] if suffix and len(name) > len(suffix) else name


def case_name(path: str | os.PathLike[str], strip_suffixes: Sequence[str] = DEFAULT_STRIP_SUFFIXES) -> str:
    """The case name of a label-map file: format suffix and one strip suffix removed (longest first).

    Examples:
        >>> case_name("x/ct_7_seg.nrrd", ["_seg"]), case_name("x/_labels.nii.gz")
        ('ct_7', '_labels')
    """
    stem = _stem(path)
    for suffix in sorted(strip_suffixes, key=len, reverse=True):
        if suffix and stem.endswith(suffix) and len(stem) > len(suffix):
            return stem[: -len(suffix)]
    return stem


def _listed(names: Sequence[str]) -> str:
    ordered = sorted(names)
    more = f" and {len(ordered) - _MAX_LISTED} more" if len(ordered) > _MAX_LISTED else ""
    return ", ".join(ordered[:_MAX_LISTED]) + more


def find_label_maps(
    path: str | os.PathLike[str], strip_suffixes: Sequence[str] = DEFAULT_STRIP_SUFFIXES, *, side: str = "prediction"
) -> dict[str, Path]:
    """Case name -> label-map file, for a single file or a folder (not recursive, hidden files skipped).

    Raises:
        InputError: A missing path, an unsupported file, a folder without label maps, or two files of one case.

    Examples:
        >>> import tempfile, pathlib
        >>> d = pathlib.Path(tempfile.mkdtemp())
        >>> for name in ("a_labels.nii.gz", "a_overview.png", "b_labels.nii.gz", "notes.txt"):
        ...     _ = (d / name).write_bytes(b"")
        >>> sorted(find_label_maps(d))
        ['a', 'b']
    """
    p = Path(path)
    if not p.exists():
        raise InputError(f"{side} {p}: no such file or folder; check the path")
    if p.is_file():
        if full_suffix(p) not in LABEL_SUFFIXES:
            raise InputError(f"{side} {p}: not a label map; pass {', '.join(LABEL_SUFFIXES)} files or a folder")
        return {case_name(p, strip_suffixes): p}
    files = sorted(
        f for f in p.iterdir() if f.is_file() and not f.name.startswith(".") and full_suffix(f) in LABEL_SUFFIXES
    )
    marked = [f for f in files if case_name(f, strip_suffixes) != _stem(f)]
    chosen = marked or files
    if not chosen:
        raise InputError(f"{side} folder {p} holds no label maps ({', '.join(LABEL_SUFFIXES)}); check the path")
    found: dict[str, Path] = {}
    for file in chosen:
        name = case_name(file, strip_suffixes)
        if name in found:
            raise InputError(
                f"{side} files {found[name].name} and {file.name} are both case {name!r}; keep one file per case"
            )
        found[name] = file
    return found


@dataclass(frozen=True)
class CasePair:
    """A prediction and its reference.

    Attributes:
        case_id: The case name.
        prediction: Predicted label map.
        reference: Reference label map.
    """

    case_id: str
    prediction: Path
    reference: Path


@dataclass(frozen=True)
class Pairing:
    """Paired cases, and the names found on one side only (when missing cases are allowed).

    Attributes:
        pairs: Cases with both files, sorted by name.
        prediction_only: Names with a prediction but no reference.
        reference_only: Names with a reference but no prediction.
    """

    pairs: tuple[CasePair, ...]
    prediction_only: tuple[str, ...]
    reference_only: tuple[str, ...]


def pair_cases(
    predictions: Mapping[str, Path], references: Mapping[str, Path], *, allow_missing: bool = False
) -> Pairing:
    """Pair predictions with references by case name (two single files are paired whatever their names).

    Raises:
        InputError: Unmatched names (unless ``allow_missing``; the message lists a few of each), or no pair at all.

    Examples:
        >>> p = pair_cases({"a": Path("a_labels.nii.gz"), "b": Path("b.nii.gz")}, {"a": Path("r/a.nii.gz")},
        ...                allow_missing=True)
        >>> [c.case_id for c in p.pairs], p.prediction_only
        (['a'], ('b',))
    """
    if len(predictions) == 1 and len(references) == 1:
        ((pred_name, pred),) = predictions.items()
        ((ref_name, ref),) = references.items()
        if pred_name != ref_name and pred.is_file() and ref.is_file():
            return Pairing((CasePair(ref_name, pred, ref),), (), ())
    pred_only = tuple(sorted(set(predictions) - set(references)))
    ref_only = tuple(sorted(set(references) - set(predictions)))
    common = sorted(set(predictions) & set(references))
    if (pred_only or ref_only) and not allow_missing:
        parts = []
        if pred_only:
            parts.append(f"{len(pred_only)} prediction(s) without a reference ({_listed(pred_only)})")
        if ref_only:
            parts.append(f"{len(ref_only)} reference(s) without a prediction ({_listed(ref_only)})")
        raise InputError(f"{' and '.join(parts)}; check the case names (and --strip-suffix) or pass --allow-missing")
    if not common:
        raise InputError(
            f"no prediction matches a reference by case name (e.g. {_listed(list(predictions)[:2])} vs "
            f"{_listed(list(references)[:2])}); check the folders and --strip-suffix"
        )
    pairs = tuple(CasePair(name, predictions[name], references[name]) for name in common)
    return Pairing(pairs, pred_only, ref_only)
