from __future__ import annotations

import csv
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
import yaml

from covidseg.config import load_config
from covidseg.errors import ConfigError, InputError, OutputExistsError
from covidseg.model import build_model_from_checkpoint, load_checkpoint
from covidseg.train.trainer import train
from covidseg.transfer.penalties import PENALTIES
from covidseg.transfer.strategies import STRATEGIES
from tests.train.synth import tiny_config, tiny_overrides, volumes_dataset

SCHEMES = Path(__file__).parents[2] / "configs" / "schemes"


class InterruptedRunError(Exception):
    """Stands for a kill right after an epoch's checkpoint was written."""


def _stop_after(epoch_index: int):
    def callback(epoch: int, row: dict) -> None:
        if epoch == epoch_index:
            raise InterruptedRunError

    return callback


def test_resume_continues_exactly(tmp_path: Path, dataset_root: Path, cache_dir: Path, source_file: Path) -> None:
    settings = [
        "train.epochs=4",
        f"source.path={source_file}",
        "regularization.name=l2sp",
        "regularization.sp_lambda=3.0",
        "regularization.decoder_lambda=0.01",
        "strategy.name=lp_ft",
        "strategy.lp_epochs=1",
        "optim.warmup_epochs=1",
        "augment.enabled=true",
    ]
    full = train(tiny_config(tmp_path, dataset_root, *settings, "output.name=full", cache=cache_dir))
    cfg = tiny_config(tmp_path, dataset_root, *settings, "output.name=split", cache=cache_dir)
    with pytest.raises(InterruptedRunError):
        train(cfg, on_epoch_end=_stop_after(1))
    run_dir = tmp_path / "runs" / "split"
    assert load_checkpoint(run_dir / "last.pt")["training"]["epoch"] == 2
    resumed = train(cfg, resume=run_dir)
    assert resumed.epochs_completed == full.epochs_completed == 4
    a, b = full.model.state_dict(), resumed.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a), "resumed weights differ"
    strip = [{k: v for k, v in row.items() if k != "time_s"} for row in full.history]
    assert strip == [{k: v for k, v in row.items() if k != "time_s"} for row in resumed.history]
    with open(run_dir / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3, 4]
    assert float(rows[-1]["train_loss"]) == pytest.approx(full.history[-1]["train_loss"])


def test_run_folder_contents(tmp_path: Path, dataset_root: Path, cache_dir: Path) -> None:
    cfg = tiny_config(tmp_path, dataset_root, "train.epochs=1", "output.tensorboard=true", cache=cache_dir)
    result = train(cfg)
    run = result.run_dir
    assert {"config.yaml", "splits.json", "metrics.csv", "last.pt", "best.pt", "tensorboard"} <= {
        p.name for p in run.iterdir()
    }
    assert load_config(base=yaml.safe_load((run / "config.yaml").read_text())) == cfg
    model = build_model_from_checkpoint(run / "best.pt")
    assert model.config.class_names == ("background", "lung", "opacity")
    best = load_checkpoint(run / "best.pt")
    assert best["kind"] == "best" and best["preprocessing"]["slice_size"] == [64, 64]
    assert 0.0 <= result.best_metric <= 1.0 and result.best_epoch == 1
    with pytest.raises(OutputExistsError, match="--resume"):
        train(cfg)


def test_validation_writes_per_case_scores(tmp_path: Path, dataset_root: Path, cache_dir: Path) -> None:
    result = train(tiny_config(tmp_path, dataset_root, "train.epochs=2", cache=cache_dir))
    with open(result.run_dir / "val_cases.csv") as f:
        rows = list(csv.DictReader(f))
    splits = yaml.safe_load((result.run_dir / "splits.json").read_text())
    assert sorted(r["case_id"] for r in rows) == sorted(splits["val"])
    assert {r["epoch"] for r in rows} == {"2"}
    mean_dice = np.mean([float(r["dice_opacity"]) for r in rows])
    assert mean_dice == pytest.approx(result.history[-1]["val_dice_opacity"])


def test_val_fraction_zero_trains_on_every_case(tmp_path: Path, dataset_root: Path, cache_dir: Path) -> None:
    cfg = tiny_config(tmp_path, dataset_root, "train.epochs=2", "data.val_fraction=0.0", cache=cache_dir)
    result = train(cfg)
    splits = yaml.safe_load((result.run_dir / "splits.json").read_text())
    assert splits["val"] == [] and len(splits["train"]) == len(list((dataset_root / "images").iterdir()))
    assert result.best_checkpoint is None and not (result.run_dir / "best.pt").exists()
    assert (result.run_dir / "last.pt").is_file() and not (result.run_dir / "val_cases.csv").exists()
    assert all("val_dice_opacity" not in row for row in result.history)


def _break_dataset(root: Path, how: str) -> None:
    labels = root / "labels"
    if how == "missing_label":
        (labels / "case01.nii.gz").unlink()
    elif how in ("shape_mismatch", "bad_values"):
        img = nib.load(labels / "case01.nii.gz")
        data = np.asarray(img.dataobj)
        if how == "shape_mismatch":
            data = data[:-4]
        else:
            data = data.copy()
            data[0, 0, 0] = 7
        nib.save(nib.Nifti1Image(data, img.affine), labels / "case01.nii.gz")
    elif how == "empty_folder":
        for sub in ("images", "labels"):
            shutil.rmtree(root / sub)
            (root / sub).mkdir()


