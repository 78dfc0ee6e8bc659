"""The terminal side of ``covidseg predict``: a progress display per scan and one result line per scan."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from covidseg.infer.batch import BatchResult, run_batch
from covidseg.infer.pipeline import PredictOptions, ScanResult
from covidseg.infer.segmenter import Segmenter

__all__ = ["result_line", "run_batch_with_progress"]


def result_line(result: ScanResult) -> str:
    """One line describing a finished scan (plain text).

    Examples:
        >>> r = ScanResult(Path("a.nii.gz"), "a", {}, {"message": "no lungs in view"}, 0, {"total": 1.25})
        >>> result_line(r)
        'a: no lungs in view (1.2 s)'
    """
    extra = f", {result.skipped_slices} slices skipped" if result.skipped_slices else ""
    return f"{result.name}: {result.report.get('message', '')}{extra} ({result.timings.get('total', 0.0):.1f} s)"


def run_batch_with_progress(
    scans: Sequence[Path],
    segmenter: Segmenter,
    out_dir: Path,
    *,
    options: PredictOptions,
    summary: Path | None,
    console: Console | None = None,
    quiet: bool = False,
) -> BatchResult:
    """:func:`~covidseg.infer.batch.run_batch` with a live progress bar per scan (on stderr) and result lines.

    Args:
        scans: The scans to segment.
        segmenter: The loaded model.
        out_dir: Output folder.
        options: Reading options and outputs.
        summary: Summary CSV path (None: none).
        console: Where progress and failures go (default: stderr).
        quiet: No progress display; failures are still printed.
    """
    err = console or Console(stderr=True)
    total = len(scans)
    progress = Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("slices"),
        TimeElapsedColumn(),
        console=err,
        transient=True,
        disable=quiet,
    )

    def scan_kwargs(scan: Path, position: int) -> dict[str, Any]:
        label = f"[{position + 1}/{total}] {escape(scan.name)}"
        task = progress.add_task(f"{label}: starting", total=None)

        def on_stage(stage: str) -> None:
            progress.update(task, description=f"{label}: {stage}")

        def on_progress(done: int, count: int) -> None:
            progress.update(task, completed=done, total=count)

        return {"on_stage": on_stage, "progress": on_progress}

    def on_result(scan: Path, result: ScanResult | None, reason: str | None) -> None:
        for task in list(progress.task_ids):
            progress.remove_task(task)
        if result is not None:
            if not quiet:
                progress.console.print(f"[green]done[/] {escape(result_line(result))}")
            for warning in result.report.get("warnings", []):
                if not quiet:
                    progress.console.print(f"  [yellow]warning[/] {escape(str(warning))}")
        else:
            progress.console.print(f"[red]failed[/] {escape(str(scan))}: {escape(str(reason))}")

    with progress:
        return run_batch(
            scans,
            segmenter,
            out_dir,
            options=options,
            summary=summary,
            on_result=on_result,
            scan_kwargs=scan_kwargs,
        )
