"""The sources of Table 1's rows: an ImageNet file (or a random stand-in) and ``covidseg pretrain`` outputs.

Under ``<out>/sources/``:

* ``imagenet-stand-in.pth``: written when the preset asks for ``imagenet: {stand_in: true}``: a randomly
  initialised DenseNet121 (MONAI's initialisation, as torchvision's: Kaiming-normal convolutions, BatchNorm 1/0)
  saved in torchvision's state-dict layout (``features.*``, ``classifier.*``). It lets the pipeline run where no
  ImageNet file exists; it is **not** ImageNet weights.
* ``<row>.pt`` and ``pretrain-<row>/``: a source built by ``covidseg pretrain`` from the preset's pretrain
  config files (for ``imagenet_medicalnet`` with ``init.imagenet`` = the ImageNet source). A finished source
  (its ``.pt`` exists) is reused when its run folder's config equals what the preset asks for; a run folder
  with ``last.pt`` but no output (a killed build) is resumed; one without ``last.pt`` is started again.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from monai.networks.nets import DenseNet121
from rich.console import Console

from covidseg.config.pretrain import PretrainConfig, load_pretrain_config
from covidseg.errors import ConfigError, InputError
from covidseg.experiments.table1_spec import PretrainedSource, Table1Spec
from covidseg.io.atomic import atomic_path

__all__ = [
    "IMAGENET_CLASSES",
    "SOURCES_DIR",
    "STAND_IN_NAME",
    "SourcePlan",
    "check_sources",
    "prepare_sources",
    "pretrain_source_config",
    "torchvision_densenet121_state",
    "write_imagenet_stand_in",
]

SOURCES_DIR = "sources"
STAND_IN_NAME = "imagenet-stand-in.pth"
IMAGENET_CLASSES = 1000
"""Outputs of torchvision's DenseNet121 classifier."""
RGB_CHANNELS = 3
PRETRAIN_CONFIG_NAME = "config.yaml"
LAST_NAME = "last.pt"


def torchvision_densenet121_state(seed: int = 0) -> dict[str, torch.Tensor]:
    """A randomly initialised DenseNet121 (3 input channels, 1000 classes) in torchvision's key layout.

    Examples:
        >>> state = torchvision_densenet121_state()
        >>> state["features.conv0.weight"].shape, state["classifier.weight"].shape
        (torch.Size([64, 3, 7, 7]), torch.Size([1000, 1024]))
        >>> "features.denseblock1.denselayer1.norm1.weight" in state
        True
    """
    generator_state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        net = DenseNet121(spatial_dims=2, in_channels=RGB_CHANNELS, out_channels=IMAGENET_CLASSES)
    finally:
        torch.random.set_rng_state(generator_state)
    out: dict[str, torch.Tensor] = {}
    for key, value in net.state_dict().items():
        if key.startswith("class_layers.out."):
            out["classifier." + key.rsplit(".", 1)[1]] = value
        elif key.startswith("features."):
            out[key.replace(".layers.", ".")] = value
    return out


def write_imagenet_stand_in(path: str | os.PathLike[str], *, seed: int = 0, overwrite: bool = False) -> Path:
    """Write :func:`torchvision_densenet121_state` to ``path`` (atomically): a stand-in, not ImageNet weights.

    Examples:
        >>> import tempfile, pathlib
        >>> from covidseg.model import DenseUNet, load_torchvision_densenet121
        >>> f = write_imagenet_stand_in(pathlib.Path(tempfile.mkdtemp()) / "in.pth")
        >>> report = load_torchvision_densenet121(DenseUNet(), f)
        >>> report.skipped
        ('classifier.weight', 'classifier.bias')
    """
    with atomic_path(path, overwrite=overwrite) as tmp:
        torch.save(torchvision_densenet121_state(seed), tmp)
    return Path(path)


def pretrain_source_config(
    source: PretrainedSource, out: Path, row: str, *, imagenet: Path | None = None
) -> PretrainConfig:
    """The pretrain config of a built source: the preset's files and ``set``, the run folder under ``out``.

    Args:
        source: The preset's source entry (with ``pretrain`` files).
        out: The Table 1 run folder.
        row: The row id (names the run folder ``sources/pretrain-<row>``).
        imagenet: ImageNet file to initialise the encoder from (``imagenet_medicalnet``).

    Raises:
        ConfigError: An invalid pretrain config.

    Examples:
        >>> import tempfile
        >>> f = Path(tempfile.mkdtemp()) / "pretrain.yaml"
        >>> _ = f.write_text("tasks: [{name: a, data: {layout: phantom}}]")
        >>> cfg = pretrain_source_config(PretrainedSource(pretrain=[f]), Path("out"), "medicalnet")
        >>> str(cfg.output.root), cfg.output.name, cfg.init.imagenet
        ('out/sources', 'pretrain-medicalnet', None)
    """
    overrides = [
        *source.set,
        f"output.root={json.dumps(str(out / SOURCES_DIR))}",
        f"output.name=pretrain-{row}",
    ]
    if imagenet is not None:
        overrides.append(f"init.imagenet={json.dumps(str(imagenet))}")
    return load_pretrain_config(source.pretrain, overrides)


def _same_settings(saved_file: Path, wanted: dict[str, Any]) -> bool:
    if not saved_file.is_file():
        return True
    saved = yaml.safe_load(saved_file.read_text()) or {}
    return bool(json.loads(json.dumps(saved)) == json.loads(json.dumps(wanted)))


