r"""Distributed data-parallel training with ``torchrun``: process groups, sharded sampling, rank-0 side effects.

Launch (one machine, 4 GPUs)::

    torchrun --standalone --nproc_per_node=4 -m covidseg train --config configs/datasets/covid20.yaml \\
        --config configs/schemes/l2sp_layerwise_20_1.5.yaml --source densenet121.pth

Several machines (run on each, with its own ``--node_rank``; ``MASTER`` reachable from all)::

    torchrun --nnodes=2 --node_rank=0 --nproc_per_node=8 --rdzv_backend=c10d --rdzv_endpoint=MASTER:29500 \\
        -m covidseg train --config ...

On the CPU (e.g. the CI test), ``torchrun --standalone --nproc_per_node=2 -m covidseg train ...`` uses gloo.
``torchrun`` sets ``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR`` and ``MASTER_PORT``; without them the
run is an ordinary single process and nothing here touches ``torch.distributed``.

How a run is split:

* every process builds the same model from the same seed, and DDP broadcasts rank 0's weights and buffers;
* the training slices are sharded with a ``DistributedSampler`` (seeded, reshuffled per epoch), so
  ``train.batch_size`` is per process and the global batch is ``batch_size × WORLD_SIZE``; DDP averages the
  gradients, so with an unweighted mean loss the step equals a single-process step on the global batch;
* BatchNorm: on CUDA the model's BatchNorm layers become ``SyncBatchNorm`` (statistics over the global batch,
  as in a single process); on the CPU, where torch has no SyncBatchNorm, each process normalises with the
  statistics of its own batch (running statistics are taken from rank 0 by DDP's buffer broadcast);
* parameters that no DDP-tracked forward reaches (a strategy's own modules, e.g. the PtR head) have their
  gradients averaged explicitly with :func:`all_reduce_grads`;
* only rank 0 writes files, logs and progress; validation runs on rank 0 and its stop decision is broadcast;
  every process waits at a barrier around checkpoint writes.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from covidseg.errors import ConfigError

__all__ = [
    "DistContext",
    "all_reduce_grads",
    "all_reduce_mean",
    "barrier",
    "broadcast_bool",
    "broadcast_float",
    "broadcast_text",
    "cleanup_distributed",
    "convert_sync_batchnorm",
    "init_distributed",
    "resolve_device",
    "wrap_model",
]

PROCESS_GROUP_TIMEOUT = datetime.timedelta(minutes=60)
"""How long ranks wait for each other (rank 0 validates alone while the others wait at a broadcast)."""


@dataclass(frozen=True)
class DistContext:
    """Where this process stands in a (possibly single-process) run.

    Attributes:
        rank: Global rank (0 without torchrun).
        world_size: Number of processes (1 without torchrun).
        local_rank: Rank on this machine (selects the GPU).
        device: The torch device this process computes on.
        backend: ``"nccl"``, ``"gloo"`` or ``""`` (not distributed).

    Examples:
        >>> ctx = DistContext(0, 1, 0, torch.device("cpu"), "")
        >>> ctx.is_main, ctx.distributed
        (True, False)
    """

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str

    @property
    def is_main(self) -> bool:
        """Whether this process writes files, logs and progress (rank 0)."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """Whether a process group is in use."""
        return self.world_size > 1


def resolve_device(spec: str, local_rank: int = 0) -> torch.device:
    """The device of ``train.device``: ``auto`` is CUDA (GPU ``local_rank``) when available, else the CPU.

    Raises:
        ConfigError: CUDA asked for but not available.

    Examples:
        >>> resolve_device("cpu")
        device(type='cpu')
    """
    if spec == "cpu":
        return torch.device("cpu")
    if spec == "auto":
        return torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")
    if not torch.cuda.is_available():
        raise ConfigError(f"train.device={spec} but CUDA is not available here; set train.device=cpu or auto")
    if spec == "cuda":
        return torch.device("cuda", local_rank)
    index = int(spec.split(":", 1)[1])
    if index >= torch.cuda.device_count():
        raise ConfigError(f"train.device={spec} but only {torch.cuda.device_count()} CUDA device(s) exist")
    return torch.device("cuda", index)


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    return default if value in (None, "") else int(value)


def init_distributed(device_spec: str) -> DistContext:
    """Join the process group when started by ``torchrun`` (``WORLD_SIZE`` > 1), else a single-process context.

    The backend is NCCL when the process computes on CUDA and gloo on the CPU. Under torchrun with CUDA, each
    process uses GPU ``LOCAL_RANK`` (``train.device=cuda:N`` is not allowed there: it would put every process
    on one GPU).

    Examples:
        >>> init_distributed("cpu").world_size  # not under torchrun
        1
    """
    world_size = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local_rank = _env_int("LOCAL_RANK", 0)
    if world_size <= 1:
        return DistContext(0, 1, 0, resolve_device(device_spec, 0), "")
    if device_spec.startswith("cuda:"):
        raise ConfigError(
            f"train.device={device_spec} under torchrun would put every process on one GPU; use train.device=cuda"
        )
    device = resolve_device(device_spec, local_rank)
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, rank=rank, world_size=world_size, timeout=PROCESS_GROUP_TIMEOUT)
    return DistContext(rank, world_size, local_rank, device, backend)


def cleanup_distributed(ctx: DistContext) -> None:
    """Leave the process group (no-op for single-process runs)."""
    if ctx.distributed and dist.is_initialized():
        dist.destroy_process_group()


def wrap_model(model: nn.Module, ctx: DistContext) -> nn.Module:
    """Wrap ``model`` in DistributedDataParallel for multi-process runs (the model itself otherwise).

    Call again whenever the set of trainable parameters changes (DDP tracks the parameters that require
    gradients when it is built). Convert BatchNorm with :func:`convert_sync_batchnorm` once, before the first
    wrap.
    """
    if not ctx.distributed:
        return model
    device_ids = [ctx.device.index] if ctx.device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=device_ids, broadcast_buffers=True)


def convert_sync_batchnorm(model: nn.Module, ctx: DistContext) -> nn.Module:
    """Replace BatchNorm by SyncBatchNorm for multi-GPU runs (CUDA only; CPU runs keep per-process BatchNorm)."""
    if ctx.distributed and ctx.device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return model


def barrier(ctx: DistContext) -> None:
    """Wait for every process (no-op for single-process runs)."""
    if ctx.distributed:
        if ctx.backend == "nccl":
            dist.barrier(device_ids=[ctx.device.index])
        else:
            dist.barrier()


def broadcast_bool(value: bool, ctx: DistContext, src: int = 0) -> bool:
    """Rank ``src``'s ``value`` on every process.

    Examples:
        >>> broadcast_bool(True, DistContext(0, 1, 0, torch.device("cpu"), ""))
        True
    """
    if not ctx.distributed:
        return value
    flag = torch.tensor([1 if value else 0], dtype=torch.int64, device=ctx.device)
    dist.broadcast(flag, src=src)
    return bool(flag.item())


def broadcast_float(value: float, ctx: DistContext, src: int = 0) -> float:
    """Rank ``src``'s ``value`` on every process."""
    if not ctx.distributed:
        return value
    tensor = torch.tensor([value], dtype=torch.float64, device=ctx.device)
    dist.broadcast(tensor, src=src)
    return float(tensor.item())


