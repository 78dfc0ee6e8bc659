"""Optimizer and learning-rate schedule of a run.

Parameter groups. The fine-tuning strategy decides the groups and their learning rates
(:meth:`FineTuningStrategy.param_groups`: e.g. ``encoder``/``new`` for LP-FT, one group per layer for Auto-RGN,
plus the PtR head). Each of those groups is then split by the penalty's coverage, the logic of
:func:`covidseg.transfer.penalties.optimizer_param_groups`: parameters the penalty already regularizes get
``weight_decay = 0`` (no double counting of L2 toward 0 or toward θ̄), the others (BatchNorm affine parameters
under ``batchnorm="exclude"``, everything without a penalty, strategy-owned parameters) keep
``optim.weight_decay``. The halves keep the strategy group's ``name`` (Auto-RGN finds its layers by it) and
carry ``"decay": True/False``.

Schedule, a multiplicative factor ``f(t)`` of every group's base learning rate at optimizer step ``t``
(``torch.optim.lr_scheduler.LambdaLR``, stepped after every optimizer step), with ``W`` warm-up steps,
``T`` total steps and ``r = optim.min_lr / optim.lr``:

* warm-up (``t < W``): ``f = (t + 1) / W``;
* ``cosine``: ``f = r + (1 − r) · (1 + cos(π · (t − W) / (T − W))) / 2``, reaching ``r`` at the last step;
* ``step``: ``f = gamma ** floor((t − W) / (step_epochs · steps_per_epoch))``;
* ``none``: ``f = 1``.

Examples:
    >>> f = lr_factor("cosine", total_steps=10, warmup_steps=2, min_ratio=0.0, step_size=1, gamma=1.0)
    >>> [round(f(t), 3) for t in (0, 1, 2, 6, 10)]
    [0.5, 1.0, 1.0, 0.5, 0.0]
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from covidseg.config import OptimSection
from covidseg.errors import ConfigError
from covidseg.transfer.penalties import optimizer_param_groups
from covidseg.transfer.penalties_base import TransferPenalty
from covidseg.transfer.strategy_base import FineTuningStrategy

__all__ = ["build_optimizer", "build_scheduler", "lr_factor", "split_groups_by_penalty"]


def split_groups_by_penalty(
    model: nn.Module,
    groups: list[dict[str, Any]],
    penalty: TransferPenalty | None,
    weight_decay: float,
) -> list[dict[str, Any]]:
    """Split each strategy group into the parameters the penalty covers (no decay) and the others (decay).

    Examples:
        >>> net = nn.Linear(2, 1)
        >>> groups = [{"name": "all", "params": list(net.parameters()), "lr": 0.1, "weight_decay": 0.0}]
        >>> [(g["name"], g["decay"], g["weight_decay"]) for g in split_groups_by_penalty(net, groups, None, 1e-4)]
        [('all', True, 0.0001)]
    """
    covered: set[int] = set()
    for group in optimizer_param_groups(model, penalty, weight_decay):
        if group["weight_decay"] == 0.0 and group["name"] == "penalty_regularized":
            covered.update(id(p) for p in group["params"])
    out: list[dict[str, Any]] = []
    for group in groups:
        params = list(group["params"])
        free = [p for p in params if id(p) in covered]
        decayed = [p for p in params if id(p) not in covered]
        base = {k: v for k, v in group.items() if k not in ("params", "weight_decay")}
        if decayed:
            out.append({**base, "params": decayed, "weight_decay": float(weight_decay), "decay": True})
        if free:
            out.append({**base, "params": free, "weight_decay": 0.0, "decay": False})
    return out


def build_optimizer(
    model: nn.Module,
    strategy: FineTuningStrategy,
    penalty: TransferPenalty | None,
    cfg: OptimSection,
) -> torch.optim.Optimizer:
    """The run's optimizer over the strategy's groups split by penalty coverage (module docstring).

    Call after ``strategy.setup(model)``; frozen parameters are included (they get no gradient until a strategy
    unfreezes them), so one optimizer serves the whole run.
    """
    groups = split_groups_by_penalty(model, strategy.param_groups(model, cfg.lr, 0.0), penalty, cfg.weight_decay)
    if cfg.name == "adam":
        return torch.optim.Adam(groups, lr=cfg.lr)
    if cfg.name == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr)
    if cfg.name == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum)
    raise ConfigError(f"unknown optimizer {cfg.name!r}; expected adam, adamw or sgd")


def lr_factor(
    scheduler: str,
    *,
    total_steps: int,
    warmup_steps: int,
    min_ratio: float,
    step_size: int,
    gamma: float,
) -> Callable[[int], float]:
    """The learning-rate factor ``f(t)`` of the module docstring.

    Examples:
        >>> f = lr_factor("step", total_steps=100, warmup_steps=0, min_ratio=0.0, step_size=10, gamma=0.5)
        >>> f(9), f(10), f(25)
        (1.0, 0.5, 0.25)
    """
    if scheduler not in ("none", "cosine", "step"):
        raise ConfigError(f"unknown scheduler {scheduler!r}; expected none, cosine or step")
    decay_steps = max(1, total_steps - warmup_steps)

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        t = step - warmup_steps
        if scheduler == "cosine":
            progress = min(1.0, t / decay_steps)
            return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))
        if scheduler == "step":
            return float(gamma ** (t // max(1, step_size)))
        return 1.0

    return factor


def build_scheduler(
    optimizer: torch.optim.Optimizer, cfg: OptimSection, *, steps_per_epoch: int, epochs: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """A per-step ``LambdaLR`` implementing ``optim.scheduler`` with ``optim.warmup_epochs`` of warm-up."""
    factor = lr_factor(
        cfg.scheduler,
        total_steps=steps_per_epoch * epochs,
        warmup_steps=steps_per_epoch * cfg.warmup_epochs,
        min_ratio=min(1.0, cfg.min_lr / cfg.lr),
        step_size=steps_per_epoch * cfg.step_epochs,
        gamma=cfg.gamma,
    )
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
