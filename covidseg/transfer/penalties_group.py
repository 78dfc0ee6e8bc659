"""Group-Lasso-SP and GL-SP-Fisher: group-wise distance to the source weights, groups = output channels.

Reference: X. Li, Y. Grandvalet, F. Davoine, "Explicit Inductive Bias for Transfer Learning with Convolutional
Networks", ICML 2018, Sec. 3.

Groups. For a weight with two or more dimensions (conv ``(out, in, kh, kw)``, linear ``(out, in)``) a group is
the fan-in of one output channel, ``weight[o]``: the kernel that produces feature map o, so a group is pulled
back to its source kernel as a whole. A one-dimensional tensor (a bias, a BatchNorm scale under
``batchnorm="include"``) is one group (the whole vector; every element its own group would be plain L1-SP),
and a 0-d tensor is a group of one.

Penalty: ``Σ_i λ_i Σ_{g in layer i} s_g ||θ_g − θ̄_g||_2 + λ' ||θ_new||²`` with

* GL-SP:        ``s_g = sqrt(p_g)``, p_g the number of entries of group g (the usual group-lasso size weight);
* GL-SP-Fisher: ``s_g = sqrt(Σ_{j in g} F_j)``, the square root of the group's summed diagonal Fisher. With
  F ≡ 1 this is exactly sqrt(p_g), so GL-SP is GL-SP-Fisher with a flat Fisher; a group that mattered more to
  the source task (larger Fisher mass) is held closer to its source value.

The (sub)gradient w.r.t. θ_g is ``λ_i s_g (θ_g − θ̄_g) / ||θ_g − θ̄_g||`` (0 for a group at θ̄). Per-group norms
need one ``torch.linalg.vector_norm(..., dim=1)`` per tensor after a fused ``torch._foreach_sub``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import Tensor, nn

from covidseg.transfer.penalties_base import BatchNormMode
from covidseg.transfer.penalties_sp import L2SPLayerwisePenalty, ScheduleSpec

__all__ = ["GroupLassoSPFisherPenalty", "GroupLassoSPPenalty", "as_groups"]


def as_groups(tensor: Tensor) -> Tensor:
    """Return ``tensor`` as a 2-D view ``(n_groups, group_size)``: one row per output channel, or one row.

    Examples:
        >>> as_groups(torch.zeros(8, 3, 3, 3)).shape
        torch.Size([8, 27])
        >>> as_groups(torch.zeros(5)).shape
        torch.Size([1, 5])
    """
    if tensor.dim() >= 2:
        return tensor.reshape(tensor.shape[0], -1)
    return tensor.reshape(1, -1)


class GroupLassoSPPenalty(L2SPLayerwisePenalty):
    """Group-Lasso-SP: ``Σ_i λ_i Σ_g sqrt(p_g) ||θ_g − θ̄_g||_2 + λ' ||θ_new||²``, groups = output channels.

    Same arguments as :class:`~covidseg.transfer.penalties_sp.L2SPLayerwisePenalty`.

    Examples:
        >>> net = nn.Linear(4, 2, bias=False)
        >>> source = {"weight": torch.zeros(2, 4)}
        >>> _ = net.weight.data.copy_(torch.tensor([[3.0, 4.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]]))
        >>> pen = GroupLassoSPPenalty(net, source, {"weight": 1}, schedule=1.0, decoder_lambda=0.0)
        >>> pen(net).item()  # sqrt(4) * ||(3, 4, 0, 0)|| + sqrt(4) * 0
        10.0
    """

    name = "group_lasso_sp"

    def _group_weights(self, name: str, groups: Tensor) -> Tensor | float:
        """Return s_g for the groups of tensor ``name`` (a number or one value per group)."""
        return math.sqrt(groups.shape[1])

    def _sp_terms_and_grads(
        self, theta: list[Tensor], ref: list[Tensor], names: list[str], lambdas: list[float], want_grad: bool
    ) -> tuple[Tensor, list[Tensor]]:
        diffs = torch._foreach_sub(theta, ref)
        terms = []
        for name, diff, lam in zip(names, diffs, lambdas, strict=True):
            groups = as_groups(diff)  # a view: scaling it in place scales ``diff``
            norms = torch.linalg.vector_norm(groups, dim=1)
            weights = lam * self._group_weights(name, groups)
            terms.append((norms * weights).sum())
            if want_grad:  # λ s_g (θ_g − θ̄_g) / ||θ_g − θ̄_g||, 0 for a group at θ̄
                scale = torch.where(norms > 0, weights / norms.clamp_min(torch.finfo(norms.dtype).tiny), 0.0)
                groups.mul_(scale.unsqueeze(1))
        return torch.stack(terms), list(diffs) if want_grad else []


class GroupLassoSPFisherPenalty(GroupLassoSPPenalty):
    """GL-SP-Fisher: group weight ``s_g = sqrt(Σ_{j in g} F_j)`` instead of sqrt(p_g).

    Args:
        model: Model to fine-tune.
        source_state: Source weights θ̄ by parameter name.
        layer_of: Encoder parameter name -> 1-based layer index.
        schedule: λ_i (number, list, mapping or :class:`~covidseg.transfer.schedules.Schedule`).
        fisher: Diagonal Fisher by parameter name (non-negative, finite), stored in buffers.
        decoder_lambda: λ' of the plain L2 on new layers.
        batchnorm: Exclude (default) or include BatchNorm affine parameters.

    Examples:
        >>> net = nn.Linear(2, 1, bias=False)
        >>> source = {"weight": torch.zeros(1, 2)}
        >>> _ = net.weight.data.copy_(torch.tensor([[3.0, 4.0]]))
        >>> fisher = {"weight": torch.tensor([[1.0, 3.0]])}
        >>> pen = GroupLassoSPFisherPenalty(net, source, {"weight": 1}, schedule=1.0, fisher=fisher,
        ...                                 decoder_lambda=0.0)
        >>> pen(net).item()  # sqrt(1 + 3) * 5
        10.0
    """

    name = "group_lasso_sp_fisher"

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

    def _group_weights(self, name: str, groups: Tensor) -> Tensor | float:
        return as_groups(self.fisher.get(name)).sum(dim=1).sqrt()
