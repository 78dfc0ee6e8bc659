"""Penalties, Fisher and optimizer groups on the real DenseUNet (DenseNet121 encoder, 120 layers, 64x64 inputs)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor
from torch.nn import functional as F

from covidseg.model.layers import batchnorm_modules, decoder_param_names, encoder_layers, encoder_param_layer
from covidseg.model.unet import DenseUNet, UNetConfig
from covidseg.transfer.fisher import estimate_diagonal_fisher
from covidseg.transfer.penalties import PENALTIES, make_penalty, optimizer_param_groups
from covidseg.transfer.penalties_base import batchnorm_param_names
from covidseg.transfer.schedules import LogSchedule

PAPER = {"name": "log", "lambda0": 20.0, "alpha": 1.5}
DECODER_LAMBDA = 0.01


@pytest.fixture(scope="module")
def setup() -> tuple[DenseUNet, dict[str, Tensor], dict[str, int]]:
    torch.manual_seed(0)
    model = DenseUNet(UNetConfig()).eval()
    source = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        gen = torch.Generator().manual_seed(1)
        for p in model.parameters():
            p.add_(0.01 * torch.randn(p.shape, generator=gen))
    return model, source, encoder_param_layer(model)


def test_scope_on_denseunet(setup: tuple[DenseUNet, dict[str, Tensor], dict[str, int]]) -> None:
    model, source, layer_of = setup
    pen = make_penalty("l2sp_layerwise", model, source, layer_of, schedule=PAPER, decoder_lambda=DECODER_LAMBDA)
    convs = [f"{layer.conv_name}.weight" for layer in encoder_layers(model)]
    assert pen.sp_param_names() == convs  # 120 conv weights in forward order; BatchNorm excluded
    assert pen.new_param_names() == [n for n in decoder_param_names(model) if n not in batchnorm_param_names(model)]
    bn = {f"{name}.{p}" for name, _ in batchnorm_modules(model) for p in ("weight", "bias")}
    assert set(pen.excluded_param_names()) == bn
    assert pen.lambda_of_layer(1) == 20.0
    assert pen.lambda_of_layer(120) == pytest.approx(12.8188, abs=1e-4)
    included = make_penalty(
        "l2sp_layerwise", model, source, layer_of, schedule=PAPER, decoder_lambda=DECODER_LAMBDA, batchnorm="include"
    )
    assert len(included.sp_param_names()) == 362
    assert set(included.sp_param_names()) == set(layer_of)


def test_value_and_gradient_on_denseunet(setup: tuple[DenseUNet, dict[str, Tensor], dict[str, int]]) -> None:
    model, source, layer_of = setup
    pen = make_penalty("l2sp_layerwise", model, source, layer_of, schedule=PAPER, decoder_lambda=DECODER_LAMBDA)
    lambdas = LogSchedule(lambda0=20.0, alpha=1.5).values(120)
    bn = batchnorm_param_names(model)
    expected = 0.0
    for name, p in model.named_parameters():
        q = p.detach().double()
        if name in bn:
            continue
        if name in layer_of:
            expected += lambdas[layer_of[name] - 1] * float(((q - source[name].double()) ** 2).sum())
        else:
            expected += DECODER_LAMBDA * float((q**2).sum())
    model.zero_grad()
    value = pen(model)
    assert value.item() == pytest.approx(expected, rel=1e-5)
    value.backward()
    conv0 = model.encoder.conv0.weight
    torch.testing.assert_close(conv0.grad, 2 * 20.0 * (conv0.detach() - source["encoder.conv0.weight"]))
    last = dict(model.named_parameters())[encoder_layers(model)[-1].conv_name + ".weight"]
    ref = source[encoder_layers(model)[-1].conv_name + ".weight"]
    torch.testing.assert_close(last.grad, 2 * lambdas[-1] * (last.detach() - ref))
    torch.testing.assert_close(model.head.weight.grad, 2 * DECODER_LAMBDA * model.head.weight.detach())
    assert model.encoder.norm0.weight.grad is None
    model.zero_grad()


def test_training_step_gradient_adds_closed_form(setup: tuple[DenseUNet, dict[str, Tensor], dict[str, int]]) -> None:
    model, source, layer_of = setup
    pen = make_penalty("l2sp", model, source, layer_of, sp_lambda=0.5, decoder_lambda=DECODER_LAMBDA)
    torch.manual_seed(2)
    x = torch.rand(2, 1, 64, 64)
    y = torch.randint(0, 3, (2, 64, 64))
    conv0 = model.encoder.conv0.weight
    model.zero_grad()
    F.cross_entropy(model(x), y).backward()
    task_grad = conv0.grad.clone()
    model.zero_grad()
    (F.cross_entropy(model(x), y) + pen(model)).backward()
    torch.testing.assert_close(
        conv0.grad, task_grad + 2 * 0.5 * (conv0.detach() - source["encoder.conv0.weight"]), rtol=1e-5, atol=1e-7
    )
    model.zero_grad()


def test_frozen_prefix_and_optimizer_groups(setup: tuple[DenseUNet, dict[str, Tensor], dict[str, int]]) -> None:
    model, source, layer_of = setup
    schedule = [math.inf, math.inf] + [1.0] * 118
    pen = make_penalty("l1sp", model, source, layer_of, schedule=schedule, decoder_lambda=DECODER_LAMBDA)
    assert pen.frozen_layers() == [1, 2]
    assert pen.frozen_param_names() == ["encoder.conv0.weight", "encoder.denseblock1.denselayer1.layers.conv1.weight"]
    assert 1 not in pen.layer_terms(model) and len(pen.layer_terms(model)) == 119  # 118 layers + new-layer key
    groups = optimizer_param_groups(model, pen, weight_decay=1e-4)
    assert [g["weight_decay"] for g in groups] == [1e-4, 0.0]
    assert len(groups[0]["params"]) == len(batchnorm_param_names(model))
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))


@pytest.mark.parametrize("name", sorted(PENALTIES))
def test_every_penalty_runs_on_denseunet(
    name: str, setup: tuple[DenseUNet, dict[str, Tensor], dict[str, int]], fisher: dict[str, Tensor]
) -> None:
    model, source, layer_of = setup
    params: dict[str, object] = {"weight_lambda": 1e-4} if name == "l2" else {"decoder_lambda": DECODER_LAMBDA}
    if name == "l2sp":
        params["sp_lambda"] = 0.1
    elif name != "l2":
        params["schedule"] = PAPER
    if "fisher" in name:
        params["fisher"] = fisher
    pen = make_penalty(name, model, source, layer_of, **params)
    value = pen(model)
    assert math.isfinite(value.item()) and value.item() > 0
    assert sum(pen.layer_terms(model).values()) == pytest.approx(value.item(), rel=1e-4)
    value.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    model.zero_grad()


@pytest.fixture(scope="module")
def fisher(setup: tuple[DenseUNet, dict[str, Tensor], dict[str, int]]) -> dict[str, Tensor]:
    model, _, layer_of = setup
    torch.manual_seed(3)
    batches = [(torch.rand(2, 1, 64, 64), torch.randint(0, 3, (2, 64, 64)))]
    est = estimate_diagonal_fisher(model, batches, F.cross_entropy, normalize="mean", names=list(layer_of))
    assert set(est) == set(layer_of)
    assert all(torch.isfinite(f).all() and (f >= 0).all() for f in est.values())
    assert float(sum(f.sum() for f in est.values())) / sum(f.numel() for f in est.values()) == pytest.approx(1.0)
    return est
