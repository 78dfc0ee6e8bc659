"""Shared machinery of the transfer penalties: parameter scope, source buffers, fused evaluation.

Every penalty is an :class:`nn.Module` built from a model, the source weights θ̄ (a state dict) and a layer map
``layer_of`` (encoder parameter name -> 1-based layer index). Its parameters fall into three sets:

* **SP parameters**: names in ``layer_of`` whose source tensor exists with the same shape. They are pulled
  toward θ̄ with the coefficient λ_i of their layer; θ̄ is copied into registered buffers (module
  ``reference``), so it moves with ``.to()`` and is saved in ``state_dict()``.
* **New-layer parameters**: everything else (decoder, head, and encoder tensors without a same-shape source
  counterpart). They get plain L2 toward 0 with the coefficient λ' (``decoder_lambda``), the paper's Eq. 4.
* **Excluded parameters**: with ``batchnorm="exclude"`` (the default) the affine weight and bias of every
  BatchNorm module (found with ``isinstance(m, nn.modules.batchnorm._BatchNorm)``, never by name) take part in
  no term: Li et al. (2018) regularize the convolution (and linear) weights, and a BatchNorm scale is a
  per-channel gain whose drift is not what the prior is about. ``batchnorm="include"`` treats them like every
  other tensor. Optimizer weight decay still applies to excluded parameters (see
  :func:`covidseg.transfer.penalties.optimizer_param_groups`).

Scaling: the penalties are raw sums, ``Σ_i λ_i ||θ_i − θ̄_i||² + λ' ||θ_new||²``, with no factor 1/2 (the
paper's Eq. 3-5 has none); with plain SGD the SP gradient is ``2 λ_i (θ − θ̄)``.

λ_i = inf marks a frozen layer: its tensors are left out of the sum (their value would be infinite and the
strategies keep them fixed) and are reported by :meth:`TransferPenalty.frozen_layers`. Layers with λ_i = 0 are
skipped in the computation (they contribute exactly 0).

Evaluation is fused: one ``torch._foreach_sub`` and one ``torch._foreach_norm`` over all SP tensors, the norms
stacked into a vector and contracted with the vector of per-tensor λ (grouping by λ without a Python loop over
layers). The gradient is formed in closed form in the same pass (``2 λ (θ − θ̄)`` by an in-place scalar-list
multiply of the differences) and handed to autograd by a custom function, so ``(loss + penalty).backward()``
works as usual; autograd through ``torch._foreach_norm`` would cost three more full-size passes per tensor.
Second-order gradients of the penalty are not supported.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Literal, cast

import torch
from torch import Tensor, nn

from covidseg.errors import ConfigError
from covidseg.transfer.schedules import Schedule

__all__ = [
    "BATCHNORM_MODES",
    "NEW_LAYER_KEY",
    "BatchNormMode",
    "TensorStore",
    "TransferPenalty",
    "batchnorm_param_names",
]

BatchNormMode = Literal["exclude", "include"]
BATCHNORM_MODES: tuple[str, ...] = ("exclude", "include")

NEW_LAYER_KEY = 0
"""Key of the new-layer (decoder/head) term in :meth:`TransferPenalty.layer_terms`; encoder layers are 1..N."""

_MANGLE = "__"


def batchnorm_param_names(model: nn.Module) -> set[str]:
    """Return the names of the affine parameters of every BatchNorm module of ``model``.

    Modules are found by type (``nn.modules.batchnorm._BatchNorm``: BatchNorm1d/2d/3d, SyncBatchNorm, lazy
    variants), so DenseNet's ``norm1``/``norm2`` layers are found although their names contain no "bn".

    Examples:
        >>> net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2))
        >>> sorted(batchnorm_param_names(net))
        ['1.bias', '1.weight']
    """
    names: set[str] = set()
    for module_name, module in model.named_modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            for param_name, _ in module.named_parameters(recurse=False):
                names.add(f"{module_name}.{param_name}" if module_name else param_name)
    return names


class TensorStore(nn.Module):
    """A flat collection of buffers keyed by parameter name (dots are stored as ``__``).

    Examples:
        >>> store = TensorStore()
        >>> store.put("encoder.conv0.weight", torch.ones(2))
        >>> list(store.state_dict())
        ['encoder__conv0__weight']
        >>> store.get("encoder.conv0.weight")
        tensor([1., 1.])
    """

    def __init__(self) -> None:
        super().__init__()
        self._names: list[str] = []

    def put(self, name: str, tensor: Tensor) -> None:
        """Register ``tensor`` as a persistent buffer under ``name``."""
        key = name.replace(".", _MANGLE)
        if key in self._buffers:
            raise ConfigError(f"two parameter names map to the same buffer key {key!r}; rename one of them")
        self.register_buffer(key, tensor)
        self._names.append(name)

    def get(self, name: str) -> Tensor:
        """Return the buffer stored under ``name``."""
        tensor = self._buffers[name.replace(".", _MANGLE)]
        if tensor is None:  # pragma: no cover - put() never stores None
            raise KeyError(name)
        return tensor

    def names(self) -> list[str]:
        """Return the stored parameter names in insertion order."""
        return list(self._names)


def _zero(reference: Tensor | None) -> Tensor:
    if reference is None:
        return torch.zeros(())
    return reference.new_zeros(())


def _combine(sp_terms: Tensor | None, new_total: Tensor | None) -> Tensor:
    total = sp_terms.sum() if sp_terms is not None else None
    if new_total is not None:
        total = new_total if total is None else total + new_total
    if total is None:  # pragma: no cover - forward() returns early when there are no tensors
        raise RuntimeError("penalty without any term")
    return total


class _PenaltyFunction(torch.autograd.Function):
    """Autograd bridge: the penalty computes value and closed-form gradient in one fused pass.

    Letting autograd differentiate ``torch._foreach_norm`` costs several full-size temporaries per tensor (its
    backward divides, multiplies and masks each tensor); the closed forms (``2 λ (θ − θ̄)``, ``λ sign(θ − θ̄)``,
    ...) reuse the difference tensors of the forward pass in place.
    """

    @staticmethod
    def forward(ctx: Any, penalty: TransferPenalty, n_sp: int, *params: Tensor) -> Tensor:
        sp_terms, new_total, grads = penalty._evaluate(list(params[:n_sp]), list(params[n_sp:]), want_grad=True)
        ctx.grads = grads
        return _combine(sp_terms, new_total)

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor) -> tuple[Tensor | None, ...]:
        grads = ctx.grads
        if grads is None:
            raise RuntimeError("the penalty's backward ran twice; evaluate the penalty again for each backward")
        ctx.grads = None
        # the usual case, ``(loss + penalty).backward()``, passes exactly 1: skip a full pass over the gradients
        # (checked on the CPU only, where reading the value costs no device synchronization)
        if grad_output.device.type != "cpu" or float(grad_output) != 1.0:
            torch._foreach_mul_(grads, grad_output)
        needs = ctx.needs_input_grad[2:]
        return (None, None, *[g if need else None for g, need in zip(grads, needs, strict=True)])


class TransferPenalty(nn.Module):
    """Base class of all penalties: scope resolution, θ̄ buffers, fused evaluation, logging helpers.

    Subclasses set :attr:`uses_source` and :attr:`name` and implement :meth:`_sp_terms_and_grads`, which returns
    the weighted term of every SP tensor (e.g. ``λ_i ||θ − θ̄||²``) and its closed-form gradient; the base class
    resolves the scope, adds ``λ' Σ ||θ_new||²``, connects the gradients to autograd and exposes
    :meth:`layer_terms` for logging. The value returned by :meth:`forward` supports one backward pass.

    Args:
        model: The model to be fine-tuned (parameter names must match ``layer_of`` and ``source_state``).
        source_state: Source weights θ̄ by parameter name; required when :attr:`uses_source`.
        layer_of: Encoder parameter name -> 1-based layer index (1..N).
        schedule: λ_i over the layers (ignored by penalties without SP terms).
        decoder_lambda: λ' for the plain L2 term on new-layer parameters (>= 0, finite).
        batchnorm: ``"exclude"`` (default) or ``"include"`` BatchNorm affine parameters.
    """

    uses_source: bool = True
    #: Registry name, set by each subclass.
    name: str = ""
    #: Diagonal Fisher buffers (Fisher penalties only).
    fisher: TensorStore

    def __init__(
        self,
        model: nn.Module,
        source_state: Mapping[str, Tensor] | None,
        layer_of: Mapping[str, int],
        *,
        schedule: Schedule | None,
        decoder_lambda: float,
        batchnorm: BatchNormMode = "exclude",
    ) -> None:
        super().__init__()
        if batchnorm not in BATCHNORM_MODES:
            raise ConfigError(f"batchnorm must be one of {list(BATCHNORM_MODES)}, got {batchnorm!r}")
        if isinstance(decoder_lambda, bool) or not isinstance(decoder_lambda, (int, float)):
            raise ConfigError(f"decoder_lambda must be a number, got {decoder_lambda!r}")
        if not math.isfinite(decoder_lambda) or decoder_lambda < 0:
            raise ConfigError(f"decoder_lambda = {decoder_lambda} must be finite and >= 0")
        if self.uses_source and source_state is None:
            raise ConfigError(
                f"penalty {self.name!r} pulls weights toward the source model; give source_state (the source "
                f"weights) or use 'l2'"
            )
        params = dict(model.named_parameters())
        self._check_layer_map(params, layer_of)
        self.batchnorm: BatchNormMode = batchnorm
        self.decoder_lambda = float(decoder_lambda)
        self.n_layers = max(layer_of.values(), default=0)
        excluded = batchnorm_param_names(model) if batchnorm == "exclude" else set()
        self.reference = TensorStore()

        sp: list[str] = []
        new: list[str] = []
        mismatched: list[str] = []
        for pname, param in params.items():
            if pname in excluded:
                continue
            src = source_state.get(pname) if (self.uses_source and source_state is not None) else None
            if pname in layer_of and src is not None and tuple(src.shape) == tuple(param.shape):
                sp.append(pname)
                self.reference.put(pname, src.detach().to(device=param.device, dtype=param.dtype).clone())
            else:
                if pname in layer_of and self.uses_source:
                    mismatched.append(pname)
                new.append(pname)
        self._excluded = [n for n in params if n in excluded]
        self._sp_names = sp
        self._new_names = new
        self._unmatched = mismatched
        self._layer = {n: int(layer_of[n]) for n in sp}

        lambdas = schedule.values(self.n_layers) if (schedule is not None and self.n_layers > 0) else ()
        self._lambda_of_layer: dict[int, float] = {i: lambdas[i - 1] for i in range(1, len(lambdas) + 1)}
        if sp and not lambdas:
            raise ConfigError(f"penalty {self.name!r} needs a schedule for its {len(sp)} source-matched tensors")
        self._active_sp = [n for n in sp if 0.0 < self._lambda_of_layer[self._layer[n]] < math.inf]
        self._frozen_names = [n for n in sp if math.isinf(self._lambda_of_layer[self._layer[n]])]
        # λ kept in Python floats (double precision) and turned into tensors on use, so a float32 penalty moved
        # to float64 does not carry float32-rounded coefficients.
        self._coef_values = [self._lambda_of_layer[self._layer[n]] for n in self._active_sp]
        self._active_new = list(new) if self.decoder_lambda > 0 else []

    @staticmethod
    def _check_layer_map(params: Mapping[str, Tensor], layer_of: Mapping[str, int]) -> None:
        for pname, index in layer_of.items():
            if pname not in params:
                raise ConfigError(
                    f"layer map names {pname!r}, which is not a parameter of the model; build the layer map "
                    f"from this model (covidseg.model.layers.encoder_param_layer)"
                )
            if isinstance(index, bool) or not isinstance(index, int) or index < 1:
                raise ConfigError(f"layer index of {pname!r} must be an integer >= 1, got {index!r}")

    def _init_fisher(self, model: nn.Module, fisher: Mapping[str, Tensor] | None) -> None:
        """Store the diagonal Fisher F of every SP tensor in the buffers of module ``fisher``.

        Raises:
            ConfigError: ``fisher`` is missing, lacks an SP tensor, has a wrong shape, or holds negative or
                non-finite values.
        """
        if fisher is None:
            raise ConfigError(
                f"penalty {self.name!r} needs fisher= (from covidseg.transfer.fisher.estimate_diagonal_fisher)"
            )
        params = dict(model.named_parameters())
        self.fisher = TensorStore()
        for pname in self._sp_names:
            f = fisher.get(pname)
            if f is None:
                raise ConfigError(
                    f"the Fisher estimate has no entry for {pname!r}; estimate it on a model with the same "
                    f"parameter names as the fine-tuned one"
                )
            if not isinstance(f, Tensor) or tuple(f.shape) != tuple(params[pname].shape):
                shape = tuple(f.shape) if isinstance(f, Tensor) else type(f).__name__
                raise ConfigError(f"Fisher entry {pname!r} has shape {shape}, expected {tuple(params[pname].shape)}")
            if not bool(torch.isfinite(f).all()) or bool((f < 0).any()):
                raise ConfigError(f"Fisher entry {pname!r} has negative or non-finite values")
            p = params[pname]
            self.fisher.put(pname, f.detach().to(device=p.device, dtype=p.dtype).clone())

    # ----------------------------------------------------------------------------------------------------------
    # subclass hook
    def _sp_terms_and_grads(
        self, theta: list[Tensor], ref: list[Tensor], names: list[str], lambdas: list[float], want_grad: bool
    ) -> tuple[Tensor, list[Tensor]]:
        """Return the weighted term of every SP tensor and, if ``want_grad``, its gradient.

        Args:
            theta: Current SP tensors (detached from autograd by the caller).
            ref: Their source values θ̄.
            names: Their parameter names (to look up per-tensor buffers such as the Fisher).
            lambdas: λ of each tensor's layer (finite, > 0).
            want_grad: Also return ``∂(λ_t φ_t)/∂θ_t`` for every tensor (freshly allocated, may be modified).

        Returns:
            A 1-D tensor of ``λ_t φ(θ_t − θ̄_t)`` and a list of gradients (empty if not ``want_grad``).
        """
        raise NotImplementedError

    # ----------------------------------------------------------------------------------------------------------
    # evaluation
    def _fetch(self, model: nn.Module, names: list[str]) -> list[Tensor]:
        params = dict(model.named_parameters())
        try:
            return [params[n] for n in names]
        except KeyError as exc:
            raise ConfigError(
                f"the model has no parameter {exc.args[0]!r}; this penalty was built for another model"
            ) from None

    def _references(self, names: list[str]) -> list[Tensor]:
        return [self.reference.get(n) for n in names]

    def _evaluate(
        self, sp: list[Tensor], new: list[Tensor], want_grad: bool
    ) -> tuple[Tensor | None, Tensor | None, list[Tensor]]:
        """Return (SP terms per tensor, new-layer total, gradients for ``sp + new``) without autograd."""
        sp_terms: Tensor | None = None
        new_total: Tensor | None = None
        grads: list[Tensor] = []
        if sp:
            sp_terms, grads = self._sp_terms_and_grads(
                sp, self._references(self._active_sp), self._active_sp, self._coef_values, want_grad
            )
        if new:
            new_total = self.decoder_lambda * torch.stack(torch._foreach_norm(new, 2)).square().sum()
            if want_grad:
                grads = grads + list(torch._foreach_mul(new, 2.0 * self.decoder_lambda))
        return sp_terms, new_total, grads

    def forward(self, model: nn.Module) -> Tensor:
        """Return the penalty value for the current parameters of ``model`` (a scalar with autograd).

        The gradient is computed in closed form together with the value (fused ``torch._foreach_*`` ops) and
        handed to autograd by a custom function; higher-order gradients are not supported.

        Args:
            model: The model the penalty was built for (possibly moved to another device or dtype since);
                parameters are looked up by name, so pass the unwrapped module (``ddp.module``), not a wrapper.
        """
        sp = self._fetch(model, self._active_sp)
        new = self._fetch(model, self._active_new)
        params = sp + new
        if not params:
            first = next(iter(model.parameters()), None)
            return _zero(first)
        if torch.is_grad_enabled() and any(p.requires_grad for p in params):
            return cast(Tensor, _PenaltyFunction.apply(self, len(sp), *params))
        with torch.no_grad():
            sp_terms, new_total, _ = self._evaluate(sp, new, want_grad=False)
        return _combine(sp_terms, new_total)

    @torch.no_grad()
    def layer_terms(self, model: nn.Module) -> dict[int, float]:
        """Return each layer's weighted term (key 0 = new layers) for logging; frozen layers are left out.

        The values sum to ``forward(model)`` up to rounding.
        """
        out: dict[int, float] = {}
        for name in self._sp_names:
            layer = self._layer[name]
            if not math.isinf(self._lambda_of_layer[layer]):
                out.setdefault(layer, 0.0)
        sp_terms, new_total, _ = self._evaluate(
            self._fetch(model, self._active_sp), self._fetch(model, self._active_new), want_grad=False
        )
        if sp_terms is not None:
            for name, value in zip(self._active_sp, sp_terms.tolist(), strict=True):
                out[self._layer[name]] += float(value)
        if self._new_names:
            out[NEW_LAYER_KEY] = float(new_total) if new_total is not None else 0.0
        return dict(sorted(out.items()))

    # ----------------------------------------------------------------------------------------------------------
    # introspection
    def frozen_layers(self) -> list[int]:
        """Return the sorted layer indices with λ = inf (skipped here; the strategies freeze them)."""
        return sorted({self._layer[n] for n in self._frozen_names})

    def frozen_param_names(self) -> list[str]:
        """Return the names of the parameters in frozen (λ = inf) layers."""
        return list(self._frozen_names)

    def sp_param_names(self) -> list[str]:
        """Return the parameters pulled toward θ̄ (including those of frozen and λ = 0 layers)."""
        return list(self._sp_names)

    def new_param_names(self) -> list[str]:
        """Return the parameters regularized toward 0 with λ' (decoder, head, unmatched encoder tensors)."""
        return list(self._new_names)

    def unmatched_encoder_names(self) -> list[str]:
        """Return encoder parameters that had no same-shape source tensor and were treated as new layers."""
        return list(self._unmatched)

    def excluded_param_names(self) -> list[str]:
        """Return the parameters outside every term (BatchNorm affine parameters under ``"exclude"``)."""
        return list(self._excluded)

    def lambda_of_layer(self, layer: int) -> float:
        """Return λ_i of encoder layer ``layer`` (1-based)."""
        if layer not in self._lambda_of_layer:
            raise ConfigError(f"layer {layer} is outside 1..{self.n_layers}")
        return self._lambda_of_layer[layer]

    def weight_decay_free_params(self) -> list[str]:
        """Return the names of every parameter this penalty already regularizes (any λ, also 0 and inf).

        The optimizer must not add its own weight decay to these (that would double-count the penalty); see
        :func:`covidseg.transfer.penalties.optimizer_param_groups`.
        """
        return list(self._sp_names) + list(self._new_names)

    def source_state(self) -> dict[str, Tensor]:
        """Return the stored θ̄ by parameter name (the buffers themselves, not copies)."""
        return {n: self.reference.get(n) for n in self.reference.names()}

    def extra_repr(self) -> str:
        """Summarize the scope for ``print(penalty)``."""
        return (
            f"sp_tensors={len(self._sp_names)}, new_tensors={len(self._new_names)}, "
            f"excluded={len(self._excluded)}, frozen_layers={len(self.frozen_layers())}, "
            f"decoder_lambda={self.decoder_lambda:g}, batchnorm={self.batchnorm!r}"
        )
