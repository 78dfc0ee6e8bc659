"""Benchmark ``covidseg predict`` end to end on a 512 x 512 x 300 phantom: time per stage, peak memory, bf16 agreement.

Targets (issue 5, on the 2-core development CPU): under 80 s in fp32 and under 40 s with bf16 + channels_last;
everything except the network at most 15 % of the network's time; peak RSS under 2 GB; bf16 at least 1.8x faster
than fp32 with at least 99.5 % voxel agreement of the final label map; the fast path changes the opacity mask by at
most 0.1 % on a scan that extends beyond the lungs.

Each configuration runs in a fresh subprocess (``--worker``) that loads the model, runs
:func:`covidseg.infer.pipeline.predict_scan` on the phantom file and reports its own timings and peak RSS
(``resource.getrusage``). The phantom is padded with ``--extra-slices`` slices of lung-free abdomen-like tissue
below the lungs (so the fast path has something to skip) and written as NIfTI once. Without ``--model``, a
DenseUNet with random weights (seed 0, BatchNorm calibrated on the scan) at ``--slice-size`` is used: network cost
is the same as a trained model's; its label maps (and so post-processing cost, bf16 agreement and the fast path's
effect) are not those of a trained model.

Measured on the 2-core development machine, shared with other jobs (random BN-calibrated weights, so label
agreement and fast-path change are not those of a trained model): batch 8, machine idle at the start: fp32 146 s
(network 135 s), bf16 + channels_last 42.3 s (network 31.7 s, 3.5x), non-network 10.6-11.1 s, peak RSS 2.0 GB
(fp32) and 2.4 GB (bf16). Batch 2 with the heap returned after prediction: peak RSS 1.94 GB (fp32, bf16) and
1.80 GB (fast path), but other jobs loaded the machine during that run (fp32 518 s, bf16 134 s: OpenMP threads
waiting for busy cores), so its times say nothing about the code.

Usage:
    python pipelines/bench_predict.py [--slices 300] [--size 512] [--model CKPT] [--slice-size 384]
        [--configs fp32 bf16_cl fast_bf16_cl] [--work DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

CONFIGS: dict[str, dict[str, Any]] = {
    "fp32": {"precision": "fp32", "channels_last": False, "fast": False},
    "bf16_cl": {"precision": "bf16", "channels_last": True, "fast": False},
    "fast_bf16_cl": {"precision": "bf16", "channels_last": True, "fast": True},
    "fast_fp32": {"precision": "fp32", "channels_last": False, "fast": True},
}
"""Benchmark configurations: network precision, memory format, fast path."""
SPACING = (1.0, 0.7, 0.7)
"""Phantom voxel spacing (z, y, x) in mm."""
NETWORK_STAGE = "network"
CALIBRATION_SLICES = 4
"""Slices of the scan used to calibrate the random model's BatchNorm statistics."""
NON_NETWORK = ("load", "skip_decision", "preprocess", "resize_back", "argmax", "postprocess", "report")


def make_scan(work: Path, slices: int, size: int, extra: int, seed: int) -> Path:
    """Write the benchmark phantom (lungs in the upper ``slices - extra`` slices) as NIfTI; reuse if present."""
    from covidseg.data.phantom import generate_phantom
    from covidseg.io import CTVolume, save_volume

    path = work / f"phantom_{slices}x{size}x{size}_extra{extra}_seed{seed}.nii.gz"
    if path.is_file():
        return path
    phantom = generate_phantom((slices - extra, size, size), SPACING, seed=seed)
    hu = phantom.hu
    if extra:
        # Abdomen-like slices below the lungs: the body outline of the lowest slice, filled with soft tissue.
        body = hu[0] > -500
        below = np.where(body, np.int16(40), np.int16(-1000))
        hu = np.concatenate([np.repeat(below[None], extra, axis=0), hu], axis=0)
    affine = phantom.affine.copy()
    affine[:3, 3] -= affine[:3, 0] * extra  # the padding lies below (smaller z) the phantom's first slice
    save_volume(hu, CTVolume.from_canonical(hu, affine), path)
    return path


