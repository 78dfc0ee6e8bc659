"""Segmenter: the spec's numerical path, streaming, precision, probability maps, checkpoint loading and refusal."""

from __future__ import annotations

import hashlib
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.transforms import Resize, ScaleIntensityRange

from covidseg.data.preprocess import PreprocessConfig
from covidseg.errors import ConfigError, InputError
from covidseg.infer.segmenter import Segmenter, resolve_device
from covidseg.infer.spec import InferenceSpec
from covidseg.io import CTVolume, canonical_affine
from covidseg.model import UNetConfig, save_checkpoint
from tests.infer.analytic import AnalyticCT, analytic_segmenter, calibrated_unet, dice, toy_chest

SPACING = (5.0, 1.5, 1.5)
SMALL_DECODER = (16, 16, 8, 8, 8)


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Run these tiny networks on one thread (restored after the module).

    With two OpenMP threads on a machine whose cores are busy with other jobs, every one of the thousands of
    small parallel regions waits for a descheduled thread: a 32 px DenseUNet batch took 5 s instead of 0.05 s.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def chest() -> tuple[CTVolume, np.ndarray]:
    hu, labels = toy_chest((12, 72, 80))
    return CTVolume.from_canonical(hu, canonical_affine(SPACING)), labels


def test_analytic_model_segments_the_toy_chest(chest):
    volume, truth = chest
    seg = analytic_segmenter(64)
    pred = seg.predict(volume)
    assert pred.labels.dtype == np.uint8 and pred.labels.shape == volume.shape
    final = seg.segment(volume, pred)
    assert dice(final == 2, truth == 2) > 0.9
    assert dice(final > 0, truth > 0) > 0.85
    assert pred.skipped_slices == 0 and pred.slices_run.all()
    assert set(pred.timings) >= {"preprocess", "network", "resize_back", "argmax", "total"}


def test_matches_monai_components_slice_by_slice(chest):
    """The streamed predictor equals ScaleIntensityRange -> Resize -> net -> softmax -> Resize back -> argmax."""
    volume, _ = chest
    seg = analytic_segmenter(64)
    model = AnalyticCT()
    window = ScaleIntensityRange(a_min=-1000.0, a_max=0.0, b_min=0.0, b_max=1.0, clip=True)
    to_net = Resize(spatial_size=(64, 64), mode="bilinear", anti_aliasing=False)
    back = Resize(spatial_size=volume.shape[1:], mode="bilinear", anti_aliasing=False)
    expected = np.zeros(volume.shape, np.uint8)
    with torch.no_grad():
        for z in range(volume.shape[0]):
            x = to_net(window(torch.as_tensor(volume.hu[z][None], dtype=torch.float32)))
            probs = torch.softmax(model(torch.as_tensor(x)[None]), dim=1)[0]
            expected[z] = torch.as_tensor(back(probs)).argmax(0).numpy()
    got = seg.predict(volume).labels
    assert np.mean(got == expected) > 0.9999


def test_batch_size_does_not_change_results(chest):
    volume, _ = chest
    a = analytic_segmenter(64).predict(volume).labels
    seg = analytic_segmenter(64)
    seg.batch_size = 5
    assert np.array_equal(a, seg.predict(volume).labels)


def test_probability_maps(chest):
    volume, _ = chest
    seg = analytic_segmenter(64)
    f16 = seg.predict(volume, probability="float16")
    u8 = seg.predict(volume, probability="uint8")
    assert f16.opacity_probability is not None and u8.opacity_probability is not None
    assert f16.opacity_probability.dtype == np.float16 and u8.opacity_probability.dtype == np.uint8
    p = f16.opacity_probability.astype(np.float32)
    assert p.min() >= 0.0 and p.max() <= 1.0
    assert np.abs(np.round(p * 255) - u8.opacity_probability).max() <= 1
    assert p[f16.labels == 2].min() > 1 / 3  # argmax opacity of three classes
    assert p[f16.labels == 0].max() < 0.5
    with pytest.raises(ConfigError, match="probability"):
        seg.predict(volume, probability="float64")


def test_bf16_agrees_with_fp32(chest):
    volume, _ = chest
    fp32 = analytic_segmenter(64).predict(volume).labels
    bf16 = analytic_segmenter(64, precision="bf16")
    bf16.channels_last = True
    assert np.mean(bf16.predict(volume).labels == fp32) > 0.99


def test_progress_is_reported(chest):
    volume, _ = chest
    calls: list[tuple[int, int]] = []
    analytic_segmenter(64).predict(volume, progress=lambda done, total: calls.append((done, total)))
    assert calls[-1] == (volume.shape[0], volume.shape[0])
    assert [c[0] for c in calls] == sorted(c[0] for c in calls)


