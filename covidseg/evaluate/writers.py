"""The files of an evaluation: ``per_case.csv`` and ``summary.json``, written atomically, and read back.

``per_case.csv`` has one row per case: ``case_id``, ``n_slices``, ``volume_unit`` (``mL``, or ``px`` for 2-D
slices without spacing), then for each structure (``opacity``, and ``lung`` when both sides label it)
``<structure>_dice``, ``_sensitivity``, ``_precision``, ``_volume_pred``, ``_volume_ref``, ``_volume_diff``
(predicted minus reference), ``_tp``, ``_fp``, ``_fn``. ``summary.json`` holds
:func:`covidseg.evaluate.scores.summarize` and facts about the inputs.

Both files are checked before either is written (an existing file without ``overwrite`` writes nothing), built in
memory, then each is renamed into place complete.

Examples:
    >>> import tempfile, numpy as np
    >>> from covidseg.evaluate.scores import CaseEval
    >>> out = Path(tempfile.mkdtemp()) / "eval"
    >>> case = CaseEval("c1", np.diag([9, 0, 3]), has_lung=False, n_slices=1, voxel_volume=1.0, volume_unit="px")
    >>> paths = write_evaluation(out, [case], {"reference_labels": "binary"})
    >>> read_per_case(paths.per_case)
    {'c1': 1.0}
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from covidseg.errors import InputError
from covidseg.evaluate.scores import STRUCTURES, CaseEval, csv_columns, summarize
from covidseg.io.atomic import atomic_path, check_writable

__all__ = ["PER_CASE_NAME", "SUMMARY_NAME", "EvaluationPaths", "read_per_case", "write_evaluation"]

PER_CASE_NAME = "per_case.csv"
"""Per-case scores in an evaluation folder."""
SUMMARY_NAME = "summary.json"
"""Summary over cases in an evaluation folder."""
DEFAULT_METRIC = "opacity_dice"
"""Column :func:`read_per_case` reads by default."""


@dataclass(frozen=True)
class EvaluationPaths:
    """Where an evaluation was written.

    Attributes:
        per_case: The per-case CSV.
        summary: The summary JSON.
    """

    per_case: Path
    summary: Path


def _cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(round(value, 12))
    return value


def per_case_csv(cases: Sequence[CaseEval]) -> str:
    """The text of ``per_case.csv`` (lung columns only when some case has lung scores).

    Examples:
        >>> import numpy as np
        >>> case = CaseEval("c", np.diag([1, 0, 1]), has_lung=False, n_slices=1, voxel_volume=1.0, volume_unit="px")
        >>> per_case_csv([case]).splitlines()[1].split(",")[:4]
        ['c', '1', 'px', '1.0']
    """
    structures = [s for s in STRUCTURES if any(s in c.structures for c in cases)]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=csv_columns(structures), lineterminator="\n")
    writer.writeheader()
    for case in cases:
        writer.writerow({k: _cell(v) for k, v in case.to_row(structures).items()})
    return buffer.getvalue()


def write_evaluation(
    out_dir: str | os.PathLike[str],
    cases: Sequence[CaseEval],
    info: Mapping[str, Any] | None = None,
    *,
    overwrite: bool = False,
) -> EvaluationPaths:
    """Write ``per_case.csv`` and ``summary.json`` (summary plus ``info``) into ``out_dir``, atomically.

    Raises:
        OutputExistsError: Either file exists and ``overwrite`` is false (nothing is written).
        InputError: No cases, or cases mixing mL and pixel volumes.
    """
    folder = Path(out_dir)
    if folder.exists() and not folder.is_dir():
        raise InputError(f"{folder} is a file; pass a folder for the evaluation outputs")
    targets = EvaluationPaths(
        check_writable(folder / PER_CASE_NAME, overwrite), check_writable(folder / SUMMARY_NAME, overwrite)
    )
    summary = {**summarize(cases), **dict(info or {})}
    csv_text = per_case_csv(cases)
    json_text = json.dumps(summary, indent=2, allow_nan=False) + "\n"
    for path, text in ((targets.per_case, csv_text), (targets.summary, json_text)):
        with atomic_path(path, overwrite=overwrite) as tmp:
            tmp.write_text(text, encoding="utf-8")
    return targets


def read_per_case(path: str | os.PathLike[str], metric: str = DEFAULT_METRIC) -> dict[str, float]:
    """Case id -> ``metric`` from a ``per_case.csv`` (or a folder holding one).

    Raises:
        InputError: A missing file, a file without ``case_id`` or ``metric`` columns, duplicate or empty cases,
            or a value that is not a number.
    """
    p = Path(path)
    file = p / PER_CASE_NAME if p.is_dir() else p
    if not file.is_file():
        raise InputError(f"{p}: no {PER_CASE_NAME} here; pass a file or folder written by covidseg evaluate")
    with open(file, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        columns = list(reader.fieldnames or [])
        if "case_id" not in columns or metric not in columns:
            choices = [c for c in columns if c not in ("case_id", "n_slices", "volume_unit")]
            raise InputError(f"{file} has no column {metric!r} (or no case_id); choose --metric from {choices}")
        values: dict[str, float] = {}
        for row in reader:
            case_id, raw = row["case_id"], (row[metric] or "").strip()
            if case_id in values:
                raise InputError(f"{file} lists case {case_id!r} twice; use a file written by covidseg evaluate")
            try:
                value = float(raw)
            except ValueError:
                raise InputError(f"{file}: case {case_id!r} has no number in {metric!r} ({raw!r})") from None
            if not math.isfinite(value):
                raise InputError(f"{file}: case {case_id!r} has a non-finite {metric!r}")
            values[case_id] = value
    if not values:
        raise InputError(f"{file} lists no cases")
    return values