def all_reduce_mean(values: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """Mean of ``values`` over processes (a copy; the input is unchanged).

    Examples:
        >>> all_reduce_mean(torch.tensor([1.0, 3.0]), DistContext(0, 1, 0, torch.device("cpu"), "")).tolist()
        [1.0, 3.0]
    """
    out = values.detach().clone()
    if ctx.distributed:
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        out /= ctx.world_size
    return out


def all_reduce_grads(params: Iterable[nn.Parameter], ctx: DistContext) -> None:
    """Average the gradients of parameters DDP does not track (e.g. a strategy's own head) over processes."""
    if not ctx.distributed:
        return
    for param in params:
        if param.grad is not None:
            dist.all_reduce(param.grad, op=dist.ReduceOp.SUM)
            param.grad /= ctx.world_size


def broadcast_text(value: str, ctx: DistContext, src: int = 0) -> str:
    """Rank ``src``'s string on every process (e.g. the run folder name chosen from the clock).

    Examples:
        >>> broadcast_text("run-1", DistContext(0, 1, 0, torch.device("cpu"), ""))
        'run-1'
    """
    if not ctx.distributed:
        return value
    box: list[object] = [value]
    dist.broadcast_object_list(box, src=src, device=ctx.device if ctx.backend == "nccl" else None)
    return str(box[0])
