from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from monai.networks.nets import DenseNet121

from covidseg.errors import ConfigError, InputError
from covidseg.model.checkpoint import save_checkpoint
from covidseg.model.unet import DenseUNet, UNetConfig
from covidseg.model.weights import (
    LoadReport,
    adapt_input_channels,
    densenet_key_to_model,
    load_source,
    load_torchvision_densenet121,
)

ENCODER_TENSORS = 362 + 363  # parameters + BatchNorm buffers


def _randomize(module: torch.nn.Module, seed: int) -> None:
    """Give every parameter and BatchNorm statistic distinct non-default values."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in module.state_dict().items():
            if name.endswith("num_batches_tracked"):
                tensor.fill_(7)
            elif name.endswith("running_var"):
                tensor.copy_(torch.rand(tensor.shape, generator=gen) + 0.5)
            else:
                tensor.copy_(torch.randn(tensor.shape, generator=gen) * 0.1)


@pytest.fixture(scope="module")
def imagenet_like() -> DenseNet121:
    net = DenseNet121(spatial_dims=2, in_channels=3, out_channels=10)
    _randomize(net, seed=3)
    return net.eval()


def _torchvision_state(net: DenseNet121, *, dotted: bool) -> dict[str, torch.Tensor]:
    """MONAI DenseNet121 state dict renamed to torchvision's format (new or old dotted dense-layer keys)."""
    out: dict[str, torch.Tensor] = {}
    for key, value in net.state_dict().items():
        if key.startswith("class_layers.out."):
            out["classifier." + key.rsplit(".", 1)[1]] = value.clone()
            continue
        new = key.replace(".layers.", ".")
        if dotted:
            new = re.sub(r"(denselayer\d+)\.(norm|relu|conv)(\d)\.", r"\1.\2.\3.", new)
        out[new] = value.clone()
    return out


@pytest.mark.parametrize("dotted", [False, True])
def test_torchvision_file_reproduces_encoder_on_gray_images(
    tmp_path: Path, imagenet_like: DenseNet121, dotted: bool
) -> None:
    state = _torchvision_state(imagenet_like, dotted=dotted)
    assert ("features.denseblock1.denselayer1.norm.1.weight" in state) is dotted
    assert ("features.denseblock1.denselayer1.norm1.weight" in state) is not dotted
    path = tmp_path / "densenet121.pth"
    torch.save(state, path)
    model = DenseUNet().eval()
    report = load_torchvision_densenet121(model, path)
    assert report.source_kind == "densenet121"
    assert len(report.loaded) == ENCODER_TENSORS
    assert all(name.startswith("encoder.") for name in report.loaded)
    assert report.missing and all(name.startswith(("decoder.", "head.")) for name in report.missing)
    assert report.unexpected == () and report.shape_mismatched == ()
    assert report.skipped == ("classifier.weight", "classifier.bias")
    assert "adapted from 3 to 1 input channels (sum)" in report.summary()
    gray = torch.rand(1, 1, 64, 64)
    with torch.no_grad():
        expected = imagenet_like.features(gray.repeat(1, 3, 1, 1))
        assert expected.abs().mean() > 0.01  # a non-trivial output
        torch.testing.assert_close(model.encoder(gray), expected, rtol=1e-4, atol=1e-4)


def test_mean_adaptation_equals_replicated_image_over_three(tmp_path: Path, imagenet_like: DenseNet121) -> None:
    path = tmp_path / "densenet121.pth"
    torch.save(_torchvision_state(imagenet_like, dotted=False), path)
    model = DenseUNet().eval()
    load_torchvision_densenet121(model, path, channel_adaptation="mean")
    gray = torch.rand(1, 1, 64, 64)
    with torch.no_grad():
        expected = imagenet_like.features(gray.repeat(1, 3, 1, 1) / 3)
        torch.testing.assert_close(model.encoder(gray), expected, rtol=1e-4, atol=1e-4)


