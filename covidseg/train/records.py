"""What a run reports: the metrics CSV, TensorBoard scalars and the progress bar (rank 0 only).

``metrics.csv`` has one row per epoch: ``epoch`` (1-based), ``step`` (optimizer steps so far), ``train_loss``
(total: data term + penalty + strategy term, mean over the epoch's steps and processes), ``task_loss``,
``penalty``, ``extra_loss``, ``lr`` (of the first parameter group at the epoch's end), the validation means
``val_dice_<class>`` of the foreground classes and ``val_dice_mean`` (empty in epochs without validation), and
``time_s`` (wall-clock seconds of the epoch, validation included). The rows live in the checkpoint too, and the
file is rewritten atomically from them after every epoch, so a resumed run's file has exactly one row per epoch.

``val_cases.csv`` holds the latest validation's scores per case (``epoch``, ``case_id`` and ``dice_``,
``sensitivity_``, ``precision_`` of every foreground class), for per-case analyses and paired tests between runs.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from covidseg.io.atomic import atomic_path
from covidseg.train.metrics import CaseScores

__all__ = [
    "METRICS_NAME",
    "VAL_CASES_NAME",
    "TrainLogger",
    "csv_columns",
    "make_progress",
    "write_case_scores_csv",
    "write_metrics_csv",
]

METRICS_NAME = "metrics.csv"
VAL_CASES_NAME = "val_cases.csv"
TENSORBOARD_DIR = "tensorboard"
_BASE_COLUMNS = ("epoch", "step", "train_loss", "task_loss", "penalty", "extra_loss", "lr")


def csv_columns(class_names: Sequence[str]) -> list[str]:
    """Columns of ``metrics.csv`` for a model with ``class_names`` (background first).

    Examples:
        >>> csv_columns(["background", "opacity"])
        ['epoch', 'step', 'train_loss', 'task_loss', 'penalty', 'extra_loss', 'lr', 'val_dice_opacity', \
'val_dice_mean', 'time_s']
    """
    return [*_BASE_COLUMNS, *(f"val_dice_{name}" for name in class_names[1:]), "val_dice_mean", "time_s"]


def _cell(value: Any) -> Any:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return value


def write_metrics_csv(path: Path, rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> None:
    """Write every row (atomically, replacing the file).

    Examples:
        >>> import tempfile
        >>> p = Path(tempfile.mkdtemp()) / "m.csv"
        >>> write_metrics_csv(p, [{"epoch": 1, "lr": 0.1}], ["epoch", "lr", "val_dice_mean"])
        >>> p.read_text().splitlines()
        ['epoch,lr,val_dice_mean', '1,0.1,']
    """
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({key: _cell(row.get(key)) for key in columns})
    with atomic_path(path, overwrite=True) as tmp:
        tmp.write_text(buffer.getvalue())


def write_case_scores_csv(path: Path, epoch: int, cases: Sequence[CaseScores], class_names: Sequence[str]) -> None:
    """Write one row per case with its Dice, sensitivity and precision per foreground class (atomically).

    Examples:
        >>> import tempfile
        >>> p = Path(tempfile.mkdtemp()) / "v.csv"
        >>> case = CaseScores("a", {"opacity": 0.5}, {"opacity": 1.0}, {"opacity": 0.25})
        >>> write_case_scores_csv(p, 3, [case], ["background", "opacity"])
        >>> p.read_text().splitlines()
        ['epoch,case_id,dice_opacity,sensitivity_opacity,precision_opacity', '3,a,0.5,1.0,0.25']
    """
    foreground = list(class_names[1:])
    columns = ["epoch", "case_id"]
    for name in foreground:
        columns += [f"dice_{name}", f"sensitivity_{name}", f"precision_{name}"]
    rows = []
    for case in cases:
        row: dict[str, Any] = {"epoch": epoch, "case_id": case.case_id}
        for name in foreground:
            row[f"dice_{name}"] = case.dice.get(name)
            row[f"sensitivity_{name}"] = case.sensitivity.get(name)
            row[f"precision_{name}"] = case.precision.get(name)
        rows.append(row)
    write_metrics_csv(path, rows, columns)


def make_progress(console: Console) -> Progress:
    """A progress bar with step count, the running loss, elapsed time and ETA."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]}"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=console,
        transient=True,
    )


class TrainLogger:
    """Rank 0's sink for epoch rows: ``metrics.csv`` and, when enabled, TensorBoard scalars.

    Args:
        run_dir: The run folder.
        class_names: Model classes (CSV columns).
        tensorboard: Write TensorBoard event files under ``run_dir/tensorboard``.
        purge_step: On resume, the global step the run continues from: TensorBoard events written after it by
            the interrupted run are dropped.
    """

    def __init__(self, run_dir: Path, class_names: Sequence[str], *, tensorboard: bool, purge_step: int | None) -> None:
        self.path = run_dir / METRICS_NAME
        self.columns = csv_columns(class_names)
        self.writer: Any = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(run_dir / TENSORBOARD_DIR), purge_step=purge_step)

    def log_epoch(self, rows: Sequence[Mapping[str, Any]]) -> None:
        """Rewrite ``metrics.csv`` from all rows and send the last row's numbers to TensorBoard."""
        write_metrics_csv(self.path, rows, self.columns)
        if self.writer is None or not rows:
            return
        row = rows[-1]
        step = int(row["step"])
        for key, value in row.items():
            if key in ("epoch", "step") or not isinstance(value, (int, float)) or math.isnan(float(value)):
                continue
            group = "val" if key.startswith("val_") else "train"
            self.writer.add_scalar(f"{group}/{key.removeprefix('val_')}", float(value), step)
        self.writer.flush()

    def close(self) -> None:
        """Close the TensorBoard writer."""
        if self.writer is not None:
            self.writer.close()
