"""Measure the machine's matrix-multiply peak (GFLOP/s, fp32 and bf16) and count the network's FLOP per slice.

The peak is the best rate of ``--repeats`` timed ``torch.mm`` calls on ``--size`` x ``--size`` matrices (after one
untimed warm-up), at 2 n³ FLOP per product: the most this machine's torch (oneDNN / MKL) does on dense work,
the yardstick against which the network's achieved GFLOP/s is read. bf16 uses the CPU's bf16 instructions
(AVX-512 BF16 or AMX) where it has them; without them it is emulated and slow, which the figure then shows.

The network's cost per slice is counted, not assumed: one forward pass of the DenseUNet at the slice size under
``torch.utils.flop_counter.FlopCounterMode`` on the ``meta`` device (shapes only, no arithmetic, instant), a
multiply-add counted as 2 FLOP. The default model at 384 x 384 gives 33.4 GFLOP per slice.

The result is printed and, with ``--json PATH``, written as JSON (keys ``matmul`` and ``network``).

Usage:
    python pipelines/bench_matmul.py [--size 2048] [--repeats 5] [--dtypes fp32 bf16] [--threads N]
        [--network-slice-size 384] [--model CKPT] [--json PATH] [--overwrite]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

DTYPES: dict[str, torch.dtype] = {"fp32": torch.float32, "bf16": torch.bfloat16}
"""Matmul precisions by name."""
GIGA = 1e9


def matmul_flop(n: int) -> int:
    """FLOP of one n x n by n x n matrix product (n³ multiply-adds, 2 FLOP each).

    Examples:
        >>> matmul_flop(2048) / 1e9
        17.179869184
    """
    return 2 * n**3


def measure_matmul(n: int, dtype: torch.dtype, repeats: int, seed: int = 0) -> dict[str, Any]:
    """Time ``repeats`` products of two random n x n matrices of ``dtype`` (after one warm-up); best and median.

    Args:
        n: Matrix size.
        dtype: Element type (``torch.float32`` or ``torch.bfloat16``).
        repeats: Timed products (at least 1).
        seed: Seed of the random matrices.

    Returns:
        ``times_s`` (every timed product), ``best_s``, ``median_s``, ``gflops_best`` and ``gflops_median``.

    Examples:
        >>> r = measure_matmul(64, torch.float32, 2)
        >>> len(r["times_s"]), r["gflops_best"] >= r["gflops_median"] > 0
        (2, True)
    """
    generator = torch.Generator().manual_seed(seed)
    a = torch.rand(n, n, generator=generator).to(dtype)
    b = torch.rand(n, n, generator=generator).to(dtype)
    out = torch.empty(n, n, dtype=dtype)
    torch.mm(a, b, out=out)  # warm-up: oneDNN/MKL pick and cache their kernel
    times: list[float] = []
    for _ in range(max(repeats, 1)):
        start = time.perf_counter()
        torch.mm(a, b, out=out)
        times.append(time.perf_counter() - start)
    flop = matmul_flop(n)
    best, median = min(times), statistics.median(times)
    return {
        "times_s": times,
        "best_s": best,
        "median_s": median,
        "gflops_best": flop / best / GIGA,
        "gflops_median": flop / median / GIGA,
    }


def network_gflop_per_slice(slice_size: int, model: Path | None = None) -> dict[str, Any]:
    """Forward FLOP of one slice through the DenseUNet (default architecture, or that of checkpoint ``model``).

    Counted with ``FlopCounterMode`` on the ``meta`` device (no weights are materialised, nothing is computed).
    With ``model``, the architecture and slice size come from the checkpoint (``slice_size`` is ignored).

    Returns:
        ``gflop_per_slice``, ``slice_size`` (height, width), ``in_channels``, ``classes`` and ``source``.

    Examples:
        >>> round(network_gflop_per_slice(64)["gflop_per_slice"], 3)  # 33.4 GFLOP x (64 / 384)²
        0.928
    """
    from covidseg.model import DenseUNet, UNetConfig

    size = (slice_size, slice_size)
    cfg = UNetConfig()
    if model is not None:
        from covidseg.infer.spec import InferenceSpec
        from covidseg.model.checkpoint import load_checkpoint

        ckpt = load_checkpoint(model)
        cfg = UNetConfig.from_dict(ckpt["model_config"])
        size = tuple(InferenceSpec.from_checkpoint(ckpt, str(model)).preprocess.slice_size)  # type: ignore[assignment]
    with torch.device("meta"):
        net = DenseUNet(cfg).eval()
        x = torch.empty(1, cfg.in_channels, *size)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        net(x)
    return {
        "gflop_per_slice": counter.get_total_flops() / GIGA,
        "slice_size": list(size),
        "in_channels": cfg.in_channels,
        "classes": list(cfg.class_names),
        "source": str(model) if model is not None else "default DenseUNet (UNetConfig())",
    }


def write_json(payload: dict[str, Any], path: Path, overwrite: bool) -> None:
    """Write ``payload`` as indented JSON to ``path`` atomically (refusing an existing file without overwrite)."""
    from covidseg.io.atomic import atomic_path

    with atomic_path(path, overwrite=overwrite) as tmp:
        tmp.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--size", type=int, default=2048, help="Matrix size n (n x n by n x n).")
    parser.add_argument("--repeats", type=int, default=5, help="Timed products per precision (best is reported).")
    parser.add_argument("--dtypes", nargs="+", default=list(DTYPES), choices=list(DTYPES))
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default).")
    parser.add_argument("--network-slice-size", type=int, default=384, help="Slice size for the FLOP count.")
    parser.add_argument("--model", type=Path, default=None, help="Count the FLOP of this checkpoint's network.")
    parser.add_argument("--json", type=Path, default=None, help="Also write the results to this JSON file.")
    parser.add_argument("--overwrite", action="store_true", help="Replace an existing --json file.")
    args = parser.parse_args(argv)
    given = sys.argv[1:] if argv is None else argv
    if args.json is not None and args.json.exists() and not args.overwrite:
        raise SystemExit(f"{args.json} already exists; pass --overwrite to replace it or choose another path")
    if args.threads:
        torch.set_num_threads(args.threads)

    load_before = os.getloadavg()
    matmul = {name: measure_matmul(args.size, DTYPES[name], args.repeats) for name in args.dtypes}
    load_after = os.getloadavg()
    network = network_gflop_per_slice(args.network_slice_size, args.model)
    print(f"matmul {args.size} x {args.size}, {torch.get_num_threads()} threads, best of {args.repeats}:")
    for name, res in matmul.items():
        print(f"  {name}: {res['gflops_best']:.1f} GFLOP/s best, {res['gflops_median']:.1f} median")
    h, w = network["slice_size"]
    print(f"network: {network['gflop_per_slice']:.2f} GFLOP per {h} x {w} slice ({network['source']})")
    if args.json is not None:
        payload = {
            "command": " ".join(["python", os.path.relpath(__file__), *given]),
            "size": args.size,
            "repeats": args.repeats,
            "threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "load_avg_before": load_before,
            "load_avg_after": load_after,
            "matmul": matmul,
            "network": network,
        }
        write_json(payload, args.json, args.overwrite)
        print(f"results written to {args.json}")


if __name__ == "__main__":
    main()
