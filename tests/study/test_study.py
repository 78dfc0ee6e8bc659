"""The study driver end to end on tiny toy chests: folds, runs, held-out scores, tables, the final model."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
import yaml

from covidseg.errors import ConfigError, OutputExistsError
from covidseg.model import DenseUNet, UNetConfig
from covidseg.study.spec import load_study_spec
from pipelines.real_data_study import main
from tests.train.synth import TINY_DECODER, volumes_dataset


@pytest.fixture(scope="module")
def preset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("study")
    root = volumes_dataset(tmp / "data", 4, shape=(4, 64, 64))
    torch.manual_seed(0)
    source = tmp / "source.pt"
    torch.save(DenseUNet(UNetConfig(decoder_channels=(16, 16, 16, 16, 16))).state_dict(), source)
    spec = {
        "dataset": [str(Path("configs/datasets/volumes.yaml").resolve())],
        "folds": 2,
        "overrides": [
            f"data.root={root}",
            "preprocess.slice_size=[64,64]",
            f"model.decoder_channels={TINY_DECODER}",
            "model.class_names=[background,lung,opacity]",
            "train.epochs=1",
            "train.batch_size=2",
            "train.steps_per_epoch=1",
            "train.device=cpu",
            "augment.enabled=false",
            "output.tensorboard=false",
        ],
        "source": {"path": str(source)},
        "schemes": {
            "scratch": {"configs": [], "use_source": False},
            "l2sp": {"configs": [str(Path("configs/schemes/l2sp.yaml").resolve())], "label": "L2-SP"},
        },
        "baseline": "scratch",
        "final": {"scheme": "best", "overrides": ["train.epochs=1"]},
        "n_bootstrap": 200,
    }
    path = tmp / "preset.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def test_study_runs_every_fold_and_writes_tables(preset: Path, tmp_path: Path) -> None:
    out = tmp_path / "study"
    assert main(["run", "--preset", str(preset), "--out", str(out), "--quiet"]) == 0
    folds = json.loads((out / "folds.json").read_text())["folds"]
    assert sorted(c for f in folds for c in f) == ["case00", "case01", "case02", "case03"]
    with open(out / "per_case.csv") as f:
        rows = list(csv.DictReader(f))
    # every case scored once per scheme, by the run whose validation fold holds it
    assert sorted((r["scheme"], r["case_id"]) for r in rows) == sorted(
        (s, c) for s in ("scratch", "l2sp") for c in ("case00", "case01", "case02", "case03")
    )
    for row in rows:
        assert row["case_id"] in folds[int(row["fold"])]
        run_cases = out / "runs" / row["scheme"] / f"fold{row['fold']}" / "val_cases.csv"
        with open(run_cases) as f:
            match = [r for r in csv.DictReader(f) if r["case_id"] == row["case_id"]]
        assert float(match[0]["dice_opacity"]) == pytest.approx(float(row["dice_opacity"]))
    summary = json.loads((out / "summary.json").read_text())
    means = {s["scheme"]: s["case_mean"] for s in summary["schemes"]}
    assert summary["best"] == max(means, key=means.__getitem__)
    assert [(c["a"], c["b"]) for c in summary["comparisons"]] == [("scratch", "l2sp")]
    assert "| L2-SP |" in (out / "results.md").read_text()
    # a rerun finds everything done and trains nothing
    stamp = (out / "runs" / "l2sp" / "fold1" / "last.pt").stat().st_mtime_ns
    assert main(["report", "--preset", str(preset), "--out", str(out), "--quiet"]) == 0
    assert main(["run", "--preset", str(preset), "--out", str(out), "--quiet"]) == 0
    assert (out / "runs" / "l2sp" / "fold1" / "last.pt").stat().st_mtime_ns == stamp
    # the final model: the best scheme on every case, no validation
    assert main(["final", "--preset", str(preset), "--out", str(out), "--quiet"]) == 0
    final = out / "final" / summary["best"]
    assert json.loads((final / "splits.json").read_text())["val"] == []
    assert len(json.loads((final / "splits.json").read_text())["train"]) == 4
    assert (final / "last.pt").is_file()


def test_other_settings_in_the_same_folder_are_refused(preset: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "study"
    (out / "runs").mkdir(parents=True)
    assert main(["report", "--preset", str(preset), "--out", str(out)]) == 2
    assert main(["run", "--preset", str(preset), "--out", str(out), "--set", "train.epochs=0"]) == 2
    assert "is not a study folder" in capsys.readouterr().out


def test_bad_presets_are_one_line_errors(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text("dataset: [d.yaml]\nschemes: {a: {use_source: true}}\n")
    with pytest.raises(ConfigError, match="has no source section"):
        load_study_spec(path)
    path.write_text("dataset: [d.yaml]\nschemes: {a: {use_source: false}}\nbaseline: b\n")
    with pytest.raises(ConfigError, match="'b' is not in schemes"):
        load_study_spec(path)
    path.write_text("dataset: [d.yaml]\nschemes: {a: {use_source: false}}\nmetric: loss\n")
    with pytest.raises(ConfigError, match="metric must be dice_"):
        load_study_spec(path)


def test_a_study_folder_with_other_settings_is_kept(tmp_path: Path) -> None:
    from covidseg.study.runner import check_study_folder
    from covidseg.study.spec import SchemeSection, StudySpec

    spec = StudySpec(dataset=[Path("d.yaml")], schemes={"a": SchemeSection(use_source=False)})
    check_study_folder(spec, tmp_path / "s", overwrite=False)
    (tmp_path / "s" / "keep").write_text("x")
    with pytest.raises(OutputExistsError, match="other settings"):
        check_study_folder(spec.model_copy(update={"folds": 3}), tmp_path / "s", overwrite=False)
    assert (tmp_path / "s" / "keep").is_file()
