from __future__ import annotations

import io
import math
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from covidseg.transfer.ptr import PseudoTaskRegularization, random_targets
from tests.transfer.strategy_toys import ToyNet, toy_batch, toy_partition

IDS = torch.tensor([3, 1, 4, 9])
TARGET_DIM = 5
SEED = 11


def make(model: ToyNet, **params: Any) -> PseudoTaskRegularization:
    ptr = PseudoTaskRegularization(
        target_dim=TARGET_DIM, seed=SEED, partition=toy_partition(model), **{"patience": 0, **params}
    )
    ptr.setup(model)
    return ptr


def capture_bottleneck(model: ToyNet) -> dict[str, torch.Tensor]:
    store: dict[str, torch.Tensor] = {}
    model.encoder.norm5.register_forward_hook(lambda _m, _i, out: store.__setitem__("features", out))
    return store


def hand_targets(ids: torch.Tensor) -> torch.Tensor:
    rows = []
    for key in ids.tolist():
        rows.append(torch.tensor(np.random.default_rng([SEED, key]).standard_normal(TARGET_DIM), dtype=torch.float32))
    return torch.stack(rows)


def flat_norm(grads: tuple[torch.Tensor, ...]) -> float:
    return math.sqrt(sum(float(g.double().square().sum()) for g in grads))


def encoder_params(model: ToyNet) -> list[nn.Parameter]:
    return list(model.encoder.parameters())


