"""The Table 1 experiment preset: which sources, which regularization columns, which run config.

The paper's Table 1 crosses the source of the encoder (rows) with the transfer regularization (columns) and
reports opacity Dice / sensitivity / precision on held-out test cases. A preset (YAML; relative paths are
relative to the preset file; unknown keys are errors)::

    title: "Table 1 (phantom, small scale)"
    base: [../datasets/phantom.yaml]     # run-config files of every cell, merged in order
    set: [train.epochs=2]                # run-config overrides of every cell (data.test_fraction > 0!)
    schemes:                             # the scheme preset of each column kind (strengths overridden per column)
      zero: ../schemes/none.yaml         #   λ = 0: initialisation from the source only
      fixed: ../schemes/l2sp.yaml        #   fixed L2-SP: regularization.sp_lambda = λ
      layerwise: ../schemes/l2sp_layerwise_20_1.5.yaml   # regularization.schedule = log(λ0, α)
    sources:
      imagenet: {path: densenet121.pth}  # torchvision DenseNet121 state dict; or {stand_in: true} (see below)
      medicalnet: {path: source.pt}      # a `covidseg pretrain` output, or built here:
      # medicalnet: {pretrain: [../pretrain/phantom.yaml], set: [train.epochs=1]}
      imagenet_medicalnet: {pretrain: [../pretrain/phantom.yaml]}   # built with init.imagenet = the ImageNet file
    grid:
      rows: [none, imagenet, medicalnet, imagenet_medicalnet]
      zero: true                         # the λ = 0 column
      fixed: [3, 5, 8]                   # fixed L2-SP columns
      lambda0: [15, 20]                  # layer-wise columns λ_i = max(0, λ0 − α·ln i): every (λ0, α) pair
      alpha: [1.5, 2.0]
      decoder_lambda: null               # λ' of every penalized column (null: the scheme file's)
      cells: null                        # optional: run only these cells (ids <row>__<column>, e.g. imagenet__l2sp-5)
    output: runs/table1                  # default run folder

``imagenet: {stand_in: true}`` writes a randomly initialised DenseNet121 state dict in torchvision's layout and
uses it as the "ImageNet" source: for exercising the pipeline where no ImageNet file exists (nothing can be
downloaded here). Its row is then labelled "ImageNet (random stand-in)" in the table; it measures nothing about
ImageNet. The "none" row (no pre-training) has only the λ = 0 cell: an SP penalty needs a source.

Examples:
    >>> spec = Table1Spec.model_validate({"base": ["d.yaml"], "schemes": SCHEMES_EXAMPLE,
    ...                                   "sources": {"imagenet": {"path": "in.pth"}}, "grid": {"rows": ["imagenet"]}})
    >>> [c.column_id for c in expand_columns(spec.grid)]
    ['lambda-0', 'l2sp-3', 'l2sp-5', 'l2sp-8', 'log-15-1.5', 'log-15-2', 'log-20-1.5', 'log-20-2']
"""

from __future__ import annotations

import itertools
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from covidseg.config.loader import apply_overrides, read_yaml_mapping
from covidseg.errors import ConfigError

__all__ = [
    "ROW_IDS",
    "ROW_LABELS",
    "SCHEMES_EXAMPLE",
    "Column",
    "GridSection",
    "ImageNetSource",
    "PretrainedSource",
    "SchemesSection",
    "SourcesSection",
    "Table1Spec",
    "expand_columns",
    "load_table1_spec",
]

