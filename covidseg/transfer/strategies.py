"""Fine-tuning strategies: which parameters train when, at which learning rate, and any extra loss term.

The protocol
------------
Every strategy is a :class:`~covidseg.transfer.strategy_base.FineTuningStrategy` built by
:func:`make_strategy` from the registry :data:`STRATEGIES` (name -> class; no registration by import side
effect). A training loop drives it through these calls only::

    strategy = make_strategy("gradual_unfreeze", direction="last_first", epochs_per_stage=2)
    strategy.setup(model)                         # after model.to(device): binds it, applies epoch-0 freezing
    if resuming:
        strategy.load_state_dict(ckpt["strategy"])  # epoch, flags, PtR head...; re-applies the freezing
    optimizer = torch.optim.AdamW(strategy.param_groups(model, base_lr, weight_decay))
    for epoch in range(start_epoch, epochs):
        strategy.on_epoch_start(epoch, model)     # (un)freezes; True when the trainable set changed
        model.train()                             # frozen BatchNorm layers stay in eval mode regardless
        for batch in loader:
            logits = model(batch["image"])
            task_loss = criterion(logits, batch["label"])
            loss = task_loss + penalty(model) + strategy.extra_loss(model, task_loss, sample_ids=batch["index"])
            optimizer.zero_grad()
            loss.backward()
            strategy.before_optimizer_step(model, optimizer)   # Auto-RGN sets per-layer lrs
            optimizer.step()
            strategy.after_optimizer_step(model, optimizer)    # Auto-RGN restores the scheduled lrs
            scheduler.step()
        save({"strategy": strategy.state_dict(), ...})

Design decisions:

* **One optimizer for the whole run.** :meth:`param_groups` returns groups holding *every* parameter (and
  strategy-owned ones, e.g. the PtR head), frozen ones included; each group has a ``"name"``. Freezing only sets
  ``requires_grad``; a frozen parameter has no gradient and torch optimizers skip it (weight decay too). So
  unfreezing needs no rebuild, learning-rate schedulers and optimizer state survive, and ``on_epoch_start``'s
  flag is informational.
* **Freezing is a pure function of the epoch** (:meth:`frozen_names`), so a resumed run is in exactly the state
  it was saved in. Frozen means frozen BatchNorm statistics too (:mod:`covidseg.transfer.freezing`).
* **``extra_loss`` always returns a scalar tensor** (zero for strategies without a term) so the loop has one path.
  ``task_loss`` is the data term only (no penalties). ``sample_ids`` are dataset indices (PtR's random targets are
  keyed by them); ``features`` may pass the encoder bottleneck directly, otherwise PtR captures it with a hook.
* **Learning-rate changes are temporary.** Auto-RGN scales ``group["lr"]`` only between
  ``before_optimizer_step`` and ``after_optimizer_step``, so schedulers see and set their own values.
* **State** (``state_dict``) holds the strategy name, its hyper-parameters (checked on load: resuming with other
  settings is a :class:`~covidseg.errors.ConfigError`), the epoch and strategy-specific entries; it is plain
  tensors and numbers, readable with ``torch.load(weights_only=True)``.

The strategies
--------------
``full`` (FT)
    Everything trains at ``base_lr``.
``linear_probe`` (LP)
    The whole encoder is frozen (BatchNorm statistics included); only the new layers train, i.e. the decoder and
    head. For a segmentation U-Net the "linear probe" of classification becomes "train only the layers that
    have no source weights", since a linear head on frozen features cannot produce a segmentation map.
``gradual_unfreeze`` (G-LF / G-FL)
    Starts like LP; every ``epochs_per_stage`` epochs one more encoder stage group is unfrozen: with
    ``direction="last_first"`` from ``denseblock4`` back to ``stem`` (G-LF), with ``"first_last"`` from ``stem``
    to ``denseblock4`` (G-FL). With DenseUNet's 8 groups the encoder is fully trainable from epoch
    ``8 * epochs_per_stage``.
``lp_ft`` (LP-FT, Kumar et al. 2022)
    LP for ``lp_epochs`` epochs, then everything trains; the encoder group's learning rate is
    ``encoder_lr_scale * base_lr`` (default 0.1) throughout (it only matters once the encoder is unfrozen).
``auto_rgn`` (Lee et al. 2023)
    :class:`~covidseg.transfer.autorgn.AutoRGN`: per-layer learning rates from relative gradient norms.
``ptr`` (Zhong & Maki 2019/2020)
    :class:`~covidseg.transfer.ptr.PseudoTaskRegularization`: a random-target regression head on the encoder
    bottleneck, weighted by a gradient-norm ratio, switched on when the task loss stabilises.
"""

