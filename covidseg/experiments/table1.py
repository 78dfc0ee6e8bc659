"""The Table 1 driver: every (source, regularization) cell trained, evaluated on the held-out test split, tabled.

A cell is one ``covidseg train`` run whose config is the preset's ``base`` files, the column's scheme file
(``schemes.zero`` / ``fixed`` / ``layerwise``), the preset's ``set``, then the column's strengths
(``regularization.sp_lambda`` or ``regularization.schedule``), ``source.path`` of the row, and the run folder
``<out>/cells/<row>__<column>/``. Its ``best.pt`` (selected on the validation cases) is evaluated on the test
cases with :func:`covidseg.evaluate.checkpoint_eval.evaluate_checkpoint` (3-D per case, the paper's way).

The run folder ``<out>/``:

* ``table1.yaml``: the preset as this invocation resolved it;
* ``splits.json``: the one case split of every cell (made once from the first cell's config, or the
  ``data.splits`` the preset names); it must hold test cases (``data.test_fraction > 0``);
* ``sources/``: built sources (:mod:`covidseg.experiments.table1_sources`); ``cache/``: the shared slice cache;
* ``cells/<cell>/``: the run folder of the cell (``config.yaml``, ``metrics.csv``, ``best.pt``, ``last.pt``),
  ``sweep_result.json`` when its training finished (written by the sweep's cell runner, reused here),
  ``test/per_case.csv`` + ``test/summary.json`` (as ``covidseg evaluate`` writes them, so
  ``covidseg compare cells/A/test cells/B/test`` pairs two cells case by case) and ``table1_cell.json`` when it
  was evaluated: the cell is complete and is skipped by a later invocation;
* ``results.csv`` and ``table1.md``: rewritten (atomically) after every cell.

A later invocation with the same folder continues: complete cells are skipped, a cell killed during training
resumes from its ``last.pt`` (or starts again if it had none), a cell trained but not evaluated is evaluated.
A cell whose saved config differs from what the preset now asks for is refused (use another folder or
``overwrite=True``, which deletes the folder first).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console

from covidseg.config import RunConfig, load_config
from covidseg.errors import ConfigError, InputError, OutputExistsError
from covidseg.experiments.table1_report import format_table1, write_results_csv, write_table1_md
from covidseg.experiments.table1_sources import STAND_IN_NAME, check_sources, prepare_sources
from covidseg.experiments.table1_spec import ROW_LABELS, Column, Table1Spec, expand_columns, load_table1_spec
from covidseg.io.atomic import atomic_path

__all__ = [
    "CELL_RESULT_NAME",
    "Cell",
    "Table1Result",
    "cell_config",
    "expand_cells",
    "run_table1",
]

CELL_RESULT_NAME = "table1_cell.json"
"""Written into a cell's run folder once it is trained and evaluated: the cell is complete."""
CELLS_DIR = "cells"
SPLITS_NAME = "splits.json"
SPEC_NAME = "table1.yaml"
CSV_NAME = "results.csv"
MD_NAME = "table1.md"
TEST_SPLIT = "test"
TEST_DIR = "test"
_PLACEHOLDER_SOURCE = Path("source.pt")


@dataclass(frozen=True)
class Cell:
    """One cell of the table: a source row and a regularization column.

    Examples:
        >>> from covidseg.experiments.table1_spec import GridSection
        >>> Cell("imagenet", expand_columns(GridSection(fixed=[5.0]))[1]).cell_id
        'imagenet__l2sp-5'
    """

    row: str
    column: Column

    @property
    def cell_id(self) -> str:
        """The cell's run folder name, ``<row>__<column>``."""
        return f"{self.row}__{self.column.column_id}"


@dataclass
class Table1Result:
    """What a Table 1 run produced.

    Attributes:
        out_dir: The run folder.
        results: One result per cell, in table order (metrics, settings, timings; see ``results.csv``).
        results_csv: ``results.csv``.
        table_md: ``table1.md``.
        markdown: The text of ``table1.md``.
        wall_s: Seconds this invocation took.
    """

    out_dir: Path
    results: list[dict[str, Any]]
    results_csv: Path
    table_md: Path
    markdown: str
    wall_s: float


