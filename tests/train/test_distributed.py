"""DDP on the CPU: two gloo processes train the tiny config and are compared with each other and one process.

Agreement with a single process. DDP averages the gradients of the per-process mean losses; with equal
per-process batches, an unweighted loss (no class weights, no Dice: both would make the loss a non-decomposable
function of the batch) and the same samples in the global batch (``DistributedSampler`` gives rank r the indices
``perm[r::2]``, the single process ``perm``), that is exactly the gradient of the single-process mean loss over the
global batch. What still differs is BatchNorm: on the CPU each process normalises with its own batch statistics
(torch has no CPU SyncBatchNorm). The comparison run therefore holds every BatchNorm in evaluation mode (running
statistics), in both the distributed and the single-process run; then the only difference left is the order of
floating-point additions in the gradient all-reduce, and with SGD (update = lr * gradient) the weights agree to
float32 rounding (atol 1e-6 at lr 0.01). The run with ordinary training-mode BatchNorm checks that both ranks
hold identical parameters (the all-reduced gradients are bitwise equal on every rank).
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import torch
import torch.multiprocessing as mp
from torch import nn

from covidseg.config import load_config
from covidseg.train.distributed import DistContext, all_reduce_mean, broadcast_bool, init_distributed
from covidseg.train.trainer import train
from tests.train.synth import tiny_overrides

COMMON = [
    "train.epochs=1",
    "train.steps_per_epoch=2",
    "loss.class_weights=none",
    "optim.name=sgd",
    "optim.lr=0.01",
    "optim.scheduler=none",
    "regularization.name=l2",
    "regularization.weight_lambda=0.0001",
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _eval_batchnorm(self: nn.Module, mode: bool = True) -> nn.Module:
    del mode
    return nn.Module.train(self, False)


def _worker(rank: int, world: int, ports: list[int], overrides: list[str], out: str) -> None:
    torch.set_num_threads(1)
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1")
    for name, port in zip(("bn_train", "bn_eval"), ports, strict=True):
        if name == "bn_eval":
            nn.modules.batchnorm._BatchNorm.train = _eval_batchnorm  # type: ignore[method-assign]
        os.environ["MASTER_PORT"] = str(port)
        cfg = load_config(overrides=[*overrides, f"output.name=ddp_{name}", "train.batch_size=2"])
        result = train(cfg)
        assert result.model is not None
        state = {k: v.detach().cpu() for k, v in result.model.state_dict().items()}
        torch.save(state, Path(out) / f"{name}_rank{rank}.pt")


def test_two_gloo_processes_agree_with_each_other_and_one_process(
    tmp_path: Path, dataset_root: Path, cache_dir: Path, monkeypatch
) -> None:
    overrides = [*tiny_overrides(tmp_path, dataset_root, cache_dir), *COMMON]
    mp.spawn(_worker, args=(2, [_free_port(), _free_port()], overrides, str(tmp_path)), nprocs=2, join=True)
    load = lambda name: torch.load(tmp_path / name, weights_only=True)  # noqa: E731
    # training-mode BatchNorm: identical parameters on both ranks; only rank 0 wrote the run folder
    r0, r1 = load("bn_train_rank0.pt"), load("bn_train_rank1.pt")
    params = [k for k in r0 if "running_" not in k and "num_batches" not in k]
    assert all(torch.equal(r0[k], r1[k]) for k in params)
    run = tmp_path / "runs" / "ddp_bn_train"
    assert (run / "last.pt").is_file() and (run / "metrics.csv").is_file()
    # evaluation-mode BatchNorm: same as one process with the global batch (2 x 2 = 4)
    d0, d1 = load("bn_eval_rank0.pt"), load("bn_eval_rank1.pt")
    assert all(torch.equal(d0[k], d1[k]) for k in d0)
    monkeypatch.setattr(nn.modules.batchnorm._BatchNorm, "train", _eval_batchnorm)
    single = train(load_config(overrides=[*overrides, "output.name=single", "train.batch_size=4"]))
    assert single.model is not None
    s = single.model.state_dict()
    worst = max(float((s[k].cpu() - d0[k]).abs().max()) for k in d0 if d0[k].is_floating_point())
    print(f"largest DDP vs single-process weight difference: {worst:.3g}")
    assert worst < 1e-6, f"DDP and single-process weights differ by {worst}"
    moved = max(float((s[k].cpu() - r0[k]).abs().max()) for k in params if r0[k].is_floating_point())
    assert moved > 1e-4  # the BatchNorm mode matters, so the comparison above is not vacuous


def test_single_process_helpers_are_identities() -> None:
    ctx = init_distributed("cpu")
    assert ctx == DistContext(0, 1, 0, torch.device("cpu"), "")
    assert broadcast_bool(False, ctx) is False
    assert torch.equal(all_reduce_mean(torch.ones(2), ctx), torch.ones(2))
