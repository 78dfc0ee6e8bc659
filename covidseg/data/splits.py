"""Seeded train/validation/test splits and k-fold cross-validation by case, or by patient group.

Splitting is done over *groups*: a case's group is its patient id when the layout knows one (e.g. the slices
of one CT volume) and the case itself otherwise, so no patient ever appears in two subsets. The result depends
only on the set of (case id, group) pairs and the seed, not on the order cases are listed in. Splits are written
to a JSON file (atomically) and reused: :func:`load_splits` checks that every case it names still exists.

Examples:
    >>> from covidseg.data.layouts import discover_cases
    >>> cases = discover_cases("phantom", None, n_cases=10)
    >>> s = split_cases(cases, fractions=(0.6, 0.2, 0.2), seed=1)
    >>> len(s.train), len(s.val), len(s.test)
    (6, 2, 2)
    >>> folds = kfold_cases(cases, k=5, seed=1)
    >>> [len(folds.fold(i).val) for i in range(5)]
    [2, 2, 2, 2, 2]
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from covidseg.data.cases import CaseRecord
from covidseg.errors import ConfigError, InputError
from covidseg.io.atomic import atomic_path

__all__ = [
    "DEFAULT_FRACTIONS",
    "SPLITS_FORMAT",
    "Splits",
    "kfold_cases",
    "load_splits",
    "save_splits",
    "split_cases",
]

DEFAULT_FRACTIONS: tuple[float, float, float] = (0.7, 0.15, 0.15)
"""Default (train, val, test) fractions of the cases."""
SPLITS_FORMAT = "covidseg-splits"
SPLITS_VERSION = 1
SUBSETS = ("train", "val", "test")
_TOLERANCE = 1e-6
_MAX_LISTED = 5


@dataclass(frozen=True)
class Splits:
    """Case ids of each subset, and the cross-validation folds when made by :func:`kfold_cases`.

    Attributes:
        train: Training case ids (sorted).
        val: Validation case ids (sorted).
        test: Held-out test case ids (sorted).
        seed: Seed the split was made with.
        grouped: Whether cases were split by group (patient) rather than one by one.
        folds: For k-fold cross-validation, the k disjoint validation sets of the non-test cases (else empty).
        fold_index: Which fold ``train``/``val`` stand for (None for a plain split).
        groups: Group of every case (case id -> group id).
    """

    train: tuple[str, ...]
    val: tuple[str, ...]
    test: tuple[str, ...]
    seed: int
    grouped: bool = False
    folds: tuple[tuple[str, ...], ...] = ()
    fold_index: int | None = None
    groups: dict[str, str] = field(default_factory=dict, compare=False)

    @property
    def case_ids(self) -> tuple[str, ...]:
        """Every case the splits name, sorted."""
        return tuple(sorted({*self.train, *self.val, *self.test}))

    def subset(self, name: str) -> tuple[str, ...]:
        """Case ids of ``"train"``, ``"val"`` or ``"test"``.

        Examples:
            >>> Splits(("a",), ("b",), (), seed=0).subset("val")
            ('b',)
        """
        if name not in SUBSETS:
            raise ConfigError(f"unknown subset {name!r}; expected one of {list(SUBSETS)}")
        return tuple(getattr(self, name))

    def fold(self, index: int) -> Splits:
        """The train/val assignment of cross-validation fold ``index`` (val = that fold, train = the others).

        Raises:
            ConfigError: Not k-fold splits, or ``index`` out of range.
        """
        if not self.folds:
            raise ConfigError("these splits have no cross-validation folds; make them with kfold_cases (k >= 2)")
        if not 0 <= index < len(self.folds):
            raise ConfigError(f"fold {index} does not exist; expected 0..{len(self.folds) - 1}")
        train = tuple(sorted(c for i, f in enumerate(self.folds) if i != index for c in f))
        return replace(self, train=train, val=self.folds[index], fold_index=index)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form (the splits file's content)."""
        return {
            "format": SPLITS_FORMAT,
            "version": SPLITS_VERSION,
            "seed": self.seed,
            "grouped": self.grouped,
            "train": list(self.train),
            "val": list(self.val),
            "test": list(self.test),
            "folds": [list(f) for f in self.folds],
            "fold_index": self.fold_index,
            "groups": dict(sorted(self.groups.items())),
        }


def _groups(cases: Sequence[CaseRecord]) -> tuple[dict[str, list[str]], bool]:
    """Group id -> sorted case ids, and whether any case carries a group."""
    if not cases:
        raise InputError("no cases to split; check the dataset folder and layout")
    groups: dict[str, list[str]] = {}
    seen: set[str] = set()
    for case in cases:
        if case.case_id in seen:
            raise InputError(f"duplicate case id {case.case_id!r}; give every case a unique name before splitting")
        seen.add(case.case_id)
        groups.setdefault(case.group_id, []).append(case.case_id)
    return {g: sorted(ids) for g, ids in groups.items()}, any(c.group is not None for c in cases)


