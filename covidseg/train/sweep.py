"""``covidseg sweep``: a grid over the transfer penalty's strengths, each point a short ``covidseg train`` run.

Sweep spec (YAML; unknown keys are errors; relative ``base`` paths are relative to the spec file)::

    base: [../datasets/phantom.yaml, ../schemes/l2sp_layerwise_20_1.5.yaml]  # run config files, merged in order
    set: [train.epochs=5, source.path=densenet121.pth]  # overrides of the run config (before the CLI's --set)
    grid:
      penalty: l2sp_layerwise        # a penalty that takes a schedule; default: the base's if it takes one,
                                     # else l2sp_layerwise
      lambda0: [10, 20]              # layer-wise schedule λ_i = max(0, λ0 − α·ln i): every (λ0, α) pair
      alpha: [1.0, 1.5, 2.0]
      fixed: [0.1, 1.0, 3.0]         # fixed λ: the same λ for every encoder layer (constant schedule)
      decoder_lambda: [0.0, 0.01]    # optional: λ' crossed with every point (default: the base's, else 0.01)
      axes: {optim.lr: [0.001, 0.0003]}  # optional: any other run-config keys, crossed with every point
    metric: dice_opacity             # validation metric to rank by (default: the base's train.monitor)
    retrain_epochs: null             # retrain the best point with this many epochs (or --retrain-epochs N)
    output: runs/sweep-l2sp          # sweep folder (or -o OUT_DIR); default runs/sweep-<spec file stem>

Every point trains with the base config and its own ``regularization`` (name, schedule, decoder_lambda; the
base's other penalty keywords that the penalty accepts are kept) in ``<out>/runs/<point id>/``. The first
point's ``splits.json`` is copied to ``<out>/splits.json`` and every later point (and the retraining) reuses it
(``data.splits``), so all points see the same cases; all share the slice cache (``data.cache_dir``, default
``<out>/cache``). The score of a point is its best validation ``metric`` (the run's ``train.monitor``).

A point whose folder holds ``sweep_result.json`` is complete and skipped when the sweep runs again; a point
whose folder has a ``last.pt`` but no result (a killed sweep) is resumed; a folder without ``last.pt`` is
started again. Points whose saved ``config.yaml`` differs from what the spec now asks for are refused (use
another output folder). The sweep writes ``sweep.csv`` and ``sweep.md`` (rows sorted by score, best first, with
the run folders) after every point, and reports the best setting.
"""

from __future__ import annotations

import csv
import inspect
import io
import itertools
import json
import math
import os
import re
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from rich.console import Console

from covidseg.config import RunConfig, load_config
from covidseg.config.loader import apply_overrides, read_yaml_mapping
from covidseg.errors import ConfigError
from covidseg.io.atomic import atomic_path

__all__ = [
    "RESULT_NAME",
    "GridSection",
    "SweepPoint",
    "SweepResult",
    "SweepSpec",
    "expand_grid",
    "load_sweep_spec",
    "run_sweep",
    "train_run_folder",
]

RESULT_NAME = "sweep_result.json"
"""Written into a point's run folder when its training finished: the point is complete."""
DEFAULT_PENALTY = "l2sp_layerwise"
DEFAULT_DECODER_LAMBDA = 0.01
RETRAIN_NAME = "best-retrained"
_KEEP_ALWAYS = ("fisher_path", "fisher_batches")
_UNSAFE = re.compile(r"[^A-Za-z0-9.+-]+")


class GridSection(BaseModel):
    """The grid: layer-wise (λ0, α) pairs, fixed λ values, and values crossed with all of them."""

    model_config = ConfigDict(extra="forbid")

    penalty: str | None = None
    lambda0: list[float] = Field(default_factory=list)
    alpha: list[float] = Field(default_factory=list)
    fixed: list[float] = Field(default_factory=list)
    decoder_lambda: list[float] = Field(default_factory=list)
    axes: dict[str, list[Any]] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _check(self) -> GridSection:
        if bool(self.lambda0) != bool(self.alpha):
            raise ValueError("grid.lambda0 and grid.alpha go together: give both lists (every pair is a point)")
        if not self.lambda0 and not self.fixed:
            raise ValueError("the grid is empty: give grid.lambda0 + grid.alpha and/or grid.fixed")
        values = [*self.lambda0, *self.alpha, *self.fixed, *self.decoder_lambda]
        if any(not math.isfinite(v) or v < 0 for v in values):
            raise ValueError(f"grid strengths must be finite and >= 0, got {values}")
        for key, options in self.axes.items():
            if not options:
                raise ValueError(f"grid.axes.{key} has no values")
            if key.split(".")[0] == "regularization":
                raise ValueError(f"grid.axes.{key}: set penalty strengths with lambda0/alpha/fixed/decoder_lambda")
        return self