@pytest.mark.parametrize(
    ("how", "error", "match"),
    [
        ("missing_label", InputError, "has no label file"),
        ("shape_mismatch", InputError, "voxel grid"),
        ("bad_values", InputError, "outside the expected"),
        ("empty_folder", InputError, "no volumes found"),
    ],
)
def test_bad_dataset_fails_before_training(tmp_path: Path, how: str, error: type, match: str) -> None:
    root = volumes_dataset(tmp_path / "data", 3)
    _break_dataset(root, how)
    with pytest.raises(error, match=match) as info:
        train(tiny_config(tmp_path, root))
    assert "\n" not in str(info.value)
    assert not (tmp_path / "runs").exists() and not (tmp_path / "cache").exists()


@pytest.mark.parametrize(
    ("extra", "error", "match"),
    [
        (
            ["model.class_names=[background, opacity]"],
            ConfigError,
            r"set model.class_names=\[background,lung,opacity\]",
        ),
        (["augment.rotate=5"], ConfigError, "augment.rotate: unknown key"),
        (
            [
                "regularization.name=l2sp",
                "regularization.sp_lambda=1.0",
                "regularization.decoder_lambda=0.0",
                "source.path=/nonexistent/source.pt",
            ],
            InputError,
            "does not exist",
        ),
        (["train.precision=fp16"], ConfigError, "fp16 needs CUDA"),
    ],
)
def test_bad_config_fails_before_training(
    tmp_path: Path, dataset_root: Path, extra: list[str], error: type, match: str
) -> None:
    with pytest.raises(error, match=match):
        train(tiny_config(tmp_path, dataset_root, *extra))
    assert not (tmp_path / "runs").exists()


def _preset_for(kind: str, name: str) -> Path:
    for path in sorted(SCHEMES.glob("*.yaml")):
        section = yaml.safe_load(path.read_text())[kind]
        if section["name"] == name:
            return path
    raise AssertionError(f"no preset in configs/schemes uses {kind} {name!r}")


def _encoder(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.named_parameters() if k.startswith("encoder.")}


def _one_step(tmp_path: Path, root: Path, cache: Path, source: Path, preset: Path, *extra: str):
    overrides = [
        *tiny_overrides(tmp_path, root, cache),
        "train.epochs=1",
        "train.steps_per_epoch=1",
        "regularization.fisher_batches=1",
        f"source.path={source}",
        *extra,
    ]
    return train(load_config([preset], overrides))


@pytest.mark.parametrize("name", ["none", *sorted(PENALTIES)])
def test_every_penalty_trains_one_step(
    tmp_path: Path, dataset_root: Path, cache_dir: Path, source_file: Path, name: str
) -> None:
    preset = SCHEMES / "none.yaml" if name == "none" else _preset_for("regularization", name)
    result = _one_step(tmp_path, dataset_root, cache_dir, source_file, preset)
    row = result.history[0]
    assert np.isfinite(row["train_loss"]) and row["step"] == 1
    # before the first step θ = θ̄, so only the decoder term (or plain L2) contributes
    assert (row["penalty"] > 0) == (name != "none")
    ckpt = load_checkpoint(result.last_checkpoint)
    assert (ckpt["penalty"] is None) == (name == "none")
    if "fisher" in name:
        assert (result.run_dir / "fisher.pt").is_file()
        assert any(k.startswith("fisher.") for k in ckpt["penalty"])


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_every_strategy_trains_one_step(
    tmp_path: Path, dataset_root: Path, cache_dir: Path, source_file: Path, name: str
) -> None:
    extra = ["strategy.patience=0"] if name == "ptr" else []
    preset = _preset_for("strategy", name)
    source_encoder = _encoder(build_model_from_checkpoint_source(source_file))
    result = _one_step(tmp_path, dataset_root, cache_dir, source_file, preset, *extra)
    after = _encoder(result.model)
    moved = any(not torch.equal(after[k], source_encoder[k]) for k in after)
    frozen_first_epoch = name in ("linear_probe", "gradual_unfreeze", "lp_ft")
    assert moved != frozen_first_epoch
    if name == "ptr":
        assert result.history[0]["extra_loss"] > 0
    ckpt = load_checkpoint(result.last_checkpoint)
    assert ckpt["strategy"]["strategy"] == name


def build_model_from_checkpoint_source(path: Path) -> torch.nn.Module:
    from covidseg.model import DenseUNet, UNetConfig

    model = DenseUNet(UNetConfig(decoder_channels=(16, 16, 16, 16, 16)))
    model.load_state_dict(torch.load(path, weights_only=True))
    return model


def test_bf16_channels_last_workers_and_augmentation(tmp_path: Path, dataset_root: Path, cache_dir: Path) -> None:
    extra = ["train.epochs=1", "train.precision=bf16", "train.channels_last=true", "train.num_workers=1"]
    result = train(tiny_config(tmp_path, dataset_root, *extra, "augment.enabled=true", cache=cache_dir))
    row = result.history[0]
    assert np.isfinite(row["train_loss"]) and 0.0 <= row["val_dice_opacity"] <= 1.0


def test_early_stopping_and_validation_interval(tmp_path: Path, dataset_root: Path, cache_dir: Path) -> None:
    # a learning rate of 1e-12 cannot change the predictions: the second validation does not improve
    extra = ["train.epochs=6", "train.steps_per_epoch=1", "optim.lr=1e-12", "train.early_stopping_patience=1"]
    result = train(tiny_config(tmp_path, dataset_root, *extra, "train.val_every=2", cache=cache_dir))
    assert result.stopped_early and result.epochs_completed == 4 and result.best_epoch == 2
    assert ["val_dice_opacity" in row for row in result.history] == [False, True, False, True]
    resumed = train(
        tiny_config(tmp_path, dataset_root, *extra, "train.val_every=2", cache=cache_dir), resume=result.run_dir
    )
    assert resumed.epochs_completed == 4  # a stopped run stays stopped