def _shuffled(groups: dict[str, list[str]], seed: int) -> list[str]:
    names = sorted(groups)
    order = np.random.default_rng(seed).permutation(len(names))
    return [names[i] for i in order]


def _check_fractions(fractions: Sequence[float]) -> tuple[float, float, float]:
    values = tuple(float(f) for f in fractions)
    if len(values) != 3 or any(not math.isfinite(f) or f < 0 for f in values):
        raise ConfigError(f"fractions must be three non-negative numbers (train, val, test), got {list(fractions)}")
    if abs(sum(values) - 1.0) > _TOLERANCE or values[0] <= 0:
        raise ConfigError(f"fractions (train, val, test) must sum to 1 with train > 0, got {list(fractions)}")
    return (values[0], values[1], values[2])


def split_cases(
    cases: Sequence[CaseRecord], *, fractions: Sequence[float] = DEFAULT_FRACTIONS, seed: int = 0
) -> Splits:
    """Split cases (or their patient groups) into train/val/test by fractions of the number of cases.

    Groups are shuffled with ``seed``; every subset with a positive fraction first gets one group, then each
    further group goes to the subset furthest below its target case count. Subsets with fraction 0 stay empty.

    Args:
        cases: The dataset's cases.
        fractions: ``(train, val, test)``, non-negative, summing to 1.
        seed: Random seed; the same cases and seed always give the same split.

    Raises:
        ConfigError: Invalid fractions.
        InputError: No cases, duplicate ids, or fewer groups than non-empty subsets.

    Examples:
        >>> from covidseg.data.layouts import discover_cases
        >>> s = split_cases(discover_cases("phantom", None, n_cases=4), fractions=(0.5, 0.5, 0.0), seed=0)
        >>> len(s.train), len(s.val), s.test
        (2, 2, ())
    """
    fracs = _check_fractions(fractions)
    groups, grouped = _groups(cases)
    order = _shuffled(groups, seed)
    wanted = [i for i in (1, 2, 0) if fracs[i] > 0]  # validation and test get their first group first
    if len(order) < len(wanted):
        raise InputError(
            f"{len(order)} group(s) cannot fill {len(wanted)} non-empty subsets; add cases or set a fraction to 0"
        )
    total = sum(len(ids) for ids in groups.values())
    targets = [f * total for f in fracs]
    assigned: list[list[str]] = [[], [], []]
    counts = [0, 0, 0]
    for position, group in enumerate(order):
        if position < len(wanted):
            subset = wanted[position]
        else:
            deficits = [targets[i] - counts[i] if fracs[i] > 0 else -math.inf for i in range(3)]
            subset = int(np.argmax(deficits))
        assigned[subset].extend(groups[group])
        counts[subset] += len(groups[group])
    return Splits(
        train=tuple(sorted(assigned[0])),
        val=tuple(sorted(assigned[1])),
        test=tuple(sorted(assigned[2])),
        seed=seed,
        grouped=grouped,
        groups={c.case_id: c.group_id for c in cases},
    )


def kfold_cases(cases: Sequence[CaseRecord], *, k: int = 5, seed: int = 0, test_fraction: float = 0.0) -> Splits:
    """K-fold cross-validation folds over cases (or patient groups), after an optional held-out test set.

    The test set (``test_fraction`` of the cases) is taken first as by :func:`split_cases`; the remaining
    groups are shuffled, sorted by size (largest first) and dealt to the fold with the fewest cases.

    Returns:
        Splits whose ``train``/``val`` are fold 0; use :meth:`Splits.fold` for the others.

    Raises:
        ConfigError: ``k < 2`` or an invalid test fraction.
        InputError: Fewer groups than folds.

    Examples:
        >>> from covidseg.data.layouts import discover_cases
        >>> s = kfold_cases(discover_cases("phantom", None, n_cases=6), k=3, seed=0)
        >>> sorted(len(f) for f in s.folds), s.fold(2).fold_index
        ([2, 2, 2], 2)
    """
    if k < 2:
        raise ConfigError(f"k must be >= 2 for cross-validation folds, got {k}")
    if not 0 <= test_fraction < 1:
        raise ConfigError(f"test_fraction must be in [0, 1), got {test_fraction}")
    test: tuple[str, ...] = ()
    remaining = list(cases)
    if test_fraction > 0:
        held = split_cases(cases, fractions=(1 - test_fraction, 0.0, test_fraction), seed=seed)
        test = held.test
        remaining = [c for c in cases if c.case_id not in set(test)]
    groups, grouped = _groups(remaining)
    if len(groups) < k:
        raise InputError(f"{len(groups)} group(s) cannot make {k} folds; use fewer folds or add cases")
    order = sorted(_shuffled(groups, seed + 1), key=lambda g: -len(groups[g]))  # stable: ties keep shuffle order
    folds: list[list[str]] = [[] for _ in range(k)]
    for group in order:
        target = min(range(k), key=lambda i: (len(folds[i]), i))
        folds[target].extend(groups[group])
    base = Splits(
        train=(),
        val=(),
        test=tuple(sorted(test)),
        seed=seed,
        grouped=grouped or any(c.group is not None for c in cases),
        folds=tuple(tuple(sorted(f)) for f in folds),
        groups={c.case_id: c.group_id for c in cases},
    )
    return base.fold(0)


