"""Pseudo-task regularization (PtR): regress pooled encoder features to fixed random targets.

Zhong & Maki, "Pseudo-task Regularization for ConvNet Transfer Learning" (2019), published 2020 as
"Regularizing CNN Transfer Learning with Randomised Regression".

Besides the segmentation loss, the encoder feeds a small regression head that tries to predict fixed random
targets from the pooled bottleneck features. The pseudo task has no meaning; its gradient on the shared encoder
keeps the features from over-fitting the small target set. As implemented here:

* **Features**: the output of ``feature_module`` (default: the module owning the last encoder parameter; for
  DenseUNet ``encoder.norm5``, the bottleneck before its ReLU), captured by a forward hook during training
  (or passed as ``features=``), global-average-pooled to ``(N, C)``.
* **Head**: ``nn.Linear(C, target_dim)``, initialised from ``seed``; owned and saved by the strategy (not part
  of the model), trained by the optimizer through :meth:`PseudoTaskRegularization.param_groups`.
* **Targets**: standard normal vectors of length ``target_dim``, a pure function of ``(seed, key)`` (NumPy's
  ``default_rng([seed, key])``: a ``SeedSequence`` over both numbers, so distinct pairs give independent streams;
  a torch CPU generator keeps only 32 seed bits), fixed for the whole run and needing no saved RNG state.
  ``target_mode="sample"`` keys them by the dataset index of each sample (``sample_ids``: every image always
  regresses to its own target, the paper's pseudo task); ``"batch_position"`` keys them by the position in the
  batch (no indices needed; targets fixed per batch slot).
* **Loss**: ``w · ℓ(head(pool(f)), t)`` with ``ℓ`` mean squared error (``regression="l2"``) or smooth L1, and
  ``w = γ · ||∇_θenc L_task|| / ||∇_θenc ℓ||`` over the trainable encoder parameters (detached, so the
  pseudo gradient on the encoder has norm ``γ`` times the task gradient's). ``w`` is recomputed every
  ``weight_every`` active steps (two extra encoder backward passes each time) and reused in between.
* **Switch-on**: off until the task loss stabilises. An exponential moving average ``m_t`` (factor
  ``ema_beta``) of the task loss is kept; PtR switches on, for good, at the first step where
  ``|m_t − m_{t−patience}| / |m_{t−patience}| < threshold``. ``patience=0`` means on from the first step.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from covidseg.errors import ConfigError
from covidseg.transfer.strategy_base import (
    FineTuningStrategy,
    ModelPartition,
    named_param_groups,
    require_float,
    require_int,
)

__all__ = ["PseudoTaskRegularization", "random_targets"]

TARGET_MODES: tuple[str, ...] = ("sample", "batch_position")
REGRESSIONS: tuple[str, ...] = ("l2", "smooth_l1")
HEAD_GROUP = "ptr_head"
#: Gradient norms at or below this count as zero (no weight can be formed; the weight is then 0).
MIN_GRAD_NORM = 1e-12


def random_targets(keys: torch.Tensor, dim: int, seed: int) -> torch.Tensor:
    """Fixed random targets: row ``k`` is ``dim`` standard normal values from ``default_rng([seed, k])``.

    Args:
        keys: 1-D integer tensor of non-negative sample keys.
        dim: Target length.
        seed: Non-negative run seed.

    Returns:
        ``(len(keys), dim)`` float32 tensor on the CPU.

    Raises:
        ValueError: A key is negative.

    Examples:
        >>> import torch
        >>> a = random_targets(torch.tensor([3, 7]), dim=4, seed=0)
        >>> b = random_targets(torch.tensor([7]), dim=4, seed=0)
        >>> a.shape, torch.equal(a[1], b[0])
        (torch.Size([2, 4]), True)
    """
    rows = []
    for key in keys.flatten().tolist():
        if int(key) < 0:
            raise ValueError(f"PtR sample key {key} is negative; pass dataset indices as sample_ids")
        values = np.random.default_rng([seed, int(key)]).standard_normal(dim)
        rows.append(torch.from_numpy(values.astype(np.float32)))
    return torch.stack(rows) if rows else torch.empty(0, dim)


def _grad_norm(loss: torch.Tensor, params: list[nn.Parameter]) -> float:
    grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
    present = [g for g in grads if g is not None]
    if not present:
        return 0.0
    return float(torch.linalg.vector_norm(torch.stack([n.double() for n in torch._foreach_norm(present)])))


class PseudoTaskRegularization(FineTuningStrategy):
    """PtR: full fine-tuning plus an adaptively weighted random-target regression on the encoder bottleneck.

    See the module docstring for the method. All parameters train (like ``full``); the head is an extra
    optimizer group ``"ptr_head"``.

    Args:
        gamma: Target ratio of pseudo to task gradient norm on the encoder (> 0).
        target_dim: Length of the random target vectors (>= 1).
        target_mode: ``"sample"`` (targets keyed by ``sample_ids``) or ``"batch_position"``.
        regression: ``"l2"`` (mean squared error) or ``"smooth_l1"``.
        ema_beta: Moving-average factor of the task loss, in [0, 1).
        patience: Steps over which the moving average must change by less than ``threshold`` (>= 0).
        threshold: Relative change of the moving average that counts as stable (> 0).
        weight_every: Recompute the gradient-norm weight every this many active steps (>= 1).
        seed: Seed of the head initialisation and the targets (>= 0).
        in_features: Channels of the features; default from ``feature_module`` (BatchNorm, conv or linear).
        feature_module: Name of the module whose output is the bottleneck; default: owner of the last encoder
            parameter.
        partition: Parameter split (default: from the model at setup).

    Examples:
        >>> import torch
        >>> from torch import nn
        >>> model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Conv2d(4, 2, 1))
        >>> part = ModelPartition(stages={"enc": ("0.weight", "0.bias", "1.weight", "1.bias")},
        ...                       new=("2.weight", "2.bias"))
        >>> ptr = PseudoTaskRegularization(patience=0, target_dim=8, partition=part)
        >>> ptr.setup(model)
        >>> task_loss = model(torch.randn(2, 1, 8, 8)).square().mean()
        >>> extra = ptr.extra_loss(model, task_loss, sample_ids=torch.tensor([0, 1]))
        >>> ptr.active, extra.requires_grad, ptr.weight > 0
        (True, True, True)
    """

    name: ClassVar[str] = "ptr"

    def __init__(
        self,
        gamma: float = 1.0,
        target_dim: int = 64,
        target_mode: str = "sample",
        regression: str = "l2",
        ema_beta: float = 0.98,
        patience: int = 100,
        threshold: float = 0.01,
        weight_every: int = 1,
        seed: int = 0,
        in_features: int | None = None,
        feature_module: str | None = None,
        *,
        partition: ModelPartition | None = None,
    ) -> None:
        super().__init__(partition=partition)
        for key, value, choices in (
            ("target_mode", target_mode, TARGET_MODES),
            ("regression", regression, REGRESSIONS),
        ):
            if value not in choices:
                raise ConfigError(f"strategy {self.name!r}: {key} must be one of {list(choices)}, got {value!r}")
        self.gamma = require_float(self.name, "gamma", gamma, 0.0)
        self.target_dim = require_int(self.name, "target_dim", target_dim, 1)
        self.target_mode = target_mode
        self.regression = regression
        self.ema_beta = require_float(self.name, "ema_beta", ema_beta, 0.0, inclusive=True)
        if self.ema_beta >= 1.0:
            raise ConfigError(f"strategy {self.name!r}: ema_beta must be below 1, got {ema_beta!r}")
        self.patience = require_int(self.name, "patience", patience, 0)
        self.threshold = require_float(self.name, "threshold", threshold, 0.0)
        self.weight_every = require_int(self.name, "weight_every", weight_every, 1)
        self.seed = require_int(self.name, "seed", seed, 0)
        self.in_features = None if in_features is None else require_int(self.name, "in_features", in_features, 1)
        self.feature_module = feature_module
        # Run state (saved).
        self.active = self.patience == 0
        self.steps = 0
        self.active_steps = 0
        self.activated_at: int | None = 0 if self.active else None
        self.ema_history: list[float] = []
        self.weight = 0.0
        self.head: nn.Linear | None = None
        # Not saved.
        self._pending_head: dict[str, torch.Tensor] | None = None
        self._captured: torch.Tensor | None = None
        self._hook: torch.utils.hooks.RemovableHandle | None = None
        self._shared: list[nn.Parameter] = []

    def hparams(self) -> dict[str, Any]:
        """Every constructor argument except the partition."""
        return {
            "gamma": self.gamma,
            "target_dim": self.target_dim,
            "target_mode": self.target_mode,
            "regression": self.regression,
            "ema_beta": self.ema_beta,
            "patience": self.patience,
            "threshold": self.threshold,
            "weight_every": self.weight_every,
            "seed": self.seed,
            "in_features": self.in_features,
            "feature_module": self.feature_module,
        }

    # ----------------------------------------------------------------------------------------------------
    def frozen_names(self, epoch: int) -> frozenset[str]:
        """Nothing is frozen: every parameter trains."""
        del epoch
        return frozenset()

    def _setup_extra(self, model: nn.Module) -> None:
        part = self._require_partition()
        if not part.encoder:
            raise ValueError("PtR needs encoder parameters to regularise; the partition has none")
        module_name = self.feature_module or part.encoder[-1].rpartition(".")[0]
        modules = dict(model.named_modules())
        if module_name not in modules:
            raise ConfigError(f"strategy {self.name!r}: the model has no module {module_name!r} (feature_module)")
        feature_module = modules[module_name]
        in_features = self.in_features or _output_channels(feature_module)
        if in_features is None:
            raise ConfigError(f"strategy {self.name!r}: cannot tell the channels of {module_name!r}; set in_features")
        device = next(model.parameters()).device
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            head = nn.Linear(in_features, self.target_dim)
        if self._pending_head is not None:
            head.load_state_dict(self._pending_head)
            self._pending_head = None
        self.head = head.to(device)
        params = dict(model.named_parameters())
        self._shared = [params[name] for name in part.encoder]
        if self._hook is not None:
            self._hook.remove()
        self._hook = feature_module.register_forward_hook(self._capture)

    def _capture(self, module: nn.Module, inputs: Any, output: torch.Tensor) -> None:
        del module, inputs
        if torch.is_grad_enabled() and self._model is not None and self._model.training:
            self._captured = output

    def param_groups(self, model: nn.Module, base_lr: float, weight_decay: float) -> list[dict[str, Any]]:
        """Groups ``"encoder"`` and ``"new"`` at ``base_lr`` plus ``"ptr_head"`` (the regression head)."""
        groups = super().param_groups(model, base_lr, weight_decay)
        head = self._require_head()
        return [*groups, *named_param_groups(head, [(HEAD_GROUP, ["weight", "bias"], base_lr)], weight_decay)]

    def _require_head(self) -> nn.Linear:
        if self.head is None:
            raise RuntimeError(f"strategy {self.name!r}: call setup(model) first")
        return self.head

    # ----------------------------------------------------------------------------------------------------
    def observe(self, task_loss: float) -> bool:
        """Feed one task-loss value to the switch-on monitor; return whether PtR is active afterwards.

        Examples:
            >>> ptr = PseudoTaskRegularization(patience=2, threshold=0.01)
            >>> [ptr.observe(1.0) for _ in range(4)]
            [False, False, True, True]
        """
        self.steps += 1
        if self.active:
            return True
        previous = self.ema_history[-1] if self.ema_history else task_loss
        ema = self.ema_beta * previous + (1.0 - self.ema_beta) * task_loss
        self.ema_history = [*self.ema_history, ema][-(self.patience + 1) :]
        if len(self.ema_history) == self.patience + 1:
            old = self.ema_history[0]
            if abs(ema - old) < self.threshold * abs(old) or ema == old:
                self.active = True
                self.activated_at = self.steps
        return self.active

    def targets(self, batch_size: int, sample_ids: torch.Tensor | None) -> torch.Tensor:
        """Random targets of a batch (see ``target_mode``), on the CPU.

        Raises:
            ValueError: ``target_mode="sample"`` and no or mis-sized ``sample_ids``.
        """
        if self.target_mode == "batch_position":
            keys = torch.arange(batch_size)
        elif sample_ids is None or sample_ids.numel() != batch_size:
            raise ValueError(
                "PtR with target_mode='sample' needs sample_ids (the dataset index of every sample in the batch); "
                "pass them to extra_loss or use target_mode='batch_position'"
            )
        else:
            keys = sample_ids.detach().cpu().flatten()
        return random_targets(keys, self.target_dim, self.seed)

    def pseudo_loss(self, features: torch.Tensor, sample_ids: torch.Tensor | None = None) -> torch.Tensor:
        """Unweighted pseudo-task loss of bottleneck ``features`` ``(N, C, ...)`` or ``(N, C)``."""
        pooled = features.flatten(2).mean(dim=-1) if features.dim() > 2 else features
        prediction = self._require_head()(pooled)
        target = self.targets(prediction.shape[0], sample_ids).to(prediction)
        if self.regression == "l2":
            return F.mse_loss(prediction, target)
        return F.smooth_l1_loss(prediction, target)

    def gradient_norm_weight(self, task_loss: torch.Tensor, pseudo_loss: torch.Tensor) -> float:
        """``γ · ||∇ task|| / ||∇ pseudo||`` over the trainable encoder parameters (0 when undefined)."""
        shared = [p for p in self._shared if p.requires_grad]
        if not shared or not task_loss.requires_grad or not pseudo_loss.requires_grad:
            return 0.0
        pseudo_norm = _grad_norm(pseudo_loss, shared)
        if pseudo_norm <= MIN_GRAD_NORM:
            return 0.0
        return self.gamma * _grad_norm(task_loss, shared) / pseudo_norm

    def extra_loss(
        self,
        model: nn.Module,
        task_loss: torch.Tensor,
        *,
        features: torch.Tensor | None = None,
        sample_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The weighted pseudo-task loss once PtR is active, else a zero scalar.

        Args:
            model: The model (its last training forward pass supplied the captured features).
            task_loss: Data term of this step, attached to the graph (fed to the switch-on monitor).
            features: Bottleneck features; default: those captured in the last training forward pass.
            sample_ids: Dataset indices of the batch (``target_mode="sample"``).

        Returns:
            A scalar tensor.

        Raises:
            RuntimeError: Active, but no features were passed or captured.
        """
        del model
        feats = features if features is not None else self._captured
        self._captured = None
        if not self.observe(float(task_loss.detach())):
            return task_loss.new_zeros(())
        if feats is None:
            raise RuntimeError(
                "PtR: no encoder features; run the model forward in training mode with gradients on before "
                "extra_loss, or pass features="
            )
        pseudo = self.pseudo_loss(feats, sample_ids)
        if self.active_steps % self.weight_every == 0:
            self.weight = self.gradient_norm_weight(task_loss, pseudo)
        self.active_steps += 1
        return pseudo * self.weight

    # ----------------------------------------------------------------------------------------------------
    def _extra_state(self) -> dict[str, Any]:
        head = None if self.head is None else {k: v.detach().clone() for k, v in self.head.state_dict().items()}
        return {
            "active": self.active,
            "steps": self.steps,
            "active_steps": self.active_steps,
            "activated_at": self.activated_at,
            "ema_history": list(self.ema_history),
            "weight": self.weight,
            "head": head if head is not None else self._pending_head,
        }

    def _load_extra_state(self, state: Mapping[str, Any]) -> None:
        self.active = bool(state["active"])
        self.steps = int(state["steps"])
        self.active_steps = int(state["active_steps"])
        self.activated_at = None if state["activated_at"] is None else int(state["activated_at"])
        self.ema_history = [float(v) for v in state["ema_history"]]
        self.weight = float(state["weight"])
        head_state = state["head"]
        if head_state is None:
            return
        if self.head is None:
            self._pending_head = dict(head_state)
        else:
            self.head.load_state_dict(head_state)


def _output_channels(module: nn.Module) -> int | None:
    """Channels a module outputs, for BatchNorm, conv and linear layers."""
    for attr in ("num_features", "out_channels", "out_features"):
        value = getattr(module, attr, None)
        if isinstance(value, int):
            return value
    return None
