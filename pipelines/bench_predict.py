"""Benchmark ``covidseg predict`` end to end on a 512 x 512 x 300 phantom: time per stage, peak memory, bf16 agreement.

Targets (issue 5, on the 2-core development CPU): under 80 s in fp32 and under 40 s with bf16 + channels_last;
everything except the network at most 15 % of the network's time; peak RSS under 2 GB; bf16 at least 1.8x faster
than fp32 with at least 99.5 % voxel agreement of the final label map; the fast path changes the opacity mask by at
most 0.1 % on a scan that extends beyond the lungs.

Each configuration runs in a fresh subprocess (``--worker``) that loads the model, runs
:func:`covidseg.infer.pipeline.predict_scan` on the phantom file and reports its own timings, peak RSS
(``VmHWM`` of ``/proc/self/status``) and the machine's load average before and after. Configurations run one
after the other, never at once; with ``--repeats N`` every configuration runs N times in interleaved rounds and
the run with the median total time is reported (with the largest peak RSS and every run's times, so the spread
is visible): on this shared machine the same network took 57 to 101 ms per slice within an hour. The phantom
is padded with ``--extra-slices`` slices of lung-free abdomen-like tissue below the lungs (so the fast path has
something to skip) and written as NIfTI once; ``--crop-slices N`` runs on the N
middle slices of that scan instead (a quick run whose per-slice times extrapolate to the full scan). Without
``--model``, a DenseUNet with random weights (seed 0, BatchNorm calibrated on the scan) at ``--slice-size`` is
used: network cost is the same as a trained model's; its label maps (and so post-processing cost, bf16 agreement
and the fast path's effect) are not those of a trained model: its noisy labels make post-processing several times
slower than a trained model's would.

The machine is shared: a load average above the number of cores makes every time meaningless (OpenMP threads
wait for busy cores; a network that takes 40 s on an idle machine took 1200 s at load 8). The load is printed
and stored with each result; compare configurations only from runs on an idle machine.

Run of 2026-11-22, 12:05 UTC (BENCHMARKS.md; model trained with ``configs/benchmarks/phantom384.yaml``, default
batches 2 fp32 / 4 bf16, median of 3 interleaved runs, post-processing with the body-outline check): fp32 74.1 s
(network 235 ms per slice), bf16 + channels-last 31.5 s (95 ms per slice), non-network 3.1-3.5 s = 5.0 % of the fp32
network and 10.7 % of the bf16 one (13.0 % on the fast path; at most 13.9 % in any run), peak RSS 1.26 GB; bf16
labels agree with fp32 on 99.972 % of voxels; the fast path skips 47 slices without changing the opacity. The same
page two hours earlier, before the body check, measured fp32 56.9 s and bf16 25.7 s (78 ms per slice): the network's
speed on this shared machine varies by a third. The non-network time was 6 s before foreground-window resizing,
connected-components-3d and concurrent writes (session 3: bf16 20.8 %).

Usage:
    python pipelines/bench_predict.py [--slices 300] [--size 512] [--model CKPT] [--slice-size 384]
        [--configs fp32 bf16_cl fast_bf16_cl] [--crop-slices N] [--batch-size N] [--repeats N] [--work DIR]
        [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

CONFIGS: dict[str, dict[str, Any]] = {
    "fp32": {"precision": "fp32", "channels_last": None, "fast": False},
    "fp32_nchw": {"precision": "fp32", "channels_last": False, "fast": False},
    "bf16_cl": {"precision": "bf16", "channels_last": True, "fast": False},
    "fast_bf16_cl": {"precision": "bf16", "channels_last": True, "fast": True},
    "fast_fp32": {"precision": "fp32", "channels_last": None, "fast": True},
}
"""Benchmark configurations: network precision, memory format (None: the Segmenter's default, channels-last on
CPU), fast path. ``fp32_nchw`` is fp32 in the contiguous (N, C, H, W) format, for comparison."""
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


def crop_scan(work: Path, scan: Path, n_slices: int) -> Path:
    """The ``n_slices`` middle axial slices of ``scan`` as a NIfTI file in ``work`` (reused if present)."""
    from covidseg.io import CTVolume, load_ct, save_volume

    path = work / f"{scan.name.removesuffix('.nii.gz')}_middle{n_slices}.nii.gz"
    if path.is_file():
        return path
    volume = load_ct(scan)
    first = max((volume.shape[0] - n_slices) // 2, 0)
    hu = volume.hu[first : first + n_slices]
    affine = volume.affine.copy()
    affine[:3, 3] += affine[:3, 0] * first  # index z = first becomes z = 0
    save_volume(hu, CTVolume.from_canonical(hu, affine), path)
    return path


def worker(args: argparse.Namespace) -> None:
    """Run one configuration and print its JSON result (the last stdout line)."""
    import torch
    from bench_train import peak_rss_mb  # run as a script: pipelines/ is on sys.path

    from covidseg.infer.outputs import OutputOptions
    from covidseg.infer.pipeline import PredictOptions, predict_scan
    from covidseg.infer.segmenter import Segmenter

    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = CONFIGS[args.worker]
    load_before = os.getloadavg()
    start = time.perf_counter()
    segmenter = Segmenter.from_checkpoint(
        args.model,
        device="cpu",
        precision=cfg["precision"],
        channels_last=cfg["channels_last"],
        batch_size=args.batch_size or None,
        skip_empty_slices=cfg["fast"],
    )
    model_load = time.perf_counter() - start
    options = PredictOptions(outputs=OutputOptions(overview=not args.no_overview, overwrite=True))
    cpu_start = time.process_time()
    result = predict_scan(args.scan, segmenter, Path(args.out) / args.worker, options=options)
    cpu = time.process_time() - cpu_start
    # VmHWM: getrusage's ru_maxrss is carried over from the parent across exec, so a parent that made the
    # phantom (1.4 GB) would set every worker's peak.
    peak_mb = peak_rss_mb()
    shape = result.report["shape_zyx"]
    print(
        json.dumps(
            {
                "config": args.worker,
                "precision": segmenter.spec.precision,
                "channels_last": segmenter.channels_last,
                "batch_size": segmenter.batch_size,
                "threads": torch.get_num_threads(),
                "shape_zyx": shape,
                "model_load_s": model_load,
                "timings": result.timings,
                "cpu_s": cpu,
                "skipped_slices": result.skipped_slices,
                "labels": str(result.outputs["labels"]),
                "peak_rss_mb": peak_mb,
                "load_avg_before": load_before,
                "load_avg_after": os.getloadavg(),
            }
        )
    )


def _run_config(name: str, scan: Path, model: Path, out: Path, args: argparse.Namespace) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--worker", name, "--scan", str(scan), "--model", str(model)]
    cmd += ["--out", str(out), "--batch-size", str(args.batch_size), "--threads", str(args.threads)]
    if args.no_overview:
        cmd.append("--no-overview")
    done = subprocess.run(cmd, check=False, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"configuration {name} failed (exit {done.returncode}):\n{done.stderr[-4000:]}")
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run with the median total time (the lower middle one for an even count), with every run summarised.

    Its ``peak_rss_mb`` becomes the largest of all runs, and ``runs`` lists each run's total, network and
    non-network share, so the spread stays visible.

    Examples:
        >>> runs = [{"timings": {"total": t, "network": t - 2.0}, "peak_rss_mb": m, "shape_zyx": [4, 8, 8],
        ...          "skipped_slices": 0} for t, m in ((30.0, 1100.0), (20.0, 1200.0), (25.0, 1000.0))]
        >>> best = median_run(runs)
        >>> best["timings"]["total"], best["peak_rss_mb"], [round(r["total_s"]) for r in best["runs"]]
        (25.0, 1200.0, [30, 20, 25])
    """
    if not runs:
        raise ValueError("no runs to choose from")
    ordered = sorted(runs, key=lambda res: float(res["timings"]["total"]))
    chosen = dict(ordered[(len(ordered) - 1) // 2])
    chosen["peak_rss_mb"] = max(float(res["peak_rss_mb"]) for res in runs)
    chosen["runs"] = [
        {k: summarise(res)[k] for k in ("total_s", "network_s", "non_network_s", "non_network_share")} for res in runs
    ]
    return chosen


def summarise(res: dict[str, Any]) -> dict[str, Any]:
    """Derived figures of one configuration: network and non-network time, its share, slices per second."""
    t = res["timings"]
    n_slices = int(res["shape_zyx"][0])
    run = n_slices - int(res["skipped_slices"])
    net, total = t[NETWORK_STAGE], t["total"]
    return {
        "total_s": total,
        "network_s": net,
        "non_network_s": total - net,
        "non_network_share": (total - net) / net if net > 0 else None,
        "network_ms_per_slice": 1000.0 * net / max(run, 1),
        "network_slices_per_s": run / net if net > 0 else None,
        "end_to_end_slices_per_s": n_slices / total if total > 0 else None,
        "writes_s": {k.removeprefix("write_"): v for k, v in t.items() if k.startswith("write_")},
        "stages_s": {k: t.get(k, 0.0) for k in NON_NETWORK},
    }


def _labels(path: str) -> np.ndarray:
    import nibabel as nib

    return np.asarray(nib.load(path).dataobj, dtype=np.uint8)  # type: ignore[attr-defined]


def compare(results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """bf16 vs fp32 (speed-up, label agreement) and fast path vs full (opacity voxels changed)."""
    out: dict[str, Any] = {}
    base32 = next((n for n in ("fp32", "fp32_nchw") if n in results), None)
    if base32 and "bf16_cl" in results:
        a, b = _labels(results[base32]["labels"]), _labels(results["bf16_cl"]["labels"])
        t32, t16 = results[base32]["timings"], results["bf16_cl"]["timings"]
        out["bf16_vs_fp32"] = {
            "fp32_config": base32,
            "speedup_end_to_end": t32["total"] / t16["total"],
            "speedup_network": t32[NETWORK_STAGE] / t16[NETWORK_STAGE],
            "label_agreement_percent": 100.0 * float(np.mean(a == b)),
            "opacity_voxels_fp32": int((a == 2).sum()),
            "opacity_voxels_bf16": int((b == 2).sum()),
        }
    if "fp32" in results and "fp32_nchw" in results:
        a, b = _labels(results["fp32"]["labels"]), _labels(results["fp32_nchw"]["labels"])
        out["fp32_channels_last_vs_nchw"] = {
            "speedup_network": results["fp32_nchw"]["timings"][NETWORK_STAGE]
            / results["fp32"]["timings"][NETWORK_STAGE],
            "label_agreement_percent": 100.0 * float(np.mean(a == b)),
        }
    fast = next((n for n in ("fast_bf16_cl", "fast_fp32") if n in results), None)
    base = {"fast_bf16_cl": "bf16_cl", "fast_fp32": "fp32"}.get(fast or "")
    if fast and base in results:
        a, b = _labels(results[base]["labels"]), _labels(results[fast]["labels"])
        opacity = max(int((a == 2).sum()), 1)
        changed = int(((a == 2) != (b == 2)).sum())
        out["fast_path"] = {
            "config": fast,
            "versus": base,
            "skipped_slices": results[fast]["skipped_slices"],
            "opacity_voxels_changed": changed,
            "opacity_changed_percent": 100.0 * changed / opacity,
            "label_agreement_percent": 100.0 * float(np.mean(a == b)),
        }
    return out


def print_results(results: dict[str, dict[str, Any]], comparison: dict[str, Any], scan_text: str) -> None:
    """Markdown tables of the results (for the BENCHMARKS page) and the comparisons."""
    first = next(iter(results.values()))
    print(f"\n{scan_text}; {first['threads']} threads\n")
    print(
        "| config | channels_last | batch | total s | network s | ms/slice | slices/s (net, e2e) "
        "| non-network s (% of network) | peak RSS MB | load avg before/after |"
    )
    print("|" + "---|" * 10)
    for name, res in results.items():
        d = summarise(res)
        load = f"{res['load_avg_before'][0]:.1f} / {res['load_avg_after'][0]:.1f}"
        print(
            f"| {name} | {res['channels_last']} | {res['batch_size']} | {d['total_s']:.1f} | {d['network_s']:.1f} "
            f"| {d['network_ms_per_slice']:.0f} | {d['network_slices_per_s']:.2f}, {d['end_to_end_slices_per_s']:.2f} "
            f"| {d['non_network_s']:.1f} ({100 * d['non_network_share']:.1f} %) | {res['peak_rss_mb']:.0f} | {load} |"
        )
    for name, res in results.items():
        if len(res.get("runs", [])) > 1:
            shares = ", ".join(f"{100 * r['non_network_share']:.1f} %" for r in res["runs"])
            totals = ", ".join(f"{r['total_s']:.1f}" for r in res["runs"])
            print(f"{name}: {len(res['runs'])} runs, total s {totals}; non-network share {shares}")
    print("\nnon-network stages (s): " + ", ".join(NON_NETWORK) + ", writes, skipped slices")
    for name, res in results.items():
        d = summarise(res)
        parts = ", ".join(f"{v:.2f}" for v in d["stages_s"].values())
        writes = {k: round(v, 2) for k, v in d["writes_s"].items()}
        print(f"  {name}: {parts}, {writes}, {res['skipped_slices']}; model load {res['model_load_s']:.1f} s")
    if "bf16_vs_fp32" in comparison:
        c = comparison["bf16_vs_fp32"]
        print(
            f"\nbf16+channels_last vs {c['fp32_config']}: {c['speedup_end_to_end']:.2f}x end to end, "
            f"{c['speedup_network']:.2f}x network; final labels agree on {c['label_agreement_percent']:.3f} % of "
            f"voxels; opacity voxels fp32 {c['opacity_voxels_fp32']}, bf16 {c['opacity_voxels_bf16']}"
        )
    if "fp32_channels_last_vs_nchw" in comparison:
        c = comparison["fp32_channels_last_vs_nchw"]
        print(
            f"fp32 channels-last vs NCHW: network {c['speedup_network']:.2f}x; labels agree on "
            f"{c['label_agreement_percent']:.4f} %"
        )
    if "fast_path" in comparison:
        c = comparison["fast_path"]
        print(
            f"fast path ({c['config']} vs {c['versus']}): {c['skipped_slices']} slices skipped, opacity mask "
            f"changed in {c['opacity_voxels_changed']} voxels = {c['opacity_changed_percent']:.4f} % of opacity; "
            f"all labels agree on {c['label_agreement_percent']:.4f} %"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=300, help="Axial slices of the scan (incl. --extra-slices).")
    parser.add_argument("--size", type=int, default=512, help="In-plane size of the scan (pixels).")
    parser.add_argument("--extra-slices", type=int, default=40, help="Lung-free slices below the lungs.")
    parser.add_argument("--crop-slices", type=int, default=0, help="Run on this many middle slices (0: all).")
    parser.add_argument("--slice-size", type=int, default=384, help="Network input size (random model only).")
    parser.add_argument("--model", type=Path, default=None, help="Checkpoint; default: random DenseUNet.")
    parser.add_argument("--configs", nargs="+", default=["fp32", "bf16_cl", "fast_bf16_cl"], choices=list(CONFIGS))
    parser.add_argument("--batch-size", type=int, default=0, help="Slices per network call (0: the default).")
    parser.add_argument("--no-overview", action="store_true")
    parser.add_argument("--threads", type=int, default=0, help="torch threads per worker (0: torch's default).")
    parser.add_argument(
        "--repeats", type=int, default=1, help="Runs per configuration, interleaved; the median run is reported."
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", type=Path, default=None, help="Folder for the scan, model and outputs.")
    parser.add_argument("--json", type=Path, default=None, help="Also write all results to this JSON file.")
    parser.add_argument("--worker", choices=list(CONFIGS), help=argparse.SUPPRESS)
    parser.add_argument("--scan", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    if args.repeats < 1:
        raise SystemExit(f"--repeats must be at least 1, got {args.repeats}")

    work = args.work or Path(tempfile.mkdtemp(prefix="bench_predict_"))
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    scan = make_scan(work, args.slices, args.size, args.extra_slices, args.seed)
    print(f"scan: {scan} ({time.perf_counter() - t0:.0f} s to make)", flush=True)
    model = args.model or make_model(work, args.slice_size, scan)
    if args.crop_slices:
        scan = crop_scan(work, scan, args.crop_slices)
        print(f"cropped to the middle {args.crop_slices} slices: {scan}", flush=True)
    print(f"model: {model}; cpu: {platform.processor() or platform.machine()}, {os.cpu_count()} cores", flush=True)
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in args.configs}
    for round_index in range(args.repeats):  # interleaved: a slow minute of the machine hits every configuration
        for name in args.configs:
            tag = f" (run {round_index + 1} of {args.repeats})" if args.repeats > 1 else ""
            print(f"  {name}{tag}: load average {os.getloadavg()[0]:.1f} ...", end=" ", flush=True)
            runs[name].append(_run_config(name, scan, model, work / "out", args))
            print(f"{runs[name][-1]['timings']['total']:.1f} s", flush=True)
    results = {name: median_run(config_runs) for name, config_runs in runs.items()}

    shape = next(iter(results.values()))["shape_zyx"]
    scan_text = f"{shape[2]} x {shape[1]} x {shape[0]} voxels (x, y, z), spacing {SPACING} mm (z, y, x)"
    comparison = compare(results)
    print_results(results, comparison, scan_text)
    if args.json:
        payload = {
            "scan": str(scan),
            "scan_description": scan_text,
            "model": str(model),
            "random_model": args.model is None,
            "cpu": platform.processor() or platform.machine(),
            "cores": os.cpu_count(),
            "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
            "results": {name: {**res, "derived": summarise(res)} for name, res in results.items()},
            "comparison": comparison,
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.json.with_name(args.json.name + ".tmp")
        tmp.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
        tmp.replace(args.json)
        print(f"\nresults written to {args.json}")


if __name__ == "__main__":
    main()
