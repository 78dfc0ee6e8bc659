from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from covidseg.config import load_config
from covidseg.model import DenseUNet, UNetConfig, encoder_param_layer
from covidseg.train.optim import build_optimizer, build_scheduler, lr_factor
from covidseg.transfer.penalties import make_penalty
from covidseg.transfer.penalties_base import batchnorm_param_names
from covidseg.transfer.strategies import make_strategy


@pytest.fixture(scope="module")
def unet() -> DenseUNet:
    torch.manual_seed(0)
    return DenseUNet(UNetConfig(decoder_channels=(16, 16, 16, 16, 16)))


def test_groups_split_by_penalty_coverage(unet: DenseUNet) -> None:
    source = {k: v.clone() for k, v in unet.state_dict().items()}
    penalty = make_penalty("l2sp", unet, source, encoder_param_layer(unet), sp_lambda=3.0, decoder_lambda=0.01)
    strategy = make_strategy("lp_ft", lp_epochs=1)
    strategy.setup(unet)
    cfg = load_config(overrides=["optim.name=adamw", "optim.lr=0.01", "optim.weight_decay=0.05"]).optim
    optimizer = build_optimizer(unet, strategy, penalty, cfg)
    bn = batchnorm_param_names(unet)
    names = {id(p): n for n, p in unet.named_parameters()}
    seen = []
    for group in optimizer.param_groups:
        group_names = [names[id(p)] for p in group["params"]]
        seen += group_names
        # BatchNorm affine parameters are outside the penalty: they keep the optimizer's decay, nothing else does
        assert all((n in bn) == group["decay"] for n in group_names)
        assert group["weight_decay"] == (0.05 if group["decay"] else 0.0)
        assert group["lr"] == pytest.approx(0.001 if group["name"] == "encoder" else 0.01)
    assert sorted(seen) == sorted(names.values())  # every parameter exactly once
    assert {g["name"] for g in optimizer.param_groups} == {"encoder", "new"}


def test_no_penalty_means_decay_everywhere(unet: DenseUNet) -> None:
    strategy = make_strategy("full")
    strategy.setup(unet)
    cfg = load_config(overrides=["optim.name=sgd", "optim.weight_decay=0.001"]).optim
    optimizer = build_optimizer(unet, strategy, None, cfg)
    assert all(g["weight_decay"] == 0.001 and g["decay"] for g in optimizer.param_groups)
    assert isinstance(optimizer, torch.optim.SGD)


def test_warmup_then_cosine_to_min_lr() -> None:
    f = lr_factor("cosine", total_steps=12, warmup_steps=2, min_ratio=0.1, step_size=1, gamma=1.0)
    assert [f(0), f(1)] == pytest.approx([0.5, 1.0])
    assert f(2) == pytest.approx(1.0)
    assert f(7) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert f(12) == pytest.approx(0.1)


def test_step_schedule_and_scheduler_per_group() -> None:
    net = nn.Linear(2, 2)
    opt = torch.optim.SGD([{"params": [net.weight], "lr": 1.0}, {"params": [net.bias], "lr": 0.1}])
    cfg = load_config(overrides=["optim.scheduler=step", "optim.step_epochs=2", "optim.gamma=0.5", "optim.lr=1"]).optim
    sched = build_scheduler(opt, cfg, steps_per_epoch=3, epochs=10)
    lrs = []
    for _ in range(7):
        lrs.append([g["lr"] for g in opt.param_groups])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx([1.0, 0.1]) and lrs[5] == pytest.approx([1.0, 0.1])
    assert lrs[6] == pytest.approx([0.5, 0.05])  # after step_epochs * steps_per_epoch = 6 steps
