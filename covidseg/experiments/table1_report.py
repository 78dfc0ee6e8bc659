"""Table 1's outputs: ``results.csv`` (one row per cell, every metric) and ``table1.md`` (the paper's layout).

``table1.md`` has one row per source and one column per regularization; each cell reads
``Dice / Sens. / Prec.`` of the opacity class (means over the test cases, 3 decimals), the best Dice of each row
in bold. Cells that do not apply (the "no pre-training" row has no source to regularize toward) read ``-``;
cells of the grid without a result yet read ``n/a``.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from covidseg.experiments.table1_spec import Column
from covidseg.io.atomic import atomic_path

__all__ = [
    "CSV_COLUMNS",
    "NOT_APPLICABLE",
    "PENDING",
    "format_cell",
    "format_table1",
    "write_results_csv",
    "write_table1_md",
]

NOT_APPLICABLE = "-"
PENDING = "n/a"
DECIMALS = 3
TABLE_METRICS = ("opacity_dice", "opacity_sensitivity", "opacity_precision")
"""The three numbers of a Markdown cell, in order."""
CSV_COLUMNS = [
    "cell",
    "row",
    "row_label",
    "column",
    "column_label",
    "kind",
    "penalty",
    "sp_lambda",
    "lambda0",
    "alpha",
    "decoder_lambda",
    "source",
    "n_test_cases",
    *(
        f"{s}_{m}{stat}"
        for s in ("opacity", "lung")
        for m in ("dice", "sensitivity", "precision")
        for stat in ("", "_std")
    ),
    "opacity_volume_diff",
    "opacity_volume_diff_std",
    "volume_unit",
    "pooled_opacity_dice",
    "val_score",
    "best_epoch",
    "epochs",
    "train_s",
    "eval_s",
    "run_dir",
]
"""Columns of ``results.csv``; metric columns are means over test cases, ``*_std`` their sample std."""


def format_cell(result: Mapping[str, Any], *, bold: bool = False) -> str:
    """``Dice / Sens. / Prec.`` of one result, 3 decimals, optionally bold.

    Examples:
        >>> format_cell({"opacity_dice": 0.71234, "opacity_sensitivity": 0.8, "opacity_precision": 0.6666})
        '0.712 / 0.800 / 0.667'
        >>> format_cell({"opacity_dice": 0.5, "opacity_sensitivity": 0.5, "opacity_precision": 0.5}, bold=True)
        '**0.500 / 0.500 / 0.500**'
    """
    text = " / ".join(_number(result.get(key)) for key in TABLE_METRICS)
    return f"**{text}**" if bold else text


def _number(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return PENDING
    return f"{float(value):.{DECIMALS}f}"


def _dice(result: Mapping[str, Any]) -> float:
    value = result.get("opacity_dice")
    return float(value) if isinstance(value, (int, float)) and not math.isnan(float(value)) else -math.inf


def format_table1(
    results: Sequence[Mapping[str, Any]],
    rows: Sequence[str],
    columns: Sequence[Column],
    *,
    row_labels: Mapping[str, str],
    title: str = "Table 1",
    notes: Sequence[str] = (),
) -> str:
    """The Markdown table: rows = sources, columns = regularization, best Dice per row in bold.

    Args:
        results: Cell results with ``row``, ``column`` and the :data:`TABLE_METRICS` keys (and ``n_test_cases``).
        rows: Row ids in order.
        columns: The columns in order.
        row_labels: Row id -> label.
        title: The heading.
        notes: Extra lines printed under the table.

    Examples:
        >>> from covidseg.experiments.table1_spec import GridSection, expand_columns
        >>> cols = expand_columns(GridSection(fixed=[5.0], lambda0=[], alpha=[]))
        >>> res = [{"row": "none", "column": "lambda-0", "opacity_dice": 0.4, "opacity_sensitivity": 0.5,
        ...         "opacity_precision": 0.3, "n_test_cases": 2}]
        >>> print(format_table1(res, ["none"], cols, row_labels={"none": "No pre-training"}))
        # Table 1
        <BLANKLINE>
        Opacity Dice / sensitivity / precision on the held-out test split (mean of 2 cases); best Dice in bold.
        <BLANKLINE>
        | Source | λ = 0 | L2-SP λ = 5 |
        |---|---|---|
        | No pre-training | **0.400 / 0.500 / 0.300** | - |
        <BLANKLINE>
    """
    by_cell = {(str(r["row"]), str(r["column"])): r for r in results}
    counts = sorted({int(r["n_test_cases"]) for r in results if r.get("n_test_cases") is not None})
    cases = "/".join(str(c) for c in counts) if counts else "?"
    lines = [
        f"# {title}",
        "",
        f"Opacity Dice / sensitivity / precision on the held-out test split (mean of {cases} cases); "
        "best Dice in bold.",
        "",
        "| Source | " + " | ".join(c.label for c in columns) + " |",
        "|---|" + "---|" * len(columns),
    ]
    for row in rows:
        found = [by_cell.get((row, c.column_id)) for c in columns]
        scored = [_dice(r) for r in found if r is not None]
        best = max(scored) if scored else -math.inf
        cells = []
        for column, result in zip(columns, found, strict=True):
            if row == "none" and column.kind != "zero":
                cells.append(NOT_APPLICABLE)
            elif result is None:
                cells.append(PENDING)
            else:
                cells.append(format_cell(result, bold=math.isfinite(best) and _dice(result) == best))
        lines.append(f"| {row_labels.get(row, row)} | " + " | ".join(cells) + " |")
    if notes:
        lines += ["", *notes]
    return "\n".join(lines) + "\n"


def write_table1_md(path: Path, text: str) -> Path:
    """Write the Markdown table atomically (replacing the previous version).

    Examples:
        >>> import tempfile
        >>> write_table1_md(Path(tempfile.mkdtemp()) / "table1.md", "# Table 1").read_text()
        '# Table 1'
    """
    with atomic_path(path, overwrite=True) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return path


def write_results_csv(path: Path, results: Sequence[Mapping[str, Any]]) -> Path:
    """Write ``results.csv`` (columns :data:`CSV_COLUMNS`, empty where a value is absent) atomically.

    Examples:
        >>> import tempfile
        >>> f = write_results_csv(Path(tempfile.mkdtemp()) / "results.csv", [{"cell": "none__lambda-0"}])
        >>> f.read_text().splitlines()[1].split(",")[:2]
        ['none__lambda-0', '']
    """
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for result in results:
        writer.writerow({key: "" if result.get(key) is None else result[key] for key in CSV_COLUMNS})
    with atomic_path(path, overwrite=True) as tmp:
        tmp.write_text(buffer.getvalue(), encoding="utf-8")
    return path
