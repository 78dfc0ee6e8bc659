"""Benchmark the training step of the default DenseUNet without a penalty and with each transfer penalty.

What is timed is the project's own step, :func:`covidseg.train.loop.train_step` (forward under autocast,
the weighted cross-entropy, the penalty, backward, Adam step and learning-rate schedule), built as
``covidseg train`` builds it (``full`` fine-tuning strategy, optimizer groups split by the penalty, default
optimizer settings) on a random batch of ``--batch`` slices of ``--size`` x ``--size`` pixels. The penalties are
those of :data:`covidseg.transfer.penalties.PENALTIES`, each pulling toward a source state (the model's own
initial weights, then every parameter moved by 1e-3 so that the penalty is not zero) with the keyword
arguments of ``pipelines/bench_penalty.py`` (the paper's log schedule; a random diagonal Fisher for the Fisher
penalties).

Each configuration (``--configs``: ``fp32``; ``bf16_cl`` = bf16 autocast + channels-last) runs in a fresh
subprocess, one after the other. In it, after ``--warmup`` untimed steps, ``--repeats`` steps without a penalty
are timed; then, for one penalty at a time (only its buffers alive), steps without and with it alternate
``--repeats`` times, so load from other processes hits both alike. The overhead of a penalty is the median of
the paired ratios (step with / step without) minus 1; its own cost is the median time of the penalty alone
(value + backward into the existing gradients, timed ``OWN_REPEATS`` times after each pair) over the median step
without it. The issue-3 target (at most 2 % of a 384² batch-2 fp32 step) is checked on the own cost: the
difference of two noisy two-second steps cannot resolve one or two percent on a shared machine. Peak memory is
the peak resident set size of the worker during each variant's steps (``VmHWM`` of ``/proc/self/status``,
reset before them through ``/proc/self/clear_refs``; where that is not possible, the process's peak so far).

Usage:
    python pipelines/bench_train.py [--size 384] [--batch 2] [--repeats 5] [--warmup 1]
        [--configs fp32 bf16_cl] [--penalties NAME ...] [--threads N] [--json PATH] [--overwrite]
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

CONFIGS: dict[str, dict[str, Any]] = {
    "fp32": {"precision": "fp32", "channels_last": False},
    "bf16_cl": {"precision": "bf16", "channels_last": True},
}
"""Training configurations: autocast precision and memory format (``fp32`` is ``covidseg train``'s CPU default)."""
SOURCE_OFFSET = 1e-3
"""Standard deviation of the move away from the source state (so that the penalties are not zero)."""
NUM_CLASSES = 3
KIB = 1024.0
OWN_REPEATS = 3
"""Timings of the penalty alone (forward + backward) after each pair of steps."""


def reset_peak_rss() -> bool:
    """Reset the process's peak resident set size (Linux ``clear_refs`` 5); False where that is not possible.

    Examples:
        >>> isinstance(reset_peak_rss(), bool)
        True
    """
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def peak_rss_mb() -> float:
    """Peak resident set size of this process in MiB since start or the last :func:`reset_peak_rss`.

    Examples:
        >>> peak_rss_mb() > 0
        True
    """
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return float(line.split()[1]) / KIB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / KIB


def _bench_penalty() -> ModuleType:
    """``pipelines/bench_penalty.py`` as a module (its penalty keyword arguments are reused, not copied)."""
    path = Path(__file__).with_name("bench_penalty.py")
    spec = importlib.util.spec_from_file_location("bench_penalty", path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _timed(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def worker(name: str, size: int, batch: int, repeats: int, warmup: int, penalties: list[str]) -> dict[str, Any]:
    """Time the training step of configuration ``name`` without and with each penalty (module docstring).

    Args:
        name: A key of :data:`CONFIGS`.
        size: Slice size in pixels.
        batch: Slices per step.
        repeats: Timed steps per variant.
        warmup: Untimed steps first.
        penalties: Names from :data:`covidseg.transfer.penalties.PENALTIES`; empty for all of them.

    Returns:
        ``baseline`` (``times_s``, ``median_s``, ``min_s``, ``peak_rss_mb``) and ``penalties`` by name
        (``times_s``, ``median_s``, ``min_s``, ``baseline_times_s``, ``overhead_percent``, ``peak_rss_mb``).
    """
    import dataclasses
    import functools

    import torch

    from covidseg.config.sections import OptimSection
    from covidseg.model import DenseUNet, UNetConfig, encoder_param_layer
    from covidseg.train.build import resolve_amp
    from covidseg.train.distributed import DistContext
    from covidseg.train.loop import StepContext, train_step
    from covidseg.train.loss import SegmentationLoss, class_ratio_weights
    from covidseg.train.optim import build_optimizer, build_scheduler
    from covidseg.transfer.penalties import PENALTIES, make_penalty
    from covidseg.transfer.penalties_base import TransferPenalty
    from covidseg.transfer.strategies import make_strategy

    unknown = [p for p in penalties if p not in PENALTIES]
    if unknown:
        raise SystemExit(f"unknown penalties {unknown}; expected some of {list(PENALTIES)}")
    penalties = penalties or list(PENALTIES)
    cfg = CONFIGS[name]
    device = torch.device("cpu")
    torch.manual_seed(0)
    model = DenseUNet(UNetConfig())
    source = {k: v.detach().clone() for k, v in model.state_dict().items()}  # θ̄ before channels-last, as in train
    with torch.no_grad():
        for p in model.parameters():
            p.add_(SOURCE_OFFSET * torch.randn_like(p))
    if cfg["channels_last"]:
        model = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    layer_of = encoder_param_layer(model)
    fisher = {n: torch.rand_like(p) for n, p in model.named_parameters() if n in layer_of}
    images = torch.rand(batch, 1, size, size)
    labels = torch.randint(0, NUM_CLASSES, (batch, size, size))
    criterion = SegmentationLoss(class_ratio_weights(torch.bincount(labels.flatten(), minlength=NUM_CLASSES).tolist()))
    strategy = make_strategy("full")
    strategy.setup(model)
    optim_cfg = OptimSection()
    penalty_kwargs = _bench_penalty()._penalty_kwargs
    data = {"image": images, "label": labels}

    def context(penalty: TransferPenalty | None) -> StepContext:
        optimizer = build_optimizer(model, strategy, penalty, optim_cfg)
        return StepContext(
            model=model,
            inner=model,
            criterion=criterion,
            penalty=penalty,
            strategy=strategy,
            optimizer=optimizer,
            scheduler=build_scheduler(optimizer, optim_cfg, steps_per_epoch=1000, epochs=1),
            scaler=torch.amp.GradScaler(device.type, enabled=False),
            amp=resolve_amp(cfg["precision"], device),
            ctx=DistContext(0, 1, 0, device, ""),
            channels_last=cfg["channels_last"],
        )

    model.train()
    plain = context(None)
    for _ in range(warmup):
        train_step(plain, data)
    reset_peak_rss()
    base_times = [_timed(functools.partial(train_step, plain, data)) for _ in range(repeats)]
    result: dict[str, Any] = {
        "baseline": {
            "times_s": base_times,
            "median_s": statistics.median(base_times),
            "min_s": min(base_times),
            "peak_rss_mb": peak_rss_mb(),
        },
        "penalties": {},
    }
    del plain  # one optimizer state alive at a time, so that the peak RSS of the variants compare
    gc.collect()
    for pname in penalties:
        penalty = make_penalty(pname, model, source, layer_of, **penalty_kwargs(pname, fisher))
        with_penalty = context(penalty)
        without = dataclasses.replace(with_penalty, penalty=None)
        train_step(with_penalty, data)  # warm-up of the penalty's own code path
        times: list[float] = []
        paired: list[float] = []
        own: list[float] = []
        peak = 0.0
        for _ in range(repeats):
            paired.append(_timed(functools.partial(train_step, without, data)))
            reset_peak_rss()
            times.append(_timed(functools.partial(train_step, with_penalty, data)))
            peak = max(peak, peak_rss_mb())
            # The penalty on its own (value + backward into the existing .grad), as bench_penalty.py times it.
            own += [_timed(lambda p=penalty: p(model).backward()) for _ in range(OWN_REPEATS)]
        ratios = [t / b for t, b in zip(times, paired, strict=True)]
        result["penalties"][pname] = {
            "times_s": times,
            "median_s": statistics.median(times),
            "min_s": min(times),
            "baseline_times_s": paired,
            "overhead_percent": 100.0 * (statistics.median(ratios) - 1.0),
            "own_times_s": own,
            "own_percent": 100.0 * statistics.median(own) / statistics.median(paired),
            "peak_rss_mb": peak,
        }
        del penalty, with_penalty, without
        gc.collect()
    return result


def _worker_main(args: argparse.Namespace) -> None:
    """Run one configuration and print its JSON result as the last stdout line."""
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    start = time.perf_counter()
    res = worker(args.worker, args.size, args.batch, args.repeats, args.warmup, args.penalties)
    res.update(
        config=args.worker,
        **CONFIGS[args.worker],
        threads=torch.get_num_threads(),
        wall_s=time.perf_counter() - start,
        peak_rss_reset=reset_peak_rss(),
        load_avg_before=load_before,
        load_avg_after=os.getloadavg(),
    )
    print(json.dumps(res))


def run_config(name: str, args: argparse.Namespace) -> dict[str, Any]:
    """Run configuration ``name`` in a fresh subprocess and return its parsed JSON result."""
    cmd = [sys.executable, __file__, "--worker", name, "--size", str(args.size), "--batch", str(args.batch)]
    cmd += ["--repeats", str(args.repeats), "--warmup", str(args.warmup), "--threads", str(args.threads)]
    if args.penalties:
        cmd += ["--penalties", *args.penalties]
    done = subprocess.run(cmd, check=False, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"configuration {name} failed (exit {done.returncode}):\n{done.stderr[-4000:]}")
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def print_results(results: dict[str, dict[str, Any]], size: int, batch: int) -> None:
    """A plain-text table per configuration: step time, overhead and peak RSS of every variant."""
    for name, res in results.items():
        base = res["baseline"]
        print(f"\n{name}: training step {size}² batch {batch}, {res['threads']} threads")
        print(f"  {'variant':<24} {'median ms':>10} {'min ms':>9} {'overhead %':>11} {'peak RSS MiB':>13}")
        line = f"  {'no penalty':<24} {1e3 * base['median_s']:>10.1f} {1e3 * base['min_s']:>9.1f}"
        print(f"{line} {'-':>11} {base['peak_rss_mb']:>13.0f}")
        for pname, pen in res["penalties"].items():
            line = f"  {pname:<24} {1e3 * pen['median_s']:>10.1f} {1e3 * pen['min_s']:>9.1f}"
            print(f"{line} {pen['overhead_percent']:>11.2f} {pen['peak_rss_mb']:>13.0f}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--size", type=int, default=384, help="Slice size (pixels).")
    parser.add_argument("--batch", type=int, default=2, help="Slices per step.")
    parser.add_argument("--repeats", type=int, default=5, help="Timed steps per variant.")
    parser.add_argument("--warmup", type=int, default=1, help="Untimed steps before timing.")
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument(
        "--penalties", nargs="+", default=[], help="Registry names (default: every penalty of PENALTIES)."
    )
    parser.add_argument("--threads", type=int, default=0, help="torch threads per worker (0: torch's default).")
    parser.add_argument("--json", type=Path, default=None, help="Also write all results to this JSON file.")
    parser.add_argument("--overwrite", action="store_true", help="Replace an existing --json file.")
    parser.add_argument("--worker", choices=list(CONFIGS), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    given = sys.argv[1:] if argv is None else argv
    if args.worker:
        _worker_main(args)
        return
    if args.repeats < 1:
        raise SystemExit(f"--repeats must be at least 1, got {args.repeats}")
    if args.json is not None and args.json.exists() and not args.overwrite:
        raise SystemExit(f"{args.json} already exists; pass --overwrite to replace it or choose another path")
    results: dict[str, dict[str, Any]] = {}
    for name in args.configs:
        print(f"{name}: load average {os.getloadavg()[0]:.1f} ...", end=" ", flush=True)
        results[name] = run_config(name, args)
        print(f"{results[name]['wall_s']:.0f} s", flush=True)
    print_results(results, args.size, args.batch)
    if args.json is not None:
        from covidseg.io.atomic import atomic_path

        payload = {
            "command": " ".join(["python", os.path.relpath(__file__), *given]),
            "size": args.size,
            "batch": args.batch,
            "repeats": args.repeats,
            "warmup": args.warmup,
            "results": results,
        }
        with atomic_path(args.json, overwrite=args.overwrite) as tmp:
            tmp.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
        print(f"\nresults written to {args.json}")


if __name__ == "__main__":
    main()
