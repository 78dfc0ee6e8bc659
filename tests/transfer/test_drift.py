from __future__ import annotations

import csv
import doctest
import math
from pathlib import Path

import pytest
import torch

from covidseg.errors import InputError, OutputExistsError
from covidseg.transfer import drift as drift_module
from covidseg.transfer.drift import CSV_COLUMNS, LayerDrift, layer_drift, plot_drift, read_drift_csv, write_drift_csv

SOURCE = {
    "a.weight": torch.tensor([[3.0, 4.0]]),  # norm 5
    "a.bias": torch.tensor([0.0, 0.0]),  # norm 0: no relative change
    "b.weight": torch.tensor([1.0, 0.0, 0.0]),  # norm 1
    "c.weight": torch.tensor([2.0]),
}
LAYER_OF = {"a.weight": 1, "a.bias": 1, "b.weight": 2, "c.weight": 2}


def test_zero_for_identical_states() -> None:
    rows = layer_drift({k: v.clone() for k, v in SOURCE.items()}, SOURCE, LAYER_OF)
    assert [r.layer for r in rows] == [1, 2]
    assert all(r.relative_drift == 0.0 and r.drift_norm == 0.0 for r in rows)


def test_exact_values_for_known_perturbation() -> None:
    state = {k: v.clone() for k, v in SOURCE.items()}
    state["a.weight"] += torch.tensor([[0.0, 1.0]])  # ||Δ|| = 1 -> relative 1/5
    state["a.bias"] += torch.tensor([3.0, 4.0])  # source norm 0: out of the mean, into drift_norm
    state["b.weight"] *= 3.0  # ||Δ|| = 2 -> relative 2
    rows = layer_drift(state, SOURCE, LAYER_OF)
    assert rows[0] == LayerDrift(
        layer=1,
        relative_drift=pytest.approx(0.2),
        source_norm=5.0,
        drift_norm=pytest.approx(math.sqrt(26.0)),
        n_tensors=2,
        n_params=4,
    )
    assert rows[1].relative_drift == pytest.approx((2.0 + 0.0) / 2)
    assert rows[1].source_norm == pytest.approx(math.sqrt(1.0 + 4.0))
    assert rows[1].drift_norm == pytest.approx(2.0)
    only_bias = layer_drift(state, SOURCE, {"a.bias": 1})
    assert math.isnan(only_bias[0].relative_drift)
    excluded = layer_drift(state, SOURCE, LAYER_OF, exclude={"a.weight", "a.bias"})
    assert [r.layer for r in excluded] == [2]


def test_missing_or_mismatched_tensors() -> None:
    with pytest.raises(InputError, match=r"fine-tuned weights have no tensor 'c\.weight'"):
        layer_drift({k: v for k, v in SOURCE.items() if k != "c.weight"}, SOURCE, LAYER_OF)
    with pytest.raises(InputError, match="source weights have no tensor"):
        layer_drift(SOURCE, {k: v for k, v in SOURCE.items() if k != "a.bias"}, LAYER_OF)
    with pytest.raises(InputError, match="equal shape"):
        layer_drift({**SOURCE, "c.weight": torch.zeros(2)}, SOURCE, LAYER_OF)


def test_csv_round_trip_and_plot(tmp_path: Path) -> None:
    state = {k: v * 1.1 for k, v in SOURCE.items()}
    rows = layer_drift(state, SOURCE, LAYER_OF)
    out = tmp_path / "drift.csv"
    write_drift_csv(rows, out)
    with pytest.raises(OutputExistsError):
        write_drift_csv(rows, out)
    write_drift_csv(rows, out, overwrite=True)
    assert read_drift_csv(out) == rows
    with open(out, newline="") as fh:
        assert tuple(next(csv.reader(fh))) == CSV_COLUMNS
    png = tmp_path / "drift.png"
    plot_drift({"run a": rows, "identical": layer_drift(SOURCE, SOURCE, LAYER_OF)}, png)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(InputError):
        plot_drift({}, tmp_path / "empty.png")
    with pytest.raises(InputError, match="no drift rows"):
        plot_drift({"x": []}, tmp_path / "empty.png")
    with pytest.raises(InputError, match="does not exist"):
        read_drift_csv(tmp_path / "none.csv")
    (tmp_path / "bad.csv").write_text("a,b\n1,2\n")
    with pytest.raises(InputError, match="columns"):
        read_drift_csv(tmp_path / "bad.csv")


def test_denseunet_has_120_rows(tmp_path: Path) -> None:
    from covidseg.model.layers import encoder_param_layer
    from covidseg.model.unet import DenseUNet, UNetConfig
    from covidseg.transfer.penalties_base import batchnorm_param_names

    torch.manual_seed(0)
    model = DenseUNet(UNetConfig())
    source = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        model.encoder.conv0.weight.mul_(1.5)  # relative change 0.5 on layer 1's conv
    layer_of = encoder_param_layer(model)
    rows = layer_drift(model.state_dict(), source, layer_of, exclude=batchnorm_param_names(model))
    assert [r.layer for r in rows] == list(range(1, 121))
    assert rows[0].relative_drift == pytest.approx(0.5)
    assert all(r.relative_drift == 0.0 for r in rows[1:])
    out = tmp_path / "drift.csv"
    write_drift_csv(rows, out)
    assert len(out.read_text().splitlines()) == 121  # header + 120 layers
    png = tmp_path / "drift.png"
    plot_drift({"conv0 x1.5": rows}, png)
    assert png.stat().st_size > 1000


def test_doctests() -> None:
    result = doctest.testmod(drift_module)
    assert result.attempted > 0
    assert result.failed == 0
