"""Segmentation scores per case in 3-D: Dice, sensitivity and precision of every class, and their means.

The paper scores a case by stacking its slice predictions into a volume and computing the 3-D Dice of the
opacity class over the whole volume (not per slice). For class ``c`` with true positives ``TP``, false
positives ``FP`` and false negatives ``FN`` counted over every voxel of the case:

* Dice ``= 2 TP / (2 TP + FP + FN)``;
* sensitivity (recall) ``= TP / (TP + FN)``;
* precision ``= TP / (TP + FP)``.

Empty cases. When the class is absent from both the reference and the prediction, Dice is **1.0** (a perfect
"nothing here" answer, the convention of MONAI's ``DiceMetric(ignore_empty=False)``). Likewise sensitivity is
1.0 when the reference has no voxel of the class (nothing could be missed) and precision is 1.0 when the
prediction has none (nothing false was claimed). Every ratio is therefore defined, and a mean over cases never
drops a case.

The counts come from one confusion matrix per case (``torch.bincount`` over ``target · C + prediction``), which
needs no one-hot volumes (a 300-slice case at 384² would need 3 x 44 M booleans per class map otherwise).

Examples:
    >>> pred = torch.tensor([[[0, 2], [2, 1]]])
    >>> target = torch.tensor([[[0, 2], [1, 1]]])
    >>> scores = case_scores(pred, target, ("background", "lung", "opacity"), case_id="c1")
    >>> scores.dice["opacity"], scores.dice["lung"], scores.sensitivity["lung"], scores.precision["opacity"]
    (0.666..., 0.666..., 0.5, 0.5)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from covidseg.errors import InputError

__all__ = [
    "EMPTY_SCORE",
    "CaseScores",
    "case_scores",
    "confusion_matrix",
    "mean_scores",
    "scores_from_confusion",
    "scores_table",
]

EMPTY_SCORE = 1.0
"""Score of a ratio whose denominator is 0 (class absent from reference and/or prediction); see the module doc."""


@dataclass(frozen=True)
class CaseScores:
    """Scores of one case, by class name (background included).

    Attributes:
        case_id: The case.
        dice: Class -> 3-D Dice.
        sensitivity: Class -> TP / (TP + FN).
        precision: Class -> TP / (TP + FP).
        voxels: Class -> reference voxel count.
    """

    case_id: str
    dice: dict[str, float]
    sensitivity: dict[str, float]
    precision: dict[str, float]
    voxels: dict[str, int] = field(default_factory=dict)


def confusion_matrix(
    prediction: torch.Tensor | np.ndarray, target: torch.Tensor | np.ndarray, num_classes: int
) -> np.ndarray:
    """Confusion matrix ``M[true, predicted]`` (int64, ``C x C``) of two label maps of the same shape.

    Raises:
        InputError: Different shapes, or a value outside ``0..num_classes-1``.

    Examples:
        >>> confusion_matrix(np.array([0, 1, 1]), np.array([0, 0, 1]), 2).tolist()
        [[1, 1], [0, 1]]
    """
    pred = torch.as_tensor(prediction).reshape(-1).to(torch.int64)
    true = torch.as_tensor(target).reshape(-1).to(torch.int64)
    if tuple(torch.as_tensor(prediction).shape) != tuple(torch.as_tensor(target).shape):
        raise InputError(
            f"prediction shape {tuple(torch.as_tensor(prediction).shape)} differs from the reference shape "
            f"{tuple(torch.as_tensor(target).shape)}; score label maps on the same grid"
        )
    if pred.numel():
        low = min(int(pred.min()), int(true.min()))
        high = max(int(pred.max()), int(true.max()))
        if low < 0 or high >= num_classes:
            raise InputError(f"label values must lie in 0..{num_classes - 1}, found {low}..{high}")
    counts = torch.bincount(true * num_classes + pred, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes).cpu().numpy().astype(np.int64)


def _ratio(numerator: float, denominator: float) -> float:
    return EMPTY_SCORE if denominator == 0 else float(numerator / denominator)


def scores_from_confusion(matrix: np.ndarray, class_names: Sequence[str], case_id: str = "") -> CaseScores:
    """Per-class Dice, sensitivity and precision from a confusion matrix ``M[true, predicted]``.

    Examples:
        >>> s = scores_from_confusion(np.array([[5, 0], [0, 0]]), ("background", "opacity"))
        >>> s.dice["opacity"], s.sensitivity["opacity"], s.precision["opacity"]  # empty-empty
        (1.0, 1.0, 1.0)
    """
    m = np.asarray(matrix, dtype=np.int64)
    if m.shape != (len(class_names), len(class_names)):
        raise InputError(f"confusion matrix of shape {m.shape} does not fit {len(class_names)} classes")
    dice, sens, prec, voxels = {}, {}, {}, {}
    for c, name in enumerate(class_names):
        tp = int(m[c, c])
        fn = int(m[c, :].sum()) - tp
        fp = int(m[:, c].sum()) - tp
        dice[name] = _ratio(2 * tp, 2 * tp + fp + fn)
        sens[name] = _ratio(tp, tp + fn)
        prec[name] = _ratio(tp, tp + fp)
        voxels[name] = tp + fn
    return CaseScores(case_id=case_id, dice=dice, sensitivity=sens, precision=prec, voxels=voxels)


def case_scores(
    prediction: torch.Tensor | np.ndarray,
    target: torch.Tensor | np.ndarray,
    class_names: Sequence[str],
    case_id: str = "",
) -> CaseScores:
    """Score one case: stacked slice predictions ``(Z, H, W)`` against the reference labels of the same shape.

    Examples:
        >>> s = case_scores(np.zeros((2, 4, 4), int), np.zeros((2, 4, 4), int), ("background", "opacity"))
        >>> s.dice
        {'background': 1.0, 'opacity': 1.0}
    """
    return scores_from_confusion(confusion_matrix(prediction, target, len(class_names)), class_names, case_id)


def mean_scores(cases: Sequence[CaseScores], foreground: Sequence[str] | None = None) -> dict[str, float]:
    """Mean over cases of every class's scores, plus ``dice_mean`` (mean Dice over the foreground classes).

    Args:
        cases: Per-case scores (at least one).
        foreground: Classes averaged into ``dice_mean``; default every class but the first (background).

    Returns:
        ``{"dice_<class>": ..., "sensitivity_<class>": ..., "precision_<class>": ..., "dice_mean": ...}``.

    Examples:
        >>> a = CaseScores("a", {"background": 1.0, "opacity": 0.8}, {}, {})
        >>> b = CaseScores("b", {"background": 1.0, "opacity": 0.6}, {}, {})
        >>> {k: round(v, 3) for k, v in mean_scores([a, b]).items()}
        {'dice_background': 1.0, 'dice_opacity': 0.7, 'dice_mean': 0.7}
    """
    if not cases:
        raise InputError("no cases to average scores over; the validation split is empty")
    names = list(cases[0].dice)
    out: dict[str, float] = {}
    for metric in ("dice", "sensitivity", "precision"):
        for name in names:
            values = [getattr(case, metric).get(name) for case in cases]
            present = [v for v in values if v is not None]
            if present:
                out[f"{metric}_{name}"] = float(np.mean(present))
    fg = list(foreground) if foreground is not None else names[1:]
    out["dice_mean"] = float(np.mean([out[f"dice_{name}"] for name in fg])) if fg else float("nan")
    return out


def scores_table(cases: Sequence[CaseScores]) -> list[Mapping[str, float | str]]:
    """One row per case (``case_id`` and ``dice_<class>``), for CSV files and reports.

    Examples:
        >>> scores_table([CaseScores("a", {"opacity": 0.5}, {}, {})])
        [{'case_id': 'a', 'dice_opacity': 0.5}]
    """
    return [{"case_id": case.case_id, **{f"dice_{k}": v for k, v in case.dice.items()}} for case in cases]
