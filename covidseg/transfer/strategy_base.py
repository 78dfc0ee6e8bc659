"""The fine-tuning strategy protocol and the parameter partition the strategies work on.

The protocol itself is described in :mod:`covidseg.transfer.strategies` (module docstring); this module holds the
base class every strategy derives from and :class:`ModelPartition`, the split of a model's parameters into
encoder stages, encoder layers and new (decoder + head) parameters. Strategies take that split from
:meth:`ModelPartition.from_model` (the DenseUNet layer index in :mod:`covidseg.model.layers`) unless one is
passed in, so they work on any model whose parameters can be named into such a split.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, cast

import torch
from torch import nn

from covidseg.errors import ConfigError
from covidseg.transfer.freezing import set_trainable, trainable_param_names

if TYPE_CHECKING:
    from covidseg.model import DenseUNet

__all__ = [
    "ENCODER_GROUP",
    "NEW_GROUP",
    "FineTuningStrategy",
    "ModelPartition",
    "group_by_module",
    "named_param_groups",
    "require_float",
    "require_int",
]

ENCODER_GROUP = "encoder"
NEW_GROUP = "new"


def require_int(strategy: str, key: str, value: object, minimum: int) -> int:
    """Return ``value`` if it is an integer >= ``minimum``, else raise :class:`ConfigError`.

    Examples:
        >>> require_int("lp_ft", "lp_epochs", 3, 0)
        3
    """
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"strategy {strategy!r}: {key} must be an integer >= {minimum}, got {value!r}")
    return value


def require_float(strategy: str, key: str, value: object, minimum: float, *, inclusive: bool = False) -> float:
    """Return ``value`` as float if it is a finite number > ``minimum`` (>= if inclusive), else ConfigError.

    Examples:
        >>> require_float("ptr", "gamma", 1, 0.0)
        1.0
    """
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or (value < minimum if inclusive else value <= minimum)
    ):
        bound = ">=" if inclusive else ">"
        raise ConfigError(f"strategy {strategy!r}: {key} must be a finite number {bound} {minimum}, got {value!r}")
    return float(value)


def group_by_module(param_names: Iterable[str]) -> dict[str, tuple[str, ...]]:
    """Group parameter names by the module that owns them (the name without its last component).

    Args:
        param_names: Qualified parameter names, in the order wanted for the groups.

    Returns:
        Owner module name -> its parameter names, in first-seen order.

    Examples:
        >>> group_by_module(["decoder.0.weight", "decoder.0.bias", "head.weight"])
        {'decoder.0': ('decoder.0.weight', 'decoder.0.bias'), 'head': ('head.weight',)}
    """
    groups: dict[str, list[str]] = {}
    for name in param_names:
        groups.setdefault(name.rpartition(".")[0], []).append(name)
    return {owner: tuple(names) for owner, names in groups.items()}


@dataclass(frozen=True)
class ModelPartition:
    """Names of a model's parameters split the way fine-tuning strategies need them.

    Attributes:
        stages: Encoder stage -> its parameter names, stages in forward order (for DenseUNet: stem,
            denseblock1, transition1, ..., denseblock4). Together they are the encoder.
        new: Every parameter not in the encoder (decoder and head): the layers that have no source weights.
        encoder_layers: Encoder layer -> its parameter names in forward order (the conv layer index for
            DenseUNet). Defaults to one layer per owning module.

    Examples:
        >>> part = ModelPartition(
        ...     stages={"stem": ("enc.0.weight",), "block": ("enc.1.weight", "enc.1.bias")},
        ...     new=("head.weight",),
        ... )
        >>> part.encoder
        ('enc.0.weight', 'enc.1.weight', 'enc.1.bias')
        >>> list(part.layers())
        ['enc.0', 'enc.1', 'head']
    """

    stages: Mapping[str, tuple[str, ...]]
    new: tuple[str, ...]
    encoder_layers: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.encoder_layers:
            object.__setattr__(self, "encoder_layers", group_by_module(self.encoder))

    @property
    def encoder(self) -> tuple[str, ...]:
        """All encoder parameter names, stage by stage."""
        return tuple(name for names in self.stages.values() for name in names)

    def layers(self) -> dict[str, tuple[str, ...]]:
        """Every layer of the model: the encoder layers, then one layer per module owning new parameters.

        Returns:
            Layer name -> parameter names.
        """
        return {**self.encoder_layers, **group_by_module(self.new)}

    def check(self, model: nn.Module) -> None:
        """Check that the partition names every parameter of ``model`` exactly once.

        Args:
            model: The model the partition describes.

        Raises:
            ValueError: Names are missing, unknown or repeated.
        """
        names = [name for name, _ in model.named_parameters()]
        listed = [*self.encoder, *self.new]
        layer_listed = [name for names_ in self.encoder_layers.values() for name in names_]
        problems = []
        if sorted(listed) != sorted(names):
            missing = sorted(set(names) - set(listed))[:3]
            unknown = sorted(set(listed) - set(names))[:3]
            problems.append(f"stages+new do not match the model (missing e.g. {missing}, unknown e.g. {unknown})")
        if len(set(listed)) != len(listed):
            problems.append("a parameter is listed twice")
        if sorted(layer_listed) != sorted(self.encoder):
            problems.append("encoder_layers do not cover the encoder stages exactly once")
        if problems:
            raise ValueError(f"parameter partition does not fit the model: {'; '.join(problems)}")

    @classmethod
    def from_model(cls, model: nn.Module) -> ModelPartition:
        """The partition of a DenseUNet from its encoder layer index (:mod:`covidseg.model.layers`).

        Encoder layers are named by their conv module; everything outside the encoder stages is new.

        Args:
            model: A :class:`covidseg.model.DenseUNet`.

        Returns:
            The partition.
        """
        from covidseg.model import layers as model_layers  # the model package imports MONAI: load on use

        unet = cast("DenseUNet", model)
        stages = {stage: tuple(names) for stage, names in model_layers.stage_groups(unet).items()}
        encoder = {name for names in stages.values() for name in names}
        new = tuple(name for name, _ in model.named_parameters() if name not in encoder)
        encoder_layers = {layer.conv_name: tuple(layer.param_names) for layer in model_layers.encoder_layers(unet)}
        return cls(stages=stages, new=new, encoder_layers=encoder_layers)


def named_param_groups(
    model: nn.Module, groups: Sequence[tuple[str, Sequence[str], float]], weight_decay: float
) -> list[dict[str, Any]]:
    """Optimizer parameter groups from ``(group name, parameter names, lr)`` triples; empty groups dropped.

    Args:
        model: The model owning the parameters.
        groups: Group name, the names of its parameters and its learning rate.
        weight_decay: Weight decay of every group.

    Returns:
        Dicts with keys ``name``, ``params``, ``lr``, ``weight_decay``.

    Examples:
        >>> from torch import nn
        >>> groups = named_param_groups(nn.Linear(2, 1), [("w", ["weight"], 0.1), ("none", [], 1.0)], 0.0)
        >>> [(g["name"], len(g["params"]), g["lr"]) for g in groups]
        [('w', 1, 0.1)]
    """
    params = dict(model.named_parameters())
    return [
        {"name": name, "params": [params[n] for n in names], "lr": lr, "weight_decay": weight_decay}
        for name, names, lr in groups
        if names
    ]


class FineTuningStrategy(abc.ABC):
    """Base class of the fine-tuning strategies; see :mod:`covidseg.transfer.strategies` for the protocol.

    Subclasses say which parameters are frozen at an epoch (:meth:`frozen_names`), may override
    :meth:`param_groups` and the step hooks, and add their own state through :meth:`_extra_state` /
    :meth:`_load_extra_state`. The trainable set is a pure function of the epoch, so resuming only needs the
    epoch back.

    Args:
        partition: Parameter split to use; ``None`` takes :meth:`ModelPartition.from_model` at :meth:`setup`.
    """

    name: ClassVar[str] = ""

    def __init__(self, *, partition: ModelPartition | None = None) -> None:
        self.partition = partition
        self.epoch = 0
        self._model: nn.Module | None = None

    # ----------------------------------------------------------------------------------------------------
    # What subclasses define
    def hparams(self) -> dict[str, Any]:
        """Hyper-parameters (constructor arguments), saved in the state and checked on load."""
        return {}

    @abc.abstractmethod
    def frozen_names(self, epoch: int) -> frozenset[str]:
        """Names of the parameters frozen during ``epoch`` (0-based)."""

    def _setup_extra(self, model: nn.Module) -> None:
        """Create strategy-owned modules (PtR head) once the model is known."""
        del model

    def _extra_state(self) -> dict[str, Any]:
        return {}

    def _load_extra_state(self, state: Mapping[str, Any]) -> None:
        del state

    # ----------------------------------------------------------------------------------------------------
    # The protocol
    def setup(self, model: nn.Module) -> None:
        """Bind the strategy to ``model`` (already on its device) and apply the current epoch's freezing.

        Args:
            model: The model to fine-tune.
        """
        if self.partition is None:
            self.partition = ModelPartition.from_model(model)
        self.partition.check(model)
        self._model = model
        self._setup_extra(model)
        self._apply_freezing(model)

    def param_groups(self, model: nn.Module, base_lr: float, weight_decay: float) -> list[dict[str, Any]]:
        """Optimizer parameter groups holding every parameter the strategy may ever train.

        The groups include frozen parameters (they get no gradient, and torch optimizers skip them, weight
        decay included), so one optimizer built after :meth:`setup` serves the whole run. Each group has a
        ``"name"`` key. Default: groups ``"encoder"`` and ``"new"`` at ``base_lr``.

        Args:
            model: The model given to :meth:`setup`.
            base_lr: Learning rate of the new layers.
            weight_decay: Weight decay of every group.

        Returns:
            Parameter group dicts for ``torch.optim`` optimizers.
        """
        part = self._require_partition()
        return named_param_groups(
            model, [(ENCODER_GROUP, part.encoder, base_lr), (NEW_GROUP, part.new, base_lr)], weight_decay
        )

    def on_epoch_start(self, epoch: int, model: nn.Module) -> bool:
        """Apply the freezing of ``epoch`` (0-based).

        Args:
            epoch: The epoch about to start.
            model: The model.

        Returns:
            True when the set of trainable parameters changed (the optimizer from :meth:`param_groups` stays
            valid either way; the flag is for logging).
        """
        self.epoch = epoch
        return self._apply_freezing(model)

    def before_optimizer_step(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        """Called after ``backward`` and before ``optimizer.step()``. Default: nothing."""
        del model, optimizer

    def after_optimizer_step(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        """Called right after ``optimizer.step()``. Default: nothing."""
        del model, optimizer

    def extra_loss(
        self,
        model: nn.Module,
        task_loss: torch.Tensor,
        *,
        features: torch.Tensor | None = None,
        sample_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """A term to add to the loss before ``backward``. Default: a zero scalar.

        Args:
            model: The model.
            task_loss: The data term of this step (not including penalties), still attached to the graph.
            features: Encoder bottleneck features of this batch, when the loop has them.
            sample_ids: Dataset indices of this batch's samples.

        Returns:
            A scalar tensor.
        """
        del model, features, sample_ids
        return task_loss.new_zeros(())

    def state_dict(self) -> dict[str, Any]:
        """The strategy's state: name, hyper-parameters, epoch and strategy-specific entries.

        Returns:
            A dict of tensors and plain Python values (``torch.load(weights_only=True)`` reads it back).
        """
        return {"strategy": self.name, "hparams": self.hparams(), "epoch": self.epoch, **self._extra_state()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict` output; re-applies freezing when :meth:`setup` has run.

        Args:
            state: A state from :meth:`state_dict`.

        Raises:
            ConfigError: The state belongs to another strategy or other hyper-parameters.
        """
        if state.get("strategy") != self.name:
            raise ConfigError(
                f"checkpoint was trained with strategy {state.get('strategy')!r}, not {self.name!r}; "
                "resume with the same strategy"
            )
        if dict(state.get("hparams", {})) != self.hparams():
            raise ConfigError(
                f"checkpoint strategy settings {dict(state.get('hparams', {}))} differ from {self.hparams()}; "
                "resume with the same settings"
            )
        self.epoch = int(state["epoch"])
        self._load_extra_state(state)
        if self._model is not None:
            self._apply_freezing(self._model)

    # ----------------------------------------------------------------------------------------------------
    def _require_partition(self) -> ModelPartition:
        if self.partition is None:
            raise RuntimeError(f"strategy {self.name!r}: call setup(model) first")
        return self.partition

    def _apply_freezing(self, model: nn.Module) -> bool:
        part = self._require_partition()
        frozen = self.frozen_names(self.epoch)
        before = trainable_param_names(model)
        set_trainable(model, [n for n in (*part.encoder, *part.new) if n not in frozen], True)
        set_trainable(model, [n for n in (*part.encoder, *part.new) if n in frozen], False)
        return trainable_param_names(model) != before

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.hparams().items())
        return f"{type(self).__name__}({args})"