from __future__ import annotations

import inspect
from typing import Any, ClassVar

from torch import nn

from covidseg.errors import ConfigError
from covidseg.transfer.autorgn import AutoRGN
from covidseg.transfer.ptr import PseudoTaskRegularization
from covidseg.transfer.strategy_base import (
    ENCODER_GROUP,
    NEW_GROUP,
    FineTuningStrategy,
    ModelPartition,
    named_param_groups,
    require_float,
    require_int,
)

__all__ = [
    "STRATEGIES",
    "FullFineTuning",
    "GradualUnfreeze",
    "LinearProbe",
    "LinearProbeThenFineTune",
    "make_strategy",
]

#: Default learning-rate factor of the encoder in the fine-tuning phase of LP-FT.
LPFT_ENCODER_LR_SCALE = 0.1
#: Unfreezing orders of gradual unfreezing.
DIRECTIONS: tuple[str, ...] = ("last_first", "first_last")


class FullFineTuning(FineTuningStrategy):
    """FT: every parameter trains at the base learning rate.

    Examples:
        >>> FullFineTuning().frozen_names(epoch=0)
        frozenset()
    """

    name: ClassVar[str] = "full"

    def frozen_names(self, epoch: int) -> frozenset[str]:
        """Nothing is frozen."""
        del epoch
        return frozenset()


class LinearProbe(FineTuningStrategy):
    """LP: the encoder is frozen (BatchNorm statistics included); the decoder and head train.

    Examples:
        >>> part = ModelPartition(stages={"stem": ("enc.weight",)}, new=("head.weight",))
        >>> sorted(LinearProbe(partition=part).frozen_names(epoch=5))
        ['enc.weight']
    """

    name: ClassVar[str] = "linear_probe"

    def frozen_names(self, epoch: int) -> frozenset[str]:
        """The whole encoder, at every epoch."""
        del epoch
        return frozenset(self._require_partition().encoder)


