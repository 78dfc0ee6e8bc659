"""Benchmark: HU window + resize of every axial slice of a 512 x 512 x 300 int16 scan to 384 x 384.

Target (issue 2): under 0.5 s on the project's 2-core CPU machine. Streams the volume in batches as
``covidseg predict`` does, and also reports the whole-volume variant and the wrong-memory-order variant for
comparison.

Usage:
    python pipelines/bench_preprocess.py [--slices 300] [--size 512] [--out-size 384] [--batch 32] [--repeats 5]
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np
import torch

from covidseg.data.preprocess import PreprocessConfig, iter_slice_batches, preprocess_volume


def _best_of(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--out-size", type=int, default=384)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    hu = rng.integers(-1024, 1500, size=(args.slices, args.size, args.size), dtype=np.int16)
    cfg = PreprocessConfig(slice_size=(args.out_size, args.out_size))

    def streamed() -> None:
        checksum = 0.0
        for _, batch in iter_slice_batches(hu, cfg, args.batch):
            checksum += float(batch[:, :, 0, 0].sum())  # consume each batch as inference would

    def whole() -> None:
        preprocess_volume(hu, cfg, args.batch)

    hu_fortran = np.asfortranarray(hu)

    def wrong_order() -> None:
        for _, _batch in iter_slice_batches(hu_fortran, cfg, args.batch):
            pass

    streamed()  # warm-up
    rows = [
        ("streamed batches (predict path)", _best_of(streamed, args.repeats)),
        ("whole volume to one tensor", _best_of(whole, args.repeats)),
        ("streamed, Fortran-ordered input", _best_of(wrong_order, args.repeats)),
    ]
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads"
    )
    print(f"input: {args.slices} x {args.size} x {args.size} int16 -> {args.out_size}^2, batch {args.batch}")
    print(f"{'variant':<36} {'best of ' + str(args.repeats) + ' (s)':>16}")
    for name, seconds in rows:
        print(f"{name:<36} {seconds:>16.3f}")


if __name__ == "__main__":
    main()