def test_three_channel_target_copies_exactly(tmp_path: Path, imagenet_like: DenseNet121) -> None:
    path = tmp_path / "densenet121.pth"
    torch.save(_torchvision_state(imagenet_like, dotted=False), path)
    model = DenseUNet(UNetConfig(in_channels=3))
    report = load_torchvision_densenet121(model, path)
    assert report.notes == ()
    loaded = model.encoder.state_dict()
    for key, value in imagenet_like.features.state_dict().items():
        assert torch.equal(loaded[key], value), key


def test_monai_densenet_state_dict_also_loads(tmp_path: Path, imagenet_like: DenseNet121) -> None:
    path = tmp_path / "monai.pt"
    torch.save(imagenet_like.state_dict(), path)
    model = DenseUNet(UNetConfig(in_channels=3))
    report = load_source(model, path)
    assert len(report.loaded) == ENCODER_TENSORS
    assert report.skipped == ("class_layers.out.weight", "class_layers.out.bias")
    assert torch.equal(model.encoder.norm5.running_var, imagenet_like.features.norm5.running_var)


def test_key_mapping() -> None:
    assert densenet_key_to_model("features.norm5.running_mean") == "encoder.norm5.running_mean"
    assert (
        densenet_key_to_model("features.denseblock4.denselayer16.conv.2.weight")
        == "encoder.denseblock4.denselayer16.layers.conv2.weight"
    )
    assert (
        densenet_key_to_model("features.denseblock3.denselayer10.layers.norm1.num_batches_tracked")
        == "encoder.denseblock3.denselayer10.layers.norm1.num_batches_tracked"
    )
    assert densenet_key_to_model("class_layers.out.bias") is None


def test_adapt_input_channels_general() -> None:
    w = torch.randn(8, 3, 3, 3)
    x = torch.rand(1, 1, 8, 8)
    a2 = adapt_input_channels(w, 2, "sum")
    ref = torch.nn.functional.conv2d(x.repeat(1, 3, 1, 1), w)
    torch.testing.assert_close(torch.nn.functional.conv2d(x.repeat(1, 2, 1, 1), a2), ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(adapt_input_channels(w, 1, "mean"), w.mean(1, keepdim=True))
    assert torch.equal(adapt_input_channels(w, 3), w)
    with pytest.raises(ConfigError, match=r"unknown channel adaptation 'max'; expected one of \['sum', 'mean'\]"):
        adapt_input_channels(w, 1, "max")


def test_checkpoint_with_other_classes_loads_all_but_head(tmp_path: Path) -> None:
    torch.manual_seed(0)
    source_cfg = UNetConfig(class_names=("background", "lung", "opacity", "effusion"))
    source = DenseUNet(source_cfg)
    _randomize(source, seed=5)
    path = save_checkpoint(tmp_path / "pretrained.pt", source, model_config=source_cfg)
    target = DenseUNet()
    head_before = target.head.weight.clone()
    report = load_source(target, path)
    assert report.source_kind == "covidseg-checkpoint"
    assert report.shape_mismatched == ("head.weight", "head.bias")
    assert report.missing == () and report.unexpected == ()
    assert len(report.loaded) == len(target.state_dict()) - 2
    assert torch.equal(target.head.weight, head_before)
    loaded = target.state_dict()
    for key, value in source.state_dict().items():
        if not key.startswith("head."):
            assert torch.equal(loaded[key], value), key
    assert "head not loaded" in report.summary()


def test_checkpoint_with_same_count_other_names_skips_head(tmp_path: Path) -> None:
    source_cfg = UNetConfig(class_names=("background", "lung", "nodule"))
    source = DenseUNet(source_cfg)
    _randomize(source, seed=6)
    path = save_checkpoint(tmp_path / "other.pt", source, model_config=source_cfg)
    target = DenseUNet()
    head_before = target.head.bias.clone()
    report = load_source(target, path)
    assert report.skipped == ("head.weight", "head.bias")
    assert report.missing == ("head.weight", "head.bias")
    assert torch.equal(target.head.bias, head_before)
    assert torch.equal(target.decoder[0].up.weight, source.decoder[0].up.weight)


def test_plain_unet_state_dict_with_ddp_prefix_and_extras(tmp_path: Path) -> None:
    source = DenseUNet()
    _randomize(source, seed=7)
    state = {f"module.{k}": v for k, v in source.state_dict().items()}
    state["module.extra_head.weight"] = torch.zeros(3)
    path = tmp_path / "ddp.pt"
    torch.save({"state_dict": state, "epoch": 4}, path)
    target = DenseUNet()
    report = load_source(target, path)
    assert report.source_kind == "unet-state-dict"
    assert report.unexpected == ("extra_head.weight",)
    assert report.missing == ()
    loaded = target.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in source.state_dict().items())