def test_fast_path_skips_slices_outside_the_lungs(chest):
    volume, _ = chest
    body_only = np.where(volume.hu[:1] > -500, np.int16(40), np.int16(-1000))
    hu = np.concatenate([np.repeat(body_only, 8, axis=0), volume.hu], axis=0)
    padded = CTVolume.from_canonical(hu, canonical_affine(SPACING))
    full = analytic_segmenter(64)
    fast = analytic_segmenter(64, skip_empty_slices={"enabled": True, "margin_mm": 5.0})
    p_full, p_fast = full.predict(padded), fast.predict(padded)
    assert p_fast.skipped_slices >= 6
    assert not p_fast.slices_run[:6].any()
    assert (p_fast.labels[~p_fast.slices_run] == 0).all()
    a, b = full.segment(padded, p_full) == 2, fast.segment(padded, p_fast) == 2
    assert np.count_nonzero(a != b) <= 0.001 * np.count_nonzero(a)


def test_wrong_output_channels_are_refused(chest):
    volume, _ = chest
    spec = InferenceSpec(class_names=("background", "opacity"), preprocess=PreprocessConfig(slice_size=(32, 32)))
    seg = Segmenter(AnalyticCT(("background", "lung", "opacity")), spec, device="cpu")
    with pytest.raises(InputError, match="expected"):
        seg.predict(volume)


def test_bad_runtime_options():
    spec = InferenceSpec(precision="fp16")
    with pytest.raises(ConfigError, match="CUDA"):
        Segmenter(AnalyticCT(), spec, device="cpu")
    with pytest.raises(ConfigError, match="batch_size"):
        Segmenter(AnalyticCT(), InferenceSpec(), device="cpu", batch_size=0)
    with pytest.raises(InputError, match="device"):
        resolve_device("gpu7")
    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="CUDA"):
            resolve_device("cuda")


# ---- checkpoints -------------------------------------------------------------------------------------------------


def _checkpoint(path: Path, classes=("background", "lung", "opacity"), in_channels=1, **extra) -> Path:
    cfg = UNetConfig(in_channels=in_channels, class_names=classes, decoder_channels=SMALL_DECODER)
    pre = PreprocessConfig(slice_size=(32, 32)).to_dict()
    return save_checkpoint(path, calibrated_unet(cfg, size=32), model_config=cfg, extra={"preprocessing": pre, **extra})


@pytest.fixture(scope="module")
def best_pt(tmp_path_factory) -> Path:
    """A real (random-weight, BN-calibrated) DenseUNet checkpoint as covidseg train writes it."""
    path = tmp_path_factory.mktemp("ckpt") / "best.pt"
    return _checkpoint(path, class_names=["background", "lung", "opacity"])


def _edited(best_pt: Path, tmp_path: Path, edit) -> Path:
    ckpt = torch.load(best_pt, weights_only=True)
    edit(ckpt)
    path = tmp_path / "edited.pt"
    torch.save(ckpt, path)
    return path


def test_real_checkpoint_geometry_and_provenance(best_pt, chest):
    volume, _ = chest
    seg = Segmenter.from_checkpoint(best_pt, device="cpu", precision="bf16", channels_last=True, batch_size=3)
    assert seg.spec.preprocess.slice_size == (32, 32) and seg.spec.precision == "bf16"
    assert seg.info.sha256 == hashlib.sha256(best_pt.read_bytes()).hexdigest()
    assert seg.info.path == best_pt.resolve()
    pred = seg.predict(volume, probability="uint8")
    assert pred.labels.shape == volume.shape and pred.labels.max() <= 2
    assert pred.opacity_probability is not None and pred.opacity_probability.shape == volume.shape
    final = seg.segment(volume, pred)
    assert final.shape == volume.shape and final.dtype == np.uint8


def test_three_channel_checkpoint_and_hu_lung_mask(tmp_path, chest):
    volume, _ = chest
    path = _checkpoint(tmp_path / "rgb.pt", classes=("background", "opacity"), in_channels=3)
    seg = Segmenter.from_checkpoint(path, device="cpu", skip_empty_slices=False)
    assert seg.spec.in_channels == 3 and not seg.spec.has_lung_class
    final = seg.segment(volume)  # no lung class: the lung mask comes from HU
    assert final.shape == volume.shape


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda p: p.write_bytes(b"not a checkpoint at all"), "not a PyTorch weights file"),
        (lambda p: torch.save({"conv0.weight": torch.ones(2)}, p), "not a covidseg checkpoint"),
        (lambda p: p.write_bytes(pickle.dumps(Path("/etc/passwd"), protocol=2)), "not a PyTorch weights file"),
    ],
    ids=["text", "state_dict", "pickle"],
)
def test_non_checkpoints_are_refused(tmp_path, make, match):
    path = tmp_path / "model.pt"
    make(path)
    with pytest.raises(InputError, match=match):
        Segmenter.from_checkpoint(path, device="cpu")


