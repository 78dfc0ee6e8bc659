"""The Table 1 driver end to end on the phantom preset: every source kind, test-split scores, resume, the CLI.

One run of ``configs/experiments/table1_phantom.yaml`` restricted (``grid.cells``) to four cells that cover every
row (no pre-training, the ImageNet stand-in, MedicalNet and ImageNet+MedicalNet built by ``covidseg pretrain``)
and every column kind (λ = 0, fixed L2-SP, layer-wise L2-SP). The ImageNet source is the preset's random
stand-in in torchvision's layout (no ImageNet weights can be downloaded here), so the numbers mean nothing; the
test checks where they come from and that reruns continue rather than repeat.
"""

from __future__ import annotations

import csv
import importlib.util
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml

from covidseg.config import load_config
from covidseg.data.cache import SliceCache
from covidseg.data.datasets import CaseStackDataset
from covidseg.data.splits import load_splits
from covidseg.errors import OutputExistsError
from covidseg.evaluate.compare import compare_evaluations
from covidseg.experiments.table1 import CELL_RESULT_NAME, Table1Result, run_table1
from covidseg.experiments.table1_sources import STAND_IN_NAME
from covidseg.model import build_model_from_checkpoint
from covidseg.train import prepare as P
from covidseg.train import pretrain as pretrain_module
from covidseg.train import trainer
from covidseg.train.build import resolve_amp
from covidseg.train.validation import validate

REPO = Path(__file__).resolve().parents[2]
PRESET = REPO / "configs" / "experiments" / "table1_phantom.yaml"
CELLS = ["none__lambda-0", "imagenet__l2sp-5", "medicalnet__log-20-1.5", "imagenet_medicalnet__lambda-0"]
SUBGRID = [f"grid.cells=[{', '.join(CELLS)}]"]
METRICS = ("opacity_dice", "opacity_sensitivity", "opacity_precision")

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def table(tmp_path_factory: pytest.TempPathFactory) -> Table1Result:
    out = tmp_path_factory.mktemp("table1") / "run"
    return run_table1(PRESET, out, overrides=SUBGRID)


def _config(run_dir: Path) -> dict[str, Any]:
    data = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert isinstance(data, dict)
    return data


def test_every_cell_is_trained_and_scored_on_the_shared_test_split(table: Table1Result) -> None:
    out = table.out_dir
    assert [r["cell"] for r in table.results] == CELLS
    with table.results_csv.open() as f:
        rows = list(csv.DictReader(f))
    assert [r["cell"] for r in rows] == CELLS
    shared = json.loads((out / "splits.json").read_text())
    assert shared["test"] and not set(shared["test"]) & {*shared["train"], *shared["val"]}
    for result, row in zip(table.results, rows, strict=True):
        run_dir = Path(result["run_dir"])
        assert run_dir == out / "cells" / result["cell"]
        assert json.loads((run_dir / "splits.json").read_text())["test"] == shared["test"]
        assert result["n_test_cases"] == len(shared["test"]) == int(row["n_test_cases"])
        per_case = result["per_case"]
        assert sorted(c["case_id"] for c in per_case) == sorted(shared["test"])
        for metric in METRICS:
            assert 0.0 <= result[metric] <= 1.0
            assert result[metric] == pytest.approx(np.mean([c[metric] for c in per_case]))
            assert float(row[metric]) == pytest.approx(result[metric])
        assert (run_dir / CELL_RESULT_NAME).is_file() and (run_dir / "best.pt").is_file()


def test_rows_use_their_sources_and_columns_their_penalties(table: Table1Result) -> None:
    out = table.out_dir
    stand_in = out / "sources" / STAND_IN_NAME
    configs = {cell: _config(out / "cells" / cell) for cell in CELLS}
    assert configs["none__lambda-0"]["source"]["path"] is None
    assert configs["none__lambda-0"]["regularization"] == {"name": "none", "fisher_path": None, "fisher_batches": 16}
    assert Path(configs["imagenet__l2sp-5"]["source"]["path"]) == stand_in
    assert configs["imagenet__l2sp-5"]["regularization"]["name"] == "l2sp"
    assert configs["imagenet__l2sp-5"]["regularization"]["sp_lambda"] == 5.0
    layerwise = configs["medicalnet__log-20-1.5"]
    assert Path(layerwise["source"]["path"]) == out / "sources" / "medicalnet.pt"
    assert layerwise["regularization"]["schedule"] == {"name": "log", "lambda0": 20.0, "alpha": 1.5}
    both = configs["imagenet_medicalnet__lambda-0"]
    assert Path(both["source"]["path"]) == out / "sources" / "imagenet_medicalnet.pt"
    pretrain_both = _config(out / "sources" / "pretrain-imagenet_medicalnet")
    assert Path(pretrain_both["init"]["imagenet"]) == stand_in
    assert _config(out / "sources" / "pretrain-medicalnet")["init"]["imagenet"] is None
    sources = [
        torch.load(out / "sources" / f"{row}.pt", weights_only=True) for row in ("medicalnet", "imagenet_medicalnet")
    ]
    conv0 = [s["state_dict"]["encoder.conv0.weight"] for s in sources]
    assert not torch.equal(conv0[0], conv0[1])  # two sources, two encoders


