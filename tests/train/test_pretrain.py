"""covidseg pretrain: label generators, config errors, a two-task run, its checkpoint as a source, resume."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from covidseg.config.pretrain import PretrainConfig, load_pretrain_config
from covidseg.data.cache import SliceCache
from covidseg.data.layouts import discover_cases
from covidseg.data.phantom import generate_phantom
from covidseg.data.preprocess import PreprocessConfig
from covidseg.errors import ConfigError, InputError, OutputExistsError
from covidseg.io.images import LUNG_WINDOW
from covidseg.model import DenseUNet, UNetConfig, load_checkpoint, load_source
from covidseg.train import pretrain_labels as PL
from covidseg.train.pretrain import KIND_SOURCE, PretrainResult, _init_encoder, pretrain, task_sequence
from covidseg.train.pretrain_model import MultiTaskUNet
from covidseg.train.trainer import train
from tests.train.synth import TINY_DECODER, tiny_config

TINY = (16, 16, 16, 16, 16)
PHANTOM_SHAPE = (4, 64, 64)
PHANTOM_SPACING = (20.0, 5.6, 5.6)


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * (a & b).sum() / max(int(a.sum() + b.sum()), 1))


def write_display_slices(root: Path, n: int = 3) -> Path:
    """Phantom slices saved as 8-bit lung-window JPEGs in the "slices" layout (images only), one patient each."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    low, high = LUNG_WINDOW
    for i in range(n):
        hu = generate_phantom(PHANTOM_SHAPE, PHANTOM_SPACING, seed=50 + i).hu[PHANTOM_SHAPE[0] // 2]
        display = np.clip((hu.astype(np.float32) - low) / (high - low) * 255, 0, 255).round().astype(np.uint8)
        Image.fromarray(display).save(root / "images" / f"Data-1_case{i}_1.jpg", quality=95)
    return root


def tiny_pretrain(tmp: Path, slices_root: Path, *extra: str) -> PretrainConfig:
    """Two tasks at 64 px: phantom labels, and the HU lung mask of unlabelled display slices."""
    tasks = (
        "tasks=[{name: phantom, data: {layout: phantom, val_fraction: 0.34, "
        f"options: {{n_cases: 3, shape: {list(PHANTOM_SHAPE)}, spacing: {list(PHANTOM_SPACING)}}}}}}}, "
        f"{{name: lungs, labels: classical_lung_mask, data: {{layout: slices, root: '{slices_root}', "
        "val_fraction: 0.34, options: {labelled: false}}}]"
    )
    return load_pretrain_config(
        overrides=[
            tasks,
            "preprocess.slice_size=[64, 64]",
            f"model.decoder_channels={TINY_DECODER}",
            "train.epochs=1",
            "train.batch_size=2",
            "train.steps_per_epoch=2",
            "train.device=cpu",
            "augment.enabled=false",
            f"output.root={tmp / 'runs'}",
            "output.name=pre",
            "output.tensorboard=false",
            *extra,
        ]
    )


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[PretrainResult, Path, Path]:
    tmp = tmp_path_factory.mktemp("pretrain")
    slices = write_display_slices(tmp / "slices")
    result = pretrain(tiny_pretrain(tmp, slices), output=tmp / "source.pt")
    return result, tmp, slices


def test_slice_lung_mask_matches_phantom_lungs() -> None:
    phantom = generate_phantom((6, 128, 128), (10.0, 2.8, 2.8), seed=3)
    truth = phantom.labels > 0
    for name in ("classical_lung_mask", "slice_lung_mask"):
        mask = PL.generate_labels(name, phantom.hu, (10.0, 2.8, 2.8)).astype(bool)
        assert _dice(mask, truth) > 0.9, name


def test_slice_lung_mask_on_display_jpeg_with_wrong_window(tmp_path: Path) -> None:
    """A display slice mapped back with the wrong window still gives the lungs (relative thresholds)."""
    phantom = generate_phantom((1, 128, 128), (10.0, 2.8, 2.8), seed=4)
    hu = phantom.hu[0].astype(np.float32)
    display = np.clip((hu + 1024) / 3000 * 255, 0, 255).round()  # saved with a wide window
    wrong = -1350 + display / 255 * 1500  # read back with the lung window
    mask = PL.slice_lung_mask(wrong, (2.8, 2.8))
    assert _dice(mask, phantom.labels[0] > 0) > 0.9
    assert not PL.slice_lung_mask(np.full((32, 32), -1000.0), (1.0, 1.0)).any()


def test_generated_entry_is_cached_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (case,) = discover_cases("phantom", None, n_cases=1, shape=list(PHANTOM_SHAPE), spacing=list(PHANTOM_SPACING))
    cache = SliceCache(tmp_path)
    config = PreprocessConfig(slice_size=(64, 64))
    entry = PL.generated_entry(cache, case, config, "classical_lung_mask")
    assert entry.class_names == ("background", "lung") and entry.labels is not None
    assert entry.images.shape == entry.labels.shape == (PHANTOM_SHAPE[0], 64, 64)
    assert entry.class_counts.sum() == entry.labels.size and entry.class_counts[:, 1].sum() > 0
    calls: list[Any] = []
    monkeypatch.setattr(PL, "load_case", lambda c: calls.append(c))
    again = PL.generated_entry(cache, case, config, "classical_lung_mask")
    assert again.path == entry.path and not calls
    with pytest.raises(ConfigError, match="unknown label generator 'otsu'"):
        PL.generated_entry(cache, case, config, "otsu")


def test_task_sequence_modes() -> None:
    assert task_sequence("round_robin", [3, 3, 3], [1, 1, 1], 4, 0) == [0, 1, 2, 0]
    seq = task_sequence("proportional", [10, 30], [1, 1], 4000, 7)
    assert abs(seq.count(1) / 4000 - 0.75) < 0.03
    assert seq == task_sequence("proportional", [10, 30], [1, 1], 4000, 7)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["tasks=[{name: a, data: {layout: phantom}, colour: red}]"], "unknown key 'tasks.0.colour'; allowed keys"),
        (["tasks=[{name: a, data: {layout: phantom}, class_names: [bg, x]}]"], "differ from the classes of"),
        (["tasks=[{name: a, data: {layout: phantom}}]", "export_task=b"], "export_task 'b' is not a task"),
        (["tasks=[{name: a, data: {layout: phantom}}, {name: a, data: {layout: phantom}}]"], "must be unique"),
        (["tasks=[{name: a, data: {layout: phantom}, labels: otsu}]"], "tasks.0.labels"),
        (["tasks=[{name: a, data: {layout: slices}}]"], "data.root is required"),
        (["tasks=[{name: a, data: {layout: phantom}}]", "tasks.3.weight=2"], "there is no task 3"),
        (["tasks=[]"], "at least 1 item"),
    ],
)
def test_bad_pretrain_configs_are_one_line_errors(overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        load_pretrain_config(overrides=overrides)
    assert "\n" not in str(info.value)


def test_bad_dataset_fails_before_the_run_folder(tmp_path: Path) -> None:
    config = tiny_pretrain(tmp_path, tmp_path / "missing")
    with pytest.raises(InputError, match="no such dataset folder for layout"):
        pretrain(config)
    assert not (tmp_path / "runs" / "pre").exists()


def test_imagenet_init_loads_a_torchvision_file(tmp_path: Path) -> None:
    torch.manual_seed(0)
    donor = DenseUNet(UNetConfig(in_channels=3))
    state = {
        "features." + k.removeprefix("encoder.").replace(".layers.", "."): v
        for k, v in donor.encoder.state_dict(prefix="encoder.").items()
    }
    state.update({"classifier.weight": torch.zeros(1000, 1024), "classifier.bias": torch.zeros(1000)})
    path = tmp_path / "densenet121.pth"
    torch.save(state, path)
    config = load_pretrain_config(
        overrides=[
            "tasks=[{name: a, data: {layout: phantom}}]",
            f"init.imagenet={path}",
            f"model.decoder_channels={TINY_DECODER}",
        ]
    )
    model = MultiTaskUNet({"a": config.model.unet_config(config.tasks[0].classes)})
    lines: list[str] = []
    _init_encoder(config, model, lines.append)
    expected = donor.encoder.conv0.weight.sum(dim=1, keepdim=True)
    assert torch.allclose(model.encoder.conv0.weight, expected)
    assert torch.equal(
        model.encoder.denseblock4.denselayer16.layers.conv2.weight,
        donor.encoder.denseblock4.denselayer16.layers.conv2.weight,
    )
    n_encoder = len(model.encoder.state_dict())
    assert f"(encoder {n_encoder})" in lines[0] and "missing" in lines[0] and "skipped 2" in lines[0]


def test_pretrain_writes_a_source_checkpoint(run: tuple[PretrainResult, Path, Path]) -> None:
    result, tmp, _ = run
    assert result.source == tmp / "source.pt" and result.source.is_file()
    assert {p.name for p in result.run_dir.iterdir()} >= {"config.yaml", "last.pt", "best.pt", "metrics.csv", "splits"}
    assert sorted(p.name for p in (result.run_dir / "splits").iterdir()) == ["lungs.json", "phantom.json"]
    row = result.history[-1]
    assert {"loss_phantom", "loss_lungs", "val_phantom_dice_opacity", "val_lungs_dice_lung", "val_score"} <= set(row)
    assert row["val_score"] == pytest.approx((row["val_phantom_dice_mean"] + row["val_lungs_dice_mean"]) / 2)
    ckpt = load_checkpoint(result.source)
    assert ckpt["kind"] == KIND_SOURCE and "optimizer" not in ckpt
    assert ckpt["pretrain"]["export_task"] == "phantom"
    assert ckpt["pretrain"]["tasks"]["lungs"]["class_names"] == ["background", "lung"]
    assert not list(result.run_dir.glob(".*.tmp*"))


def test_source_loads_encoder_and_decoder(run: tuple[PretrainResult, Path, Path]) -> None:
    result, _, _ = run
    assert result.model is not None
    target = DenseUNet(UNetConfig(decoder_channels=TINY))
    report = load_source(target, result.source)
    n_encoder = sum(k.startswith("encoder.") for k in target.state_dict())
    assert sum(k.startswith("encoder.") for k in report.loaded) == n_encoder
    assert not report.missing and not report.shape_mismatched
    assert report.summary().startswith(f"loaded {len(target.state_dict())} tensors (encoder {n_encoder})")
    trained = result.model.task_model("phantom").state_dict()
    for name, value in target.state_dict().items():
        assert torch.equal(value, trained[name].cpu()), name
    lungs_only = DenseUNet(UNetConfig(class_names=("background", "lung"), decoder_channels=TINY))
    assert load_source(lungs_only, result.source).shape_mismatched == ("head.weight", "head.bias")


def test_train_from_the_pretrained_source(run: tuple[PretrainResult, Path, Path], dataset_root: Path) -> None:
    result, tmp, _ = run
    config = tiny_config(
        tmp / "finetune",
        dataset_root,
        f"source.path={result.source}",
        "regularization={name: l2sp_layerwise, schedule: {name: log, lambda0: 20, alpha: 1.5}, decoder_lambda: 0.01}",
        "train.epochs=1",
        "train.steps_per_epoch=1",
    )
    trained = train(config)
    assert trained.epochs_completed == 1 and trained.best_checkpoint is not None


def test_resume_continues_and_refuses_other_tasks(run: tuple[PretrainResult, Path, Path]) -> None:
    result, tmp, slices = run
    with pytest.raises(OutputExistsError, match="--resume"):
        pretrain(tiny_pretrain(tmp, slices), output=tmp / "other.pt")
    more = pretrain(tiny_pretrain(tmp, slices, "train.epochs=2"), resume=result.run_dir, output=tmp / "s2.pt")
    assert more.epochs_completed == 2 and [r["epoch"] for r in more.history] == [1, 2]
    assert more.history[0] == result.history[0]
    other = tiny_pretrain(tmp, slices, "tasks.1.name=lungs2", "train.epochs=3")
    with pytest.raises(ConfigError, match="other tasks"):
        pretrain(other, resume=result.run_dir)
