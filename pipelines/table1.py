r"""Reproduce the paper's Table 1 grid (sources x transfer regularization) from an experiment preset.

Small scale on synthetic phantoms (CPU, minutes), full scale on the covid20 dataset (GPU) with the same driver:

    .venv/bin/python pipelines/table1.py --config configs/experiments/table1_phantom.yaml --out runs/table1-phantom
    python pipelines/table1.py --config configs/experiments/table1_covid20.yaml --out runs/table1-covid20 \
        --run-set data.root=/data/covid20 --set sources.imagenet.path=/weights/densenet121.pth

Rerunning with the same --out continues (finished cells are skipped); --overwrite starts again. Writes
<out>/results.csv and <out>/table1.md; see covidseg.experiments.table1 for the folder layout.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from rich.console import Console

from covidseg.errors import CovidsegError


def main(argv: Sequence[str] | None = None) -> int:
    """Run the driver; returns the exit status (2 on a user error, printed as one line)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True, help="experiment preset (configs/experiments/*.yaml)")
    parser.add_argument("--out", default=None, help="run folder (default: the preset's output)")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="preset override, e.g. grid.rows=[none,imagenet] or grid.cells=[imagenet__l2sp-5] (repeatable)",
    )
    parser.add_argument(
        "--run-set",
        dest="run_overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="run-config override of every cell, after the preset's set: (e.g. data.root=/data/covid20)",
    )
    parser.add_argument("--overwrite", action="store_true", help="delete an existing run folder first")
    args = parser.parse_args(argv)
    console = Console()
    from covidseg.experiments.table1 import run_table1

    try:
        result = run_table1(
            args.config,
            args.out,
            overrides=args.overrides,
            run_overrides=args.run_overrides,
            overwrite=args.overwrite,
            console=console,
        )
    except CovidsegError as exc:
        console.print(f"[red]error:[/] {exc}", highlight=False, soft_wrap=True)
        return 2
    console.print(result.markdown, markup=False, highlight=False)
    console.print(f"wall time {result.wall_s:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