def _build_pretrained(
    config: PretrainConfig, target: Path, say: Callable[[str], None], console: Console | None
) -> Path:
    from covidseg.train.pretrain import pretrain

    run_dir = Path(config.output.root) / str(config.output.name)
    if not _same_settings(run_dir / PRETRAIN_CONFIG_NAME, config.to_yaml_dict()):
        raise ConfigError(
            f"{run_dir} was pre-trained with other settings than this preset asks for; "
            "use another output folder or --overwrite"
        )
    if target.is_file():
        say(f"source {target.name}: built already")
        return target
    resume = None
    if run_dir.exists():
        if (run_dir / LAST_NAME).is_file():
            resume = run_dir
        else:
            shutil.rmtree(run_dir)  # killed before its first checkpoint: nothing to keep
    say(f"building source {target.name} with covidseg pretrain ({'resuming' if resume else 'new run'})")
    pretrain(config, output=target, overwrite=True, resume=resume, console=console)
    return target


def _existing(path: Path, what: str) -> Path:
    if not path.is_file():
        raise InputError(f"{what} {path} does not exist; fix the path in the preset or with --set")
    return path


@dataclass(frozen=True)
class SourcePlan:
    """What :func:`prepare_sources` will use or build, checked before anything is written.

    Attributes:
        rows: The rows to prepare.
        imagenet: The ImageNet file (given, or where the stand-in goes), None when no row needs it.
        pretrain: Row -> pretrain config of the sources to build.
    """

    rows: tuple[str, ...]
    imagenet: Path | None
    pretrain: dict[str, PretrainConfig]


def check_sources(spec: Table1Spec, out: Path, *, rows: Sequence[str] | None = None) -> SourcePlan:
    """Check the sources of ``rows`` (default ``spec.grid.rows``) without writing: files exist, configs are valid.

    Raises:
        ConfigError: An invalid pretrain config.
        InputError: A source file that does not exist.

    Examples:
        >>> spec = Table1Spec.model_validate({"base": ["b.yaml"], "schemes": {"zero": "z", "fixed": "f",
        ...     "layerwise": "l"}, "sources": {"imagenet": {"stand_in": True}}, "grid": {"rows": ["imagenet"]}})
        >>> check_sources(spec, Path("out")).imagenet
        PosixPath('out/sources/imagenet-stand-in.pth')
    """
    chosen = tuple(spec.grid.rows if rows is None else rows)
    imagenet: Path | None = None
    both = spec.sources.imagenet_medicalnet
    built_both = "imagenet_medicalnet" in chosen and both is not None and bool(both.pretrain)
    if ("imagenet" in chosen or built_both) and spec.sources.imagenet is not None:
        given = spec.sources.imagenet.path
        imagenet = _existing(given, "ImageNet file") if given is not None else out / SOURCES_DIR / STAND_IN_NAME
    configs: dict[str, PretrainConfig] = {}
    for row in ("medicalnet", "imagenet_medicalnet"):
        source = getattr(spec.sources, row)
        if row not in chosen or source is None:
            continue
        if source.pretrain:
            init = imagenet if row == "imagenet_medicalnet" else None
            configs[row] = pretrain_source_config(source, out, row, imagenet=init)
        else:
            _existing(source.path, f"{row} source")
    return SourcePlan(chosen, imagenet, configs)


def prepare_sources(
    spec: Table1Spec, out: Path, *, rows: Sequence[str] | None = None, console: Console | None = None
) -> dict[str, Path | None]:
    """The source file of every row (default ``spec.grid.rows``; None for "no pre-training"), built where needed.

    Everything :func:`check_sources` checks is checked before anything is written or trained.

    Raises:
        ConfigError: An invalid pretrain config, or a source folder built with other settings.
        InputError: A source file that does not exist.

    Examples:
        >>> import tempfile
        >>> spec = Table1Spec.model_validate({"base": ["b.yaml"], "schemes": {"zero": "z", "fixed": "f",
        ...     "layerwise": "l"}, "sources": {"imagenet": {"stand_in": True}}, "grid": {"rows": ["none", "imagenet"]}})
        >>> found = prepare_sources(spec, Path(tempfile.mkdtemp()))
        >>> found["none"], found["imagenet"].name
        (None, 'imagenet-stand-in.pth')
    """
    say: Callable[[str], None] = console.print if console is not None else (lambda *_: None)
    plan = check_sources(spec, out, rows=rows)
    imagenet = plan.imagenet
    stand_in = spec.sources.imagenet is not None and spec.sources.imagenet.stand_in
    if imagenet is not None and stand_in and not imagenet.is_file():
        imagenet.parent.mkdir(parents=True, exist_ok=True)
        write_imagenet_stand_in(imagenet)
        say(f"ImageNet stand-in (random weights in torchvision's layout, not ImageNet): {imagenet}")
    found: dict[str, Path | None] = {}
    for row in plan.rows:
        if row == "none":
            found[row] = None
        elif row == "imagenet":
            found[row] = imagenet
        elif row in plan.pretrain:
            found[row] = _build_pretrained(plan.pretrain[row], out / SOURCES_DIR / f"{row}.pt", say, console)
        else:
            found[row] = getattr(spec.sources, row).path
    return found
