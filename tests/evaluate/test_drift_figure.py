from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from covidseg.errors import InputError, OutputExistsError
from covidseg.evaluate.drift_figure import drift_figure, resolve_run_checkpoint, run_drift, run_labels
from covidseg.model import DenseUNet, UNetConfig, save_checkpoint

CONFIG = UNetConfig(decoder_channels=(8, 8, 8, 8, 8))
CONV0 = "encoder.conv0.weight"
LAST_CONV = "encoder.denseblock4.denselayer16.layers.conv2.weight"


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """A source state dict and two run folders: conv0 scaled by 1.1, and the last dense conv scaled by 1.5."""
    tmp = tmp_path_factory.mktemp("drift")
    torch.manual_seed(0)
    model = DenseUNet(CONFIG)
    source = tmp / "source.pt"
    torch.save(model.state_dict(), source)  # a plain state dict, as a pretrain output or ImageNet file would be
    folders = []
    for name, tensor, factor in (("a", CONV0, 1.1), ("b", LAST_CONV, 1.5)):
        state = {k: v.clone() for k, v in model.state_dict().items()}
        state[tensor] *= factor
        tuned = DenseUNet(CONFIG)
        tuned.load_state_dict(state)
        (tmp / name).mkdir()
        save_checkpoint(tmp / name / "best.pt", tuned, model_config=CONFIG)
        folders.append(tmp / name)
    return source, folders[0], folders[1]


def test_known_relative_drift_per_layer(runs: tuple[Path, Path, Path]) -> None:
    source, a, b = runs
    rows_a = run_drift(a, source)
    assert len(rows_a) == 120 and [r.layer for r in rows_a] == list(range(1, 121))
    # layer 1 = conv0 (changed by 10 %), norm0.weight (unchanged) and norm0.bias (source norm 0: left out)
    assert rows_a[0].relative_drift == pytest.approx((0.1 + 0.0) / 2, rel=1e-5)
    assert rows_a[0].n_tensors == 3
    assert all(r.relative_drift == 0.0 for r in rows_a[1:])
    # conv weights only: the last dense conv scaled by 1.5 is a relative drift of exactly 0.5, alone in its layer
    conv_only = run_drift(b, source, exclude_batchnorm=True)
    changed = [r for r in conv_only if r.relative_drift > 0]
    assert len(changed) == 1 and changed[0].relative_drift == pytest.approx(0.5, rel=1e-5)
    assert changed[0].n_tensors == 1 and len(conv_only) == 120


def test_figure_with_several_runs(runs: tuple[Path, Path, Path], tmp_path: Path) -> None:
    source, a, b = runs
    out = tmp_path / "figure1.png"
    drift = drift_figure(source, [a, b / "best.pt"], out, labels=["L2-SP", "layer-wise"])
    assert list(drift) == ["L2-SP", "layer-wise"]
    with Image.open(out) as img:
        assert img.size[0] > 500 and img.size[1] > 300
    with pytest.raises(OutputExistsError):
        drift_figure(source, [a], out)
    with pytest.raises(InputError, match="one label per run"):
        drift_figure(source, [a, b], tmp_path / "x.png", labels=["only one"])
    assert not (tmp_path / "x.png").exists()


def test_run_resolution_and_labels(runs: tuple[Path, Path, Path], tmp_path: Path) -> None:
    _, a, _ = runs
    assert resolve_run_checkpoint(a) == a / "best.pt"
    with pytest.raises(InputError, match=r"has no best\.pt or last\.pt"):
        resolve_run_checkpoint(tmp_path)
    assert run_labels([a, a.parent / "b" / "best.pt"]) == ["a", "b"]
    with pytest.raises(InputError, match="not unique"):
        run_labels(["x/a", "y/a"])
