"""Per-case evaluation scores (opacity and lungs) and their summary over cases.

A case is kept as its 3 x 3 role confusion matrix ``M[reference role, predicted role]`` (roles of
:mod:`covidseg.evaluate.labels`), counted over every voxel of the case, so 3-D Dice, sensitivity and precision
come from :func:`covidseg.train.metrics.scores_from_confusion` with its conventions (empty reference and empty
prediction: Dice 1.0; see :mod:`covidseg.train.metrics`). Two structures are scored:

* ``opacity``: role opacity against the rest;
* ``lung``: the whole lungs, i.e. roles lung *and* opacity against background (only when both sides label lung).

Volumes are ``voxel count x voxel volume``: mL from the voxel spacing for volumes, or pixels for 2-D slices whose
spacing is unknown (:attr:`CaseEval.volume_unit` says which). ``volume_diff`` is predicted minus reference.

Examples:
    >>> m = np.array([[90, 0, 0], [0, 0, 0], [0, 2, 8]])  # 10 reference opacity voxels, 8 found
    >>> case = CaseEval("c1", m, has_lung=False, n_slices=1, voxel_volume=0.5, volume_unit="mL")
    >>> s = case.scores("opacity")
    >>> round(s.dice, 4), s.sensitivity, s.precision, s.volume_ref, s.volume_pred, s.volume_diff
    (0.8889, 0.8, 1.0, 5.0, 4.0, -1.0)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from covidseg.errors import InputError
from covidseg.evaluate.labels import ROLE_BACKGROUND, ROLE_NAMES, ROLE_OPACITY
from covidseg.train.metrics import scores_from_confusion

__all__ = [
    "METRICS",
    "STRUCTURES",
    "UNIT_ML",
    "UNIT_PIXELS",
    "CaseEval",
    "StructureScores",
    "csv_columns",
    "describe_values",
    "pooled_scores",
    "summarize",
]

STRUCTURES: tuple[str, str] = ("opacity", "lung")
"""Scored structures, in report order."""
METRICS: tuple[str, ...] = ("dice", "sensitivity", "precision", "volume_pred", "volume_ref", "volume_diff")
"""Per-structure metrics of a case (CSV columns ``<structure>_<metric>``), summarized over cases."""
COUNTS: tuple[str, ...] = ("tp", "fp", "fn")
UNIT_ML = "mL"
"""Volume unit of cases with a known voxel spacing."""
UNIT_PIXELS = "px"
"""Volume unit of 2-D slices without a known pixel spacing (volumes are pixel counts)."""


@dataclass(frozen=True)
class StructureScores:
    """Scores of one structure in one case (or pooled over cases).

    Attributes:
        dice: ``2 TP / (2 TP + FP + FN)`` (1.0 when both are empty).
        sensitivity: ``TP / (TP + FN)`` (1.0 without reference voxels).
        precision: ``TP / (TP + FP)`` (1.0 without predicted voxels).
        tp: True-positive voxels.
        fp: False-positive voxels.
        fn: False-negative voxels.
        volume_pred: Predicted volume (mL, or pixels for 2-D slices).
        volume_ref: Reference volume, same unit.
        volume_diff: ``volume_pred - volume_ref``.
    """

    dice: float
    sensitivity: float
    precision: float
    tp: int
    fp: int
    fn: int
    volume_pred: float
    volume_ref: float
    volume_diff: float


def _structure_matrix(confusion: np.ndarray, structure: str) -> tuple[np.ndarray, tuple[str, str]]:
    """2 x 2 confusion matrix (rest, structure) of a 3 x 3 role matrix."""
    if structure == "opacity":
        inside = [ROLE_OPACITY]
    elif structure == "lung":
        inside = [r for r in range(len(ROLE_NAMES)) if r != ROLE_BACKGROUND]
    else:
        raise InputError(f"unknown structure {structure!r}; expected one of {list(STRUCTURES)}")
    mask = np.zeros(len(ROLE_NAMES), bool)
    mask[inside] = True
    m = np.asarray(confusion, np.int64)
    collapsed = np.array(
        [[m[~mask][:, ~mask].sum(), m[~mask][:, mask].sum()], [m[mask][:, ~mask].sum(), m[mask][:, mask].sum()]],
        np.int64,
    )
    return collapsed, ("rest", structure)


def structure_scores(confusion: np.ndarray, structure: str, voxel_volume: float) -> StructureScores:
    """Scores of ``structure`` from a 3 x 3 role confusion matrix; volumes in ``voxel_volume`` units per voxel.

    Examples:
        >>> m = np.array([[5, 0, 0], [1, 3, 0], [0, 1, 2]])
        >>> s = structure_scores(m, "lung", 1.0)  # lung = roles lung + opacity
        >>> s.tp, s.fp, s.fn, s.volume_ref
        (6, 0, 1, 7.0)
    """
    matrix, names = _structure_matrix(confusion, structure)
    scores = scores_from_confusion(matrix, names)
    tp = int(matrix[1, 1])
    fn = int(matrix[1, 0])
    fp = int(matrix[0, 1])
    pred, ref = (tp + fp) * voxel_volume, (tp + fn) * voxel_volume
    return StructureScores(
        dice=scores.dice[structure],
        sensitivity=scores.sensitivity[structure],
        precision=scores.precision[structure],
        tp=tp,
        fp=fp,
        fn=fn,
        volume_pred=float(pred),
        volume_ref=float(ref),
        volume_diff=float(pred - ref),
    )


@dataclass(frozen=True, eq=False)
class CaseEval:
    """The evaluation of one case: its role confusion matrix and how to turn voxel counts into volumes.

    Attributes:
        case_id: The case name.
        confusion: int64 ``(3, 3)`` ``M[reference role, predicted role]`` over all voxels of the case.
        has_lung: Both sides label lung, so lung scores are defined.
        n_slices: Axial slices of the case (1 for a 2-D slice).
        voxel_volume: Volume of one voxel in :attr:`volume_unit` (1.0 for pixels).
        volume_unit: :data:`UNIT_ML` or :data:`UNIT_PIXELS`.
        spacing: Voxel spacing (z, y, x) in mm, None when unknown.
        notes: Remarks about the case (for reports).
    """

    case_id: str
    confusion: np.ndarray
    has_lung: bool
    n_slices: int
    voxel_volume: float
    volume_unit: str
    spacing: tuple[float, float, float] | None = None
    notes: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        if np.shape(self.confusion) != (len(ROLE_NAMES), len(ROLE_NAMES)):
            raise InputError(f"case {self.case_id}: confusion matrix must be 3 x 3, got {np.shape(self.confusion)}")
        if self.volume_unit not in (UNIT_ML, UNIT_PIXELS):
            raise InputError(f"volume unit must be {UNIT_ML!r} or {UNIT_PIXELS!r}, got {self.volume_unit!r}")

    @property
    def structures(self) -> tuple[str, ...]:
        """The structures scored for this case: opacity, and lung when both sides label it."""
        return STRUCTURES if self.has_lung else STRUCTURES[:1]

    def scores(self, structure: str = "opacity") -> StructureScores:
        """Scores of ``structure`` (``opacity`` or ``lung``)."""
        if structure not in self.structures:
            raise InputError(f"case {self.case_id} has no {structure} scores (the reference does not label it)")
        return structure_scores(self.confusion, structure, self.voxel_volume)

    def to_row(self, structures: Sequence[str] = STRUCTURES) -> dict[str, Any]:
        """One CSV row: ``case_id``, ``n_slices``, ``volume_unit``, then ``<structure>_<metric>`` (None if absent).

        Examples:
            >>> case = CaseEval("a", np.diag([4, 0, 2]), has_lung=False, n_slices=1, voxel_volume=1.0, volume_unit="px")
            >>> row = case.to_row()
            >>> row["opacity_dice"], row["opacity_volume_ref"], row["lung_dice"]
            (1.0, 2.0, None)
        """
        row: dict[str, Any] = {"case_id": self.case_id, "n_slices": self.n_slices, "volume_unit": self.volume_unit}
        for structure in structures:
            values = self.scores(structure) if structure in self.structures else None
            for name in (*METRICS, *COUNTS):
                row[f"{structure}_{name}"] = None if values is None else getattr(values, name)
        return row


def csv_columns(structures: Sequence[str]) -> list[str]:
    """Columns of ``per_case.csv`` for the given structures.

    Examples:
        >>> csv_columns(["opacity"])[:5]
        ['case_id', 'n_slices', 'volume_unit', 'opacity_dice', 'opacity_sensitivity']
    """
    return ["case_id", "n_slices", "volume_unit", *(f"{s}_{m}" for s in structures for m in (*METRICS, *COUNTS))]


def describe_values(values: Sequence[float]) -> dict[str, float | None]:
    """Mean, sample standard deviation (ddof 1; None for one value) and median.

    Examples:
        >>> describe_values([0.5, 0.7, 0.9])
        {'mean': 0.7, 'std': 0.2, 'median': 0.7}
    """
    array = np.asarray(values, np.float64)
    if array.size == 0:
        raise InputError("no values to summarize")
    std = float(np.std(array, ddof=1)) if array.size > 1 else None
    return {
        "mean": round(float(np.mean(array)), 12),
        "std": None if std is None else round(std, 12),
        "median": round(float(np.median(array)), 12),
    }


def _common_unit(cases: Sequence[CaseEval]) -> str:
    units = {c.volume_unit for c in cases}
    if len(units) > 1:
        slices = [c.case_id for c in cases if c.volume_unit == UNIT_PIXELS][:3]
        raise InputError(
            f"cases mix 2-D slices without spacing ({', '.join(slices)}, ...) and volumes in mL; "
            "evaluate slices and volumes separately"
        )
    return units.pop()


def pooled_scores(cases: Sequence[CaseEval], structure: str = "opacity") -> StructureScores:
    """Scores of the confusion matrices summed over cases (pooled Dice: TP, FP, FN summed over all slices).

    Examples:
        >>> a = CaseEval("a", np.diag([1, 0, 1]), has_lung=False, n_slices=1, voxel_volume=1.0, volume_unit="px")
        >>> b = CaseEval("b", np.array([[1, 0, 1], [0, 0, 0], [0, 0, 0]]), False, 1, 1.0, "px")
        >>> round(pooled_scores([a, b]).dice, 4)  # 2 TP / (2 TP + 1 FP) with TP = 1
        0.6667
    """
    if not cases:
        raise InputError("no cases to pool")
    _common_unit(cases)
    total = np.sum([c.confusion for c in cases], axis=0)
    # Volumes of pooled counts: voxel volumes may differ between cases, so sum the per-case volumes.
    pooled = structure_scores(total, structure, 1.0)
    per_case = [c.scores(structure) for c in cases]
    pred = float(sum(s.volume_pred for s in per_case))
    ref = float(sum(s.volume_ref for s in per_case))
    return StructureScores(
        dice=pooled.dice,
        sensitivity=pooled.sensitivity,
        precision=pooled.precision,
        tp=pooled.tp,
        fp=pooled.fp,
        fn=pooled.fn,
        volume_pred=pred,
        volume_ref=ref,
        volume_diff=pred - ref,
    )


def summarize(cases: Sequence[CaseEval]) -> dict[str, Any]:
    """Summary over cases: per structure and metric mean/std/median, plus pooled scores.

    Lung is summarized only when every case has lung scores.

    Returns:
        ``{"n_cases", "volume_unit", "structures": {s: {metric: {mean, std, median}}},
        "pooled": {s: {dice, sensitivity, precision, tp, fp, fn, volume_pred, volume_ref, volume_diff}}}``.

    Raises:
        InputError: No cases, or cases that mix mL and pixel volumes.

    Examples:
        >>> a = CaseEval("a", np.diag([8, 0, 2]), has_lung=False, n_slices=1, voxel_volume=1.0, volume_unit="px")
        >>> b = CaseEval("b", np.array([[8, 0, 0], [0, 0, 0], [2, 0, 0]]), False, 1, 1.0, "px")
        >>> s = summarize([a, b])
        >>> s["structures"]["opacity"]["dice"], s["pooled"]["opacity"]["dice"]
        ({'mean': 0.5, 'std': 0.707106781187, 'median': 0.5}, 0.666666666667)
    """
    if not cases:
        raise InputError("no cases were evaluated; check the inputs")
    unit = _common_unit(cases)
    structures = [s for s in STRUCTURES if all(s in c.structures for c in cases)]
    out: dict[str, Any] = {"n_cases": len(cases), "volume_unit": unit, "structures": {}, "pooled": {}}
    for structure in structures:
        per_case = [c.scores(structure) for c in cases]
        out["structures"][structure] = {m: describe_values([getattr(s, m) for s in per_case]) for m in METRICS}
        pooled = pooled_scores(cases, structure)
        values = {name: getattr(pooled, name) for name in (*METRICS, *COUNTS)}
        out["pooled"][structure] = {k: round(v, 12) if isinstance(v, float) else v for k, v in values.items()}
    return out
