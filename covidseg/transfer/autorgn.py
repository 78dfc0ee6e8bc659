"""Auto-RGN: per-layer learning rates from relative gradient norms.

Lee et al. 2023, "Surgical Fine-Tuning Improves Adaptation to Distribution Shifts" (ICLR).

At every optimizer step, for each layer ``i``::

    RGN_i = ||g_i|| / ||θ_i||          (norms over all tensors of the layer together)
    lr_i  = lr × RGN_i / max_j RGN_j

so the layer whose parameters the gradient would change most, relative to their size, trains at the full
learning rate and every other layer proportionally slower. ``lr`` is the group's scheduled learning rate; the
scaled value is written to ``group["lr"]`` in :meth:`AutoRGN.before_optimizer_step` and the scheduled one
put back in :meth:`AutoRGN.after_optimizer_step`, so learning-rate schedulers keep working.

Layers: the encoder layers of the partition (for DenseUNet, the 120 conv layers of the layer index, each with
its assigned BatchNorm parameters) and, for the new part, one layer per module that owns parameters (each
decoder transpose conv, conv and BatchNorm, and the head conv). One optimizer parameter group per layer, named
after it. Edge cases: a layer without gradients (frozen or unused) keeps its learning rate and does not take
part in the maximum; a layer whose parameter norm is below ``min_param_norm`` (e.g. zero-initialised) has no
meaningful relative norm and trains at the full rate; if every RGN is 0, all layers keep the full rate.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import torch
from torch import nn

from covidseg.transfer.strategy_base import (
    FineTuningStrategy,
    ModelPartition,
    named_param_groups,
    require_float,
)

__all__ = ["AutoRGN", "normalised_rgn_scales", "relative_gradient_norms"]

#: Parameter norms at or below this are treated as zero (the layer then trains at the full rate).
MIN_PARAM_NORM = 1e-12
#: Key under which a group's scheduled learning rate is kept while the scaled one is in use.
SCHEDULED_LR_KEY = "autorgn_scheduled_lr"


def relative_gradient_norms(
    layers: Sequence[tuple[str, Sequence[torch.Tensor]]], min_param_norm: float = MIN_PARAM_NORM
) -> dict[str, float]:
    """Relative gradient norm ``||g|| / ||θ||`` of every layer that has gradients.

    Norms are taken over all tensors of a layer with gradients together (fused ``torch._foreach_norm``, one
    host synchronisation). Layers whose parameter norm is <= ``min_param_norm`` get ``inf``.

    Args:
        layers: ``(layer name, parameters)`` pairs.
        min_param_norm: Parameter norms at or below this count as zero.

    Returns:
        Layer name -> RGN, only for layers with at least one gradient.

    Examples:
        >>> import torch
        >>> w = torch.nn.Parameter(torch.tensor([3.0, 4.0]))
        >>> w.grad = torch.tensor([0.0, 0.5])
        >>> relative_gradient_norms([("w", [w])])
        {'w': 0.1}
    """
    grads: list[torch.Tensor] = []
    params: list[torch.Tensor] = []
    owner: list[int] = []
    for k, (_, tensors) in enumerate(layers):
        for tensor in tensors:
            if tensor.grad is not None:
                grads.append(tensor.grad.detach())
                params.append(tensor.detach())
                owner.append(k)
    if not grads:
        return {}
    g_norms = torch.stack([n.double() for n in torch._foreach_norm(grads)])
    p_norms = torch.stack([n.double() for n in torch._foreach_norm(params)])
    index = torch.tensor(owner, device=g_norms.device)
    g_sq = torch.zeros(len(layers), dtype=torch.float64, device=g_norms.device).index_add_(0, index, g_norms**2)
    p_sq = torch.zeros_like(g_sq).index_add_(0, index, p_norms**2)
    g_list, p_list = g_sq.sqrt().tolist(), p_sq.sqrt().tolist()
    result: dict[str, float] = {}
    for k in sorted(set(owner)):
        result[layers[k][0]] = g_list[k] / p_list[k] if p_list[k] > min_param_norm else float("inf")
    return result


def normalised_rgn_scales(rgn: Mapping[str, float]) -> dict[str, float]:
    """Learning-rate factors ``RGN_i / max_j RGN_j`` (see the module docstring for the edge cases).

    Args:
        rgn: Layer name -> relative gradient norm (``inf`` for a layer with zero parameters).

    Returns:
        Layer name -> factor in [0, 1].

    Examples:
        >>> normalised_rgn_scales({"a": 0.2, "b": 0.05, "zero_init": float("inf")})
        {'a': 1.0, 'b': 0.25, 'zero_init': 1.0}
    """
    finite = [value for value in rgn.values() if value != float("inf")]
    peak = max(finite, default=0.0)
    return {name: 1.0 if value == float("inf") or peak <= 0.0 else value / peak for name, value in rgn.items()}


class AutoRGN(FineTuningStrategy):
    """Auto-RGN: full fine-tuning with per-layer learning rates ``lr × RGN_i / max RGN`` at every step.

    Args:
        min_param_norm: Parameter norms at or below this count as zero (layer then trains at the full rate).
        partition: Parameter split (default: from the model at setup).

    Examples:
        >>> import torch
        >>> from torch import nn
        >>> model = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 1))
        >>> part = ModelPartition(stages={"enc": ("0.weight", "0.bias")}, new=("1.weight", "1.bias"))
        >>> rgn = AutoRGN(partition=part)
        >>> rgn.setup(model)
        >>> opt = torch.optim.SGD(rgn.param_groups(model, base_lr=0.1, weight_decay=0.0))
        >>> model(torch.ones(4, 2)).sum().backward()
        >>> rgn.before_optimizer_step(model, opt)
        >>> max(group["lr"] for group in opt.param_groups)
        0.1
        >>> opt.step()
        >>> rgn.after_optimizer_step(model, opt)
        >>> [group["lr"] for group in opt.param_groups]
        [0.1, 0.1]
    """

    name: ClassVar[str] = "auto_rgn"

    def __init__(self, min_param_norm: float = MIN_PARAM_NORM, *, partition: ModelPartition | None = None) -> None:
        super().__init__(partition=partition)
        self.min_param_norm = require_float(self.name, "min_param_norm", min_param_norm, 0.0, inclusive=True)
        self.steps = 0
        self.last_scales: dict[str, float] = {}
        self._layer_params: list[tuple[str, list[nn.Parameter]]] = []

    def hparams(self) -> dict[str, Any]:
        """The parameter-norm floor."""
        return {"min_param_norm": self.min_param_norm}

    def frozen_names(self, epoch: int) -> frozenset[str]:
        """Nothing is frozen: every parameter trains."""
        del epoch
        return frozenset()

    def _setup_extra(self, model: nn.Module) -> None:
        params = dict(model.named_parameters())
        layers = self._require_partition().layers()
        self._layer_params = [(layer, [params[n] for n in names]) for layer, names in layers.items()]

    def param_groups(self, model: nn.Module, base_lr: float, weight_decay: float) -> list[dict[str, Any]]:
        """One group per layer (named after it) at ``base_lr``."""
        layers = self._require_partition().layers()
        return named_param_groups(model, [(layer, names, base_lr) for layer, names in layers.items()], weight_decay)

    def before_optimizer_step(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        """Scale each layer group's learning rate by its normalised RGN from the current gradients.

        Raises:
            RuntimeError: :meth:`after_optimizer_step` was not called after the previous step.
        """
        if not self._layer_params:
            raise RuntimeError(f"strategy {self.name!r}: call setup(model) first")
        scales = normalised_rgn_scales(relative_gradient_norms(self._layer_params, self.min_param_norm))
        for group in optimizer.param_groups:
            scale = scales.get(group.get("name", ""))
            if scale is None:
                continue
            if SCHEDULED_LR_KEY in group:
                raise RuntimeError("Auto-RGN: call after_optimizer_step after every optimizer.step()")
            group[SCHEDULED_LR_KEY] = group["lr"]
            group["lr"] = group["lr"] * scale
        self.last_scales = scales
        self.steps += 1

    def after_optimizer_step(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        """Put the scheduled learning rates back."""
        for group in optimizer.param_groups:
            if SCHEDULED_LR_KEY in group:
                group["lr"] = group.pop(SCHEDULED_LR_KEY)

    def _extra_state(self) -> dict[str, Any]:
        return {"steps": self.steps, "last_scales": dict(self.last_scales)}

    def _load_extra_state(self, state: Mapping[str, Any]) -> None:
        self.steps = int(state["steps"])
        self.last_scales = {str(k): float(v) for k, v in state["last_scales"].items()}
