"""Table 1 outputs: the Markdown layout from known results (exact text) and results.csv."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from covidseg.experiments.table1_report import CSV_COLUMNS, format_table1, write_results_csv, write_table1_md
from covidseg.experiments.table1_spec import ROW_LABELS, GridSection, expand_columns


def _result(row: str, column: str, dice: float, sens: float, prec: float) -> dict[str, Any]:
    return {
        "row": row,
        "column": column,
        "opacity_dice": dice,
        "opacity_sensitivity": sens,
        "opacity_precision": prec,
        "n_test_cases": 4,
    }


KNOWN = [
    _result("none", "lambda-0", 0.5, 0.61234, 0.4),
    _result("imagenet", "lambda-0", 0.7, 0.7, 0.7),
    _result("imagenet", "l2sp-5", 0.7125, 0.8, 0.66666),
    _result("imagenet", "log-20-1.5", 0.69, 0.9, 0.55),
    _result("medicalnet", "lambda-0", 0.6, 0.5, 0.75),
    _result("medicalnet", "l2sp-5", 0.6, 0.52, 0.7),
]


def test_markdown_table_in_the_papers_layout() -> None:
    columns = expand_columns(GridSection(fixed=[5.0], lambda0=[20.0], alpha=[1.5]))
    text = format_table1(
        KNOWN,
        ["none", "imagenet", "medicalnet", "imagenet_medicalnet"],
        columns,
        row_labels=ROW_LABELS,
        title="Table 1 (test)",
        notes=["A note."],
    )
    assert text == (
        "# Table 1 (test)\n"
        "\n"
        "Opacity Dice / sensitivity / precision on the held-out test split (mean of 4 cases); best Dice in bold.\n"
        "\n"
        "| Source | λ = 0 | L2-SP λ = 5 | λ_i = 20 − 1.5·log i |\n"
        "|---|---|---|---|\n"
        "| No pre-training | **0.500 / 0.612 / 0.400** | - | - |\n"
        "| ImageNet | 0.700 / 0.700 / 0.700 | **0.713 / 0.800 / 0.667** | 0.690 / 0.900 / 0.550 |\n"
        "| MedicalNet | **0.600 / 0.500 / 0.750** | **0.600 / 0.520 / 0.700** | n/a |\n"
        "| ImageNet+MedicalNet | n/a | n/a | n/a |\n"
        "\n"
        "A note.\n"
    )


def test_files_are_written_atomically_with_every_column(tmp_path: Path) -> None:
    rows = [dict(KNOWN[0], cell="none__lambda-0", lung_dice=None, extra="ignored")]
    path = write_results_csv(tmp_path / "results.csv", rows)
    with path.open() as f:
        read = list(csv.DictReader(f))
    assert list(read[0]) == CSV_COLUMNS
    assert read[0]["cell"] == "none__lambda-0"
    assert float(read[0]["opacity_sensitivity"]) == 0.61234
    assert read[0]["lung_dice"] == ""
    md = write_table1_md(tmp_path / "table1.md", "# T\n")
    assert md.read_text() == "# T\n"
    write_table1_md(md, "# U\n")
    assert md.read_text() == "# U\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.csv", "table1.md"]