def save_splits(splits: Splits, path: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
    """Write splits to a JSON file atomically; returns the path.

    Raises:
        OutputExistsError: ``path`` exists and ``overwrite`` is false.

    Examples:
        >>> import tempfile, pathlib
        >>> p = save_splits(Splits(("a",), ("b",), (), seed=0), pathlib.Path(tempfile.mkdtemp()) / "s.json")
        >>> json.loads(p.read_text())["val"]
        ['b']
    """
    target = Path(path)
    with atomic_path(target, overwrite=overwrite) as tmp:
        tmp.write_text(json.dumps(splits.to_dict(), indent=1) + "\n")
    return target


def _list(data: dict[str, Any], key: str, path: Path) -> tuple[str, ...]:
    value = data.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise InputError(f"{path}: '{key}' must be a list of case ids; regenerate the splits file")
    return tuple(value)


def _read(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise InputError(f"{path}: no such splits file; make one with save_splits or check the path")
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise InputError(f"{path}: not a readable splits JSON file ({err}); regenerate it") from err
    if not isinstance(data, dict) or data.get("format") != SPLITS_FORMAT:
        raise InputError(f"{path}: not a covidseg splits file (format {SPLITS_FORMAT!r} expected); regenerate it")
    if data.get("version") != SPLITS_VERSION:
        raise InputError(f"{path}: splits format version {data.get('version')!r}, expected {SPLITS_VERSION}")
    return data


def _check_disjoint(file: Path, known: dict[str, CaseRecord], subsets: list[tuple[str, tuple[str, ...]]]) -> None:
    """Raise if a case, or a patient group of the current cases, is in two of ``subsets``."""
    subset_of: dict[str, str] = {}
    group_subset: dict[str, tuple[str, str]] = {}
    for name, ids in subsets:
        for case_id in ids:
            if case_id in subset_of and subset_of[case_id] != name:
                raise InputError(f"{file}: case {case_id!r} is in both {subset_of[case_id]} and {name}; regenerate it")
            subset_of[case_id] = name
            group = known[case_id].group_id
            other, other_name = group_subset.setdefault(group, (case_id, name))
            if other_name != name:
                raise InputError(
                    f"{file}: patient group {group!r} is split across {other_name} ({other}) and {name} ({case_id}); "
                    "make new splits so no patient is in two subsets"
                )


def load_splits(path: str | os.PathLike[str], cases: Sequence[CaseRecord], *, fold: int | None = None) -> Splits:
    """Read a splits file and check it against the dataset's cases.

    Args:
        path: A file written by :func:`save_splits`.
        cases: The dataset's cases (every id the file names must be among them; extra cases are ignored).
        fold: For k-fold splits, the fold to return (default: the one saved).

    Raises:
        InputError: Unreadable file, case ids not in the dataset (named), a subset overlap, or a patient group
            that the current cases put in two subsets.

    Examples:
        >>> import tempfile, pathlib
        >>> from covidseg.data.layouts import discover_cases
        >>> cases = discover_cases("phantom", None, n_cases=5)
        >>> p = save_splits(split_cases(cases, seed=3), pathlib.Path(tempfile.mkdtemp()) / "s.json")
        >>> load_splits(p, cases) == split_cases(cases, seed=3)
        True
    """
    file = Path(path)
    data = _read(file)
    train, val, test = (_list(data, key, file) for key in SUBSETS)
    raw_folds = data.get("folds") or []
    folds = tuple(_list({"fold": f}, "fold", file) for f in raw_folds)
    known = {c.case_id: c for c in cases}
    named = [*train, *val, *test, *(c for f in folds for c in f)]
    missing = sorted({c for c in named if c not in known})
    if missing:
        shown = ", ".join(missing[:_MAX_LISTED]) + (
            f" and {len(missing) - _MAX_LISTED} more" if len(missing) > _MAX_LISTED else ""
        )
        raise InputError(
            f"{file}: {len(missing)} case(s) in the splits file are not in the dataset: {shown}; point at the "
            "dataset the splits were made for or make new splits"
        )
    _check_disjoint(file, known, [("train", train), ("val", val), ("test", test)])
    if folds:
        _check_disjoint(file, known, [("test", test), *((f"fold {i}", f) for i, f in enumerate(folds))])
    fold_index = data.get("fold_index")
    splits = Splits(
        train=train,
        val=val,
        test=test,
        seed=int(data.get("seed", 0)),
        grouped=bool(data.get("grouped", False)),
        folds=folds,
        fold_index=fold_index if isinstance(fold_index, int) else None,
        groups={str(k): str(v) for k, v in dict(data.get("groups") or {}).items()},
    )
    return splits.fold(fold) if fold is not None else splits
