"""covidseg sweep: grid expansion, a 2-point sweep ranked by validation score, skip and resume on re-run."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from covidseg.errors import ConfigError
from covidseg.train import sweep as S
from covidseg.train import trainer
from covidseg.train.sweep import GridSection, SweepResult, expand_grid, load_sweep_spec, run_sweep
from tests.train.synth import tiny_overrides


def write_spec(tmp: Path, dataset_root: Path, source: Path, grid: dict[str, Any], **extra: Any) -> Path:
    base = tmp / "base.yaml"
    overrides = [o for o in tiny_overrides(tmp, dataset_root) if not o.startswith(("output.", "train.epochs"))]
    base.write_text("\n".join(["train: {epochs: 1}", "output: {tensorboard: false}"]) + "\n")
    spec = {
        "base": ["base.yaml"],
        "set": [*overrides, f"source.path={source}", "train.steps_per_epoch=1"],
        "grid": grid,
    }
    spec.update(extra)
    path = tmp / "sweep.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def test_expand_grid_values() -> None:
    grid = GridSection(lambda0=[10.0, 20.0], alpha=[1.5], fixed=[0.1], decoder_lambda=[0.0, 0.01])
    points = expand_grid(grid, {"name": "l2sp", "sp_lambda": 3.0, "decoder_lambda": 0.5, "batchnorm": "include"})
    assert [p.point_id for p in points] == [
        "layerwise_l0-10_a-1.5_d-0",
        "layerwise_l0-10_a-1.5_d-0.01",
        "layerwise_l0-20_a-1.5_d-0",
        "layerwise_l0-20_a-1.5_d-0.01",
        "fixed_l-0.1_d-0",
        "fixed_l-0.1_d-0.01",
    ]
    assert points[3].regularization == {
        "batchnorm": "include",
        "name": "l2sp_layerwise",
        "schedule": {"name": "log", "lambda0": 20.0, "alpha": 1.5},
        "decoder_lambda": 0.01,
    }
    assert points[4].regularization["schedule"] == 0.1 and points[4].params == {"lambda": 0.1, "decoder_lambda": 0.0}
    kept = expand_grid(GridSection(fixed=[1.0]), {"name": "l1sp", "schedule": 5.0, "decoder_lambda": 0.2})
    assert kept[0].regularization == {"name": "l1sp", "schedule": 1.0, "decoder_lambda": 0.2}
    axes = expand_grid(GridSection(fixed=[1.0], axes={"optim.lr": [0.1, 0.2]}), {"name": "none"})
    assert [p.point_id for p in axes] == ["fixed_l-1_lr-0.1", "fixed_l-1_lr-0.2"] and axes[1].axes == {"optim.lr": 0.2}


@pytest.mark.parametrize(
    ("grid", "message"),
    [
        ({"lambda0": [1.0]}, "lambda0 and grid.alpha go together"),
        ({}, "the grid is empty"),
        ({"fixed": [-1.0]}, "finite and >= 0"),
        ({"fixed": [1.0], "sizes": [1]}, "grid.sizes: unknown key"),
        ({"fixed": [1.0], "axes": {"regularization.name": ["l2"]}}, "set penalty strengths with"),
    ],
)
def test_bad_specs_are_one_line_errors(tmp_path: Path, grid: dict[str, Any], message: str) -> None:
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({"base": ["b.yaml"], "grid": grid}))
    with pytest.raises(ConfigError, match=message) as info:
        load_sweep_spec(path)
    assert "\n" not in str(info.value)


def test_penalty_without_schedule_is_refused() -> None:
    with pytest.raises(ConfigError, match="takes no schedule"):
        expand_grid(GridSection(fixed=[1.0], penalty="l2sp"), {"name": "none"})


@pytest.fixture(scope="module")
def swept(tmp_path_factory: pytest.TempPathFactory, dataset_root: Path, source_file: Path) -> tuple[SweepResult, Path]:
    tmp = tmp_path_factory.mktemp("sweep")
    spec = write_spec(tmp, dataset_root, source_file, {"fixed": [0.01, 1000.0]})
    return run_sweep(spec, out_dir=tmp / "out"), spec


def test_sweep_writes_a_ranked_table(swept: tuple[SweepResult, Path]) -> None:
    result, _ = swept
    assert [r["point"] for r in sorted(result.rows, key=lambda r: r["point"])] == ["fixed_l-0.01", "fixed_l-1000"]
    scores = [r["score"] for r in result.rows]
    assert scores == sorted(scores, reverse=True) and result.best is result.rows[0]
    for row in result.rows:
        record = json.loads((Path(row["run_dir"]) / S.RESULT_NAME).read_text())
        assert record["score"] == pytest.approx(row["score"]) and record["metric"] == "dice_opacity"
        assert (Path(row["run_dir"]) / "best.pt").is_file() and (Path(row["run_dir"]) / "metrics.csv").is_file()
    with result.table_csv.open() as f:
        table = list(csv.DictReader(f))
    assert [t["point"] for t in table] == [r["point"] for r in result.rows] and table[0]["rank"] == "1"
    assert float(table[0]["score"]) == pytest.approx(result.best["score"])
    markdown = result.table_md.read_text()
    assert "| rank | point |" in markdown and "dice_opacity" in markdown
    assert all(r["run_dir"] in markdown for r in result.rows)
    first, second = (Path(r["run_dir"]) / "splits.json" for r in result.rows)
    assert json.loads(first.read_text())["val"] == json.loads(second.read_text())["val"]
    assert json.loads((result.out_dir / "splits.json").read_text())["val"] == json.loads(first.read_text())["val"]
    config = yaml.safe_load((Path(result.rows[0]["run_dir"]) / "config.yaml").read_text())
    assert config["regularization"]["name"] == "l2sp_layerwise"


def test_rerun_skips_complete_points_and_resumes_killed_ones(
    swept: tuple[SweepResult, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    result, spec = swept
    calls: list[Any] = []
    real_train = trainer.train

    def spy(config: Any, *, resume: Any = None, console: Any = None) -> Any:
        calls.append(resume)
        return real_train(config, resume=resume, console=console)

    monkeypatch.setattr(trainer, "train", spy)
    again = run_sweep(spec, out_dir=result.out_dir)
    assert calls == [] and [r["point"] for r in again.rows] == [r["point"] for r in result.rows]
    assert all(r["skipped"] for r in again.rows)
    killed = Path(result.rows[1]["run_dir"])
    (killed / S.RESULT_NAME).unlink()  # as if the sweep was killed after the last epoch
    third = run_sweep(spec, out_dir=result.out_dir)
    assert calls == [killed] and (killed / S.RESULT_NAME).is_file()
    assert {r["point"]: r["score"] for r in third.rows} == pytest.approx({r["point"]: r["score"] for r in result.rows})


def test_changed_settings_are_refused(swept: tuple[SweepResult, Path]) -> None:
    result, spec = swept
    with pytest.raises(ConfigError, match="other settings"):
        run_sweep(spec, out_dir=result.out_dir, overrides=["optim.lr=0.5"])
