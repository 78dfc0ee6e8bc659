"""``covidseg evaluate PRED REF``: predicted label maps against reference masks, matched by case name.

Every pair is read (:mod:`covidseg.evaluate.reading`), its grids checked (shape; affine within a tolerance for
volumes), and the pairs of stored values counted. Only then are the label schemes resolved from the values all
files hold together (:func:`covidseg.evaluate.labels.resolve_scheme`; ``auto`` for references, ``multiclass``
for predictions by default, as ``covidseg predict`` writes them) and the counts turned into per-case scores
(:class:`covidseg.evaluate.scores.CaseEval`). Volumes are in mL from the voxel spacing; when either side is a 2-D
PNG mask, in pixels.

Examples:
    >>> import tempfile, numpy as np
    >>> from pathlib import Path
    >>> from PIL import Image
    >>> root = Path(tempfile.mkdtemp())
    >>> (root / "pred").mkdir(); (root / "ref").mkdir()
    >>> ref = np.zeros((8, 8), np.uint8); ref[2:6, 2:6] = 255
    >>> pred = np.zeros((8, 8), np.uint8); pred[2:6, 2:4] = 2
    >>> Image.fromarray(ref).save(root / "ref" / "s1.png")
    >>> Image.fromarray(pred).save(root / "pred" / "s1_labels.png")
    >>> result = evaluate_paths(root / "pred", root / "ref")
    >>> result.reference_scheme.name, result.cases[0].scores().dice, result.cases[0].volume_unit
    ('binary', 0.666..., 'px')
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from covidseg.evaluate.labels import LabelScheme, resolve_scheme, role_confusion
from covidseg.evaluate.matching import DEFAULT_STRIP_SUFFIXES, find_label_maps, pair_cases
from covidseg.evaluate.reading import DEFAULT_TOLERANCE_MM, check_same_grid, joint_counts, read_label_map
from covidseg.evaluate.scores import UNIT_ML, UNIT_PIXELS, CaseEval
from covidseg.infer.masks import voxel_volume_ml

__all__ = ["FileEvaluation", "evaluate_paths"]

Progress = Callable[[int, int, str], None]
BINARY_01_NOTE = "references hold only 0 and 1: read as binary opacity masks (--ref-labels multiclass if 1 is lung)"


@dataclass(frozen=True)
class FileEvaluation:
    """The result of evaluating label-map files.

    Attributes:
        cases: Per-case evaluations, sorted by case name.
        reference_scheme: How reference values were read.
        prediction_scheme: How predicted values were read.
        prediction_only: Case names with a prediction but no reference (only with ``allow_missing``).
        reference_only: Case names with a reference but no prediction (only with ``allow_missing``).
        notes: Things the user should know (e.g. volumes in pixels, how 0/1 references were read).
    """

    cases: list[CaseEval]
    reference_scheme: LabelScheme
    prediction_scheme: LabelScheme
    prediction_only: tuple[str, ...] = ()
    reference_only: tuple[str, ...] = ()
    notes: tuple[str, ...] = field(default=())

    def info(self) -> dict[str, Any]:
        """JSON-ready facts for ``summary.json``."""
        return {
            "reference_labels": self.reference_scheme.describe(),
            "prediction_labels": self.prediction_scheme.describe(),
            "missing": {"prediction_only": list(self.prediction_only), "reference_only": list(self.reference_only)},
            "notes": list(self.notes),
        }


@dataclass(frozen=True)
class _Counted:
    case_id: str
    joint: dict[tuple[int, int], int]
    n_slices: int
    spacing: tuple[float, float, float] | None


def evaluate_paths(
    prediction: str | os.PathLike[str],
    reference: str | os.PathLike[str],
    *,
    ref_labels: str = "auto",
    pred_labels: str = "multiclass",
    strip_suffixes: Sequence[str] = DEFAULT_STRIP_SUFFIXES,
    allow_missing: bool = False,
    tolerance_mm: float = DEFAULT_TOLERANCE_MM,
    progress: Progress | None = None,
) -> FileEvaluation:
    """Evaluate predicted label maps against references (files or folders, matched by case name).

    Args:
        prediction: A label map or a folder of them (``covidseg predict`` output folders work as they are).
        reference: A reference mask or a folder of them.
        ref_labels: ``auto``, ``binary`` or ``multiclass`` (see :mod:`covidseg.evaluate.labels`).
        pred_labels: The same for predictions (default ``multiclass``: 0 background, 1 lung, 2 opacity).
        strip_suffixes: Name endings removed to get case names (see :mod:`covidseg.evaluate.matching`).
        allow_missing: Evaluate the cases found on both sides and report the others instead of failing.
        tolerance_mm: Largest affine difference (mm) of two volumes on "the same" grid.
        progress: Called as ``progress(done, total, case_id)`` after each case.

    Returns:
        A :class:`FileEvaluation`.

    Raises:
        InputError: Missing or unreadable files, unmatched names, different grids, label values that the schemes
            cannot read, or cases that mix 2-D masks and volumes.
    """
    pairing = pair_cases(
        find_label_maps(prediction, strip_suffixes, side="prediction"),
        find_label_maps(reference, strip_suffixes, side="reference"),
        allow_missing=allow_missing,
    )
    counted: list[_Counted] = []
    ref_values: set[int] = set()
    pred_values: set[int] = set()
    for done, pair in enumerate(pairing.pairs, start=1):
        pred_map = read_label_map(pair.prediction)
        ref_map = read_label_map(pair.reference)
        check_same_grid(pred_map, ref_map, tolerance_mm)
        joint = joint_counts(ref_map.array, pred_map.array)
        ref_values.update(r for r, _ in joint)
        pred_values.update(p for _, p in joint)
        two_d = pred_map.is_2d or ref_map.is_2d
        counted.append(_Counted(pair.case_id, joint, int(ref_map.array.shape[0]), None if two_d else ref_map.spacing))
        if progress is not None:
            progress(done, len(pairing.pairs), pair.case_id)
        del pred_map, ref_map
    ref_scheme = resolve_scheme(ref_labels, ref_values, "reference")
    pred_scheme = resolve_scheme(pred_labels, pred_values, "prediction")
    notes = []
    if ref_labels == "auto" and ref_scheme.name == "binary" and not ref_values - {0, 1}:
        notes.append(BINARY_01_NOTE)
    if any(c.spacing is None for c in counted):
        notes.append("2-D masks have no pixel spacing: volumes are pixel counts")
    has_lung = ref_scheme.has_lung and pred_scheme.has_lung
    cases = [
        CaseEval(
            case_id=c.case_id,
            confusion=role_confusion(c.joint, ref_scheme, pred_scheme),
            has_lung=has_lung,
            n_slices=c.n_slices,
            voxel_volume=1.0 if c.spacing is None else voxel_volume_ml(c.spacing),
            volume_unit=UNIT_PIXELS if c.spacing is None else UNIT_ML,
            spacing=c.spacing,
        )
        for c in counted
    ]
    return FileEvaluation(
        cases=cases,
        reference_scheme=ref_scheme,
        prediction_scheme=pred_scheme,
        prediction_only=pairing.prediction_only,
        reference_only=pairing.reference_only,
        notes=tuple(notes),
    )