class SweepSpec(BaseModel):
    """A sweep spec; see the module docstring for the YAML form."""

    model_config = ConfigDict(extra="forbid")

    base: list[Path] = Field(min_length=1)
    set: list[str] = Field(default_factory=list)
    grid: GridSection
    metric: Literal["dice_opacity", "dice_mean"] | None = None
    retrain_epochs: int | None = Field(None, ge=1)
    output: Path | None = None


@dataclass(frozen=True)
class SweepPoint:
    """One grid point.

    Attributes:
        point_id: Its run folder name.
        kind: ``layerwise`` or ``fixed``.
        params: The swept values (``lambda0``, ``alpha`` or ``lambda``, ``decoder_lambda``, axis keys).
        regularization: The run's ``regularization`` section.
        axes: Extra run-config overrides of this point.
    """

    point_id: str
    kind: str
    params: dict[str, Any]
    regularization: dict[str, Any]
    axes: dict[str, Any] = field(default_factory=dict)


@dataclass
class SweepResult:
    """What a sweep produced.

    Attributes:
        out_dir: The sweep folder.
        rows: One row per point, best first.
        best: The best row.
        table_csv: ``sweep.csv``.
        table_md: ``sweep.md``.
        retrained: The retraining row (None without retraining).
    """

    out_dir: Path
    rows: list[dict[str, Any]]
    best: dict[str, Any]
    table_csv: Path
    table_md: Path
    retrained: dict[str, Any] | None = None


def load_sweep_spec(path: str | os.PathLike[str]) -> SweepSpec:
    """Read a sweep spec; relative ``base`` paths become relative to the spec's folder.

    Raises:
        ConfigError: Missing file, bad YAML, unknown keys or invalid values (one line).
    """
    file = Path(path)
    raw = read_yaml_mapping(
        file, name="sweep spec", see="see configs/sweep/ for examples", contents="with base:, grid:, ..."
    )
    try:
        spec = SweepSpec.model_validate(raw)
    except ValidationError as exc:
        parts = []
        for error in exc.errors():
            loc = ".".join(str(p) for p in error["loc"])
            message = (
                "unknown key" if error["type"] == "extra_forbidden" else error["msg"].removeprefix("Value error, ")
            )
            parts.append(f"{loc}: {message}" if loc else message)
        raise ConfigError(f"invalid sweep spec {file}: " + "; ".join(parts)) from None
    spec.base = [p if p.is_absolute() else file.parent / p for p in spec.base]
    return spec


