"""``covidseg compare RUN_A RUN_B``: two evaluations of the same cases, paired by case id and tested.

Inputs are ``per_case.csv`` files written by ``covidseg evaluate`` (or the folders holding them). Cases are paired
by ``case_id``; different case sets are an error unless ``allow_missing``, which keeps the cases both runs scored
and says how many were dropped. The statistics are :func:`covidseg.evaluate.stats.paired_comparison` of the chosen
column (default ``opacity_dice``), differences B minus A.

Examples:
    >>> import tempfile
    >>> from pathlib import Path
    >>> d = Path(tempfile.mkdtemp())
    >>> _ = (d / "a.csv").write_text(chr(10).join(["case_id,opacity_dice", "c1,0.5", "c2,0.6", "c3,0.7"]))
    >>> _ = (d / "b.csv").write_text(chr(10).join(["case_id,opacity_dice", "c3,0.7", "c1,0.5", "c2,0.6"]))
    >>> report = compare_evaluations(d / "a.csv", d / "b.csv", n_bootstrap=100)
    >>> report.comparison.p_value, report.n_dropped
    (1.0, 0)
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from covidseg.errors import InputError
from covidseg.evaluate.stats import DEFAULT_BOOTSTRAP, DEFAULT_CONFIDENCE, PairedComparison, paired_comparison
from covidseg.evaluate.writers import DEFAULT_METRIC, read_per_case

__all__ = ["ComparisonReport", "compare_evaluations"]

_MAX_LISTED = 5


@dataclass(frozen=True)
class ComparisonReport:
    """A paired comparison of two evaluations.

    Attributes:
        run_a: Run A's per-case file.
        run_b: Run B's per-case file.
        metric: The compared column.
        case_ids: The paired cases, sorted.
        n_dropped: Cases left out because only one run has them.
        dropped: Their ids.
        comparison: The statistics (differences B minus A).
    """

    run_a: Path
    run_b: Path
    metric: str
    case_ids: tuple[str, ...]
    n_dropped: int
    dropped: tuple[str, ...]
    comparison: PairedComparison

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return {
            "run_a": str(self.run_a),
            "run_b": str(self.run_b),
            "metric": self.metric,
            "n_dropped": self.n_dropped,
            "dropped": list(self.dropped),
            **self.comparison.to_dict(),
        }


def compare_evaluations(
    run_a: str | os.PathLike[str],
    run_b: str | os.PathLike[str],
    *,
    metric: str = DEFAULT_METRIC,
    allow_missing: bool = False,
    n_bootstrap: int = DEFAULT_BOOTSTRAP,
    seed: int = 0,
    confidence: float = DEFAULT_CONFIDENCE,
) -> ComparisonReport:
    """Pair two ``per_case.csv`` files by case id and compare ``metric`` (B minus A).

    Raises:
        InputError: Unreadable files, a missing column, different case sets (without ``allow_missing``), or no
            common case.
    """
    a = read_per_case(run_a, metric)
    b = read_per_case(run_b, metric)
    only_a = sorted(set(a) - set(b))
    only_b = sorted(set(b) - set(a))
    if (only_a or only_b) and not allow_missing:
        shown = ", ".join([*only_a, *only_b][:_MAX_LISTED])
        raise InputError(
            f"the runs scored different cases ({len(only_a)} only in A, {len(only_b)} only in B: {shown}); "
            "evaluate both on the same cases or pass --allow-missing to compare the common ones"
        )
    common = tuple(sorted(set(a) & set(b)))
    if not common:
        raise InputError("the runs have no case in common; check that both evaluated the same dataset")
    comparison = paired_comparison(
        [a[c] for c in common], [b[c] for c in common], n_bootstrap=n_bootstrap, seed=seed, confidence=confidence
    )
    file_a = Path(run_a)
    file_b = Path(run_b)
    return ComparisonReport(
        run_a=file_a,
        run_b=file_b,
        metric=metric,
        case_ids=common,
        n_dropped=len(only_a) + len(only_b),
        dropped=(*only_a, *only_b),
        comparison=comparison,
    )