def test_no_extra_loss_before_activation() -> None:
    model = ToyNet()
    ptr = make(model, patience=3)
    model.train()
    image, label = toy_batch()
    task = F.cross_entropy(model(image), label)
    extra = ptr.extra_loss(model, task, sample_ids=IDS)
    assert not ptr.active and float(extra) == 0.0 and not extra.requires_grad
    with_extra = torch.autograd.grad(task + extra, encoder_params(model), retain_graph=True)
    task_only = torch.autograd.grad(task, encoder_params(model))
    for a, b in zip(with_extra, task_only, strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("regression", ["l2", "smooth_l1"])
def test_active_gradient_is_task_plus_weighted_pseudo_gradient(regression: str) -> None:
    model = ToyNet()
    ptr = make(model, gamma=0.7, regression=regression)
    store = capture_bottleneck(model)
    model.train()
    image, label = toy_batch()
    task = F.cross_entropy(model(image), label)
    extra = ptr.extra_loss(model, task, sample_ids=IDS)
    assert ptr.active

    prediction = ptr.head(store["features"].mean(dim=(2, 3)))  # type: ignore[misc]
    loss_fn = F.mse_loss if regression == "l2" else F.smooth_l1_loss
    pseudo = loss_fn(prediction, hand_targets(IDS))
    params = encoder_params(model)
    g_task = torch.autograd.grad(task, params, retain_graph=True)
    g_pseudo = torch.autograd.grad(pseudo, params, retain_graph=True)
    weight = 0.7 * flat_norm(g_task) / flat_norm(g_pseudo)
    assert ptr.weight == pytest.approx(weight, rel=1e-5)
    torch.testing.assert_close(extra, weight * pseudo, rtol=1e-5, atol=0)

    g_total = torch.autograd.grad(task + extra, params)
    for total, t, p in zip(g_total, g_task, g_pseudo, strict=True):
        torch.testing.assert_close(total - t, weight * p, rtol=1e-4, atol=1e-7)
    # By construction the weighted pseudo gradient has gamma times the task gradient's norm.
    assert flat_norm(tuple(weight * p for p in g_pseudo)) == pytest.approx(0.7 * flat_norm(g_task), rel=1e-5)


def test_switches_on_when_the_moving_average_stabilises() -> None:
    ptr = PseudoTaskRegularization(ema_beta=0.5, patience=2, threshold=0.2)
    # EMA 4, 3, 2, 1.5, 1.25, 1.125, 1.0625; relative change over 2 steps from step 3 on:
    # 2/4, 1.5/3, 0.75/2, 0.375/1.5 = 0.25, 0.1875/1.25 = 0.15 (< 0.2 at step 7); later losses are ignored.
    flags = [ptr.observe(loss) for loss in [4.0, 2.0, 1.0, 1.0, 1.0, 1.0, 1.0, 5.0]]
    assert flags == [False] * 6 + [True, True]
    assert ptr.activated_at == 7
    assert ptr.ema_history == pytest.approx([1.25, 1.125, 1.0625])


def test_patience_zero_is_active_from_the_start() -> None:
    ptr = PseudoTaskRegularization(patience=0)
    assert ptr.active and ptr.observe(3.0)


def test_targets_are_fixed_per_sample_and_seed() -> None:
    model = ToyNet()
    ptr = make(model)
    first = ptr.targets(4, IDS)
    torch.testing.assert_close(first, hand_targets(IDS), rtol=0, atol=0)
    again = ptr.targets(2, torch.tensor([9, 3]))
    assert torch.equal(again[0], first[3]) and torch.equal(again[1], first[0])
    other_seed = random_targets(IDS, TARGET_DIM, seed=SEED + 1)
    assert not torch.equal(other_seed, first)
    with pytest.raises(ValueError, match="needs sample_ids"):
        ptr.targets(4, None)
    with pytest.raises(ValueError, match="negative"):
        random_targets(torch.tensor([-1]), TARGET_DIM, SEED)


def test_batch_position_targets_need_no_ids() -> None:
    model = ToyNet()
    ptr = make(model, target_mode="batch_position")
    torch.testing.assert_close(ptr.targets(3, None), hand_targets(torch.arange(3)), rtol=0, atol=0)


def test_weight_is_reused_between_recomputations() -> None:
    model = ToyNet()
    ptr = make(model, weight_every=3)
    calls = []
    original = ptr.gradient_norm_weight

    def counting(task: torch.Tensor, pseudo: torch.Tensor) -> float:
        calls.append(ptr.active_steps)
        return original(task, pseudo)

    ptr.gradient_norm_weight = counting  # type: ignore[method-assign]
    model.train()
    for step in range(5):
        image, label = toy_batch(seed=step)
        task = F.cross_entropy(model(image), label)
        ptr.extra_loss(model, task, sample_ids=IDS)
    assert calls == [0, 3]


def test_explicit_features_and_missing_features() -> None:
    model = ToyNet()
    ptr = make(model)
    image, label = toy_batch()
    model.train()
    with torch.no_grad():
        model(image)  # not captured: no gradients
    task = F.cross_entropy(model(image.clone()), label)
    ptr._captured = None
    with pytest.raises(RuntimeError, match="no encoder features"):
        ptr.extra_loss(model, task, sample_ids=IDS)
    features = torch.randn(4, 8, requires_grad=True)
    extra = ptr.extra_loss(model, task, features=features, sample_ids=IDS)
    assert extra.requires_grad and float(extra.detach()) >= 0.0


def test_head_is_in_the_optimizer_and_trains() -> None:
    model = ToyNet()
    ptr = make(model)
    groups = ptr.param_groups(model, base_lr=0.1, weight_decay=0.0)
    assert groups[-1]["name"] == "ptr_head"
    assert groups[-1]["params"] == [ptr.head.weight, ptr.head.bias]  # type: ignore[union-attr]
    optimizer = torch.optim.SGD(groups)
    head_before = ptr.head.weight.detach().clone()  # type: ignore[union-attr]
    model.train()
    image, label = toy_batch()
    task = F.cross_entropy(model(image), label)
    (task + ptr.extra_loss(model, task, sample_ids=IDS)).backward()
    optimizer.step()
    assert not torch.equal(ptr.head.weight, head_before)  # type: ignore[union-attr]


@pytest.mark.parametrize("load_before_setup", [True, False])
def test_state_roundtrip_restores_head_flags_and_monitor(load_before_setup: bool) -> None:
    model = ToyNet()
    ptr = make(model, patience=1, threshold=10.0, ema_beta=0.5)
    model.train()
    for step in range(3):
        image, label = toy_batch(seed=step)
        task = F.cross_entropy(model(image), label)
        loss = task + ptr.extra_loss(model, task, sample_ids=IDS)
        loss.backward()
        with torch.no_grad():
            for p in ptr.head.parameters():  # type: ignore[union-attr]
                if p.grad is not None:
                    p -= 0.1 * p.grad
    buffer = io.BytesIO()
    torch.save(ptr.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)

    fresh_model = ToyNet()
    fresh = PseudoTaskRegularization(
        target_dim=TARGET_DIM, seed=SEED, partition=toy_partition(fresh_model), patience=1, threshold=10.0, ema_beta=0.5
    )
    if load_before_setup:
        fresh.load_state_dict(state)
        fresh.setup(fresh_model)
    else:
        fresh.setup(fresh_model)
        assert not torch.equal(fresh.head.weight, ptr.head.weight)  # type: ignore[union-attr]
        fresh.load_state_dict(state)
    assert torch.equal(fresh.head.weight, ptr.head.weight)  # type: ignore[union-attr]
    assert torch.equal(fresh.head.bias, ptr.head.bias)  # type: ignore[union-attr]
    for key in ("active", "steps", "active_steps", "activated_at", "ema_history", "weight", "epoch"):
        assert getattr(fresh, key) == getattr(ptr, key), key
    assert fresh.active and fresh.activated_at == 2


def test_densenet_unet_bottleneck_head_64px() -> None:
    from covidseg.model import DenseUNet, UNetConfig

    torch.manual_seed(0)
    model = DenseUNet(UNetConfig())
    ptr = PseudoTaskRegularization(patience=0, target_dim=8)
    ptr.setup(model)
    assert ptr.head is not None and ptr.head.in_features == 1024
    optimizer = torch.optim.SGD(ptr.param_groups(model, base_lr=0.01, weight_decay=0.0))
    model.train()
    logits = model(torch.randn(2, 1, 64, 64))
    task = F.cross_entropy(logits, torch.randint(0, 3, (2, 64, 64)))
    extra = ptr.extra_loss(model, task, sample_ids=torch.tensor([0, 1]))
    assert float(extra.detach()) > 0.0 and ptr.weight > 0.0
    (task + extra).backward()
    optimizer.step()
    assert ptr.head.weight.grad is not None
