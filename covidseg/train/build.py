"""The model side of a run: model and source weights, Fisher, penalty, strategy, precision settings.

Source weights θ̄. When ``source.path`` is set, the model is initialised from it with
:func:`covidseg.model.load_source`; θ̄ is the model's state right after loading, restricted to the tensors that
were loaded (conv0 after channel adaptation included). Tensors without a counterpart (the new decoder and head)
have no θ̄: the penalty treats them as new layers. On resume θ̄ (and the Fisher) come from the checkpoint's
penalty buffers, so the source file need not exist any more.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn
from torch.utils.data import DataLoader

from covidseg.config import RunConfig
from covidseg.data.datasets import SliceDataset
from covidseg.errors import ConfigError
from covidseg.model import DenseUNet, LoadReport, encoder_param_layer, load_source
from covidseg.transfer.fisher import estimate_diagonal_fisher, load_fisher
from covidseg.transfer.penalties import make_penalty
from covidseg.transfer.penalties_base import TransferPenalty
from covidseg.transfer.strategies import make_strategy
from covidseg.transfer.strategy_base import FineTuningStrategy

__all__ = [
    "FISHER_NORMALIZATION",
    "AmpSettings",
    "build_model",
    "build_penalty",
    "build_strategy",
    "estimate_fisher",
    "penalty_inputs_from_state",
    "resolve_amp",
]

FISHER_NORMALIZATION: Literal["mean"] = "mean"
"""Fisher estimates are divided by their mean entry, so a Fisher penalty's λ is on the scale of plain L2-SP."""
_BUFFER_SEPARATOR = "__"


@dataclass(frozen=True)
class AmpSettings:
    """Mixed-precision settings of a run.

    Attributes:
        device_type: ``"cpu"`` or ``"cuda"``.
        dtype: Autocast dtype (None: fp32, no autocast).
        scale_grads: Whether fp16 gradient scaling is on.

    Examples:
        >>> resolve_amp("bf16", torch.device("cpu"))
        AmpSettings(device_type='cpu', dtype=torch.bfloat16, scale_grads=False)
    """

    device_type: str
    dtype: torch.dtype | None
    scale_grads: bool

    @contextlib.contextmanager
    def autocast(self) -> Iterator[None]:
        """Autocast to :attr:`dtype` (nothing for fp32)."""
        if self.dtype is None:
            yield
        else:
            with torch.autocast(device_type=self.device_type, dtype=self.dtype):
                yield


def resolve_amp(precision: str, device: torch.device) -> AmpSettings:
    """Precision settings for ``train.precision`` on ``device`` (``auto``: fp16 + scaling on CUDA, fp32 on CPU).

    Raises:
        ConfigError: fp16 asked for on the CPU.
    """
    on_cuda = device.type == "cuda"
    if precision == "auto":
        precision = "fp16" if on_cuda else "fp32"
    if precision == "fp32":
        return AmpSettings(device.type, None, False)
    if precision == "bf16":
        return AmpSettings(device.type, torch.bfloat16, False)
    if precision == "fp16":
        if not on_cuda:
            raise ConfigError("train.precision=fp16 needs CUDA; on the CPU use bf16 (or fp32)")
        return AmpSettings(device.type, torch.float16, True)
    raise ConfigError(f"unknown train.precision {precision!r}; expected auto, fp32, bf16 or fp16")


def build_model(
    config: RunConfig, *, load_source_weights: bool = True
) -> tuple[DenseUNet, dict[str, torch.Tensor] | None, LoadReport | None]:
    """Build the DenseUNet of ``model`` (seeded by the caller) and load ``source.path`` into it.

    Returns:
        The model (CPU), θ̄ (state of the loaded tensors, cloned) or None, and the load report.

    Raises:
        InputError: The source file is missing, unreadable or does not match the model.
    """
    model = DenseUNet(config.model.to_unet_config())
    if config.source.path is None or not load_source_weights:
        return model, None, None
    report = load_source(model, config.source.path, channel_adaptation=config.source.channel_adaptation)
    state = model.state_dict()
    source_state = {name: state[name].detach().clone() for name in report.loaded}
    return model, source_state, report


def penalty_inputs_from_state(
    state: Mapping[str, torch.Tensor],
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """θ̄ and Fisher by parameter name from a saved penalty ``state_dict`` (buffers ``reference.*``, ``fisher.*``).

    Examples:
        >>> penalty_inputs_from_state({"reference.encoder__conv0__weight": torch.ones(1)})[0]
        {'encoder.conv0.weight': tensor([1.])}
    """
    source: dict[str, torch.Tensor] = {}
    fisher: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        module, _, name = key.partition(".")
        target = source if module == "reference" else fisher if module == "fisher" else None
        if target is not None:
            target[name.replace(_BUFFER_SEPARATOR, ".")] = value
    return source, fisher


def estimate_fisher(
    config: RunConfig, model: nn.Module, dataset: SliceDataset, device: torch.device, names: list[str]
) -> dict[str, torch.Tensor]:
    """The diagonal Fisher for a Fisher penalty: ``regularization.fisher_path``, or estimated on training slices.

    The estimate uses the source-initialised model (eval mode), the unaugmented training slices in a fixed order
    (the same on every process) and the unweighted cross-entropy as the per-sample negative log-likelihood,
    over ``regularization.fisher_batches`` batches of ``train.batch_size``; it is normalised to mean 1
    (:data:`FISHER_NORMALIZATION`).
    """
    reg = config.regularization
    if reg.fisher_path is not None:
        return load_fisher(reg.fisher_path)
    loader = DataLoader(dataset, batch_size=config.train.batch_size, shuffle=False)

    def batches() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for item in loader:
            yield item["image"].to(device), item["label"].to(device)

    return estimate_diagonal_fisher(
        model,
        batches(),
        torch.nn.functional.cross_entropy,
        max_batches=reg.fisher_batches,
        normalize=FISHER_NORMALIZATION,
        names=names,
    )


def build_penalty(
    config: RunConfig,
    model: DenseUNet,
    source_state: Mapping[str, torch.Tensor] | None,
    fisher: Mapping[str, torch.Tensor] | None,
) -> TransferPenalty | None:
    """The penalty of ``regularization`` for ``model`` (None for ``none``), on the model's device."""
    reg = config.regularization
    if reg.name == "none":
        return None
    params: dict[str, Any] = reg.params()
    if reg.needs_fisher:
        params["fisher"] = fisher
    if reg.needs_source and not source_state:
        raise ConfigError(
            f"regularization {reg.name!r} pulls toward source weights, but nothing was loaded from source.path"
        )
    penalty = make_penalty(reg.name, model, source_state, encoder_param_layer(model), **params)
    device = next(model.parameters()).device
    return penalty.to(device)


def build_strategy(config: RunConfig, model: nn.Module) -> FineTuningStrategy:
    """The strategy of ``strategy``, set up on ``model`` (already on its device)."""
    strategy = make_strategy(config.strategy.name, **config.strategy.params())
    strategy.setup(model)
    return strategy


def extra_parameters(
    strategy: FineTuningStrategy, optimizer: torch.optim.Optimizer, model: nn.Module
) -> list[nn.Parameter]:
    """Parameters the optimizer trains that are not the model's (a strategy's own modules, e.g. the PtR head)."""
    own = {id(p) for p in model.parameters()}
    del strategy
    return [p for group in optimizer.param_groups for p in group["params"] if id(p) not in own]
