"""The sections of a run configuration: typed, validated, unknown keys rejected.

A run is described by one :class:`RunConfig`. It is assembled from any number of YAML files (later files
override earlier ones key by key, so a dataset preset and a regularization preset combine) and command-line
overrides such as ``train.epochs=5`` or ``regularization.schedule.lambda0=15``, whose values are parsed as YAML
(``yaml.safe_load``). Every section rejects unknown keys; every error is a one-line
:class:`~covidseg.errors.ConfigError` that names the key and what is allowed.

Example YAML::

    data: {layout: phantom, options: {n_cases: 8, shape: [16, 128, 128]}}
    preprocess: {slice_size: [128, 128]}
    regularization: {name: l2sp_layerwise, schedule: {name: log, lambda0: 20, alpha: 1.5}, decoder_lambda: 0.01}
    strategy: {name: full}
    train: {epochs: 20, batch_size: 8}

The penalty and strategy sections carry the keyword arguments of the registry entry they name (see
:mod:`covidseg.transfer.penalties` and :mod:`covidseg.transfer.strategies`); they are checked against the
class signature when the config is loaded, not when training starts.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from covidseg.data.preprocess import DEFAULT_SLICE_SIZE, DEFAULT_WINDOW, PreprocessConfig
from covidseg.errors import ConfigError
from covidseg.model.unet import DEFAULT_CLASS_NAMES, DEFAULT_DECODER_CHANNELS, UNetConfig

__all__ = [
    "DataSection",
    "LossSection",
    "ModelSection",
    "OptimSection",
    "OutputSection",
    "PreprocessSection",
    "RegularizationSection",
    "RunConfig",
    "SourceSection",
    "StrategySection",
    "TrainSection",
]


def _as_value_error(build: Any) -> Any:
    """Call ``build()``; a ConfigError becomes the ValueError pydantic reports with the key's location."""
    try:
        return build()
    except ConfigError as exc:
        raise ValueError(str(exc)) from None