def test_cells_can_be_compared_case_by_case(table: Table1Result) -> None:
    cells = table.out_dir / "cells"
    report = compare_evaluations(cells / CELLS[1] / "test", cells / CELLS[2] / "test", n_bootstrap=50)
    assert report.n_dropped == 0
    by_cell = {r["cell"]: r for r in table.results}
    mean_difference = by_cell[CELLS[2]]["opacity_dice"] - by_cell[CELLS[1]]["opacity_dice"]
    assert report.comparison.mean_difference == pytest.approx(mean_difference)
    same = compare_evaluations(cells / CELLS[1] / "test", cells / CELLS[1] / "test", n_bootstrap=50)
    assert same.comparison.p_value == 1.0


def test_markdown_table(table: Table1Result) -> None:
    text = table.table_md.read_text()
    assert text == table.markdown
    lines = text.splitlines()
    assert lines[0] == "# Table 1 (synthetic phantom, small scale: a pipeline check, not the paper's numbers)"
    assert lines[4] == "| Source | λ = 0 | L2-SP λ = 5 | λ_i = 20 − 1.5·log i |"
    cells = {line.split(" | ")[0].removeprefix("| "): line.split(" | ")[1:] for line in lines[6:10]}
    assert list(cells) == [
        "No pre-training",
        "ImageNet (random stand-in)",
        "MedicalNet",
        "ImageNet (stand-in)+MedicalNet",
    ]
    assert cells["No pre-training"][1:] == ["-", "- |"]
    by_cell = {r["cell"]: r for r in table.results}
    expected = " / ".join(f"{by_cell['imagenet__l2sp-5'][m]:.3f}" for m in METRICS)
    assert cells["ImageNet (random stand-in)"] == ["n/a", f"**{expected}**", "n/a |"]
    assert "random stand-in" in lines[-1]


def test_scores_equal_an_independent_validation_of_the_test_cases(table: Table1Result) -> None:
    result = table.results[1]
    run_dir = Path(result["run_dir"])
    config = load_config(base=_config(run_dir))
    cases = {c.case_id: c for c in P.prepare_cases(config)}
    test_ids = load_splits(run_dir / "splits.json", list(cases.values())).test
    cache = SliceCache(Path(str(config.data.cache_dir)))
    stacks = CaseStackDataset(cache.build_all([cases[i] for i in test_ids], config.preprocess.to_preprocess_config()))
    model = build_model_from_checkpoint(run_dir / "best.pt")
    device = torch.device("cpu")
    scores = validate(model, stacks, device=device, amp=resolve_amp("fp32", device))
    assert result["opacity_dice"] == pytest.approx(scores.metrics["dice_opacity"])
    assert result["opacity_sensitivity"] == pytest.approx(scores.metrics["sensitivity_opacity"])
    assert result["opacity_precision"] == pytest.approx(scores.metrics["precision_opacity"])


def test_rerun_skips_complete_cells_and_finishes_half_done_ones(
    table: Table1Result, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = table.out_dir
    before = {r["cell"]: r for r in table.results}
    evaluated_only = out / "cells" / CELLS[0]
    (evaluated_only / CELL_RESULT_NAME).unlink()  # trained, killed before its evaluation was saved
    resumed = out / "cells" / CELLS[2]
    (resumed / CELL_RESULT_NAME).unlink()
    (resumed / "sweep_result.json").unlink()  # killed after its last checkpoint, before the result
    real_train = trainer.train
    calls: list[Any] = []

    def spy(config: Any, **kwargs: Any) -> Any:
        calls.append((config.output.name, kwargs.get("resume")))
        return real_train(config, **kwargs)

    def no_pretrain(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a built source was built again")

    monkeypatch.setattr(trainer, "train", spy)
    monkeypatch.setattr(pretrain_module, "pretrain", no_pretrain)
    again = run_table1(PRESET, out, overrides=SUBGRID)
    assert calls == [(CELLS[2], resumed)]
    for result in again.results:
        for metric in METRICS:
            assert result[metric] == pytest.approx(before[result["cell"]][metric])
    assert again.markdown == table.markdown


def test_pipeline_cli_and_refusals(table: Table1Result, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = importlib.util.spec_from_file_location("table1_pipeline", REPO / "pipelines" / "table1.py")
    assert spec is not None and spec.loader is not None
    pipeline = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(pipeline)
    args = ["--config", str(PRESET), "--out", str(table.out_dir)]
    assert pipeline.main([*args, "--set", SUBGRID[0]]) == 0  # everything complete: nothing trains
    assert "| Source | λ = 0 | L2-SP λ = 5 |" in capsys.readouterr().out
    assert pipeline.main([*args, "--set", "grid.rows=[nothing]"]) == 2
    error = capsys.readouterr().out
    assert "error: invalid Table 1 preset" in error and "grid.rows.0" in error
    # another grid into the same folder: the cell trained with other settings is refused, nothing is deleted
    assert pipeline.main([*args, "--set", SUBGRID[0], "--run-set", "optim.lr=0.5"]) == 2
    error = capsys.readouterr().out.splitlines()[-1]
    assert error.startswith("error: ") and error.endswith(
        "none__lambda-0 was trained with other settings than this preset asks for; "
        "use another --out, or --overwrite to start again"
    )
    assert (table.out_dir / "cells" / CELLS[0] / CELL_RESULT_NAME).is_file()
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(OutputExistsError, match="is not a Table 1 run folder"):
        run_table1(PRESET, foreign, overrides=SUBGRID)