RowId = Literal["none", "imagenet", "medicalnet", "imagenet_medicalnet"]
ROW_IDS: tuple[RowId, ...] = ("none", "imagenet", "medicalnet", "imagenet_medicalnet")
"""The paper's rows (sources), in its order."""
ROW_LABELS: dict[str, str] = {
    "none": "No pre-training",
    "imagenet": "ImageNet",
    "medicalnet": "MedicalNet",
    "imagenet_medicalnet": "ImageNet+MedicalNet",
}
PAPER_FIXED = (3.0, 5.0, 8.0)
PAPER_LAMBDA0 = (15.0, 20.0)
PAPER_ALPHA = (1.5, 2.0)
SCHEMES_EXAMPLE = {"zero": "none.yaml", "fixed": "l2sp.yaml", "layerwise": "lw.yaml"}
"""Scheme file names for doctests (never read)."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ImageNetSource(_Strict):
    """The ImageNet source: a local torchvision-format DenseNet121 file, or a random stand-in (module doc).

    Examples:
        >>> ImageNetSource(stand_in=True).stand_in
        True
    """

    path: Path | None = None
    stand_in: bool = False

    @model_validator(mode="after")
    def _one(self) -> ImageNetSource:
        if (self.path is None) == (not self.stand_in):
            raise ValueError("give exactly one of path (a torchvision DenseNet121 file) or stand_in: true")
        return self


class PretrainedSource(_Strict):
    """A ``covidseg pretrain`` source: an existing file (``path``), or built from pretrain config files.

    Attributes:
        path: An existing source checkpoint.
        pretrain: Pretrain config files (merged in order) to build the source with ``covidseg pretrain``.
        set: Overrides of that pretrain config (``tasks.0.data.root=...`` addresses tasks by index).

    Examples:
        >>> PretrainedSource(pretrain=["p.yaml"], set=["train.epochs=1"]).set
        ['train.epochs=1']
    """

    path: Path | None = None
    pretrain: list[Path] = Field(default_factory=list)
    set: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _one(self) -> PretrainedSource:
        if (self.path is None) == (not self.pretrain):
            raise ValueError("give exactly one of path (an existing source file) or pretrain (config files)")
        if self.path is not None and self.set:
            raise ValueError("set overrides a pretrain config; it has no use with path")
        return self


class SourcesSection(_Strict):
    """The sources of the pre-trained rows (a row that is run needs its source)."""

    imagenet: ImageNetSource | None = None
    medicalnet: PretrainedSource | None = None
    imagenet_medicalnet: PretrainedSource | None = None


class SchemesSection(_Strict):
    """The scheme preset (``configs/schemes/*.yaml``) of each column kind."""

    zero: Path
    fixed: Path
    layerwise: Path


class GridSection(_Strict):
    """Rows and columns of the table (defaults: the paper's full grid)."""

    rows: list[RowId] = Field(default_factory=lambda: list(ROW_IDS), min_length=1)
    zero: bool = True
    fixed: list[float] = Field(default_factory=lambda: list(PAPER_FIXED))
    lambda0: list[float] = Field(default_factory=lambda: list(PAPER_LAMBDA0))
    alpha: list[float] = Field(default_factory=lambda: list(PAPER_ALPHA))
    decoder_lambda: float | None = None
    cells: list[str] | None = None

    @model_validator(mode="after")
    def _check(self) -> GridSection:
        if len(set(self.rows)) != len(self.rows):
            raise ValueError(f"grid.rows has repeated rows: {self.rows}")
        if bool(self.lambda0) != bool(self.alpha):
            raise ValueError("grid.lambda0 and grid.alpha go together: give both lists (every pair is a column)")
        if not (self.zero or self.fixed or self.lambda0):
            raise ValueError("the grid has no columns: set zero: true, fixed: [...] or lambda0/alpha")
        strengths = [*self.fixed, *self.lambda0, *self.alpha]
        if self.decoder_lambda is not None:
            strengths.append(self.decoder_lambda)
        if any(not math.isfinite(v) or v < 0 for v in strengths):
            raise ValueError(f"grid strengths must be finite and >= 0, got {strengths}")
        for name in ("fixed", "lambda0", "alpha"):
            values = getattr(self, name)
            if len(set(values)) != len(values):
                raise ValueError(f"grid.{name} has repeated values: {values}")
        return self


class Table1Spec(_Strict):
    """A Table 1 preset; see the module docstring for the YAML form."""

    title: str = "Table 1"
    base: list[Path] = Field(min_length=1)
    set: list[str] = Field(default_factory=list)
    schemes: SchemesSection
    sources: SourcesSection = Field(default_factory=SourcesSection)
    grid: GridSection = Field(default_factory=GridSection)
    output: Path | None = None

    @model_validator(mode="after")
    def _check(self) -> Table1Spec:
        for row in self.grid.rows:
            if row != "none" and getattr(self.sources, row) is None:
                raise ValueError(f"grid.rows has {row!r} but sources.{row} is not set: give its source or drop the row")
        both = self.sources.imagenet_medicalnet
        built = "imagenet_medicalnet" in self.grid.rows and both is not None and bool(both.pretrain)
        if built and self.sources.imagenet is None:
            raise ValueError("sources.imagenet_medicalnet is pre-trained from the ImageNet file; set sources.imagenet")
        return self


@dataclass(frozen=True)
class Column:
    """One regularization column.

    Attributes:
        column_id: Folder-safe id (``lambda-0``, ``l2sp-5``, ``log-20-1.5``).
        kind: ``zero``, ``fixed`` or ``layerwise`` (which scheme file the cell starts from).
        label: Header in the Markdown table.
        overrides: Run-config overrides applied after the scheme file (the column's strengths).
        params: The strengths (``sp_lambda`` or ``lambda0`` and ``alpha``; ``decoder_lambda`` when set).
    """

    column_id: str
    kind: Literal["zero", "fixed", "layerwise"]
    label: str
    overrides: tuple[str, ...]
    params: dict[str, float]


def _g(value: float) -> str:
    return f"{value:g}"


def expand_columns(grid: GridSection) -> list[Column]:
    """The columns in the paper's order: λ = 0, fixed λ, then every layer-wise (λ0, α) pair.

    Examples:
        >>> cols = expand_columns(GridSection(zero=False, fixed=[5.0], lambda0=[20.0], alpha=[1.5], decoder_lambda=0))
        >>> [(c.column_id, c.label) for c in cols]
        [('l2sp-5', 'L2-SP λ = 5'), ('log-20-1.5', 'λ_i = 20 − 1.5·log i')]
        >>> cols[1].overrides
        ('regularization.schedule={"name": "log", "lambda0": 20.0, "alpha": 1.5}', 'regularization.decoder_lambda=0.0')
    """
    decoder: tuple[str, ...] = ()
    decoder_params: dict[str, float] = {}
    if grid.decoder_lambda is not None:
        decoder = (f"regularization.decoder_lambda={float(grid.decoder_lambda)!r}",)
        decoder_params = {"decoder_lambda": float(grid.decoder_lambda)}
    columns: list[Column] = []
    if grid.zero:
        columns.append(Column("lambda-0", "zero", "λ = 0", (), {}))
    for lam in grid.fixed:
        columns.append(
            Column(
                f"l2sp-{_g(lam)}",
                "fixed",
                f"L2-SP λ = {_g(lam)}",
                (f"regularization.sp_lambda={float(lam)!r}", *decoder),
                {"sp_lambda": float(lam), **decoder_params},
            )
        )
    for l0, a in itertools.product(grid.lambda0, grid.alpha):
        schedule = f'{{"name": "log", "lambda0": {float(l0)!r}, "alpha": {float(a)!r}}}'
        columns.append(
            Column(
                f"log-{_g(l0)}-{_g(a)}",
                "layerwise",
                f"λ_i = {_g(l0)} − {_g(a)}·log i",
                (f"regularization.schedule={schedule}", *decoder),
                {"lambda0": float(l0), "alpha": float(a), **decoder_params},
            )
        )
    return columns


def _model_at(loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The preset section at a validation-error location, or None."""
    model: type[BaseModel] = Table1Spec
    for part in loc:
        field = model.model_fields.get(str(part))
        if field is None:
            return None
        options = [field.annotation, *getattr(field.annotation, "__args__", ())]
        inner = [a for a in options if isinstance(a, type) and issubclass(a, BaseModel)]
        if not inner:
            return None
        model = inner[0]
    return model


def _format_errors(exc: ValidationError, file: Path) -> str:
    parts = []
    for error in exc.errors():
        loc = ".".join(str(p) for p in error["loc"])
        if error["type"] == "extra_forbidden":
            parent = _model_at(error["loc"][:-1])
            allowed = f"; allowed keys: {sorted(parent.model_fields)}" if parent is not None else ""
            parts.append(f"unknown key {loc!r}{allowed}")
            continue
        message = error["msg"].removeprefix("Value error, ")
        received = error.get("input")
        shown = "" if isinstance(received, (dict, list)) else f" (got {received!r})"
        parts.append(f"{loc}: {message}{shown}" if loc else message)
    return f"invalid Table 1 preset {file}: " + "; ".join(parts)


def _relative(value: Any, folder: Path) -> Any:
    """``folder / value`` for a relative path string; anything else (wrong types too) is left to validation."""
    if isinstance(value, str) and value and not Path(value).is_absolute():
        return os.path.normpath(folder / value)
    return value


def _resolve_raw(raw: dict[str, Any], folder: Path) -> dict[str, Any]:
    """The preset's own relative paths made relative to its folder (before overrides are applied)."""
    out = dict(raw)
    if isinstance(out.get("base"), list):
        out["base"] = [_relative(p, folder) for p in out["base"]]
    if "output" in out:
        out["output"] = _relative(out["output"], folder)
    if isinstance(out.get("schemes"), dict):
        out["schemes"] = {k: _relative(v, folder) for k, v in out["schemes"].items()}
    if isinstance(out.get("sources"), dict):
        sources = {}
        for name, source in out["sources"].items():
            if isinstance(source, dict):
                source = dict(source)
                if "path" in source:
                    source["path"] = _relative(source["path"], folder)
                if isinstance(source.get("pretrain"), list):
                    source["pretrain"] = [_relative(p, folder) for p in source["pretrain"]]
            sources[name] = source
        out["sources"] = sources
    return out


def load_table1_spec(path: str | os.PathLike[str], overrides: list[str] | tuple[str, ...] = ()) -> Table1Spec:
    """Read a preset; ``key=value`` overrides (``grid.rows=[imagenet]``) apply before validation.

    Relative paths in the file (``base``, ``schemes``, source ``path``/``pretrain``, ``output``) become relative
    to the preset's folder; paths given by overrides are taken as they are (relative to the working folder).

    Raises:
        ConfigError: Missing file, bad YAML, unknown keys or invalid values (one line).

    Examples:
        >>> load_table1_spec("no/such/preset.yaml")
        Traceback (most recent call last):
        ...
        covidseg.errors.ConfigError: Table 1 preset no/such/preset.yaml does not exist; see configs/experiments/
    """
    file = Path(path)
    raw = read_yaml_mapping(
        file, name="Table 1 preset", see="see configs/experiments/", contents="with base:, schemes:, sources:, grid:"
    )
    try:
        return Table1Spec.model_validate(apply_overrides(_resolve_raw(raw, file.parent), overrides))
    except ValidationError as exc:
        raise ConfigError(_format_errors(exc, file)) from None