def test_encoder_only_state_dict(tmp_path: Path) -> None:
    source = DenseUNet()
    _randomize(source, seed=8)
    path = tmp_path / "encoder.pt"
    torch.save(source.encoder.state_dict(), path)
    target = DenseUNet()
    report = load_source(target, path)
    assert report.source_kind == "encoder-state-dict"
    assert len(report.loaded) == ENCODER_TENSORS
    assert torch.equal(target.encoder.conv0.weight, source.encoder.conv0.weight)


def test_load_torchvision_refuses_other_kinds(tmp_path: Path) -> None:
    cfg = UNetConfig()
    path = save_checkpoint(tmp_path / "c.pt", DenseUNet(cfg), model_config=cfg)
    with pytest.raises(InputError, match="is a covidseg-checkpoint, not a torchvision DenseNet121"):
        load_torchvision_densenet121(DenseUNet(), path)


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ({"foo.weight": torch.ones(2)}, r"not a DenseNet121 / covidseg model file: found a dict with keys"),
        ({"encoder.nothing.weight": torch.ones(2)}, r"nothing in .* matches the model"),
        ({"features.conv0.weight": torch.ones(2, 2)}, r"nothing in .* matches the model"),
        (torch.ones(3), r"found a tensor of shape \[3\]"),
        ([1, 2], r"found a list"),
    ],
)
def test_wrong_contents_are_clear_errors(tmp_path: Path, content: object, match: str) -> None:
    path = tmp_path / "bad.pt"
    torch.save(content, path)
    with pytest.raises(InputError, match=match):
        load_source(DenseUNet(), path)


def test_unloadable_files_are_clear_errors(tmp_path: Path) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("not a checkpoint")
    with pytest.raises(InputError, match="is not a PyTorch weights file"):
        load_source(DenseUNet(), text)
    unsafe = tmp_path / "unsafe.pt"
    torch.save({"path": Path("/tmp")}, unsafe)  # arbitrary classes are refused by weights_only=True
    with pytest.raises(InputError, match=r"is not a PyTorch weights file that can be loaded safely"):
        load_source(DenseUNet(), unsafe)
    with pytest.raises(InputError, match="does not exist"):
        load_source(DenseUNet(), tmp_path / "missing.pt")


def test_unknown_channel_adaptation(tmp_path: Path) -> None:
    path = tmp_path / "enc.pt"
    torch.save(DenseUNet().encoder.state_dict(), path)
    with pytest.raises(ConfigError, match="unknown channel adaptation"):
        load_source(DenseUNet(), path, channel_adaptation="avg")


def test_report_summary_is_one_line() -> None:
    report = LoadReport(
        loaded=("encoder.conv0.weight", "decoder.0.up.weight"),
        missing=("head.weight",),
        unexpected=("a", "b", "c", "d"),
        shape_mismatched=(),
        skipped=("classifier.weight",),
        notes=("conv0 adapted",),
        source_kind="densenet121",
    )
    line = report.summary()
    assert "\n" not in line
    assert line == (
        "loaded 2 tensors (encoder 1) from a densenet121; missing 1 (encoder 0, decoder/head 1); "
        "unexpected 4 (a, b, c, ...); shape mismatched 0; skipped 1 (classifier.weight); conv0 adapted"
    )