def make_model(work: Path, slice_size: int, scan: Path) -> Path:
    """A random-weight (seed 0) default DenseUNet checkpoint at ``slice_size``, BatchNorm calibrated on the scan.

    BatchNorm statistics come from one train-mode pass over a few of the scan's slices, as training would set them
    (instead of the defaults, mean 0 and variance 1), so activations have the scale of a trained model's.
    """
    import torch

    from covidseg.data.preprocess import PreprocessConfig, preprocess_slices
    from covidseg.io import load_ct
    from covidseg.model import DenseUNet, UNetConfig, save_checkpoint

    path = work / f"random_densenet_{slice_size}.pt"
    if not path.is_file():
        torch.manual_seed(0)
        cfg = UNetConfig()
        pre = PreprocessConfig(slice_size=(slice_size, slice_size))
        model = DenseUNet(cfg)
        for module in model.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                module.reset_running_stats()
                module.momentum = None
        hu = load_ct(scan).hu
        rows = np.linspace(0, hu.shape[0] - 1, CALIBRATION_SLICES).round().astype(int)
        model.train()
        with torch.no_grad():
            model(preprocess_slices(hu[rows], pre))
        save_checkpoint(path, model.eval(), model_config=cfg, extra={"preprocessing": pre.to_dict()})
    return path


def worker(args: argparse.Namespace) -> None:
    """Run one configuration and print its JSON result (the last stdout line)."""
    import torch

    from covidseg.infer.outputs import OutputOptions
    from covidseg.infer.pipeline import PredictOptions, predict_scan
    from covidseg.infer.segmenter import Segmenter

    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = CONFIGS[args.worker]
    start = time.perf_counter()
    segmenter = Segmenter.from_checkpoint(
        args.model,
        device="cpu",
        precision=cfg["precision"],
        channels_last=cfg["channels_last"],
        batch_size=args.batch_size,
        skip_empty_slices=cfg["fast"],
    )
    model_load = time.perf_counter() - start
    options = PredictOptions(outputs=OutputOptions(overview=not args.no_overview, overwrite=True))
    result = predict_scan(args.scan, segmenter, Path(args.out) / args.worker, options=options)
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(
        json.dumps(
            {
                "config": args.worker,
                "model_load": model_load,
                "timings": result.timings,
                "skipped_slices": result.skipped_slices,
                "labels": str(result.outputs["labels"]),
                "peak_rss_mb": peak_kb / 1024.0,
                "threads": torch.get_num_threads(),
            }
        )
    )


