from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from covidseg.config import load_config, save_config
from covidseg.data.cache import SliceCache
from covidseg.data.datasets import CaseStackDataset
from covidseg.data.splits import save_splits
from covidseg.errors import InputError
from covidseg.evaluate.checkpoint_eval import evaluate_checkpoint
from covidseg.evaluate.scores import CaseEval
from covidseg.model import DenseUNet, UNetConfig, build_model_from_checkpoint, save_checkpoint
from covidseg.train import prepare as P
from covidseg.train.build import AmpSettings
from covidseg.train.validation import validate
from tests.infer.analytic import calibrated_unet
from tests.train.synth import tiny_config, volumes_dataset

N_SLICES = 4


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run folder as covidseg train leaves it (config.yaml, splits.json, best.pt) over 4 toy chests."""
    tmp = tmp_path_factory.mktemp("eval_run")
    root = volumes_dataset(tmp / "data", 4, shape=(N_SLICES, 64, 64))
    cfg = tiny_config(tmp, root, "data.val_fraction=0.25", "data.test_fraction=0.25")
    run = tmp / "runs" / "run"
    run.mkdir(parents=True)
    save_config(cfg, run / "config.yaml")
    save_splits(P.make_splits(cfg, P.prepare_cases(cfg)), run / "splits.json")
    unet = cfg.model.to_unet_config()
    save_checkpoint(run / "best.pt", calibrated_unet(unet, size=64), model_config=unet)
    return run


@pytest.fixture(scope="module")
def test_cases(run_dir: Path) -> list[CaseEval]:
    return evaluate_checkpoint(run_dir / "best.pt", run_dir, "test", device="cpu", batch_size=4)


def test_checkpoint_on_test_split_matches_training_validation(run_dir: Path, test_cases: list[CaseEval]) -> None:
    test_ids = json.loads((run_dir / "splits.json").read_text())["test"]
    assert [c.case_id for c in test_cases] == test_ids and len(test_cases) == 1
    case = test_cases[0]
    assert case.n_slices == N_SLICES and case.volume_unit == "mL" and case.structures == ("opacity", "lung")
    # the same model and cached case through the training validation give the same opacity scores
    cfg = load_config([run_dir / "config.yaml"])
    record = next(c for c in P.prepare_cases(cfg) if c.case_id == case.case_id)
    cached = SliceCache(P.default_cache_root(cfg)).get_or_build(record, cfg.preprocess.to_preprocess_config())
    model = build_model_from_checkpoint(run_dir / "best.pt")
    amp = AmpSettings("cpu", None, False)
    (scores,) = validate(model, CaseStackDataset([cached]), device=torch.device("cpu"), amp=amp).cases
    ours = case.scores("opacity")
    assert 0.0 < ours.dice < 1.0  # a calibrated random model: neither trivial answer
    assert ours.dice == pytest.approx(scores.dice["opacity"])
    assert ours.sensitivity == pytest.approx(scores.sensitivity["opacity"])
    assert ours.precision == pytest.approx(scores.precision["opacity"])
    assert ours.tp + ours.fn == scores.voxels["opacity"]
    # volume: reference voxels x the cached grid's voxel (z 5 mm; in-plane 1.5 mm, 64 px resized to 64 px)
    assert ours.volume_ref == pytest.approx(scores.voxels["opacity"] * 5.0 * 1.5 * 1.5 / 1000.0, rel=1e-5)
    # lung = lung + opacity voxels of the reference
    assert case.scores("lung").tp + case.scores("lung").fn == scores.voxels["lung"] + scores.voxels["opacity"]


def test_run_yaml_gives_the_run_folder_split(run_dir: Path, test_cases: list[CaseEval]) -> None:
    by_yaml = evaluate_checkpoint(run_dir / "best.pt", run_dir / "config.yaml", "test", device="cpu")
    assert [c.case_id for c in by_yaml] == [c.case_id for c in test_cases]
    assert [c.confusion.tolist() for c in by_yaml] == [c.confusion.tolist() for c in test_cases]


def test_bad_requests_are_input_errors(run_dir: Path, tmp_path: Path) -> None:
    cfg = load_config([run_dir / "config.yaml"], ["data.test_fraction=0.0"])
    with pytest.raises(InputError, match="no test cases"):
        evaluate_checkpoint(run_dir / "best.pt", cfg, "test", device="cpu")
    with pytest.raises(InputError, match="unknown split"):
        evaluate_checkpoint(run_dir / "best.pt", run_dir, "holdout", device="cpu")
    with pytest.raises(InputError, match="not a covidseg run folder"):
        evaluate_checkpoint(run_dir / "best.pt", tmp_path, "test", device="cpu")
    two_class = UNetConfig(class_names=("background", "opacity"), decoder_channels=(8, 8, 8, 8, 8))
    other = save_checkpoint(tmp_path / "other.pt", DenseUNet(two_class), model_config=two_class)
    with pytest.raises(InputError, match=r"predicts classes \['background', 'opacity'\]"):
        evaluate_checkpoint(other, run_dir, "test", device="cpu")
