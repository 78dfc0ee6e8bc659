from __future__ import annotations

import pytest
import torch
from torch import nn

from covidseg.model.layers import (
    STAGES,
    EncoderLayer,
    batchnorm_modules,
    decoder_param_names,
    encoder_layers,
    encoder_param_layer,
    stage_groups,
)
from covidseg.model.unet import DenseUNet, UNetConfig

DENSENET121_CONVS = 120
DENSENET121_ENCODER_TENSORS = 362


def test_index_has_120_layers_numbered_in_order(model: DenseUNet) -> None:
    layers = encoder_layers(model)
    assert len(layers) == DENSENET121_CONVS
    assert [layer.index for layer in layers] == list(range(1, DENSENET121_CONVS + 1))
    assert all(isinstance(layer, EncoderLayer) for layer in layers)
    modules = dict(model.named_modules())
    assert all(isinstance(modules[layer.conv_name], nn.Conv2d) for layer in layers)
    assert layers[0].conv_name == "encoder.conv0"
    assert layers[1].conv_name == "encoder.denseblock1.denselayer1.layers.conv1"
    assert layers[13].conv_name == "encoder.transition1.conv"
    assert layers[-1].conv_name == "encoder.denseblock4.denselayer16.layers.conv2"
    transitions = [layer.index for layer in layers if "transition" in layer.conv_name]
    assert transitions == [1 + 12 + 1, 1 + 12 + 1 + 24 + 1, 1 + 12 + 1 + 24 + 1 + 48 + 1]


def test_layer_is_frozen_dataclass(model: DenseUNet) -> None:
    layer = encoder_layers(model)[0]
    with pytest.raises(AttributeError):
        layer.index = 5  # type: ignore[misc]


def test_param_map_is_complete_and_disjoint(model: DenseUNet) -> None:
    encoder_params = [n for n, _ in model.named_parameters() if n.startswith("encoder.")]
    assert len(encoder_params) == DENSENET121_ENCODER_TENSORS
    listed = [name for layer in encoder_layers(model) for name in layer.param_names]
    assert len(listed) == len(set(listed))  # disjoint
    assert sorted(listed) == sorted(encoder_params)  # complete, nothing extra
    mapping = encoder_param_layer(model)
    assert set(mapping) == set(encoder_params)


def test_batchnorm_assignment(model: DenseUNet) -> None:
    mapping = encoder_param_layer(model)
    layers = {layer.conv_name: layer.index for layer in encoder_layers(model)}
    # pre-activation BNs belong to the conv they feed
    for block, layer_name in (("denseblock2", "denselayer7"), ("denseblock4", "denselayer1")):
        prefix = f"encoder.{block}.{layer_name}.layers"
        assert mapping[f"{prefix}.norm1.weight"] == layers[f"{prefix}.conv1"]
        assert mapping[f"{prefix}.norm2.bias"] == layers[f"{prefix}.conv2"]
    assert mapping["encoder.transition3.norm.weight"] == layers["encoder.transition3.conv"]
    assert mapping["encoder.norm0.weight"] == mapping["encoder.norm0.bias"] == 1
    assert mapping["encoder.norm5.weight"] == mapping["encoder.norm5.bias"] == DENSENET121_CONVS
    # every layer holds exactly one conv weight
    for layer in encoder_layers(model):
        conv_weights = [n for n in layer.param_names if n == f"{layer.conv_name}.weight"]
        assert conv_weights == [f"{layer.conv_name}.weight"]


def test_forward_order_matches_call_order(model: DenseUNet) -> None:
    called: list[str] = []
    handles = [
        module.register_forward_pre_hook(lambda _m, _x, name=name: called.append(name))
        for name, module in model.named_modules()
        if name.startswith("encoder.") and isinstance(module, nn.Conv2d)
    ]
    try:
        with torch.no_grad():
            model(torch.zeros(1, 1, 64, 64))
    finally:
        for handle in handles:
            handle.remove()
    assert called == [layer.conv_name for layer in encoder_layers(model)]


def test_stage_groups_cover_encoder_once(model: DenseUNet) -> None:
    groups = stage_groups(model)
    assert list(groups) == list(STAGES)
    flat = [name for names in groups.values() for name in names]
    assert len(flat) == len(set(flat)) == DENSENET121_ENCODER_TENSORS
    assert set(flat) == {n for n, _ in model.named_parameters() if n.startswith("encoder.")}
    assert groups["stem"] == ["encoder.conv0.weight", "encoder.norm0.weight", "encoder.norm0.bias"]
    assert "encoder.norm5.weight" in groups["denseblock4"]
    assert groups["transition2"] == [
        "encoder.transition2.norm.weight",
        "encoder.transition2.norm.bias",
        "encoder.transition2.conv.weight",
    ]
    for stage, names in groups.items():
        if stage.startswith("denseblock"):
            assert all(n.startswith((f"encoder.{stage}.", "encoder.norm5.")) for n in names)
    # stages follow the index: each layer's stage group contains its params
    for layer in encoder_layers(model):
        assert set(layer.param_names) <= set(groups[layer.stage])


def test_decoder_names_are_the_rest(model: DenseUNet) -> None:
    names = decoder_param_names(model)
    all_names = [n for n, _ in model.named_parameters()]
    assert set(names) | set(encoder_param_layer(model)) == set(all_names)
    assert not set(names) & set(encoder_param_layer(model))
    assert names[-2:] == ["head.weight", "head.bias"]
    assert all(n.startswith(("decoder.", "head.")) for n in names)


def test_batchnorm_modules_found_by_type() -> None:
    model = DenseUNet(UNetConfig(class_names=("background", "opacity")))
    found = batchnorm_modules(model)
    expected = [n for n, m in model.named_modules() if type(m) is nn.BatchNorm2d]
    assert [n for n, _ in found] == expected
    assert len(found) == 121 + 10  # encoder: norm0 + 2 x 58 dense layers + 3 transitions + norm5
    assert not any("bn" in n for n, _ in found)  # DenseNet names them norm*, a substring search would miss them
    sync = nn.Sequential(nn.SyncBatchNorm(4), nn.BatchNorm1d(3), nn.LayerNorm(3))
    assert [n for n, _ in batchnorm_modules(sync)] == ["0", "1"]