def _run_config(name: str, scan: Path, model: Path, out: Path, args: argparse.Namespace) -> dict[str, Any]:
    cmd = [
        sys.executable,
        __file__,
        "--worker",
        name,
        "--scan",
        str(scan),
        "--model",
        str(model),
        "--out",
        str(out),
        "--batch-size",
        str(args.batch_size),
        "--threads",
        str(args.threads),
    ]
    if args.no_overview:
        cmd.append("--no-overview")
    done = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def _labels(path: str) -> np.ndarray:
    import nibabel as nib

    return np.asarray(nib.load(path).dataobj, dtype=np.uint8)  # type: ignore[attr-defined]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=300, help="Axial slices of the scan (incl. --extra-slices).")
    parser.add_argument("--size", type=int, default=512, help="In-plane size of the scan (pixels).")
    parser.add_argument("--extra-slices", type=int, default=40, help="Lung-free slices below the lungs.")
    parser.add_argument("--slice-size", type=int, default=384, help="Network input size (random model only).")
    parser.add_argument("--model", type=Path, default=None, help="Checkpoint; default: random DenseUNet.")
    parser.add_argument("--configs", nargs="+", default=["fp32", "bf16_cl", "fast_bf16_cl"], choices=list(CONFIGS))
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--no-overview", action="store_true")
    parser.add_argument("--threads", type=int, default=0, help="torch threads per worker (0: torch's default).")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", type=Path, default=None, help="Folder for the scan, model and outputs.")
    parser.add_argument("--worker", choices=list(CONFIGS), help=argparse.SUPPRESS)
    parser.add_argument("--scan", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return

    work = args.work or Path(tempfile.mkdtemp(prefix="bench_predict_"))
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    scan = make_scan(work, args.slices, args.size, args.extra_slices, args.seed)
    print(f"scan: {scan} ({time.perf_counter() - t0:.0f} s to make)", flush=True)
    model = args.model or make_model(work, args.slice_size, scan)
    print(f"model: {model}; cpu: {platform.processor() or platform.machine()}, {os.cpu_count()} cores", flush=True)
    results = {}
    for name in args.configs:
        results[name] = _run_config(name, scan, model, work / "out", args)
        print(f"  {name}: {results[name]['timings']['total']:.1f} s", flush=True)

    threads = next(iter(results.values()))["threads"]
    size = f"{args.size} x {args.size} x {args.slices} voxels, spacing {SPACING} mm"
    print(f"\n{size}, batch {args.batch_size}, {threads} threads\n")
    header = "| config | total s | network s | non-network s (share of network) | post-proc s | writes s | skipped |"
    print(header + " peak RSS MB |")
    print("|" + "---|" * 8)
    for name, res in results.items():
        t = res["timings"]
        net = t[NETWORK_STAGE]
        non = t["total"] - net
        writes = sum(v for k, v in t.items() if k.startswith("write_"))
        print(
            f"| {name} | {t['total']:.1f} | {net:.1f} | {non:.1f} ({100 * non / net:.1f} %) | {t['postprocess']:.2f} "
            f"| {writes:.2f} | {res['skipped_slices']} | {res['peak_rss_mb']:.0f} |"
        )
    print("\nstages (s): " + ", ".join(NON_NETWORK) + ", writes")
    for name, res in results.items():
        t = res["timings"]
        parts = [f"{t.get(k, 0.0):.2f}" for k in NON_NETWORK]
        writes = {k[6:]: round(v, 2) for k, v in t.items() if k.startswith("write_")}
        print(f"  {name}: {', '.join(parts)}, {writes}; model load {res['model_load']:.1f} s")
    if "fp32" in results and "bf16_cl" in results:
        a, b = _labels(results["fp32"]["labels"]), _labels(results["bf16_cl"]["labels"])
        speed = results["fp32"]["timings"]["total"] / results["bf16_cl"]["timings"]["total"]
        net_speed = results["fp32"]["timings"][NETWORK_STAGE] / results["bf16_cl"]["timings"][NETWORK_STAGE]
        n_a, n_b = int((a == 2).sum()), int((b == 2).sum())
        print(f"\nbf16+channels_last vs fp32: {speed:.2f}x end to end, {net_speed:.2f}x network; label agreement")
        print(f"  {100 * np.mean(a == b):.3f} % of voxels; opacity voxels fp32 {n_a}, bf16 {n_b}")
    fast = next((n for n in ("fast_bf16_cl", "fast_fp32") if n in results), None)
    base = {"fast_bf16_cl": "bf16_cl", "fast_fp32": "fp32"}.get(fast or "")
    if fast and base in results:
        a, b = _labels(results[base]["labels"]), _labels(results[fast]["labels"])
        opacity = max(int((a == 2).sum()), 1)
        changed = int(((a == 2) != (b == 2)).sum())
        print(
            f"fast path ({fast} vs {base}): {results[fast]['skipped_slices']} slices skipped, opacity mask changed "
            f"in {changed} voxels = {100 * changed / opacity:.4f} % of {opacity} opacity voxels; "
            f"all labels agree on {100 * np.mean(a == b):.4f} %"
        )


if __name__ == "__main__":
    main()
