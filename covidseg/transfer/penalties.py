"""The transfer-penalty registry, its factory, and optimizer parameter groups that respect the penalty.

Penalties (all :class:`~covidseg.transfer.penalties_base.TransferPenalty` modules, raw sums without a 1/2):

==========================  ====================================================================================
``l2``                      ``λ Σ ||θ||²`` over all parameters (weight decay toward 0), keyword ``weight_lambda``
``l2sp``                    ``λ Σ ||θ_enc − θ̄_enc||² + λ' ||θ_new||²`` (``sp_lambda``, ``decoder_lambda``)
``l2sp_layerwise``          ``Σ_i λ_i ||θ_enc,i − θ̄_enc,i||² + λ' ||θ_new||²`` (``schedule``, ``decoder_lambda``)
``l1sp``                    ``Σ_i λ_i ||θ_enc,i − θ̄_enc,i||_1 + λ' ||θ_new||²``
``l2sp_fisher``             ``Σ_i λ_i Σ_j F_j (θ_j − θ̄_j)² + λ' ||θ_new||²`` (also ``fisher``)
``group_lasso_sp``          ``Σ_i λ_i Σ_g sqrt(p_g) ||θ_g − θ̄_g|| + λ' ||θ_new||²``
``group_lasso_sp_fisher``   ``Σ_i λ_i Σ_g sqrt(Σ_{j∈g} F_j) ||θ_g − θ̄_g|| + λ' ||θ_new||²`` (also ``fisher``)
==========================  ====================================================================================

Every penalty also takes ``batchnorm="exclude" | "include"`` (default exclude BatchNorm affine parameters).
Reference: X. Li, Y. Grandvalet, F. Davoine, "Explicit Inductive Bias for Transfer Learning with Convolutional
Networks", ICML 2018 (L2-SP, L1-SP, L2-SP-Fisher, Group-Lasso-SP, GL-SP-Fisher).

Examples:
    >>> from torch import nn
    >>> net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Conv2d(4, 2, 1))
    >>> source = {k: v.clone() for k, v in net.state_dict().items()}
    >>> pen = make_penalty("l2sp_layerwise", net, source, {"0.weight": 1, "0.bias": 1},
    ...                    schedule={"name": "log", "lambda0": 20.0, "alpha": 1.5}, decoder_lambda=0.01)
    >>> expected = 0.01 * sum(float(p.detach().square().sum()) for p in net[2].parameters())
    >>> abs(pen(net).item() - expected) < 1e-6
    True
    >>> groups = optimizer_param_groups(net, pen, weight_decay=1e-4)
    >>> [(len(g["params"]), g["weight_decay"]) for g in groups]  # BatchNorm keeps the optimizer's decay
    [(2, 0.0001), (4, 0.0)]
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

from torch import Tensor, nn

from covidseg.errors import ConfigError
from covidseg.transfer.penalties_base import TransferPenalty
from covidseg.transfer.penalties_group import GroupLassoSPFisherPenalty, GroupLassoSPPenalty
from covidseg.transfer.penalties_sp import (
    L1SPPenalty,
    L2Penalty,
    L2SPFisherPenalty,
    L2SPLayerwisePenalty,
    L2SPPenalty,
)

__all__ = ["PENALTIES", "make_penalty", "optimizer_param_groups"]

PENALTIES: dict[str, type[TransferPenalty]] = {
    "l2": L2Penalty,
    "l2sp": L2SPPenalty,
    "l2sp_layerwise": L2SPLayerwisePenalty,
    "l1sp": L1SPPenalty,
    "l2sp_fisher": L2SPFisherPenalty,
    "group_lasso_sp": GroupLassoSPPenalty,
    "group_lasso_sp_fisher": GroupLassoSPFisherPenalty,
}
"""Penalty name -> class. Each class's keyword arguments are listed in the module docstring."""


def make_penalty(
    name: str,
    model: nn.Module,
    source_state: Mapping[str, Tensor] | None,
    layer_of: Mapping[str, int],
    **params: Any,
) -> TransferPenalty:
    """Build a penalty by registry name.

    Args:
        name: One of :data:`PENALTIES`.
        model: The model to fine-tune.
        source_state: Source weights θ̄ by parameter name (None only for ``"l2"``).
        layer_of: Encoder parameter name -> 1-based layer index.
        **params: The penalty's keyword arguments (see the module docstring).

    Raises:
        ConfigError: Unknown name (the message lists the valid names), unknown or missing keyword arguments, or
            invalid values.

    Examples:
        >>> make_penalty("l3", nn.Linear(1, 1), None, {})
        Traceback (most recent call last):
        ...
        covidseg.errors.ConfigError: unknown penalty 'l3'; expected one of ['group_lasso_sp', \
'group_lasso_sp_fisher', 'l1sp', 'l2', 'l2sp', 'l2sp_fisher', 'l2sp_layerwise']
    """
    if name not in PENALTIES:
        raise ConfigError(f"unknown penalty {name!r}; expected one of {sorted(PENALTIES)}")
    cls = PENALTIES[name]
    signature = inspect.signature(cls.__init__)
    accepted = [p for p in signature.parameters if p not in ("self", "model", "source_state", "layer_of")]
    try:
        signature.bind(None, model, source_state, layer_of, **params)
    except TypeError as exc:
        raise ConfigError(f"penalty {name!r} takes {accepted}, got {sorted(params)} ({exc})") from None
    return cls(model, source_state, layer_of, **params)


def optimizer_param_groups(
    model: nn.Module, penalty: TransferPenalty | None, weight_decay: float
) -> list[dict[str, Any]]:
    """Split the model's parameters so optimizer weight decay does not double-count the penalty.

    Parameters the penalty regularizes (any term, whatever its λ, frozen layers included) go into a group with
    ``weight_decay=0``; the rest (BatchNorm affine parameters under ``batchnorm="exclude"``, or every parameter
    when ``penalty`` is None) keep ``weight_decay``. Frozen parameters (``requires_grad=False``) are kept so a
    strategy that unfreezes them later does not need a new optimizer. Empty groups are left out.

    Args:
        model: The model being optimized.
        penalty: The penalty added to the loss, or None.
        weight_decay: The optimizer's weight decay for unregularized parameters (>= 0).

    Returns:
        A list of ``{"params": [...], "weight_decay": float, "name": str}`` for ``torch.optim`` optimizers.

    Examples:
        >>> net = nn.Linear(2, 1)
        >>> [g["weight_decay"] for g in optimizer_param_groups(net, None, 1e-4)]
        [0.0001]
    """
    if isinstance(weight_decay, bool) or not isinstance(weight_decay, (int, float)) or not weight_decay >= 0:
        raise ConfigError(f"weight_decay must be a number >= 0, got {weight_decay!r}")
    covered = set(penalty.weight_decay_free_params()) if penalty is not None else set()
    decayed: list[nn.Parameter] = []
    free: list[nn.Parameter] = []
    for pname, param in model.named_parameters():
        (free if pname in covered else decayed).append(param)
    groups: list[dict[str, Any]] = []
    if decayed:
        groups.append({"params": decayed, "weight_decay": float(weight_decay), "name": "optimizer_decay"})
    if free:
        groups.append({"params": free, "weight_decay": 0.0, "name": "penalty_regularized"})
    return groups
