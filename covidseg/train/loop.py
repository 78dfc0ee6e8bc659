"""One training epoch, following the strategy protocol of :mod:`covidseg.transfer.strategies` step by step.

Per optimizer step::

    logits = model(images)                                       # DDP-wrapped, autocast, channels_last
    task_loss = criterion(logits, labels)                        # weighted CE (+ Dice), float32
    loss = task_loss + penalty(model) + strategy.extra_loss(model, task_loss, sample_ids=index)
    optimizer.zero_grad(); scaler.scale(loss).backward()
    average the gradients of strategy-owned parameters over processes (DDP does the model's)
    scaler.unscale_(optimizer); clip the gradient norm (optim.grad_clip)
    strategy.before_optimizer_step(model, optimizer); scaler.step(optimizer); scaler.update()
    strategy.after_optimizer_step(model, optimizer); scheduler.step()

The penalty and the strategy always see the unwrapped model (parameter names without DDP's ``module.``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import torch
from torch import nn

from covidseg.train.build import AmpSettings
from covidseg.train.distributed import DistContext, all_reduce_grads, all_reduce_mean
from covidseg.transfer.penalties_base import TransferPenalty
from covidseg.transfer.strategy_base import FineTuningStrategy

__all__ = ["EpochStats", "StepContext", "train_epoch"]


@dataclass
class StepContext:
    """Everything a training step needs.

    Attributes:
        model: The model to call (DDP-wrapped under torchrun).
        inner: The unwrapped model (for penalty and strategy).
        criterion: Data loss ``criterion(logits, labels)``.
        penalty: Transfer penalty or None.
        strategy: Fine-tuning strategy (already set up).
        optimizer: The optimizer.
        scheduler: Per-step learning-rate scheduler.
        scaler: fp16 gradient scaler (disabled otherwise).
        amp: Autocast settings.
        ctx: Process context.
        grad_clip: Gradient-norm clip (0 = off).
        channels_last: Feed channels-last inputs.
        extra_params: Strategy-owned parameters whose gradients are averaged by hand under DDP.
    """

    model: nn.Module
    inner: nn.Module
    criterion: nn.Module
    penalty: TransferPenalty | None
    strategy: FineTuningStrategy
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    amp: AmpSettings
    ctx: DistContext
    grad_clip: float = 0.0
    channels_last: bool = False
    extra_params: list[nn.Parameter] = field(default_factory=list)


@dataclass
class EpochStats:
    """Means over an epoch's steps (and processes) of the loss terms.

    Attributes:
        loss: Total loss.
        task_loss: Data term.
        penalty: Transfer penalty.
        extra_loss: Strategy term (PtR).
        steps: Optimizer steps taken.
    """

    loss: float
    task_loss: float
    penalty: float
    extra_loss: float
    steps: int


def _clip(sc: StepContext) -> None:
    params = [p for group in sc.optimizer.param_groups for p in group["params"] if p.grad is not None]
    if params:
        torch.nn.utils.clip_grad_norm_(params, sc.grad_clip)


def train_step(sc: StepContext, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """One optimizer step on ``batch``; returns ``[loss, task_loss, penalty, extra]`` (detached, float64)."""
    device = sc.ctx.device
    images = batch["image"].to(device, non_blocking=True)
    labels = batch["label"].to(device, non_blocking=True)
    if sc.channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    with sc.amp.autocast():
        logits = sc.model(images)
    task_loss = sc.criterion(logits, labels)
    penalty = sc.penalty(sc.inner) if sc.penalty is not None else task_loss.new_zeros(())
    extra = sc.strategy.extra_loss(sc.inner, task_loss, sample_ids=batch.get("index"))
    loss = task_loss + penalty + extra
    sc.optimizer.zero_grad(set_to_none=True)
    sc.scaler.scale(loss).backward()
    all_reduce_grads(sc.extra_params, sc.ctx)
    if sc.scaler.is_enabled():
        sc.scaler.unscale_(sc.optimizer)
    if sc.grad_clip > 0:
        _clip(sc)
    sc.strategy.before_optimizer_step(sc.inner, sc.optimizer)
    sc.scaler.step(sc.optimizer)
    sc.scaler.update()
    sc.strategy.after_optimizer_step(sc.inner, sc.optimizer)
    sc.scheduler.step()
    values = [loss.detach(), task_loss.detach(), penalty.detach(), extra.detach()]
    return torch.stack([v.to(torch.float64) for v in values])


def train_epoch(
    sc: StepContext,
    batches: Iterable[dict[str, torch.Tensor]],
    steps: int,
    on_step: Callable[[int, float], None] | None = None,
) -> EpochStats:
    """Run ``steps`` optimizer steps over ``batches`` (the model is put in training mode first).

    Args:
        sc: The step context.
        batches: The epoch's batches (at least ``steps`` of them).
        steps: Optimizer steps to take.
        on_step: Called after each step with (steps done, running mean loss) for the progress bar.

    Returns:
        Means of the loss terms over the steps, averaged over processes.
    """
    sc.model.train()
    total = torch.zeros(4, dtype=torch.float64, device=sc.ctx.device)
    done = 0
    for batch in batches:
        if done >= steps:
            break
        total += train_step(sc, batch)
        done += 1
        if on_step is not None:
            on_step(done, float(total[0]) / done)
    if done == 0:
        return EpochStats(float("nan"), float("nan"), float("nan"), float("nan"), 0)
    mean = all_reduce_mean(total / done, sc.ctx).tolist()
    return EpochStats(mean[0], mean[1], mean[2], mean[3], done)
