"""The ``covidseg pretrain`` configuration: several segmentation tasks that share one encoder.

``covidseg pretrain`` trains the paper's "MedicalNet"-style source model: one DenseNet121 encoder shared by all
tasks, one decoder + head per task (each task with its own classes), trained jointly. Its output checkpoint is
a source for ``covidseg train --source``. YAML (every key but ``tasks`` optional; unknown keys are errors)::

    tasks:                               # one or more; names unique (letters, digits, _ and -)
      - name: lungs_covid20
        data: {layout: covid20, root: data/covid20, val_fraction: 0.2}  # a train data: section
        class_names: [background, lung, opacity]   # optional; must equal the layout's classes
      - name: lungs_from_hu
        data: {layout: slices, root: ../shared/data/unlabeled-slices, options: {labelled: false}}
        labels: classical_lung_mask      # dataset (default) | classical_lung_mask | slice_lung_mask
        weight: 1.0                      # sampling weight (sampling: weighted)
        loss: {class_weights: class_ratio, dice_weight: 0.0}   # optional, default: the top-level loss
    sampling: round_robin                # round_robin | proportional (to training slices) | weighted
    init: {imagenet: densenet121.pth, channel_adaptation: sum}  # optional: "ImageNet+MedicalNet"
    export_task: lungs_covid20           # whose decoder + head go with the output (default: the first task)
    preprocess: {slice_size: [384, 384]} # as in train
    model: {in_channels: 1, decoder_channels: [256, 128, 64, 32, 16], head_kernel_size: 1}  # no class_names
    optim: {name: adam, lr: 0.001}       # as in train
    loss: {class_weights: class_ratio}   # default loss of every task
    augment: {}                          # as in train
    train: {epochs: 20, batch_size: 8, steps_per_epoch: null, ...}   # as in train; train.monitor is not used
    output: {root: runs, name: pretrain-medicalnet, tensorboard: true}

Labels from a generator (``classical_lung_mask``: background / lung from HU, see
:mod:`covidseg.train.pretrain_labels`) need no label files, so a task can pre-train on unlabelled slices
(``options: {labelled: false}``). Each task is split into training and validation cases by its own ``data``
section (``val_fraction``, ``splits``, ...); the selection metric is the mean over tasks of each task's
validation ``dice_mean`` (the mean Dice of its foreground classes).

Examples:
    >>> cfg = PretrainConfig.model_validate({"tasks": [{"name": "ph", "data": {"layout": "phantom"}}]})
    >>> cfg.tasks[0].classes, cfg.export_task_name
    (('background', 'lung', 'opacity'), 'ph')
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from covidseg.config.loader import apply_overrides, merge_yaml_files
from covidseg.config.sections import (
    DataSection,
    LossSection,
    ModelSection,
    OptimSection,
    OutputSection,
    PreprocessSection,
    TrainSection,
)
from covidseg.errors import ConfigError
from covidseg.model.unet import DEFAULT_DECODER_CHANNELS, UNetConfig

__all__ = [
    "InitSection",
    "PretrainConfig",
    "PretrainModelSection",
    "TaskSection",
    "load_pretrain_config",
    "save_pretrain_config",
]

DATASET_LABELS = "dataset"
"""``labels:`` value of a task that reads its labels from the dataset."""
LABEL_SOURCES = ("dataset", "classical_lung_mask", "slice_lung_mask")
_TASK_NAME = re.compile(r"^[A-Za-z0-9_-]+$")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class TaskSection(_Section):
    """One pre-training task: a dataset, where its labels come from, its classes and sampling weight.

    Attributes:
        name: Unique task name (letters, digits, ``_``, ``-``); names the decoder, metrics and files.
        data: The dataset (the ``data`` section of a training config).
        labels: ``dataset`` (the layout's label files) or a label generator.
        class_names: The task's classes; default: those of the layout (or of the generator).
        weight: Sampling weight under ``sampling: weighted``.
        loss: The task's loss (default: the top-level ``loss``).
    """

    name: str
    data: DataSection
    labels: Literal["dataset", "classical_lung_mask", "slice_lung_mask"] = "dataset"
    class_names: tuple[str, ...] | None = None
    weight: float = Field(1.0, gt=0)
    loss: LossSection | None = None

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _TASK_NAME.match(value):
            raise ValueError(f"task name {value!r} may only hold letters, digits, '_' and '-'")
        return value

    @model_validator(mode="after")
    def _classes(self) -> TaskSection:
        expected = self.expected_class_names()
        if self.class_names is not None and tuple(self.class_names) != expected:
            where = f"dataset layout {self.data.layout!r}" if self.labels == DATASET_LABELS else self.labels
            raise ValueError(
                f"task {self.name!r}: class_names {list(self.class_names)} differ from the classes of {where} "
                f"{list(expected)}; remove class_names or set it to {list(expected)}"
            )
        return self

    def expected_class_names(self) -> tuple[str, ...]:
        """The classes the task's labels carry (layout classes, or the generator's)."""
        if self.labels != DATASET_LABELS:
            from covidseg.train.pretrain_labels import generator_class_names

            return generator_class_names(self.labels)
        from covidseg.data.layouts import layout_class_names

        try:
            return tuple(layout_class_names(self.data.layout, **self.data.options))
        except ConfigError as exc:
            raise ValueError(str(exc)) from None

    @property
    def classes(self) -> tuple[str, ...]:
        """The resolved class names."""
        return tuple(self.class_names or self.expected_class_names())


class InitSection(_Section):
    """Initialisation of the shared encoder before pre-training.

    Attributes:
        imagenet: A local torchvision-format DenseNet121 state dict ("ImageNet+MedicalNet"); None: random.
        channel_adaptation: How 3-channel ``conv0`` weights become ``model.in_channels`` channels.
    """

    imagenet: Path | None = None
    channel_adaptation: Literal["sum", "mean"] = "sum"


class PretrainModelSection(_Section):
    """The architecture shared by every task (classes come from the tasks)."""

    in_channels: int = Field(1, ge=1)
    decoder_channels: tuple[int, ...] = DEFAULT_DECODER_CHANNELS
    head_kernel_size: Literal[1, 3] = 1

    def unet_config(self, class_names: Sequence[str]) -> UNetConfig:
        """The :class:`UNetConfig` of one task."""
        return UNetConfig(
            in_channels=self.in_channels,
            class_names=tuple(class_names),
            decoder_channels=tuple(self.decoder_channels),
            head_kernel_size=self.head_kernel_size,
        )


class PretrainConfig(_Section):
    """Everything ``covidseg pretrain`` needs; see the module docstring for the YAML form."""

    tasks: list[TaskSection] = Field(min_length=1)
    sampling: Literal["round_robin", "proportional", "weighted"] = "round_robin"
    init: InitSection = Field(default_factory=InitSection)
    export_task: str | None = None
    preprocess: PreprocessSection = Field(default_factory=PreprocessSection)
    model: PretrainModelSection = Field(default_factory=PretrainModelSection)
    optim: OptimSection = Field(default_factory=OptimSection)
    loss: LossSection = Field(default_factory=LossSection)
    augment: dict[str, Any] = Field(default_factory=dict)
    train: TrainSection = Field(default_factory=TrainSection)
    output: OutputSection = Field(default_factory=OutputSection)

    @model_validator(mode="after")
    def _check(self) -> PretrainConfig:
        names = [task.name for task in self.tasks]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"task names must be unique, {duplicates} appear more than once")
        if self.export_task is not None and self.export_task not in names:
            raise ValueError(f"export_task {self.export_task!r} is not a task; expected one of {names}")
        if "monitor" in self.train.model_fields_set and self.train.monitor != "dice_mean":
            raise ValueError(
                "train.monitor is not used by pretrain (it selects by the mean over tasks of dice_mean); remove it"
            )
        for task in self.tasks:
            weights = (task.loss or self.loss).class_weights
            if isinstance(weights, list) and len(weights) != len(task.classes):
                raise ValueError(
                    f"task {task.name!r}: loss.class_weights has {len(weights)} values for {len(task.classes)} "
                    f"classes {list(task.classes)}; give the weights in tasks[].loss"
                )
        self.model.unet_config(self.tasks[0].classes)  # architecture check
        return self

    @property
    def export_task_name(self) -> str:
        """The task whose decoder and head go with the output checkpoint."""
        return self.export_task or self.tasks[0].name

    def task(self, name: str) -> TaskSection:
        """The task called ``name``."""
        for task in self.tasks:
            if task.name == name:
                return task
        raise ConfigError(f"no task {name!r}; tasks are {[t.name for t in self.tasks]}")

    def model_section(self, task: TaskSection) -> ModelSection:
        """A training ``model`` section for ``task`` (shared architecture, the task's classes)."""
        return ModelSection(
            in_channels=self.model.in_channels,
            class_names=task.classes,
            decoder_channels=self.model.decoder_channels,
            head_kernel_size=self.model.head_kernel_size,
        )

    def to_yaml_dict(self) -> dict[str, Any]:
        """Plain data (paths as strings, tuples as lists) for YAML and checkpoints."""
        return self.model_dump(mode="json")


def _section_at(loc: Sequence[Any]) -> type[BaseModel] | None:
    """The config model at a validation-error location (list indices skipped), or None."""
    model: type[BaseModel] = PretrainConfig
    for part in loc:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(str(part))
        if field is None:
            return None
        annotation = field.annotation
        inner = [a for a in getattr(annotation, "__args__", ()) if isinstance(a, type) and issubclass(a, BaseModel)]
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            model = annotation
        elif inner:
            model = inner[0]
        else:
            return None
    return model


def _format_errors(exc: ValidationError) -> str:
    """One line for a validation error; unknown keys name the keys their section allows."""
    messages = []
    for error in exc.errors():
        loc = ".".join(str(part) for part in error["loc"])
        if error["type"] == "extra_forbidden":
            parent = _section_at(error["loc"][:-1])
            allowed = f"; allowed keys: {sorted(parent.model_fields)}" if parent is not None else ""
            messages.append(f"unknown key {loc!r}{allowed}")
            continue
        message = error["msg"].removeprefix("Value error, ")
        received = error.get("input")
        shown = "" if isinstance(received, (dict, list)) else f" (got {received!r})"
        messages.append(f"{loc}: {message}{shown}" if loc else message)
    return "invalid pretrain config: " + "; ".join(messages)


def load_pretrain_config(
    paths: Sequence[str | os.PathLike[str]] = (),
    overrides: Iterable[str] = (),
    *,
    base: dict[str, Any] | None = None,
) -> PretrainConfig:
    """Build a :class:`PretrainConfig` from YAML files (merged in order) and ``key=value`` overrides.

    Overrides address list items by index: ``tasks.0.data.root=/data/covid20``.

    Raises:
        ConfigError: A missing or malformed file, an unknown key or an invalid value (one line).

    Examples:
        >>> cfg = load_pretrain_config(overrides=["tasks=[{name: a, data: {layout: phantom}}]", "train.epochs=2"])
        >>> cfg.tasks[0].name, cfg.train.epochs
        ('a', 2)
        >>> load_pretrain_config(overrides=["tasks=[]"])  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        covidseg.errors.ConfigError: invalid pretrain config: tasks: List should have at least 1 item ...
    """
    data = _apply_indexed_overrides(merge_yaml_files(paths, base), list(overrides))
    try:
        return PretrainConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format_errors(exc)) from None
    except ConfigError as exc:
        raise ConfigError(f"invalid pretrain config: {exc}") from None