def expand_cells(spec: Table1Spec) -> list[Cell]:
    """The cells in table order; "no pre-training" has only the λ = 0 cell (no source to regularize toward).

    With ``grid.cells`` only the cells it names (in table order).

    Raises:
        ConfigError: ``grid.cells`` names a cell that is not in the grid.

    Examples:
        >>> from covidseg.experiments.table1_spec import SCHEMES_EXAMPLE
        >>> spec = Table1Spec.model_validate({"base": ["d.yaml"], "schemes": SCHEMES_EXAMPLE,
        ...     "sources": {"imagenet": {"stand_in": True}}, "grid": {"rows": ["none", "imagenet"], "fixed": [5]}})
        >>> [c.cell_id for c in expand_cells(spec)][:4]
        ['none__lambda-0', 'imagenet__lambda-0', 'imagenet__l2sp-5', 'imagenet__log-15-1.5']
    """
    columns = expand_columns(spec.grid)
    cells = [Cell(row, c) for row in spec.grid.rows for c in columns if row != "none" or c.kind == "zero"]
    if spec.grid.cells is None:
        return cells
    known = [c.cell_id for c in cells]
    unknown = [c for c in spec.grid.cells if c not in known]
    if unknown:
        raise ConfigError(f"grid.cells has {unknown}, not cells of this grid; expected some of {known}")
    return [c for c in cells if c.cell_id in spec.grid.cells]


def cell_config(spec: Table1Spec, cell: Cell, *, source: Path | None, out: Path) -> RunConfig:
    """The run config of a cell (see the module docstring for the order of files and overrides).

    ``data.splits`` defaults to ``<out>/splits.json`` and ``data.cache_dir`` to ``<out>/cache``.

    Raises:
        ConfigError: An invalid base, scheme file or override (one line).

    Examples:
        >>> spec = load_table1_spec("configs/experiments/table1_phantom.yaml")
        >>> cell = [c for c in expand_cells(spec) if c.cell_id == "imagenet__l2sp-5"][0]
        >>> cfg = cell_config(spec, cell, source=Path("in.pth"), out=Path("runs/t1"))
        >>> cfg.regularization.name, cfg.regularization.params()["sp_lambda"], str(cfg.source.path)
        ('l2sp', 5.0, 'in.pth')
        >>> str(cfg.output.root), cfg.output.name, str(cfg.data.splits)
        ('runs/t1/cells', 'imagenet__l2sp-5', 'runs/t1/splits.json')
    """
    files = [*spec.base, getattr(spec.schemes, cell.column.kind)]
    overrides = [
        *spec.set,
        *cell.column.overrides,
        f"source.path={json.dumps(str(source)) if source is not None else 'null'}",
        f"output.root={json.dumps(str(out / CELLS_DIR))}",
        f"output.name={cell.cell_id}",
    ]
    config = load_config(files, overrides)
    extra = []
    if config.data.splits is None:
        extra.append(f"data.splits={json.dumps(str(out / SPLITS_NAME))}")
    if config.data.cache_dir is None:
        extra.append(f"data.cache_dir={json.dumps(str(out / 'cache'))}")
    return load_config(base=config.to_yaml_dict(), overrides=extra) if extra else config


def _stand_in_source(cell: Cell) -> Path | None:
    """A source path for checking a cell's config before its source exists (the file is not read)."""
    return None if cell.row == "none" else _PLACEHOLDER_SOURCE


def _shared_splits(config: RunConfig, out: Path) -> tuple[Path, tuple[str, ...]]:
    """Make (or check) the split every cell uses; returns its file and the test case ids."""
    from covidseg.data.splits import load_splits, save_splits
    from covidseg.train import prepare as P

    default = out / SPLITS_NAME
    path = Path(config.data.splits) if config.data.splits is not None else default
    if path != default and not path.is_file():
        raise InputError(f"data.splits {path} does not exist; fix the path or drop data.splits to make a split")
    cases = P.prepare_cases(config)
    if path.is_file():
        splits = load_splits(path, cases)
    else:
        fresh = load_config(base=config.to_yaml_dict(), overrides=["data.splits=null"])
        splits = P.make_splits(fresh, cases)
        if splits.test:
            save_splits(splits, path)
    if not splits.test:
        raise InputError(
            f"the case split ({path}) has no test cases; Table 1 reports the held-out test split: "
            "set data.test_fraction > 0 (e.g. in the preset's set:)"
        )
    return path, tuple(splits.test)


def _row_labels(spec: Table1Spec) -> dict[str, str]:
    labels = dict(ROW_LABELS)
    if spec.sources.imagenet is not None and spec.sources.imagenet.stand_in:
        labels["imagenet"] = "ImageNet (random stand-in)"
        both = spec.sources.imagenet_medicalnet
        if both is not None and both.pretrain:
            labels["imagenet_medicalnet"] = "ImageNet (stand-in)+MedicalNet"
    return labels


