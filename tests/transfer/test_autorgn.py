from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from covidseg.transfer.autorgn import (
    SCHEDULED_LR_KEY,
    AutoRGN,
    normalised_rgn_scales,
    relative_gradient_norms,
)
from covidseg.transfer.freezing import freeze
from tests.transfer.strategy_toys import ToyNet, toy_batch, toy_partition

BASE_LR = 0.05


def setup_toy() -> tuple[ToyNet, AutoRGN, torch.optim.Optimizer]:
    model = ToyNet(seed=3)
    strategy = AutoRGN(partition=toy_partition(model))
    strategy.setup(model)
    optimizer = torch.optim.SGD(strategy.param_groups(model, base_lr=BASE_LR, weight_decay=0.0))
    return model, strategy, optimizer


def backward(model: nn.Module) -> None:
    image, label = toy_batch(seed=5)
    model.train()
    F.cross_entropy(model(image), label).backward()


def hand_rgn(model: nn.Module, names: tuple[str, ...]) -> float:
    params = dict(model.named_parameters())
    grad = torch.cat([params[n].grad.flatten() for n in names if params[n].grad is not None]).double()
    value = torch.cat([params[n].detach().flatten() for n in names if params[n].grad is not None]).double()
    return math.sqrt(float((grad**2).sum())) / math.sqrt(float((value**2).sum()))


def test_layers_are_encoder_layers_then_new_modules() -> None:
    _, _, optimizer = setup_toy()
    assert [group["name"] for group in optimizer.param_groups] == [
        "encoder.conv0",
        "encoder.block1.conv",
        "encoder.block2.conv",
        "decoder.0",
        "decoder.1",
        "head",
    ]
    assert [len(group["params"]) for group in optimizer.param_groups] == [4, 4, 6, 2, 2, 2]


def test_learning_rates_follow_hand_computed_normalised_rgn() -> None:
    model, strategy, optimizer = setup_toy()
    backward(model)
    layers = toy_partition(model).layers()
    rgn = {layer: hand_rgn(model, names) for layer, names in layers.items()}
    peak_layer = max(rgn, key=lambda layer: rgn[layer])
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    grads = {name: p.grad.detach().clone() for name, p in model.named_parameters() if p.grad is not None}

    strategy.before_optimizer_step(model, optimizer)
    lrs = {group["name"]: group["lr"] for group in optimizer.param_groups}
    for layer, value in rgn.items():
        assert lrs[layer] == pytest.approx(BASE_LR * value / rgn[peak_layer], rel=1e-6), layer
    assert lrs[peak_layer] == BASE_LR
    assert len(set(lrs.values())) == len(lrs)  # the layers really get different rates
    assert strategy.last_scales[peak_layer] == 1.0

    optimizer.step()
    strategy.after_optimizer_step(model, optimizer)
    assert all(group["lr"] == BASE_LR and SCHEDULED_LR_KEY not in group for group in optimizer.param_groups)
    params = dict(model.named_parameters())
    for layer, names in layers.items():
        for name in names:
            expected = before[name] - lrs[layer] * grads[name]
            torch.testing.assert_close(params[name].detach(), expected, rtol=1e-6, atol=1e-7, msg=name)
    # The layer with the largest RGN moved by the full learning rate times its gradient.
    for name in layers[peak_layer]:
        torch.testing.assert_close(before[name] - params[name].detach(), BASE_LR * grads[name])


def test_scaling_is_relative_to_the_scheduled_learning_rate() -> None:
    model, strategy, optimizer = setup_toy()
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
    for _ in range(2):
        optimizer.zero_grad()
        backward(model)
        strategy.before_optimizer_step(model, optimizer)
        optimizer.step()
        strategy.after_optimizer_step(model, optimizer)
        scheduler.step()
    assert all(group["lr"] == pytest.approx(BASE_LR / 4) for group in optimizer.param_groups)
    optimizer.zero_grad()
    backward(model)
    strategy.before_optimizer_step(model, optimizer)
    lrs = [group["lr"] for group in optimizer.param_groups]
    assert max(lrs) == pytest.approx(BASE_LR / 4)
    assert strategy.steps == 3


def test_frozen_layers_keep_their_rate_and_do_not_set_the_maximum() -> None:
    model, strategy, optimizer = setup_toy()
    freeze(model.head)
    backward(model)
    strategy.before_optimizer_step(model, optimizer)
    lrs = {group["name"]: group["lr"] for group in optimizer.param_groups}
    assert lrs["head"] == BASE_LR
    assert "head" not in strategy.last_scales
    assert max(strategy.last_scales.values()) == 1.0


def test_missing_after_step_is_an_error() -> None:
    model, strategy, optimizer = setup_toy()
    backward(model)
    strategy.before_optimizer_step(model, optimizer)
    with pytest.raises(RuntimeError, match="after_optimizer_step"):
        strategy.before_optimizer_step(model, optimizer)


def test_rgn_helpers_on_hand_values() -> None:
    a = nn.Parameter(torch.tensor([3.0, 4.0]))  # norm 5
    b = nn.Parameter(torch.tensor([[1.0, 0.0], [0.0, 0.0]]))  # norm 1 together with c
    c = nn.Parameter(torch.zeros(3))
    z = nn.Parameter(torch.zeros(2))
    unused = nn.Parameter(torch.ones(2))
    a.grad = torch.tensor([0.0, 1.0])
    b.grad = torch.tensor([[0.0, 0.6], [0.0, 0.0]])
    c.grad = torch.tensor([0.0, 0.8, 0.0])
    z.grad = torch.ones(2)
    rgn = relative_gradient_norms([("a", [a]), ("bc", [b, c]), ("zero", [z]), ("unused", [unused])])
    assert rgn == pytest.approx({"a": 0.2, "bc": 1.0, "zero": math.inf})
    assert normalised_rgn_scales(rgn) == pytest.approx({"a": 0.2, "bc": 1.0, "zero": 1.0})
    assert normalised_rgn_scales({"a": 0.0, "b": 0.0}) == {"a": 1.0, "b": 1.0}
    assert relative_gradient_norms([("unused", [unused])]) == {}


def test_densenet_unet_groups_and_step_64px() -> None:
    from covidseg.model import DenseUNet, UNetConfig

    torch.manual_seed(0)
    model = DenseUNet(UNetConfig())
    strategy = AutoRGN()
    strategy.setup(model)
    groups = strategy.param_groups(model, base_lr=0.01, weight_decay=0.0)
    decoder_modules = {
        name.rpartition(".")[0] for name, _ in model.named_parameters() if not name.startswith("encoder.")
    }
    assert len(groups) == 120 + len(decoder_modules)
    assert groups[0]["name"] == "encoder.conv0" and groups[-1]["name"] == "head"
    optimizer = torch.optim.SGD(groups)
    model.train()
    F.cross_entropy(model(torch.randn(2, 1, 64, 64)), torch.randint(0, 3, (2, 64, 64))).backward()
    strategy.before_optimizer_step(model, optimizer)
    lrs = [group["lr"] for group in optimizer.param_groups]
    assert max(lrs) == 0.01 and min(lrs) > 0.0
    assert len(strategy.last_scales) == len(groups)
    optimizer.step()
    strategy.after_optimizer_step(model, optimizer)
    assert all(group["lr"] == 0.01 for group in optimizer.param_groups)