def _apply_indexed_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """:func:`apply_overrides` in order, plus ``tasks.<i>.key=value`` for the items of the task list."""
    result = data
    for item in overrides:
        parts = item.partition("=")[0].strip().split(".")
        if len(parts) < 3 or parts[0] != "tasks" or not parts[1].isdigit():
            result = apply_overrides(result, [item])
            continue
        tasks = result.get("tasks")
        index = int(parts[1])
        if not isinstance(tasks, list) or index >= len(tasks) or not isinstance(tasks[index], dict):
            count = len(tasks) if isinstance(tasks, list) else 0
            raise ConfigError(f"override {item!r}: there is no task {index} (the config has {count} task(s))")
        result = dict(result)
        result["tasks"] = list(tasks)
        result["tasks"][index] = apply_overrides(tasks[index], [".".join(parts[2:]) + "=" + item.partition("=")[2]])
    return result


def save_pretrain_config(config: PretrainConfig, path: str | os.PathLike[str], *, overwrite: bool = True) -> Path:
    """Write the resolved config as YAML (atomically); :func:`load_pretrain_config` with ``base`` reads it."""
    from covidseg.io.atomic import atomic_path

    with atomic_path(path, overwrite=overwrite) as tmp:
        tmp.write_text(yaml.safe_dump(config.to_yaml_dict(), sort_keys=False))
    return Path(path)
