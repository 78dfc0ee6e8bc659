"""Paired comparison of two runs on the same cases: Wilcoxon signed-rank test and a bootstrap interval.

For per-case scores ``a`` (run A) and ``b`` (run B) of the same cases, the differences are ``d = b - a`` (positive:
B scores higher). Reported:

* ``mean_difference``: the mean of ``d``;
* ``p_value``: two-sided Wilcoxon signed-rank test of ``d`` (``scipy.stats.wilcoxon``, zero differences dropped,
  exact distribution for small samples without ties). When every difference is zero (identical runs), the test
  is undefined in scipy; the runs cannot be told apart and ``p_value`` is exactly 1.0;
* ``ci_low``, ``ci_high``: percentile bootstrap confidence interval of the mean difference (cases resampled
  with replacement, ``n_bootstrap`` resamples, seeded: the same inputs and seed give the same interval);
* ``wins`` / ``losses`` / ``ties``: cases where B is higher / lower / equal.

Examples:
    >>> r = paired_comparison([0.70, 0.80, 0.60, 0.75], [0.70, 0.80, 0.60, 0.75])
    >>> r.p_value, r.mean_difference, r.ties
    (1.0, 0.0, 4)
    >>> r = paired_comparison([0.5, 0.6, 0.7, 0.8, 0.6], [0.6, 0.7, 0.8, 0.9, 0.7], n_bootstrap=2000)
    >>> round(r.mean_difference, 6), round(r.ci_low, 6), round(r.ci_high, 6), r.wins
    (0.1, 0.1, 0.1, 5)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from covidseg.errors import InputError

__all__ = ["DEFAULT_BOOTSTRAP", "DEFAULT_CONFIDENCE", "PairedComparison", "paired_comparison"]

DEFAULT_BOOTSTRAP = 10_000
"""Bootstrap resamples of the mean difference."""
DEFAULT_CONFIDENCE = 0.95
"""Confidence level of the bootstrap interval."""
_BOOTSTRAP_CHUNK = 1_000_000
"""Resampled values drawn at once (bounds memory for many cases)."""


@dataclass(frozen=True)
class PairedComparison:
    """The paired comparison of run B against run A (differences ``b - a``).

    Attributes:
        n: Number of paired cases.
        mean_a: Mean score of run A.
        mean_b: Mean score of run B.
        mean_difference: Mean of ``b - a``.
        median_difference: Median of ``b - a``.
        ci_low: Lower end of the bootstrap interval of the mean difference.
        ci_high: Upper end.
        confidence: Confidence level of the interval (e.g. 0.95).
        p_value: Two-sided Wilcoxon signed-rank p-value (1.0 when all differences are 0).
        statistic: The Wilcoxon statistic (None when all differences are 0).
        wins: Cases with ``b > a``.
        losses: Cases with ``b < a``.
        ties: Cases with ``b == a``.
        n_bootstrap: Bootstrap resamples.
        seed: Bootstrap seed.
    """

    n: int
    mean_a: float
    mean_b: float
    mean_difference: float
    median_difference: float
    ci_low: float
    ci_high: float
    confidence: float
    p_value: float
    statistic: float | None
    wins: int
    losses: int
    ties: int
    n_bootstrap: int
    seed: int

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (``difference`` states the sign convention).

        Examples:
            >>> paired_comparison([0.5], [0.5], n_bootstrap=10).to_dict()["difference"]
            'b - a'
        """
        return {"difference": "b - a", **asdict(self)}


def _as_scores(values: Sequence[float], name: str) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64).reshape(-1)
    if not np.all(np.isfinite(array)):
        raise InputError(f"run {name} has missing or non-finite scores; compare cases that both runs scored")
    return array


def _bootstrap_interval(diff: np.ndarray, n_bootstrap: int, seed: int, confidence: float) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``diff`` (resampling cases with replacement)."""
    rng = np.random.default_rng(seed)
    n = diff.size
    per_chunk = max(1, _BOOTSTRAP_CHUNK // n)
    means = np.empty(n_bootstrap, np.float64)
    for start in range(0, n_bootstrap, per_chunk):
        stop = min(start + per_chunk, n_bootstrap)
        idx = rng.integers(0, n, size=(stop - start, n))
        means[start:stop] = diff[idx].mean(axis=1)
    alpha = 1.0 - confidence
    low, high = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    # A constant difference gives means that differ from it only by rounding: report it exactly.
    if np.all(diff == diff[0]):
        low = high = float(diff[0])
    return float(low), float(high)


def paired_comparison(
    a: Sequence[float],
    b: Sequence[float],
    *,
    n_bootstrap: int = DEFAULT_BOOTSTRAP,
    seed: int = 0,
    confidence: float = DEFAULT_CONFIDENCE,
) -> PairedComparison:
    """Compare paired per-case scores of run B with run A (same cases, same order).

    Args:
        a: Scores of run A, one per case (e.g. opacity Dice).
        b: Scores of run B for the same cases in the same order.
        n_bootstrap: Bootstrap resamples of the mean difference (at least 1).
        seed: Seed of the bootstrap resampling.
        confidence: Level of the percentile interval, in (0, 1).

    Returns:
        A :class:`PairedComparison` (see the module docstring for each value).

    Raises:
        InputError: Different lengths, no cases, non-finite scores, or invalid ``n_bootstrap`` / ``confidence``.

    Examples:
        >>> r = paired_comparison([0.8, 0.7, 0.9, 0.6, 0.75, 0.65], [0.82, 0.69, 0.95, 0.7, 0.8, 0.7])
        >>> r.wins, r.losses, r.ties, round(r.p_value, 4)
        (5, 1, 0, 0.0625)
    """
    x = _as_scores(a, "A")
    y = _as_scores(b, "B")
    if x.size != y.size:
        raise InputError(f"run A has {x.size} scores and run B {y.size}; pair the same cases in both")
    if x.size == 0:
        raise InputError("no paired cases to compare")
    if n_bootstrap < 1:
        raise InputError(f"n_bootstrap must be at least 1, got {n_bootstrap}")
    if not 0.0 < confidence < 1.0:
        raise InputError(f"confidence must lie strictly between 0 and 1, got {confidence}")
    diff = y - x
    if np.all(diff == 0):
        p_value, statistic = 1.0, None
    else:
        from scipy.stats import wilcoxon

        result = wilcoxon(diff, zero_method="wilcox", alternative="two-sided")
        p_value = min(1.0, float(result.pvalue))
        statistic = float(result.statistic)
        if not math.isfinite(p_value):  # e.g. a single non-zero difference under the normal approximation
            p_value = 1.0
    low, high = _bootstrap_interval(diff, n_bootstrap, seed, confidence)
    return PairedComparison(
        n=int(x.size),
        mean_a=float(x.mean()),
        mean_b=float(y.mean()),
        mean_difference=float(diff.mean()),
        median_difference=float(np.median(diff)),
        ci_low=low,
        ci_high=high,
        confidence=float(confidence),
        p_value=p_value,
        statistic=statistic,
        wins=int(np.sum(diff > 0)),
        losses=int(np.sum(diff < 0)),
        ties=int(np.sum(diff == 0)),
        n_bootstrap=int(n_bootstrap),
        seed=int(seed),
    )
