"""Benchmark: cost of the layer-wise L2-SP penalty against one training step of the default DenseUNet.

Target (issue 3): the full encoder penalty (forward + backward, all 120 layers, λ_i from the paper's log
schedule, plus λ' on the decoder) costs at most 2 % of a 384 x 384 batch-2 fp32 training step (forward,
cross-entropy, backward, SGD step). After a warm-up, ``--repeats`` training steps are timed, each followed by
three runs of every penalty (interleaved, so load from other processes affects both alike); the table gives
medians and minima. Penalty gradients accumulate into existing ``.grad`` tensors, as in
``(loss + penalty).backward()``. Other penalties can be timed with ``--penalty``.

Usage:
    python pipelines/bench_penalty.py [--size 384] [--batch 2] [--repeats 5] [--penalty l2sp_layerwise ...]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable

import torch
from torch.nn import functional as F

from covidseg.model.layers import encoder_param_layer
from covidseg.model.unet import DenseUNet, UNetConfig
from covidseg.transfer.penalties import PENALTIES, make_penalty

PAPER_SCHEDULE = {"name": "log", "lambda0": 20.0, "alpha": 1.5}
DECODER_LAMBDA = 0.01


def _time(fn: Callable[[], None]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _penalty_kwargs(name: str, fisher: dict[str, torch.Tensor]) -> dict[str, object]:
    if name == "l2":
        return {"weight_lambda": 1e-4}
    kwargs: dict[str, object] = {"decoder_lambda": DECODER_LAMBDA}
    if name == "l2sp":
        kwargs["sp_lambda"] = 0.1
    else:
        kwargs["schedule"] = PAPER_SCHEDULE
    if "fisher" in name:
        kwargs["fisher"] = fisher
    return kwargs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=384)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--penalty", nargs="+", default=["l2sp_layerwise"], choices=sorted(PENALTIES))
    args = parser.parse_args()

    torch.manual_seed(0)
    model = DenseUNet(UNetConfig()).train()
    source = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1e-3 * torch.randn_like(p))
    layer_of = encoder_param_layer(model)
    fisher = {n: torch.rand_like(p) for n, p in model.named_parameters() if n in layer_of}
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-6)
    x = torch.rand(args.batch, 1, args.size, args.size)
    y = torch.randint(0, 3, (args.batch, args.size, args.size))

    def train_step() -> None:
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        optimizer.step()

    penalties = {
        name: make_penalty(name, model, source, layer_of, **_penalty_kwargs(name, fisher)) for name in args.penalty
    }

    def penalty_step(name: str) -> Callable[[], None]:
        # gradients accumulate into existing .grad tensors, as in ``(loss + penalty).backward()``
        return lambda: penalties[name](model).backward()

    # interleave the measurements so that load from other processes hits step and penalties alike
    train_step()
    step_times: list[float] = []
    penalty_times: dict[str, list[float]] = {name: [] for name in penalties}
    for name in penalties:
        penalty_step(name)()
    for _ in range(args.repeats):
        step_times.append(_time(train_step))
        for name in penalties:
            penalty_times[name].extend(_time(penalty_step(name)) for _ in range(3))
    step = statistics.median(step_times)
    rows = [(name, statistics.median(times), min(times)) for name, times in penalty_times.items()]

    print("command: python " + " ".join([os.path.relpath(sys.argv[0]), *sys.argv[1:]]))
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads"
    )
    n_enc = sum(p.numel() for n, p in model.named_parameters() if n in layer_of)
    print(
        f"model: DenseUNet default, {sum(p.numel() for p in model.parameters()) / 1e6:.2f} M parameters "
        f"(encoder {n_enc / 1e6:.2f} M in {len(layer_of)} tensors, 120 layers)"
    )
    print(f"{'what':<52} {'median (ms)':>12} {'min (ms)':>10} {'% of step':>10}")
    label = f"training step {args.size}^2 batch {args.batch} fp32 (fwd+bwd+SGD)"
    print(f"{label:<52} {step * 1e3:>12.1f} {min(step_times) * 1e3:>10.1f} {100.0:>10.1f}")
    for name, median, best in rows:
        label = f"penalty {name} (fwd+bwd)"
        print(f"{label:<52} {median * 1e3:>12.2f} {best * 1e3:>10.2f} {100 * median / step:>10.2f}")


if __name__ == "__main__":
    main()