class GradualUnfreeze(FineTuningStrategy):
    """G-LF / G-FL: the encoder's stage groups are unfrozen one by one, every ``epochs_per_stage`` epochs.

    Epochs ``0 .. epochs_per_stage - 1`` train only the new layers; at epoch ``k * epochs_per_stage`` the
    first ``k`` stages in unfreezing order are trainable.

    Args:
        direction: ``"last_first"`` (deepest stage first, G-LF) or ``"first_last"`` (stem first, G-FL).
        epochs_per_stage: Epochs between two unfreezing steps (>= 1).
        partition: Parameter split (default: from the model at setup).

    Examples:
        >>> part = ModelPartition(stages={"stem": ("a.w",), "block": ("b.w",)}, new=("head.w",))
        >>> glf = GradualUnfreeze(direction="last_first", epochs_per_stage=2, partition=part)
        >>> [sorted(glf.frozen_names(epoch)) for epoch in range(5)]
        [['a.w', 'b.w'], ['a.w', 'b.w'], ['a.w'], ['a.w'], []]
    """

    name: ClassVar[str] = "gradual_unfreeze"

    def __init__(
        self,
        direction: str = "last_first",
        epochs_per_stage: int = 1,
        *,
        partition: ModelPartition | None = None,
    ) -> None:
        super().__init__(partition=partition)
        if direction not in DIRECTIONS:
            raise ConfigError(f"strategy {self.name!r}: direction must be one of {list(DIRECTIONS)}, got {direction!r}")
        self.direction = direction
        self.epochs_per_stage = require_int(self.name, "epochs_per_stage", epochs_per_stage, 1)

    def hparams(self) -> dict[str, Any]:
        """Direction and epochs per stage."""
        return {"direction": self.direction, "epochs_per_stage": self.epochs_per_stage}

    def unfreeze_order(self) -> list[str]:
        """Encoder stage names in the order they are unfrozen."""
        stages = list(self._require_partition().stages)
        return stages[::-1] if self.direction == "last_first" else stages

    def frozen_names(self, epoch: int) -> frozenset[str]:
        """Parameters of the stages not yet unfrozen at ``epoch``."""
        part = self._require_partition()
        order = self.unfreeze_order()
        n_open = min(len(order), max(epoch, 0) // self.epochs_per_stage)
        return frozenset(name for stage in order[n_open:] for name in part.stages[stage])


class LinearProbeThenFineTune(FineTuningStrategy):
    """LP-FT (Kumar et al. 2022): linear probing for ``lp_epochs``, then full fine-tuning.

    The encoder group's learning rate is ``encoder_lr_scale * base_lr`` for the whole run, so the pre-trained
    features move slowly once they are unfrozen while the probed decoder and head keep ``base_lr``.

    Args:
        lp_epochs: Epochs with a frozen encoder (>= 0; 0 is FT with a smaller encoder lr).
        encoder_lr_scale: Encoder learning-rate factor in (0, inf) (default 0.1).
        partition: Parameter split (default: from the model at setup).

    Examples:
        >>> part = ModelPartition(stages={"stem": ("enc.w",)}, new=("head.w",))
        >>> lpft = LinearProbeThenFineTune(lp_epochs=2, partition=part)
        >>> [sorted(lpft.frozen_names(epoch)) for epoch in range(3)]
        [['enc.w'], ['enc.w'], []]
    """

    name: ClassVar[str] = "lp_ft"

    def __init__(
        self,
        lp_epochs: int = 5,
        encoder_lr_scale: float = LPFT_ENCODER_LR_SCALE,
        *,
        partition: ModelPartition | None = None,
    ) -> None:
        super().__init__(partition=partition)
        self.lp_epochs = require_int(self.name, "lp_epochs", lp_epochs, 0)
        self.encoder_lr_scale = require_float(self.name, "encoder_lr_scale", encoder_lr_scale, 0.0)

    def hparams(self) -> dict[str, Any]:
        """LP epochs and encoder learning-rate factor."""
        return {"lp_epochs": self.lp_epochs, "encoder_lr_scale": self.encoder_lr_scale}

    def frozen_names(self, epoch: int) -> frozenset[str]:
        """The encoder during the first ``lp_epochs`` epochs, nothing afterwards."""
        return frozenset(self._require_partition().encoder) if epoch < self.lp_epochs else frozenset()

    def param_groups(self, model: nn.Module, base_lr: float, weight_decay: float) -> list[dict[str, Any]]:
        """Groups ``"encoder"`` at ``encoder_lr_scale * base_lr`` and ``"new"`` at ``base_lr``."""
        part = self._require_partition()
        return named_param_groups(
            model,
            [(ENCODER_GROUP, part.encoder, base_lr * self.encoder_lr_scale), (NEW_GROUP, part.new, base_lr)],
            weight_decay,
        )


#: Registry of fine-tuning strategies: name -> class.
STRATEGIES: dict[str, type[FineTuningStrategy]] = {
    cls.name: cls
    for cls in (
        FullFineTuning,
        LinearProbe,
        GradualUnfreeze,
        LinearProbeThenFineTune,
        AutoRGN,
        PseudoTaskRegularization,
    )
}


def make_strategy(name: str, **params: Any) -> FineTuningStrategy:
    """Build the strategy registered as ``name`` with its keyword parameters.

    Args:
        name: A key of :data:`STRATEGIES`.
        **params: Constructor arguments of that strategy (``partition`` included, for models that are not a
            DenseUNet).

    Returns:
        The strategy, not yet set up.

    Raises:
        ConfigError: Unknown name, unknown parameter or a bad value.

    Examples:
        >>> make_strategy("lp_ft", lp_epochs=3)
        LinearProbeThenFineTune(lp_epochs=3, encoder_lr_scale=0.1)
        >>> make_strategy("lp")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        covidseg.errors.ConfigError: unknown fine-tuning strategy 'lp'; expected one of ['auto_rgn', ...]
    """
    if name not in STRATEGIES:
        raise ConfigError(f"unknown fine-tuning strategy {name!r}; expected one of {sorted(STRATEGIES)}")
    cls = STRATEGIES[name]
    accepted = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        raise ConfigError(f"strategy {name!r} has no parameter(s) {unknown}; expected some of {sorted(accepted)}")
    return cls(**params)
