from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import wilcoxon

from covidseg.errors import InputError
from covidseg.evaluate.stats import paired_comparison


def test_identical_runs_give_p_one_and_zero_interval() -> None:
    scores = [0.81, 0.64, 0.9, 0.55, 0.72, 0.68, 0.77]
    result = paired_comparison(scores, list(scores))
    assert result.p_value == 1.0
    assert result.statistic is None
    assert (result.ci_low, result.ci_high, result.mean_difference) == (0.0, 0.0, 0.0)
    assert (result.wins, result.losses, result.ties) == (0, 0, 7)


def test_constant_shift_interval_contains_it_and_excludes_zero() -> None:
    rng = np.random.default_rng(3)
    a = rng.uniform(0.4, 0.8, size=12)
    b = a + 0.05
    result = paired_comparison(a, b, n_bootstrap=500, seed=1)
    assert result.ci_low <= 0.05 + 1e-12 and result.ci_high >= 0.05 - 1e-12
    assert result.ci_low > 0.0
    assert result.mean_difference == pytest.approx(0.05)
    assert result.wins == 12 and result.losses == 0
    assert result.p_value == pytest.approx(2 / 2**12)  # exact test: all 12 ranks positive


def test_noisy_shift_interval_and_p_value_match_scipy() -> None:
    rng = np.random.default_rng(0)
    a = rng.uniform(0.5, 0.8, size=30)
    b = a + 0.04 + rng.normal(0, 0.02, size=30)
    result = paired_comparison(a, b, n_bootstrap=4000, seed=7)
    assert result.ci_low < 0.04 < result.ci_high
    assert result.ci_low > 0
    assert result.p_value == pytest.approx(float(wilcoxon(b - a).pvalue))
    # seeded: the same seed gives the same interval, another seed a different one
    again = paired_comparison(a, b, n_bootstrap=4000, seed=7)
    other = paired_comparison(a, b, n_bootstrap=4000, seed=8)
    assert (again.ci_low, again.ci_high) == (result.ci_low, result.ci_high)
    assert (other.ci_low, other.ci_high) != (result.ci_low, result.ci_high)


def test_sign_convention_and_counts() -> None:
    result = paired_comparison([0.5, 0.6, 0.7], [0.4, 0.6, 0.9], n_bootstrap=100)
    assert (result.wins, result.losses, result.ties) == (1, 1, 1)
    assert result.mean_difference == pytest.approx((-0.1 + 0.0 + 0.2) / 3)
    assert result.to_dict()["difference"] == "b - a"


def test_bad_inputs() -> None:
    with pytest.raises(InputError, match="pair the same cases"):
        paired_comparison([0.1, 0.2], [0.1])
    with pytest.raises(InputError, match="no paired cases"):
        paired_comparison([], [])
    with pytest.raises(InputError, match="non-finite"):
        paired_comparison([0.1, float("nan")], [0.1, 0.2])
    with pytest.raises(InputError, match="confidence"):
        paired_comparison([0.1], [0.2], confidence=1.0)
