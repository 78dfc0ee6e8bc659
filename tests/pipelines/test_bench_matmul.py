"""Matmul peak and the network's FLOP count."""

from __future__ import annotations

import doctest
import json
from pathlib import Path

import pytest
import torch

from covidseg.model import DenseUNet, UNetConfig, save_checkpoint
from pipelines import bench_matmul as bm


def test_flop_count_of_the_default_network_at_384() -> None:
    # DESIGN.md: 33.4 GFLOP per 384² slice; conv FLOP scale with the pixel count
    assert bm.network_gflop_per_slice(384)["gflop_per_slice"] == pytest.approx(33.417, abs=1e-3)
    small = bm.network_gflop_per_slice(96)["gflop_per_slice"]
    assert small == pytest.approx(33.417 / 16, rel=1e-3)


def test_flop_count_follows_a_checkpoint(tmp_path: Path) -> None:
    cfg = UNetConfig(decoder_channels=(16, 16, 16, 16, 16), class_names=("background", "opacity"))
    ckpt = save_checkpoint(
        tmp_path / "m.pt",
        DenseUNet(cfg),
        model_config=cfg,
        extra={"preprocessing": {"window": [-1000, 0], "slice_size": [64, 64]}},
    )
    got = bm.network_gflop_per_slice(384, ckpt)
    assert got["slice_size"] == [64, 64] and got["classes"] == ["background", "opacity"]
    # the narrow decoder costs less than the default one at the same size
    assert 0 < got["gflop_per_slice"] < bm.network_gflop_per_slice(64)["gflop_per_slice"]


def test_measure_matmul_rates_follow_times() -> None:
    res = bm.measure_matmul(128, torch.float32, 3)
    assert len(res["times_s"]) == 3 and res["best_s"] == min(res["times_s"])
    assert res["gflops_best"] == pytest.approx(2 * 128**3 / res["best_s"] / 1e9)


def test_cli_json_and_overwrite(tmp_path: Path) -> None:
    out = tmp_path / "m.json"
    argv = ["--size", "64", "--repeats", "1", "--network-slice-size", "32", "--threads", "1", "--json", str(out)]
    bm.main(argv)
    data = json.loads(out.read_text())
    assert set(data["matmul"]) == {"fp32", "bf16"} and data["threads"] == 1
    assert data["network"]["slice_size"] == [32, 32]
    assert data["command"].startswith("python pipelines/bench_matmul.py --size 64")
    with pytest.raises(SystemExit, match="already exists"):
        bm.main(argv)


def test_docstring_examples() -> None:
    result = doctest.testmod(bm, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0
