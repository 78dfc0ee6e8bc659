"""Training-step benchmark: the worker's measurements and the peak-RSS helpers."""

from __future__ import annotations

import doctest
import statistics
from collections.abc import Iterator

import numpy as np
import pytest
import torch

from pipelines import bench_train as bt


def test_peak_rss_rises_and_resets() -> None:
    if not bt.reset_peak_rss():
        pytest.skip("this system cannot reset the peak RSS (/proc/self/clear_refs)")
    before = bt.peak_rss_mb()
    block = np.ones(64 * 2**20 // 8)  # 64 MiB, touched
    assert bt.peak_rss_mb() >= before + 60
    del block
    bt.reset_peak_rss()
    assert bt.peak_rss_mb() < before + 30


@pytest.fixture
def one_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny network on a busy machine: OpenMP threads would wait for each other
    yield
    torch.set_num_threads(before)


@pytest.mark.usefixtures("one_thread")
def test_worker_times_every_variant() -> None:
    res = bt.worker("bf16_cl", 32, 2, 2, 1, ["l2sp_layerwise", "l2sp_fisher"])
    assert list(res["penalties"]) == ["l2sp_layerwise", "l2sp_fisher"]
    assert len(res["baseline"]["times_s"]) == 2 and res["baseline"]["peak_rss_mb"] > 0
    for pen in res["penalties"].values():
        ratios = [t / b for t, b in zip(pen["times_s"], pen["baseline_times_s"], strict=True)]
        assert pen["overhead_percent"] == pytest.approx(100 * (statistics.median(ratios) - 1))
        assert pen["median_s"] == statistics.median(pen["times_s"]) > 0
        assert len(pen["own_times_s"]) == 2 * bt.OWN_REPEATS
        own = statistics.median(pen["own_times_s"]) / statistics.median(pen["baseline_times_s"])
        assert pen["own_percent"] == pytest.approx(100 * own) and 0 < pen["own_percent"] < 100
        assert pen["peak_rss_mb"] > 0


def test_unknown_penalty_is_refused_before_timing() -> None:
    with pytest.raises(SystemExit, match=r"unknown penalties \['l9'\]; expected some of \['l2'"):
        bt.worker("fp32", 32, 2, 1, 1, ["l9"])


def test_docstring_examples() -> None:
    result = doctest.testmod(bt, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0