class _Section(BaseModel):
    """Base of every config section: unknown keys are errors, values are validated on assignment too."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataSection(_Section):
    """Where the labelled cases come from and how they are split.

    Attributes:
        layout: Dataset layout: ``volumes`` (images/ + labels/), ``covid20`` (the public 20-case COVID-19 CT
            lung and infection dataset), ``slices`` (2-D images + masks, e.g. MedSeg), ``phantom`` (synthetic).
        root: Dataset folder (not used by ``phantom``).
        options: Layout-specific options (e.g. ``label_map``, ``image_window``, phantom ``n_cases``/``shape``).
        splits: A splits JSON written by an earlier run, to reuse exactly; when absent a new split is made.
        val_fraction: Fraction of cases for validation.
        test_fraction: Fraction of cases held out for testing (never seen by training or model selection).
        folds: Cross-validation folds (with ``fold``); replaces the fractional train/val split when set.
        fold: Which fold (0-based) is the validation fold.
        split_seed: Seed of the case-level split.
        cache_dir: Preprocessed-slice cache; default ``<output.root>/cache``.
        slice_filter: Which slices train: ``all``, ``labelled`` (any non-background label) or ``nonempty_lung``.
    """

    layout: Literal["volumes", "covid20", "slices", "phantom"] = "phantom"
    root: Path | None = None
    options: dict[str, Any] = Field(default_factory=dict)
    splits: Path | None = None
    val_fraction: float = Field(0.2, ge=0.0, lt=1.0)
    test_fraction: float = Field(0.0, ge=0.0, lt=1.0)
    folds: int | None = Field(None, ge=2)
    fold: int | None = Field(None, ge=0)
    split_seed: int = 0
    cache_dir: Path | None = None
    slice_filter: Literal["all", "labelled", "nonempty_lung"] = "all"

    @model_validator(mode="after")
    def _check(self) -> DataSection:
        if self.layout != "phantom" and self.root is None:
            raise ValueError(f"data.root is required for layout {self.layout!r}: the dataset folder")
        if (self.folds is None) != (self.fold is None):
            raise ValueError("data.folds and data.fold go together: set both (e.g. folds: 5, fold: 0) or neither")
        if self.folds is not None and self.fold is not None and self.fold >= self.folds:
            raise ValueError(f"data.fold must be below data.folds={self.folds}, got {self.fold}")
        if self.val_fraction + self.test_fraction >= 1.0:
            raise ValueError("data.val_fraction + data.test_fraction must leave cases for training (< 1)")
        return self


class PreprocessSection(_Section):
    """The network input: HU window mapped to [0, 1] and the axial slice size (multiples of 32)."""

    window: tuple[float, float] = DEFAULT_WINDOW
    slice_size: tuple[int, int] = DEFAULT_SLICE_SIZE
    resize_mode: Literal["bilinear", "nearest", "area", "bicubic"] = "bilinear"

    @model_validator(mode="after")
    def _check(self) -> PreprocessSection:
        _as_value_error(self.to_preprocess_config)
        return self

    def to_preprocess_config(self) -> PreprocessConfig:
        """The :class:`PreprocessConfig` this section describes."""
        return PreprocessConfig(window=self.window, slice_size=self.slice_size, resize_mode=self.resize_mode)


class ModelSection(_Section):
    """Architecture of the DenseNet121 U-Net (see :class:`covidseg.model.unet.UNetConfig`)."""

    in_channels: int = Field(1, ge=1)
    class_names: tuple[str, ...] = DEFAULT_CLASS_NAMES
    decoder_channels: tuple[int, ...] = DEFAULT_DECODER_CHANNELS
    head_kernel_size: Literal[1, 3] = 1

    @model_validator(mode="after")
    def _check(self) -> ModelSection:
        _as_value_error(self.to_unet_config)
        return self

    def to_unet_config(self) -> UNetConfig:
        """The :class:`UNetConfig` this section describes."""
        return UNetConfig(
            in_channels=self.in_channels,
            class_names=tuple(self.class_names),
            decoder_channels=tuple(self.decoder_channels),
            head_kernel_size=self.head_kernel_size,
        )


class SourceSection(_Section):
    """The source model θ̄ that fine-tuning starts from and is regularized toward.

    Attributes:
        path: A torchvision DenseNet121 ImageNet state dict, a covidseg checkpoint or a ``covidseg pretrain``
            output. None trains from scratch (random initialisation, no SP penalty possible).
        channel_adaptation: How 3-channel ImageNet ``conv0`` weights become 1-channel: ``sum`` or ``mean``.
    """

    path: Path | None = None
    channel_adaptation: Literal["sum", "mean"] = "sum"


def _registry_kwargs(registry_name: str) -> tuple[dict[str, type], Iterable[str]]:
    """Return (registry, excluded positional names) for a registry section."""
    if registry_name == "penalty":
        from covidseg.transfer.penalties import PENALTIES

        return dict(PENALTIES), ("self", "model", "source_state", "layer_of", "fisher")  # fisher: from the run
    from covidseg.transfer.strategies import STRATEGIES

    return dict(STRATEGIES), ("self", "partition")


def _check_registry_params(kind: str, name: str, params: Mapping[str, Any], no_params: Sequence[str]) -> None:
    """Check ``params`` against the keyword arguments of the registry class ``name``."""
    if name in no_params:
        if params:
            raise ValueError(f"{kind} {name!r} takes no parameters, got {sorted(params)}")
        return
    registry, excluded = _registry_kwargs("penalty" if kind == "regularization" else "strategy")
    valid = sorted([*registry, *no_params])
    if name not in registry:
        raise ValueError(f"unknown {kind} {name!r}; expected one of {valid}")
    signature = inspect.signature(registry[name])
    accepted = {p: v for p, v in signature.parameters.items() if p not in excluded and v.kind != v.VAR_KEYWORD}
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        raise ValueError(f"{kind} {name!r} has no parameter(s) {unknown}; it takes {sorted(accepted)}")
    missing = sorted(p for p, v in accepted.items() if v.default is inspect.Parameter.empty and p not in params)
    if missing:
        raise ValueError(f"{kind} {name!r} needs {missing}")


class RegularizationSection(_Section):
    """The transfer penalty added to the loss: ``name`` plus that penalty's keyword arguments.

    ``none`` adds no penalty (with a source this is "initialisation only", the paper's λ = 0). For the Fisher
    penalties, ``fisher_path`` may name a saved diagonal Fisher; otherwise it is estimated with the source
    model before training (``fisher_batches`` batches of the training set).

    Examples:
        >>> RegularizationSection(name="l2sp", sp_lambda=3.0, decoder_lambda=0.01).params()
        {'sp_lambda': 3.0, 'decoder_lambda': 0.01}
    """

    model_config = ConfigDict(extra="allow", validate_assignment=True)

    name: str = "none"
    fisher_path: Path | None = None
    fisher_batches: int = Field(16, ge=1)

    def params(self) -> dict[str, Any]:
        """The penalty's keyword arguments (everything but ``name`` and the Fisher options)."""
        return dict(self.model_extra or {})

    @model_validator(mode="after")
    def _check(self) -> RegularizationSection:
        _check_registry_params("regularization", self.name, self.params(), ("none",))
        return self

    @property
    def needs_source(self) -> bool:
        """Whether the penalty pulls toward source weights (everything but ``none`` and ``l2``)."""
        return self.name not in ("none", "l2")

    @property
    def needs_fisher(self) -> bool:
        """Whether the penalty weights by a diagonal Fisher."""
        return "fisher" in self.name


class StrategySection(_Section):
    """The fine-tuning strategy: ``name`` plus that strategy's keyword arguments.

    Examples:
        >>> StrategySection(name="lp_ft", lp_epochs=3).params()
        {'lp_epochs': 3}
    """

    model_config = ConfigDict(extra="allow", validate_assignment=True)

    name: str = "full"

    def params(self) -> dict[str, Any]:
        """The strategy's keyword arguments."""
        return dict(self.model_extra or {})

    @model_validator(mode="after")
    def _check(self) -> StrategySection:
        _check_registry_params("strategy", self.name, self.params(), ())
        return self


class OptimSection(_Section):
    """Optimizer and learning-rate schedule.

    Attributes:
        name: ``adam``, ``adamw`` or ``sgd``.
        lr: Base learning rate (of the new layers; strategies may scale other groups).
        weight_decay: Optimizer weight decay for parameters the penalty does not already regularize.
        momentum: SGD momentum.
        scheduler: ``none``, ``cosine`` (to ``min_lr`` over the run) or ``step`` (× ``gamma`` every ``step_epochs``).
        warmup_epochs: Linear warm-up epochs before the schedule.
        grad_clip: Clip the gradient norm to this value (0 = off).
    """

    name: Literal["adam", "adamw", "sgd"] = "adam"
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    scheduler: Literal["none", "cosine", "step"] = "cosine"
    min_lr: float = Field(1e-6, ge=0)
    step_epochs: int = Field(10, ge=1)
    gamma: float = Field(0.1, gt=0, le=1)
    warmup_epochs: int = Field(0, ge=0)
    grad_clip: float = Field(0.0, ge=0)


class LossSection(_Section):
    """Cross-entropy weighted by the class ratio of the training set (the paper), plus an optional Dice term.

    Attributes:
        class_weights: ``class_ratio`` (inverse class frequency, normalised to mean 1), ``none``, or one weight
            per class.
        dice_weight: Weight of a soft Dice loss over the foreground classes added to the cross-entropy (0 = off).
    """

    class_weights: Literal["class_ratio", "none"] | list[float] = "class_ratio"
    dice_weight: float = Field(0.0, ge=0)

    @field_validator("class_weights")
    @classmethod
    def _positive(cls, value: Any) -> Any:
        if isinstance(value, list) and (not value or min(value) < 0):
            raise ValueError("loss.class_weights as a list needs one non-negative weight per class")
        return value


class TrainSection(_Section):
    """The training loop.

    Attributes:
        epochs: Maximum epochs.
        batch_size: Slices per optimizer step (per process under DDP).
        seed: Seed of weights, sampling and augmentation.
        device: ``auto`` (CUDA when available), ``cpu``, ``cuda`` or ``cuda:N``.
        precision: ``fp32``; ``bf16`` autocast (CPU or CUDA); ``fp16`` autocast with gradient scaling (CUDA only);
            ``auto`` = fp16 mixed precision on CUDA, fp32 on CPU.
        channels_last: Use the channels-last memory format (faster convolutions with bf16 on CPU).
        num_workers: DataLoader worker processes.
        early_stopping_patience: Stop after this many validations without improvement (0 = never).
        val_every: Validate every N epochs.
        steps_per_epoch: Cap on optimizer steps per epoch (None = one pass over the training slices).
        deterministic: Ask torch for deterministic algorithms (slower on CUDA).
        monitor: Validation metric that selects the best checkpoint: ``dice_opacity`` or ``dice_mean``.
    """

    epochs: int = Field(30, ge=1)
    batch_size: int = Field(8, ge=1)
    seed: int = 0
    device: str = "auto"
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    channels_last: bool = False
    num_workers: int = Field(0, ge=0)
    early_stopping_patience: int = Field(10, ge=0)
    val_every: int = Field(1, ge=1)
    steps_per_epoch: int | None = Field(None, ge=1)
    deterministic: bool = False
    monitor: Literal["dice_opacity", "dice_mean"] = "dice_opacity"

    @field_validator("device")
    @classmethod
    def _device(cls, value: str) -> str:
        if value in ("auto", "cpu", "cuda") or (value.startswith("cuda:") and value[5:].isdigit()):
            return value
        raise ValueError(f"train.device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {value!r}")


class OutputSection(_Section):
    """Where a run writes: ``<root>/<name>/`` holds checkpoints, the resolved config, logs and metrics.

    Attributes:
        root: Folder of all runs.
        name: Run name (default: a timestamp chosen when training starts).
        tensorboard: Write TensorBoard event files.
    """

    root: Path = Path("runs")
    name: str | None = None
    tensorboard: bool = True


class RunConfig(_Section):
    """Everything a training run needs; see the module docstring for the YAML form."""

    data: DataSection = Field(default_factory=DataSection)
    preprocess: PreprocessSection = Field(default_factory=PreprocessSection)
    model: ModelSection = Field(default_factory=ModelSection)
    source: SourceSection = Field(default_factory=SourceSection)
    regularization: RegularizationSection = Field(default_factory=RegularizationSection)
    strategy: StrategySection = Field(default_factory=StrategySection)
    optim: OptimSection = Field(default_factory=OptimSection)
    loss: LossSection = Field(default_factory=LossSection)
    augment: dict[str, Any] = Field(default_factory=dict)
    train: TrainSection = Field(default_factory=TrainSection)
    output: OutputSection = Field(default_factory=OutputSection)

    @model_validator(mode="after")
    def _check(self) -> RunConfig:
        from covidseg.train.prepare import parse_augment  # imports MONAI; the check belongs to loading

        parse_augment(self.augment)  # unknown augment keys are errors when the config is loaded
        if self.regularization.needs_source and self.source.path is None:
            raise ValueError(
                f"regularization {self.regularization.name!r} pulls toward source weights: set source.path, "
                "or use regularization.name=none or l2 to train from scratch"
            )
        weights = self.loss.class_weights
        if isinstance(weights, list) and len(weights) != len(self.model.class_names):
            raise ValueError(
                f"loss.class_weights has {len(weights)} values for {len(self.model.class_names)} classes "
                f"{list(self.model.class_names)}"
            )
        return self

    def to_yaml_dict(self) -> dict[str, Any]:
        """Plain data (paths as strings, tuples as lists) for YAML/JSON and checkpoints."""
        return self.model_dump(mode="json")