def _fmt(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _penalty_keywords(name: str) -> set[str]:
    from covidseg.transfer.penalties import PENALTIES

    if name not in PENALTIES:
        raise ConfigError(f"unknown penalty {name!r}; expected one of {sorted(PENALTIES)}")
    params = inspect.signature(PENALTIES[name]).parameters
    return {p for p, v in params.items() if v.kind == v.KEYWORD_ONLY}


def expand_grid(grid: GridSection, base_regularization: dict[str, Any]) -> list[SweepPoint]:
    """The grid's points in order: layer-wise pairs, then fixed λ, each crossed with λ' and the axes.

    Examples:
        >>> grid = GridSection(lambda0=[20.0], alpha=[1.0, 1.5], fixed=[3.0])
        >>> [p.point_id for p in expand_grid(grid, {"name": "none"})]
        ['layerwise_l0-20_a-1', 'layerwise_l0-20_a-1.5', 'fixed_l-3']
        >>> expand_grid(grid, {"name": "none"})[2].regularization
        {'name': 'l2sp_layerwise', 'schedule': 3.0, 'decoder_lambda': 0.01}
    """
    base_name = str(base_regularization.get("name", "none"))
    default = base_name if base_name != "none" and "schedule" in _penalty_keywords_safe(base_name) else DEFAULT_PENALTY
    penalty = grid.penalty or default
    accepted = _penalty_keywords(penalty)
    if "schedule" not in accepted:
        raise ConfigError(f"grid.penalty {penalty!r} takes no schedule; use one of the layer-wise penalties")
    kept = {k: v for k, v in base_regularization.items() if k in _KEEP_ALWAYS or (k in accepted and k != "schedule")}
    decoders: list[float | None] = list(grid.decoder_lambda) or [None]
    base_decoder = float(base_regularization.get("decoder_lambda", DEFAULT_DECODER_LAMBDA))
    schedules: list[tuple[str, dict[str, Any], Any, str]] = [
        (
            "layerwise",
            {"lambda0": l0, "alpha": a},
            {"name": "log", "lambda0": l0, "alpha": a},
            f"l0-{_fmt(l0)}_a-{_fmt(a)}",
        )
        for l0, a in itertools.product(grid.lambda0, grid.alpha)
    ]
    schedules += [("fixed", {"lambda": lam}, float(lam), f"l-{_fmt(lam)}") for lam in grid.fixed]
    axis_keys = list(grid.axes)
    points = []
    for (kind, params, schedule, tag), decoder, combo in itertools.product(
        schedules, decoders, itertools.product(*grid.axes.values())
    ):
        reg = {
            **kept,
            "name": penalty,
            "schedule": schedule,
            "decoder_lambda": base_decoder if decoder is None else decoder,
        }
        parts = [kind, tag] + ([f"d-{_fmt(decoder)}"] if decoder is not None else [])
        parts += [f"{key.rsplit('.', 1)[-1]}-{_fmt(v)}" for key, v in zip(axis_keys, combo, strict=True)]
        axes = dict(zip(axis_keys, combo, strict=True))
        all_params = {**params, "decoder_lambda": reg["decoder_lambda"], **axes}
        points.append(SweepPoint(_UNSAFE.sub("_", "_".join(parts)), kind, all_params, reg, axes))
    ids = [p.point_id for p in points]
    if len(set(ids)) != len(ids):
        raise ConfigError(f"the grid has repeated points {sorted({i for i in ids if ids.count(i) > 1})}")
    return points


def _penalty_keywords_safe(name: str) -> set[str]:
    try:
        return _penalty_keywords(name)
    except ConfigError:
        return set()


def _point_config(
    base: RunConfig, point: SweepPoint, out: Path, splits: Path | None, name: str, *, root: Path | None = None
) -> RunConfig:
    data = base.to_yaml_dict()
    data["regularization"] = dict(point.regularization)
    data["output"] = {**data["output"], "root": str(root if root is not None else out / "runs"), "name": name}
    if splits is not None and base.data.splits is None:
        data["data"]["splits"] = str(splits)
    if base.data.cache_dir is None:
        data["data"]["cache_dir"] = str(out / "cache")
    overrides = [f"{key}={json.dumps(value)}" for key, value in point.axes.items()]
    return load_config(base=apply_overrides(data, overrides))


def _comparable(config: dict[str, Any]) -> dict[str, Any]:
    out = json.loads(json.dumps(config))
    out.get("data", {}).pop("splits", None)
    return out


def _check_same(config: RunConfig, run_dir: Path) -> None:
    saved_file = run_dir / "config.yaml"
    if not saved_file.is_file():
        return
    saved = yaml.safe_load(saved_file.read_text()) or {}
    if _comparable(saved) != _comparable(config.to_yaml_dict()):
        raise ConfigError(
            f"{run_dir} was trained with other settings than this sweep asks for; use another output folder (-o)"
        )


def train_run_folder(config: RunConfig, run_dir: Path, console: Console | None) -> dict[str, Any]:
    """Train one run folder to completion: skip it when finished, resume it from ``last.pt``, or start it.

    The sweep, the Table 1 driver and similar drivers use it so that rerunning a driver continues where it stopped.
    A folder holding a run with other settings is refused.

    Args:
        config: The run config (``output.root / output.name`` is normally ``run_dir``).
        run_dir: The run folder.
        console: Where progress is printed (None: silent).

    Returns:
        ``{"score", "metric", "best_epoch", "epochs", "run_dir", "skipped"}``.

    Raises:
        ConfigError: ``run_dir`` holds a run with other settings.
    """
    from covidseg.train.trainer import train

    result_file = run_dir / RESULT_NAME
    if result_file.is_file():
        _check_same(config, run_dir)
        return dict(json.loads(result_file.read_text()), skipped=True)
    resume = None
    if run_dir.exists():
        _check_same(config, run_dir)
        if (run_dir / "last.pt").is_file():
            resume = run_dir
        else:
            shutil.rmtree(run_dir)  # killed before its first checkpoint: nothing to keep
    result = train(config, resume=resume, console=console)
    score = result.best_metric if math.isfinite(result.best_metric) else float("nan")
    record = {
        "score": score,
        "metric": result.monitor,
        "best_epoch": result.best_epoch,
        "epochs": result.epochs_completed,
        "run_dir": str(run_dir),
    }
    with atomic_path(result_file, overwrite=True) as tmp:
        tmp.write_text(json.dumps(record, indent=1) + "\n")
    return dict(record, skipped=False)


def _sort_key(row: dict[str, Any]) -> tuple[int, float]:
    score = float(row["score"])
    return (1, 0.0) if math.isnan(score) else (0, -score)


def _write_tables(out: Path, rows: Sequence[dict[str, Any]], columns: list[str], metric: str) -> tuple[Path, Path]:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=["rank", *columns], extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for rank, row in enumerate(rows, start=1):
        writer.writerow({"rank": rank, **{k: row.get(k, "") for k in columns}})
    csv_path, md_path = out / "sweep.csv", out / "sweep.md"
    with atomic_path(csv_path, overwrite=True) as tmp:
        tmp.write_text(buffer.getvalue())
    header = ["rank", *(metric if c == "score" else c for c in columns)]
    lines = [f"# Sweep: validation {metric}, best first", "", "| " + " | ".join(header) + " |"]
    lines.append("|" + "---|" * len(header))
    for rank, row in enumerate(rows, start=1):
        cells = [str(rank)] + [
            f"{row[c]:.4f}" if c == "score" and isinstance(row.get(c), float) else _fmt(row.get(c, "")) for c in columns
        ]
        lines.append("| " + " | ".join(cells) + " |")
    with atomic_path(md_path, overwrite=True) as tmp:
        tmp.write_text("\n".join(lines) + "\n")
    return csv_path, md_path


def run_sweep(
    spec_path: str | os.PathLike[str],
    *,
    overrides: Sequence[str] = (),
    out_dir: str | os.PathLike[str] | None = None,
    retrain_epochs: int | None = None,
    console: Console | None = None,
) -> SweepResult:
    """Run (or continue) the sweep a spec file describes; see the module docstring.

    Args:
        spec_path: The sweep YAML.
        overrides: Run-config ``key=value`` overrides applied after the spec's ``set``.
        out_dir: The sweep folder (default: the spec's ``output``, else ``runs/sweep-<spec stem>``).
        retrain_epochs: Retrain the best point with this many epochs (default: the spec's ``retrain_epochs``).
        console: Where to print progress.

    Raises:
        ConfigError, InputError: A bad spec, base config, grid or data (before the first run where possible).
    """
    say: Callable[[str], None] = console.print if console is not None else (lambda *_: None)
    spec = load_sweep_spec(spec_path)
    base = load_config(spec.base, [*spec.set, *overrides])
    metric = spec.metric or base.train.monitor
    if metric != base.train.monitor:
        base = load_config(base=base.to_yaml_dict(), overrides=[f"train.monitor={metric}"])
    out = Path(out_dir) if out_dir is not None else spec.output or Path("runs") / f"sweep-{Path(spec_path).stem}"
    points = expand_grid(spec.grid, base.to_yaml_dict()["regularization"])
    shared = out / "splits.json"
    for point in points:  # every point's config is valid before anything trains
        _point_config(base, point, out, shared, point.point_id)
    param_keys = list(dict.fromkeys(k for p in points for k in p.params))
    columns = ["point", "kind", "penalty", *param_keys, "score", "best_epoch", "epochs", "run_dir"]
    rows: list[dict[str, Any]] = []
    for i, point in enumerate(points, start=1):
        splits = shared if shared.is_file() else None
        config = _point_config(base, point, out, splits, point.point_id)
        say(f"sweep point {i}/{len(points)}: {point.point_id}")
        record = train_run_folder(config, out / "runs" / point.point_id, console)
        if record["skipped"]:
            say(f"  complete already: {metric} {record['score']:.4f}")
        first_splits = Path(record["run_dir"]) / "splits.json"
        if not shared.is_file() and base.data.splits is None and first_splits.is_file():
            with atomic_path(shared) as tmp:
                tmp.write_bytes(first_splits.read_bytes())
        rows.append(
            {
                "point": point.point_id,
                "kind": point.kind,
                "penalty": point.regularization["name"],
                **point.params,
                **record,
            }
        )
        rows.sort(key=_sort_key)
        csv_path, md_path = _write_tables(out, rows, columns, metric)
    best = rows[0]
    say(f"best: {best['point']} ({metric} {best['score']:.4f}) in {best['run_dir']}")
    retrained = None
    epochs = retrain_epochs if retrain_epochs is not None else spec.retrain_epochs
    if epochs is not None:
        point = next(p for p in points if p.point_id == best["point"])
        splits = shared if shared.is_file() else None
        config = _point_config(base, point, out, splits, RETRAIN_NAME, root=out)
        config = load_config(base=config.to_yaml_dict(), overrides=[f"train.epochs={epochs}"])
        say(f"retraining {best['point']} for {epochs} epochs")
        retrained = dict(train_run_folder(config, out / RETRAIN_NAME, console), point=best["point"])
        say(f"retrained: {metric} {retrained['score']:.4f} in {retrained['run_dir']}")
    return SweepResult(out, rows, best, csv_path, md_path, retrained)