def test_truncated_checkpoint_is_refused(tmp_path, best_pt):
    path = tmp_path / "model.pt"
    path.write_bytes(best_pt.read_bytes()[: best_pt.stat().st_size // 2])
    with pytest.raises(InputError):
        Segmenter.from_checkpoint(path, device="cpu")


def test_other_class_set_is_refused(tmp_path, best_pt):
    def edit(ckpt):
        ckpt["model_config"]["class_names"] = ["background", "liver", "tumour"]
        ckpt["class_names"] = ["background", "liver", "tumour"]

    with pytest.raises(InputError, match="lung-opacity model"):
        Segmenter.from_checkpoint(_edited(best_pt, tmp_path, edit), device="cpu")


def test_other_architecture_is_refused(tmp_path, best_pt):
    def edit(ckpt):  # weights of one architecture, config of another
        ckpt["model_config"]["decoder_channels"] = [32, 16, 16, 8, 8]

    with pytest.raises(InputError, match="does not match"):
        Segmenter.from_checkpoint(_edited(best_pt, tmp_path, edit), device="cpu")


def test_disagreeing_class_names_are_refused(tmp_path, best_pt):
    def edit(ckpt):
        ckpt["class_names"] = ["background", "opacity", "lung"]

    with pytest.raises(InputError, match="disagree"):
        Segmenter.from_checkpoint(_edited(best_pt, tmp_path, edit), device="cpu")


def test_bad_precision_is_a_config_error(best_pt):
    with pytest.raises(ConfigError, match="precision"):
        Segmenter.from_checkpoint(best_pt, device="cpu", precision="int8")


def test_channels_last_is_the_cpu_default_and_does_not_change_labels(chest):
    """A real (small, calibrated) DenseUNet: contiguous, channels-last and batch sizes give the same labels."""
    volume, _ = chest
    config = UNetConfig(class_names=("background", "lung", "opacity"), decoder_channels=SMALL_DECODER)
    spec = InferenceSpec(preprocess=PreprocessConfig(slice_size=(64, 64)))
    auto = Segmenter(calibrated_unet(config), spec, device="cpu")
    assert auto.channels_last and auto.batch_size == 2  # the fp32 CPU default
    conv = next(m for m in auto.model.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    plain = Segmenter(calibrated_unet(config), spec, device="cpu", channels_last=False, batch_size=5)
    assert not plain.channels_last
    a, b = auto.predict(volume).labels, plain.predict(volume).labels
    assert len(np.unique(a)) == 3 and np.mean(a == b) > 0.9999


def test_batchnorm_folding_is_the_default_and_does_not_change_labels(chest):
    """A calibrated DenseUNet: folded (default) and unfolded runs give the same labels; the caller's model stays."""
    volume, _ = chest
    config = UNetConfig(class_names=("background", "lung", "opacity"), decoder_channels=SMALL_DECODER)
    spec = InferenceSpec(preprocess=PreprocessConfig(slice_size=(64, 64)))
    model = calibrated_unet(config)
    norms = sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    folded = Segmenter(model, spec, device="cpu")
    plain = Segmenter(model, spec, device="cpu", fold_batchnorm=False)
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in folded.model.modules()) == norms - 69
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules()) == norms
    a, b = folded.predict(volume).labels, plain.predict(volume).labels
    assert len(np.unique(a)) == 3 and np.mean(a == b) > 0.9999


def test_checkpoint_segmenter_folds_batchnorm(best_pt, chest):
    folded = Segmenter.from_checkpoint(best_pt, device="cpu")
    plain = Segmenter.from_checkpoint(best_pt, device="cpu", fold_batchnorm=False)
    count = [sum(isinstance(m, torch.nn.BatchNorm2d) for m in s.model.modules()) for s in (folded, plain)]
    assert count[0] == count[1] - 69
    volume, _ = chest
    assert np.mean(folded.predict(volume).labels == plain.predict(volume).labels) > 0.9999


def test_default_batch_size_depends_on_precision_and_an_explicit_one_wins(best_pt):
    assert Segmenter.from_checkpoint(best_pt, device="cpu", precision="bf16").batch_size == 4
    assert Segmenter.from_checkpoint(best_pt, device="cpu", precision="fp32").batch_size == 2
    assert Segmenter.from_checkpoint(best_pt, device="cpu", precision="bf16", batch_size=3).batch_size == 3
