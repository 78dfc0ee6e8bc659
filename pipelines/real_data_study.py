r"""The real-data study: fine-tuning schemes compared by k-fold cross-validation, and the final model.

    # every scheme on every fold, then the tables (resumable: rerun the same command after an interruption)
    .venv/bin/python pipelines/real_data_study.py run --preset configs/study/medseg_cv.yaml --out runs/study
    # the final model: the best scheme (or --scheme NAME) trained on every labelled slice
    .venv/bin/python pipelines/real_data_study.py final --preset configs/study/medseg_cv.yaml --out runs/study
    # only the tables, from the runs that exist
    .venv/bin/python pipelines/real_data_study.py report --preset configs/study/medseg_cv.yaml --out runs/study

On a GPU, the same preset scales up by overrides, e.g.
``--set "preprocess.slice_size=[384,384]" --set train.epochs=100 --set train.device=cuda``.
The tables land in OUT/results.md (with per_case.csv, per_fold.csv, comparisons.csv, summary.json).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from rich.console import Console

from covidseg.errors import CovidsegError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("command", choices=["run", "final", "report"], help="what to do")
    parser.add_argument("--preset", required=True, type=Path, help="study preset (configs/study/*.yaml)")
    parser.add_argument("--out", required=True, type=Path, help="study folder (created; reruns continue in it)")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="run-config override added to the preset's overrides for every run (repeatable)",
    )
    parser.add_argument("--schemes", default=None, help="comma-separated scheme keys to run (default: all)")
    parser.add_argument("--scheme", default=None, help="final: the scheme to train (default: the preset's final)")
    parser.add_argument("--overwrite", action="store_true", help="redo a study folder made with other settings")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the driver; returns the exit status (2 on a user error, printed as one line)."""
    args = _parser().parse_args(argv)
    console = Console()
    try:
        return _run(args, console)
    except CovidsegError as exc:
        console.print(f"[red]error:[/] {exc}", highlight=False, soft_wrap=True)
        return 2


def _run(args: argparse.Namespace, console: Console) -> int:
    from covidseg.study import report as R
    from covidseg.study import runner as S
    from covidseg.study.spec import load_study_spec

    spec = load_study_spec(args.preset)
    if args.overrides:
        spec = spec.model_copy(update={"overrides": [*spec.overrides, *args.overrides]})
    out: Path = args.out
    progress = None if args.quiet else console
    start = time.perf_counter()
    if args.command == "report":
        if not (out / S.SPEC_NAME).is_file():
            raise CovidsegError(f"{out} is not a study folder; run the study first")
    else:
        S.check_study_folder(spec, out, overwrite=args.overwrite)
        S.write_folds(spec, out)
    source = None
    if args.command != "report":
        source, seconds = S.study_source(spec, out, console=progress)
        S.record_source_seconds(out, seconds)
        if source is not None:
            console.print(f"source model: {source}")
    if args.command == "final":
        chosen = args.scheme or spec.final.scheme
        if chosen == "best":
            runs = S.run_folds(spec, out, source=source, schemes=None, console=None, train_missing=False)
            chosen = R.build_report(spec, runs.cases).best
        if chosen not in spec.schemes:
            raise CovidsegError(f"scheme {chosen!r} is not in the preset; known: {', '.join(spec.schemes)}")
        checkpoint = S.train_final(spec, out, chosen, source, progress)
        console.print(f"final model ({spec.label(chosen)}, every labelled case): {checkpoint}")
        console.print(f"predict with: covidseg predict SLICE.jpg --model {checkpoint} --image-window -1350 150")
        return 0
    schemes = args.schemes.split(",") if args.schemes else None
    runs = S.run_folds(spec, out, source=source, schemes=schemes, console=progress, train_missing=args.command == "run")
    report = R.build_report(spec, runs.cases)
    timing = S.study_seconds(out)
    R.write_report(out, report, spec, runs.cases, timing=timing, environment=S.environment_summary())
    console.print((out / "results.md").read_text(), highlight=False, markup=False)
    console.print(f"tables in {out}; this command took {(time.perf_counter() - start) / 60:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
