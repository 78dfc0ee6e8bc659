"""The recipe of ``covidseg demo``: ``configs/demo/demo.yaml`` (and ``quick.yaml``), typed and validated.

A demo recipe is one YAML mapping with the sections ``dataset`` and ``heldout`` (which phantoms to write),
``pretrain`` (a ``covidseg pretrain`` config), ``finetune`` plus ``finetune_presets`` (a ``covidseg train``
config and the preset files merged over it), ``predict`` and ``bundle``. :func:`load_demo_config` merges the
files in order (later keys override earlier ones), validates every section with the same classes the commands
use (:class:`~covidseg.config.RunConfig`, :class:`~covidseg.config.pretrain.PretrainConfig`) and returns a
:class:`DemoPlan`. Paths inside the recipe are relative to the demo folder, the working directory of the demo.

Examples:
    >>> plan = load_demo_config(quick=True)
    >>> plan.finetune.regularization.name, plan.finetune.data.layout, plan.dataset.n_cases
    ('l2sp_layerwise', 'volumes', 4)
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from covidseg.config import RunConfig, load_config
from covidseg.config.loader import apply_overrides, merge_yaml_files
from covidseg.config.pretrain import PretrainConfig, load_pretrain_config
from covidseg.errors import ConfigError

__all__ = [
    "CONFIG_DIR",
    "DEFAULT_RECIPE",
    "QUICK_RECIPE",
    "BundleSection",
    "DemoPlan",
    "DemoRecipe",
    "HeldoutSection",
    "PhantomSetSection",
    "PredictSection",
    "demo_config_files",
    "load_demo_config",
]

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs" / "demo"
"""The demo recipes of the repository (an editable install, ``pip install -e .``, keeps them beside the code)."""
DEFAULT_RECIPE = CONFIG_DIR / "demo.yaml"
"""The full demo (4 min 36 s on the quiet 2-core development CPU, 2026-11-22)."""
QUICK_RECIPE = CONFIG_DIR / "quick.yaml"
"""Merged over :data:`DEFAULT_RECIPE` by ``--quick``: tiny sizes, for tests (well under two minutes)."""
_INSTALL_HINT = "covidseg reads its demo recipes from configs/demo/ of a checkout installed with pip install -e ."


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PhantomSetSection(_Section):
    """The labelled target dataset: ``n_cases`` phantoms with seeds ``base_seed, base_seed + 1, ...``.

    Attributes:
        n_cases: Number of labelled cases (at least 3: training and validation cases).
        base_seed: Seed of the first case.
        shape: Voxels ``(z, y, x)`` of each case.
        spacing: Voxel size ``(z, y, x)`` in mm.
        n_lesions: Lesions per case, drawn from this inclusive ``[min, max]`` range.
    """

    n_cases: int = Field(12, ge=3)
    base_seed: int = Field(0, ge=0)
    shape: tuple[int, int, int] = (16, 128, 128)
    spacing: tuple[float, float, float] = (20.0, 2.8, 2.8)
    n_lesions: tuple[int, int] = (6, 10)

    @model_validator(mode="after")
    def _check(self) -> PhantomSetSection:
        if min(self.shape) < 1 or min(self.shape[1:]) < 16:
            raise ValueError(f"dataset.shape must be positive with y and x at least 16, got {list(self.shape)}")
        if min(self.spacing) <= 0:
            raise ValueError(f"dataset.spacing must be positive mm values, got {list(self.spacing)}")
        if not 0 <= self.n_lesions[0] <= self.n_lesions[1]:
            raise ValueError(f"dataset.n_lesions must be a [min, max] range with 0 <= min <= max, got {self.n_lesions}")
        return self

    @property
    def seeds(self) -> range:
        """The seeds of the cases."""
        return range(self.base_seed, self.base_seed + self.n_cases)


class HeldoutSection(_Section):
    """The held-out scan: one more phantom like the dataset's, with a seed none of them has.

    Attributes:
        seed: Its seed.
        name: File stem of the scan (``heldout/<name>.nii.gz``) and of its predictions.
    """

    seed: int = Field(1000, ge=0)
    name: str = Field("heldout_phantom", pattern=r"^[A-Za-z0-9_-]+$")


class PredictSection(_Section):
    """How the held-out scan is predicted (as ``covidseg predict --batch-size --precision``)."""

    batch_size: int = Field(2, ge=1)
    precision: Literal["fp32", "bf16"] = "fp32"
    device: str = "auto"


class BundleSection(_Section):
    """Name and version of the exported MONAI bundle."""

    name: str = "covidseg_demo_phantom"
    version: str = "0.1.0"


class DemoRecipe(_Section):
    """The raw recipe: typed small sections, and the two training configs as mappings (validated later)."""

    dataset: PhantomSetSection = Field(default_factory=PhantomSetSection)
    heldout: HeldoutSection = Field(default_factory=HeldoutSection)
    pretrain: dict[str, Any]
    finetune_presets: list[str] = Field(default_factory=list)
    finetune: dict[str, Any]
    predict: PredictSection = Field(default_factory=PredictSection)
    bundle: BundleSection = Field(default_factory=BundleSection)

    @model_validator(mode="after")
    def _check(self) -> DemoRecipe:
        if self.heldout.seed in self.dataset.seeds:
            raise ValueError(
                f"heldout.seed {self.heldout.seed} is the seed of a training case ({self.dataset.seeds.start}.."
                f"{self.dataset.seeds.stop - 1}); choose another so the held-out scan stays unseen"
            )
        return self


@dataclass(frozen=True)
class DemoPlan:
    """A validated demo recipe: what each step of :func:`covidseg.demo.run_demo` does.

    Attributes:
        dataset: The labelled phantoms to write.
        heldout: The held-out phantom.
        pretrain: The source model's ``covidseg pretrain`` config.
        finetune: The fine-tuning ``covidseg train`` config (``data.layout`` volumes, ``source.path`` set).
        predict: Prediction settings.
        bundle: Bundle name and version.
        files: The recipe files, in merge order.
    """

    dataset: PhantomSetSection
    heldout: HeldoutSection
    pretrain: PretrainConfig
    finetune: RunConfig
    predict: PredictSection
    bundle: BundleSection
    files: tuple[Path, ...]

    @property
    def data_root(self) -> Path:
        """Where the labelled dataset is written (``finetune.data.root``, relative to the demo folder)."""
        return Path(self.finetune.data.root or "data")

    @property
    def source_path(self) -> Path:
        """Where the source model is written (``finetune.source.path``)."""
        return Path(self.finetune.source.path or "source.pt")


def demo_config_files(quick: bool = False, extra: Sequence[str | os.PathLike[str]] = ()) -> list[Path]:
    """The recipe files of a demo, in merge order: the default recipe, ``quick.yaml``, then ``extra``.

    Raises:
        ConfigError: A recipe file is missing (for example in a non-editable install without ``configs/``).

    Examples:
        >>> [p.name for p in demo_config_files(quick=True)]
        ['demo.yaml', 'quick.yaml']
    """
    files = [DEFAULT_RECIPE, *([QUICK_RECIPE] if quick else []), *(Path(p) for p in extra)]
    for path in files:
        if not path.is_file():
            hint = _INSTALL_HINT if path.parent == CONFIG_DIR else "check the path given to --config"
            raise ConfigError(f"demo recipe {path} does not exist; {hint}")
    return files


def _format(exc: ValidationError) -> str:
    parts = []
    for error in exc.errors():
        loc = ".".join(str(p) for p in error["loc"])
        message = "unknown key" if error["type"] == "extra_forbidden" else error["msg"].removeprefix("Value error, ")
        parts.append(f"{loc}: {message}" if loc else message)
    return "invalid demo recipe: " + "; ".join(parts)


def _presets(recipe: DemoRecipe, files: Sequence[Path]) -> list[Path]:
    """Preset paths relative to the recipe file that named them last (absolute ones as given)."""
    base = files[-1].parent
    for path in reversed(files):
        if "finetune_presets" in (merge_yaml_files([path]) or {}):
            base = path.parent
            break
    return [Path(p) if Path(p).is_absolute() else (base / p).resolve() for p in recipe.finetune_presets]


def load_demo_config(
    quick: bool = False,
    files: Sequence[str | os.PathLike[str]] = (),
    overrides: Iterable[str] = (),
) -> DemoPlan:
    """Load, merge and validate a demo recipe.

    Args:
        quick: Merge ``configs/demo/quick.yaml`` over the default recipe.
        files: More recipe files merged last (your own sizes or schemes).
        overrides: ``section.key=value`` strings applied to the merged recipe, e.g. ``finetune.train.epochs=2``.

    Raises:
        ConfigError: A missing file, an unknown key or an invalid value in any section (one line).

    Examples:
        >>> plan = load_demo_config(overrides=["finetune.train.epochs=2"])
        >>> plan.finetune.train.epochs, plan.pretrain.tasks[0].name, str(plan.source_path)
        (2, 'phantom', 'runs/pretrain/source.pt')
        >>> load_demo_config(overrides=["heldout.seed=3"])  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        covidseg.errors.ConfigError: invalid demo recipe: heldout.seed 3 is the seed of a training case ...
    """
    paths = demo_config_files(quick, files)
    raw = apply_overrides(merge_yaml_files(paths), overrides)
    try:
        recipe = DemoRecipe.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_format(exc)) from None
    pretrain = load_pretrain_config(base=recipe.pretrain)
    finetune = load_config(_presets(recipe, paths), base=recipe.finetune)
    if finetune.data.layout != "volumes" or finetune.data.root is None:
        raise ConfigError(
            "demo recipe: finetune.data must be {layout: volumes, root: FOLDER}: the demo writes its dataset there"
        )
    if finetune.source.path is None:
        raise ConfigError("demo recipe: finetune.source.path must name where the source model is written")
    return DemoPlan(
        dataset=recipe.dataset,
        heldout=recipe.heldout,
        pretrain=pretrain,
        finetune=finetune,
        predict=recipe.predict,
        bundle=recipe.bundle,
        files=tuple(paths),
    )
