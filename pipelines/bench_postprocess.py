"""Time post-processing (and the classical HU lung mask) on a 300 x 512 x 512 phantom at 1 x 0.7 x 0.7 mm.

Usage: ``python pipelines/bench_postprocess.py [--repeats 3] [--lesions 12] [--opening-mm 1.0] [--hu-mask]``

The phantom's labels stand in for the network's argmax output: post-processing then has a realistic amount of
lung and opacity to work on. The phantom's HU volume is passed along, as ``covidseg predict`` does (it gives the
body outline). Prints the best and median wall time over the repeats and the label agreement.

Measured on the 2-core development machine (shared with other jobs), 2026-11-22 with the body-outline check:
default config best 0.63 s (median 0.66 s) with ``--repeats 5``; earlier, before connected-components-3d, 1.45 s;
with ``--opening-mm 1.0`` best 2.14 s (median 2.60 s, before connected-components-3d); the classical HU lung
mask about 5 s.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from covidseg.data.phantom import generate_phantom
from covidseg.infer.lungmask import classical_lung_mask
from covidseg.infer.postprocess import PostprocessConfig, postprocess

SHAPE = (300, 512, 512)
"""Voxels (z, y, x) of the benchmark scan."""
SPACING = (1.0, 0.7, 0.7)
"""Voxel spacing (z, y, x) in mm."""


def _time(fn: object, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()  # type: ignore[operator]
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--lesions", type=int, default=12)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--opening-mm", type=float, default=None, help="override the config's opening radius")
    parser.add_argument("--closing-mm", type=float, default=None, help="override the config's closing radius")
    parser.add_argument("--hu-mask", action="store_true", help="also time the classical HU lung mask")
    args = parser.parse_args()

    start = time.perf_counter()
    phantom = generate_phantom(SHAPE, SPACING, seed=args.seed, n_lesions=args.lesions)
    print(f"phantom {SHAPE} at {SPACING} mm generated in {time.perf_counter() - start:.1f} s")
    overrides = {k: v for k, v in {"opening_mm": args.opening_mm, "closing_mm": args.closing_mm}.items() if v}
    config = PostprocessConfig(**overrides)
    labels = np.ascontiguousarray(phantom.labels, dtype=np.uint8)
    hu = np.ascontiguousarray(phantom.hu)
    result: dict[str, np.ndarray] = {}

    def run() -> None:
        result["out"] = postprocess(labels, SPACING, config, hu=hu)

    times = _time(run, args.repeats)
    agree = float(np.mean(result["out"] == labels))
    print(f"postprocess {config.to_dict()}")
    print(f"  best {min(times):.2f} s, median {statistics.median(times):.2f} s; label agreement {agree:.5f}")
    if args.hu_mask:
        times = _time(lambda: result.update(mask=classical_lung_mask(hu, SPACING)), args.repeats)
        ref = labels > 0
        dice = 2 * np.count_nonzero(result["mask"] & ref) / (np.count_nonzero(result["mask"]) + np.count_nonzero(ref))
        print(f"classical_lung_mask: best {min(times):.2f} s, median {statistics.median(times):.2f} s; Dice {dice:.4f}")


if __name__ == "__main__":
    main()
