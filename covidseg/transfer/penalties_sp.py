"""Element-wise transfer penalties: L2 (weight decay), L2-SP, layer-wise L2-SP, L1-SP and L2-SP-Fisher.

With SP tensors θ_t (encoder tensors that have a same-shape source tensor θ̄_t, in layer i(t)) and new-layer
tensors θ_new (decoder, head), each penalty is a raw sum without a factor 1/2:

* ``l2``:             ``λ Σ_all ||θ||²`` (weight decay toward 0; no source weights needed);
* ``l2sp``:           ``λ Σ_t ||θ_t − θ̄_t||² + λ' Σ ||θ_new||²`` (Li, Grandvalet, Davoine 2018, with one λ);
* ``l2sp_layerwise``: ``Σ_t λ_i(t) ||θ_t − θ̄_t||² + λ' Σ ||θ_new||²`` (the paper's Eq. 3-5, λ_i from a schedule);
* ``l1sp``:           ``Σ_t λ_i(t) ||θ_t − θ̄_t||_1 + λ' Σ ||θ_new||²``;
* ``l2sp_fisher``:    ``Σ_t λ_i(t) Σ_j F_j (θ_j − θ̄_j)² + λ' Σ ||θ_new||²`` with the diagonal Fisher F of the
  source task (EWC-style; see :mod:`covidseg.transfer.fisher`).

BatchNorm affine parameters are excluded by default (see :mod:`covidseg.transfer.penalties_base`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from covidseg.errors import ConfigError
from covidseg.transfer.penalties_base import BatchNormMode, TransferPenalty
from covidseg.transfer.schedules import ConstantSchedule, Schedule, resolve_schedule

__all__ = [
    "L1SPPenalty",
    "L2Penalty",
    "L2SPFisherPenalty",
    "L2SPLayerwisePenalty",
    "L2SPPenalty",
    "ScheduleSpec",
]

ScheduleSpec = Schedule | float | Sequence[float] | Mapping[str, Any]
"""What a penalty accepts as λ_i: a Schedule, a number, one value per layer, or ``{"name": ..., **kwargs}``."""


def weighted_terms(values: Tensor, lambdas: list[float]) -> Tensor:
    """Return ``values * λ`` with the λ list (double precision in Python) as a tensor like ``values``."""
    return values * torch.tensor(lambdas, dtype=values.dtype, device=values.device)


class L2Penalty(TransferPenalty):
    """Plain L2 on all parameters, ``λ Σ ||θ||²``: weight decay toward 0, the baseline without a source prior.

    Args:
        model: Model to regularize.
        source_state: Ignored (may be None).
        layer_of: Encoder layer map (only checked for consistency with the model).
        weight_lambda: λ (>= 0).
        batchnorm: Exclude (default) or include BatchNorm affine parameters.

    Examples:
        >>> net = nn.Linear(2, 1, bias=False)
        >>> _ = net.weight.data.copy_(torch.tensor([[1.0, 2.0]]))
        >>> L2Penalty(net, None, {}, weight_lambda=0.1)(net).item()  # 0.1 * (1 + 4)
        0.5
    """

    uses_source = False
    name = "l2"

    def __init__(
        self,
        model: nn.Module,
        source_state: Mapping[str, Tensor] | None,
        layer_of: Mapping[str, int],
        *,
        weight_lambda: float,
        batchnorm: BatchNormMode = "exclude",
    ) -> None:
        if isinstance(weight_lambda, bool) or not isinstance(weight_lambda, (int, float)) or not weight_lambda >= 0:
            raise ConfigError(f"weight_lambda must be a number >= 0, got {weight_lambda!r}")
        super().__init__(
            model, source_state, layer_of, schedule=None, decoder_lambda=weight_lambda, batchnorm=batchnorm
        )


class L2SPLayerwisePenalty(TransferPenalty):
    """The paper's layer-wise L2-SP: ``Σ_i λ_i ||θ_enc,i − θ̄_enc,i||² + λ' ||θ_dec||²`` (Eq. 3-5).

    Args:
        model: Model to fine-tune.
        source_state: Source weights θ̄ by parameter name.
        layer_of: Encoder parameter name -> 1-based layer index.
        schedule: λ_i: a :class:`Schedule`, a number, a list, or ``{"name": "log", "lambda0": 20, "alpha": 1.5}``.
        decoder_lambda: λ' of the plain L2 on new layers.
        batchnorm: Exclude (default) or include BatchNorm affine parameters.

    Examples:
        >>> net = nn.Sequential(nn.Linear(2, 2, bias=False), nn.Linear(2, 1, bias=False))
        >>> source = {k: v.clone() for k, v in net.state_dict().items()}
        >>> pen = L2SPLayerwisePenalty(net, source, {"0.weight": 1}, schedule=3.0, decoder_lambda=0.0)
        >>> pen(net).item()
        0.0
        >>> _ = net[0].weight.data.add_(1.0)  # four entries moved by 1: 3 * 4
        >>> pen(net).item()
        12.0
    """

    name = "l2sp_layerwise"

    def __init__(
        self,
        model: nn.Module,
        source_state: Mapping[str, Tensor] | None,
        layer_of: Mapping[str, int],
        *,
        schedule: ScheduleSpec,
        decoder_lambda: float,
        batchnorm: BatchNormMode = "exclude",
    ) -> None:
        super().__init__(
            model,
            source_state,
            layer_of,
            schedule=resolve_schedule(schedule),
            decoder_lambda=decoder_lambda,
            batchnorm=batchnorm,
        )

    def _sp_terms_and_grads(
        self, theta: list[Tensor], ref: list[Tensor], names: list[str], lambdas: list[float], want_grad: bool
    ) -> tuple[Tensor, list[Tensor]]:
        diff = torch._foreach_sub(theta, ref)
        terms = weighted_terms(torch.stack(torch._foreach_norm(diff, 2)).square(), lambdas)
        if not want_grad:
            return terms, []
        torch._foreach_mul_(diff, [2.0 * lam for lam in lambdas])  # d/dθ λ||θ − θ̄||² = 2 λ (θ − θ̄)
        return terms, list(diff)


class L2SPPenalty(L2SPLayerwisePenalty):
    """L2-SP of Li, Grandvalet, Davoine (2018) with one λ: ``λ Σ ||θ_enc − θ̄_enc||² + λ' ||θ_new||²``.

    Args:
        model: Model to fine-tune.
        source_state: Source weights θ̄ by parameter name.
        layer_of: Encoder parameter name -> 1-based layer index.
        sp_lambda: λ (>= 0; inf freezes the whole encoder).
        decoder_lambda: λ' of the plain L2 on new layers.
        batchnorm: Exclude (default) or include BatchNorm affine parameters.

    Examples:
        >>> net = nn.Sequential(nn.Linear(2, 2, bias=False), nn.Linear(2, 1, bias=False))
        >>> source = {k: torch.zeros_like(v) for k, v in net.state_dict().items()}
        >>> _ = net[0].weight.data.fill_(1.0); _ = net[1].weight.data.fill_(2.0)
        >>> pen = L2SPPenalty(net, source, {"0.weight": 1}, sp_lambda=0.5, decoder_lambda=0.25)
        >>> pen(net).item()  # 0.5 * 4 * 1 + 0.25 * 2 * 4
        4.0
    """

    name = "l2sp"

    def __init__(
        self,
        model: nn.Module,
        source_state: Mapping[str, Tensor] | None,
        layer_of: Mapping[str, int],
        *,
        sp_lambda: float,
        decoder_lambda: float,
        batchnorm: BatchNormMode = "exclude",
    ) -> None:
        if isinstance(sp_lambda, bool) or not isinstance(sp_lambda, (int, float)):
            raise ConfigError(f"sp_lambda must be a number, got {sp_lambda!r}; use l2sp_layerwise for a schedule")
        super().__init__(
            model,
            source_state,
            layer_of,
            schedule=ConstantSchedule(float(sp_lambda)),
            decoder_lambda=decoder_lambda,
            batchnorm=batchnorm,
        )


class L1SPPenalty(L2SPLayerwisePenalty):
    """L1-SP: ``Σ_i λ_i ||θ_enc,i − θ̄_enc,i||_1 + λ' ||θ_new||²`` (Li et al. 2018, Sec. 3).

    Same arguments as :class:`L2SPLayerwisePenalty`. The (sub)gradient is ``λ_i sign(θ − θ̄)``, 0 at θ = θ̄.

    Examples:
        >>> net = nn.Linear(2, 1, bias=False)
        >>> source = {"weight": torch.zeros(1, 2)}
        >>> _ = net.weight.data.copy_(torch.tensor([[1.0, -2.0]]))
        >>> L1SPPenalty(net, source, {"weight": 1}, schedule=0.5, decoder_lambda=0.0)(net).item()
        1.5
    """

    name = "l1sp"

    def _sp_terms_and_grads(
        self, theta: list[Tensor], ref: list[Tensor], names: list[str], lambdas: list[float], want_grad: bool
    ) -> tuple[Tensor, list[Tensor]]:
        diff = torch._foreach_sub(theta, ref)
        terms = weighted_terms(torch.stack(torch._foreach_norm(diff, 1)), lambdas)
        if not want_grad:
            return terms, []
        torch._foreach_sign_(diff)
        torch._foreach_mul_(diff, lambdas)  # λ sign(θ − θ̄), 0 where θ = θ̄
        return terms, list(diff)


class L2SPFisherPenalty(L2SPLayerwisePenalty):
    """L2-SP-Fisher: ``Σ_i λ_i Σ_j F_j (θ_j − θ̄_j)² + λ' ||θ_new||²`` with a diagonal Fisher F (EWC-style).

    F is stored in the buffers of the submodule ``fisher`` (saved with ``state_dict()``, moved by ``.to()``);
    it must cover every SP tensor with the same shape. Li et al. (2018) estimate F on the source task; see
    :func:`covidseg.transfer.fisher.estimate_diagonal_fisher` for the estimate and its normalization.

    Args:
        model: Model to fine-tune.
        source_state: Source weights θ̄ by parameter name.
        layer_of: Encoder parameter name -> 1-based layer index.
        schedule: λ_i (see :class:`L2SPLayerwisePenalty`).
        fisher: Diagonal Fisher by parameter name (non-negative, finite).
        decoder_lambda: λ' of the plain L2 on new layers.
        batchnorm: Exclude (default) or include BatchNorm affine parameters.

    Examples:
        >>> net = nn.Linear(2, 1, bias=False)
        >>> source = {"weight": torch.zeros(1, 2)}
        >>> _ = net.weight.data.copy_(torch.tensor([[1.0, 2.0]]))
        >>> fisher = {"weight": torch.tensor([[3.0, 0.5]])}
        >>> pen = L2SPFisherPenalty(net, source, {"weight": 1}, schedule=2.0, fisher=fisher, decoder_lambda=0.0)
        >>> pen(net).item()  # 2 * (3 * 1 + 0.5 * 4)
        10.0
    """

    name = "l2sp_fisher"

    def __init__(
        self,
        model: nn.Module,
        source_state: Mapping[str, Tensor] | None,
        layer_of: Mapping[str, int],
        *,
        schedule: ScheduleSpec,
        fisher: Mapping[str, Tensor] | None,
        decoder_lambda: float,
        batchnorm: BatchNormMode = "exclude",
    ) -> None:
        super().__init__(
            model, source_state, layer_of, schedule=schedule, decoder_lambda=decoder_lambda, batchnorm=batchnorm
        )
        self._init_fisher(model, fisher)

    def _sp_terms_and_grads(
        self, theta: list[Tensor], ref: list[Tensor], names: list[str], lambdas: list[float], want_grad: bool
    ) -> tuple[Tensor, list[Tensor]]:
        diff = torch._foreach_sub(theta, ref)
        fisher_diff = torch._foreach_mul(diff, [self.fisher.get(n) for n in names])
        torch._foreach_mul_(diff, fisher_diff)  # F_j d_j^2 >= 0, so each tensor's L1 norm is its sum
        terms = weighted_terms(torch.stack(torch._foreach_norm(diff, 1)), lambdas)
        if not want_grad:
            return terms, []
        torch._foreach_mul_(fisher_diff, [2.0 * lam for lam in lambdas])  # 2 λ F (θ − θ̄)
        return terms, list(fisher_diff)