def _flatten(summary: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"n_test_cases": summary["n_cases"], "volume_unit": summary["volume_unit"]}
    for structure, metrics in summary["structures"].items():
        for metric, stats in metrics.items():
            out[f"{structure}_{metric}"] = stats["mean"]
            out[f"{structure}_{metric}_std"] = stats["std"]
    out["pooled_opacity_dice"] = summary["pooled"]["opacity"]["dice"]
    return out


def _comparable(config: dict[str, Any]) -> dict[str, Any]:
    """A saved run config without ``data.splits`` (a cell may name the shared file or its own copy)."""
    plain: dict[str, Any] = json.loads(json.dumps(config))
    plain.get("data", {}).pop("splits", None)
    return plain


def _check_settings(config: RunConfig, run_dir: Path) -> None:
    """Refuse a cell folder whose saved config differs from what the preset asks for now."""
    saved = run_dir / "config.yaml"
    if saved.is_file() and _comparable(yaml.safe_load(saved.read_text()) or {}) != _comparable(config.to_yaml_dict()):
        raise ConfigError(
            f"{run_dir} was trained with other settings than this preset asks for; "
            "use another --out, or --overwrite to start again"
        )


def _run_cell(cell: Cell, config: RunConfig, label: str, console: Console | None) -> dict[str, Any]:
    """Train (or resume, or skip) and evaluate one cell; returns its result record."""
    from covidseg.evaluate.checkpoint_eval import evaluate_checkpoint
    from covidseg.evaluate.scores import summarize
    from covidseg.evaluate.writers import write_evaluation
    from covidseg.train.sweep import train_run_folder  # the sweep's train/resume/skip of one run folder

    run_dir = Path(config.output.root) / str(config.output.name)
    _check_settings(config, run_dir)
    start = time.perf_counter()
    record = train_run_folder(config, run_dir, console)  # trains, resumes from last.pt, or skips a finished run
    result_file = run_dir / CELL_RESULT_NAME
    if result_file.is_file():
        return dict(json.loads(result_file.read_text()), skipped=True)
    train_s = time.perf_counter() - start
    checkpoint = run_dir / "best.pt" if (run_dir / "best.pt").is_file() else run_dir / "last.pt"
    start = time.perf_counter()
    cases = evaluate_checkpoint(
        checkpoint,
        run_dir,
        TEST_SPLIT,
        device=config.train.device,
        precision=config.train.precision,
        cache_dir=config.data.cache_dir,
    )
    eval_s = time.perf_counter() - start
    info = {"cell": cell.cell_id, "checkpoint": str(checkpoint), "split": TEST_SPLIT}
    write_evaluation(run_dir / TEST_DIR, cases, info, overwrite=True)  # for covidseg compare A/test B/test
    reg = config.regularization
    result: dict[str, Any] = {
        "cell": cell.cell_id,
        "row": cell.row,
        "row_label": label,
        "column": cell.column.column_id,
        "column_label": cell.column.label,
        "kind": cell.column.kind,
        "penalty": reg.name,
        "sp_lambda": reg.params().get("sp_lambda"),
        "lambda0": cell.column.params.get("lambda0"),
        "alpha": cell.column.params.get("alpha"),
        "decoder_lambda": reg.params().get("decoder_lambda"),
        "source": None if config.source.path is None else str(config.source.path),
        **_flatten(summarize(cases)),
        "val_score": record["score"],
        "best_epoch": record["best_epoch"],
        "epochs": record["epochs"],
        "train_s": None if record["skipped"] else round(train_s, 2),
        "eval_s": round(eval_s, 2),
        "run_dir": str(run_dir),
        "checkpoint": checkpoint.name,
        "per_case": [case.to_row() for case in cases],
    }
    with atomic_path(result_file, overwrite=True) as tmp:
        tmp.write_text(json.dumps(result, indent=1) + "\n")
    return dict(result, skipped=False)


def _prepare_folder(out: Path, overwrite: bool) -> None:
    if out.exists() and overwrite:
        shutil.rmtree(out)
    elif out.exists() and any(out.iterdir()) and not (out / SPEC_NAME).is_file():
        raise OutputExistsError(f"{out} exists and is not a Table 1 run folder; choose another --out or --overwrite")
    out.mkdir(parents=True, exist_ok=True)


