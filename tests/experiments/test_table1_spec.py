"""Table 1 presets: the grid's cells and their resolved run configs, path handling, one-line errors."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import yaml

from covidseg.errors import ConfigError
from covidseg.experiments.table1 import cell_config, expand_cells
from covidseg.experiments.table1_spec import GridSection, expand_columns, load_table1_spec
from covidseg.transfer.schedules import make_schedule

REPO = Path(__file__).resolve().parents[2]
PHANTOM = REPO / "configs" / "experiments" / "table1_phantom.yaml"
COVID20 = REPO / "configs" / "experiments" / "table1_covid20.yaml"
SCHEMES = REPO / "configs" / "schemes"
PAPER_COLUMNS = [
    "lambda-0",
    "l2sp-3",
    "l2sp-5",
    "l2sp-8",
    "log-15-1.5",
    "log-15-2",
    "log-20-1.5",
    "log-20-2",
]
N_ENCODER_LAYERS = 120


def _write(tmp: Path, preset: dict[str, Any]) -> Path:
    path = tmp / "preset.yaml"
    path.write_text(yaml.safe_dump(preset, allow_unicode=True))
    return path


def _minimal(**extra: Any) -> dict[str, Any]:
    preset: dict[str, Any] = {
        "base": [str(REPO / "configs" / "datasets" / "phantom.yaml")],
        "schemes": {
            "zero": str(SCHEMES / "none.yaml"),
            "fixed": str(SCHEMES / "l2sp.yaml"),
            "layerwise": str(SCHEMES / "l2sp_layerwise_20_1.5.yaml"),
        },
        "sources": {"imagenet": {"stand_in": True}},
        "grid": {"rows": ["none", "imagenet"]},
    }
    preset.update(extra)
    return preset


@pytest.mark.parametrize("preset", [PHANTOM, COVID20], ids=["phantom", "covid20"])
def test_presets_expand_to_the_papers_grid(preset: Path) -> None:
    spec = load_table1_spec(preset)
    cells = [c.cell_id for c in expand_cells(spec)]
    expected = ["none__lambda-0"] + [
        f"{row}__{col}" for row in ("imagenet", "medicalnet", "imagenet_medicalnet") for col in PAPER_COLUMNS
    ]
    assert cells == expected


def test_phantom_cells_resolve_to_the_right_regularization(tmp_path: Path) -> None:
    spec = load_table1_spec(PHANTOM)
    by_id = {c.cell_id: c for c in expand_cells(spec)}
    source = tmp_path / "src.pt"

    def config(cell_id: str) -> Any:
        cell = by_id[cell_id]
        return cell_config(spec, cell, source=None if cell.row == "none" else source, out=tmp_path)

    scratch = config("none__lambda-0")
    assert scratch.source.path is None
    assert scratch.regularization.name == "none"

    init_only = config("imagenet__lambda-0")
    assert init_only.regularization.name == "none"
    assert init_only.source.path == source

    fixed = config("medicalnet__l2sp-5")
    assert fixed.regularization.name == "l2sp"
    assert fixed.regularization.params() == {"sp_lambda": 5.0, "decoder_lambda": 0.01}
    assert fixed.source.path == source

    layerwise = config("imagenet_medicalnet__log-15-2")
    assert layerwise.regularization.name == "l2sp_layerwise"
    schedule = layerwise.regularization.params()["schedule"]
    assert schedule == {"name": "log", "lambda0": 15.0, "alpha": 2.0}
    values = make_schedule(**schedule).values(N_ENCODER_LAYERS)
    assert values[0] == pytest.approx(15.0)
    assert values[-1] == pytest.approx(15.0 - 2.0 * math.log(N_ENCODER_LAYERS))

    for cfg, name in ((scratch, "none__lambda-0"), (fixed, "medicalnet__l2sp-5")):
        assert cfg.output.root == tmp_path / "cells" and cfg.output.name == name
        assert cfg.data.splits == tmp_path / "splits.json"
        assert cfg.data.cache_dir == tmp_path / "cache"
        assert cfg.preprocess.slice_size == (64, 64)
        assert cfg.data.test_fraction > 0
        assert cfg.train.device == "cpu"


def test_covid20_preset_is_full_scale_on_cuda(tmp_path: Path) -> None:
    spec = load_table1_spec(COVID20)
    cell = expand_cells(spec)[-1]
    cfg = cell_config(spec, cell, source=tmp_path / "s.pt", out=tmp_path)
    assert (cfg.data.layout, cfg.preprocess.slice_size, cfg.train.device) == ("covid20", (384, 384), "cuda")
    assert cfg.data.test_fraction == pytest.approx(0.2)
    assert cfg.train.epochs >= 20
    assert spec.sources.imagenet is not None and spec.sources.imagenet.path == REPO / "weights" / "densenet121.pth"


def test_decoder_lambda_and_column_labels() -> None:
    columns = expand_columns(GridSection(fixed=[3.0], lambda0=[20.0], alpha=[1.5], decoder_lambda=0.0))
    assert [(c.column_id, c.kind, c.label) for c in columns] == [
        ("lambda-0", "zero", "λ = 0"),
        ("l2sp-3", "fixed", "L2-SP λ = 3"),
        ("log-20-1.5", "layerwise", "λ_i = 20 − 1.5·log i"),
    ]
    assert columns[0].overrides == ()
    assert columns[1].params == {"sp_lambda": 3.0, "decoder_lambda": 0.0}
    assert "regularization.decoder_lambda=0.0" in columns[2].overrides


def test_overrides_filter_the_grid_and_keep_file_paths_relative_to_the_preset(tmp_path: Path) -> None:
    preset = _minimal(output="out", sources={"imagenet": {"path": "weights/in.pth"}})
    spec = load_table1_spec(_write(tmp_path, preset), ["grid.fixed=[5]", "grid.lambda0=[]", "grid.alpha=[]"])
    assert [c.cell_id for c in expand_cells(spec)] == ["none__lambda-0", "imagenet__lambda-0", "imagenet__l2sp-5"]
    assert spec.output == tmp_path / "out"
    assert spec.sources.imagenet is not None and spec.sources.imagenet.path == tmp_path / "weights" / "in.pth"
    spec = load_table1_spec(_write(tmp_path, preset), ["grid.cells=[imagenet__log-20-2]"])
    assert [c.cell_id for c in expand_cells(spec)] == ["imagenet__log-20-2"]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"grd": {}}, r"unknown key 'grd'; allowed keys: \['base', 'grid', "),
        ({"grid": {"rows": ["imagenet"], "lambda": [1]}}, r"unknown key 'grid.lambda'; allowed keys: \['alpha', "),
        ({"sources": {"imagenet": {"stand_in": True, "url": "x"}}}, "unknown key 'sources.imagenet.url'"),
        ({"grid": {"rows": ["medicalnet"]}}, "grid.rows has 'medicalnet' but sources.medicalnet is not set"),
        ({"grid": {"rows": ["imagenet"], "fixed": [-1.0]}}, "grid strengths must be finite and >= 0"),
        ({"grid": {"rows": ["imagenet"], "lambda0": [20.0], "alpha": []}}, "grid.lambda0 and grid.alpha go together"),
        ({"grid": {"rows": ["oxford"]}}, "grid.rows.0: Input should be 'none', 'imagenet'"),
        ({"sources": {"imagenet": {}}}, "give exactly one of path .* or stand_in: true"),
        (
            {"sources": {"imagenet": {"stand_in": True}, "medicalnet": {"path": "a.pt", "pretrain": ["p.yaml"]}}},
            "give exactly one of path",
        ),
        (
            {"sources": {"imagenet_medicalnet": {"pretrain": ["p.yaml"]}}, "grid": {"rows": ["imagenet_medicalnet"]}},
            "pre-trained from the ImageNet file; set sources.imagenet",
        ),
    ],
)
def test_bad_presets_are_one_line_config_errors(tmp_path: Path, change: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        load_table1_spec(_write(tmp_path, _minimal(**change)))
    assert "\n" not in str(info.value)
    assert str(info.value).startswith("invalid Table 1 preset ")


def test_unknown_cell_and_missing_or_broken_files(tmp_path: Path) -> None:
    spec = load_table1_spec(_write(tmp_path, _minimal()), ["grid.cells=[imagenet__l2sp-4]"])
    with pytest.raises(ConfigError, match=r"grid.cells has \['imagenet__l2sp-4'\], not cells of this grid"):
        expand_cells(spec)
    with pytest.raises(ConfigError, match="does not exist; see configs/experiments/"):
        load_table1_spec(tmp_path / "missing.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("base: [unclosed\n")
    with pytest.raises(ConfigError, match="is not valid YAML"):
        load_table1_spec(broken)


def test_a_bad_run_config_override_fails_at_cell_config(tmp_path: Path) -> None:
    spec = load_table1_spec(_write(tmp_path, _minimal(set=["train.epoch=1"])))
    with pytest.raises(ConfigError, match=r"unknown key 'train\.epoch'"):
        cell_config(spec, expand_cells(spec)[0], source=None, out=tmp_path)