def run_table1(
    spec: Table1Spec | str | os.PathLike[str],
    out_dir: str | os.PathLike[str] | None = None,
    *,
    overrides: Sequence[str] = (),
    run_overrides: Sequence[str] = (),
    overwrite: bool = False,
    console: Console | None = None,
) -> Table1Result:
    """Run (or continue) the Table 1 grid of a preset; see the module docstring.

    Args:
        spec: A preset file or a loaded :class:`Table1Spec`.
        out_dir: The run folder (default: the preset's ``output``, else ``runs/table1``).
        overrides: Preset overrides (``grid.rows=[imagenet]``, ``sources.imagenet.path=FILE``); only with a
            preset file.
        run_overrides: Run-config overrides of every cell, after the preset's ``set`` (``data.root=/data``).
        overwrite: Delete an existing run folder first (otherwise it is continued).
        console: Where progress is printed (None: silent).

    Returns:
        The :class:`Table1Result`.

    Raises:
        ConfigError: A bad preset, base config, scheme, pretrain config or a folder made with other settings
            (before anything trains where possible).
        InputError: Missing source files, bad data, a split without test cases.
        OutputExistsError: ``out_dir`` exists and is not a Table 1 run folder.

    Examples:
        >>> run_table1("configs/experiments/table1_phantom.yaml", overrides=["grid.rows=[oxford]"])
        Traceback (most recent call last):
        ...
        covidseg.errors.ConfigError: invalid Table 1 preset ...: grid.rows.0: Input should be 'none', ...
    """
    started = time.perf_counter()
    say: Callable[[str], None] = console.print if console is not None else (lambda *_: None)
    if not isinstance(spec, Table1Spec):
        spec = load_table1_spec(spec, list(overrides))
    if run_overrides:
        spec = spec.model_copy(update={"set": [*spec.set, *run_overrides]})
    out = Path(out_dir) if out_dir is not None else spec.output or Path("runs") / "table1"
    cells = expand_cells(spec)
    used = {c.cell_id for c in cells}
    columns = [c for c in expand_columns(spec.grid) if any(f"{r}__{c.column_id}" in used for r in spec.grid.rows)]
    rows = [r for r in spec.grid.rows if any(c.row == r for c in cells)]
    for cell in cells:  # every cell's config is valid before anything is written or trained
        cell_config(spec, cell, source=_stand_in_source(cell), out=out)
    check_sources(spec, out, rows=rows)  # files exist, pretrain configs are valid
    _prepare_folder(out, overwrite)
    with atomic_path(out / SPEC_NAME, overwrite=True) as tmp:
        tmp.write_text(yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False, allow_unicode=True))
    first = cell_config(spec, cells[0], source=_stand_in_source(cells[0]), out=out)
    splits_file, test_ids = _shared_splits(first, out)
    say(f"[bold]{spec.title}[/]: {len(cells)} cells, test cases {list(test_ids)} ({splits_file})")
    sources = prepare_sources(spec, out, rows=rows, console=console)
    labels = _row_labels(spec)
    notes = [
        f"Test cases: {', '.join(test_ids)}. Settings per cell: cells/<cell>/config.yaml; all metrics: {CSV_NAME}."
    ]
    if sources.get("imagenet") is not None and Path(str(sources["imagenet"])).name == STAND_IN_NAME:
        notes.append("ImageNet here is a random stand-in (torchvision layout, random weights), not ImageNet weights.")
    results: list[dict[str, Any]] = []
    markdown = ""
    for i, cell in enumerate(cells, start=1):
        config = cell_config(spec, cell, source=sources[cell.row], out=out)
        say(f"[bold cyan]cell {i}/{len(cells)}[/] {cell.cell_id}: {labels[cell.row]}, {cell.column.label}")
        result = _run_cell(cell, config, labels[cell.row], console)
        state = "complete already" if result.pop("skipped") else "done"
        say(
            f"  {state}: test opacity Dice {result['opacity_dice']:.3f}, sensitivity "
            f"{result['opacity_sensitivity']:.3f}, precision {result['opacity_precision']:.3f}"
        )
        results.append(result)
        write_results_csv(out / CSV_NAME, results)
        markdown = format_table1(results, rows, columns, row_labels=labels, title=spec.title, notes=notes)
        write_table1_md(out / MD_NAME, markdown)
    wall = time.perf_counter() - started
    say(f"[green]{spec.title} finished in {wall:.0f} s[/]: {out / MD_NAME}, {out / CSV_NAME}")
    return Table1Result(out, results, out / CSV_NAME, out / MD_NAME, markdown, wall)
