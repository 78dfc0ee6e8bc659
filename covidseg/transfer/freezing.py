"""Freeze and unfreeze parameters, BatchNorm statistics included.

*Frozen* means two things here:

1. the parameter has ``requires_grad = False`` (no gradient, so no optimizer moves it, weight decay included:
   torch optimizers skip parameters whose ``grad`` is ``None``), and
2. every BatchNorm layer whose parameters are all frozen stays in evaluation mode, so its running mean,
   running variance and ``num_batches_tracked`` do not change and it normalises with its running statistics.

Point 2 must survive ``model.train()``, which training loops call at every epoch. ``nn.Module.train`` sets
``training`` and then calls ``child.train(mode)`` on each child, so a frozen BatchNorm gets an instance-level
``train`` that always switches to evaluation mode (a :func:`functools.partial` of a module-level function, so
the model still deep-copies and pickles). Unfreezing deletes that attribute again. BatchNorm layers are found
with ``isinstance(m, nn.modules.batchnorm._BatchNorm)``, never by name (DenseNet calls them ``norm*``).
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Iterator

from torch import nn

__all__ = [
    "batchnorm_modules",
    "freeze",
    "is_frozen_batchnorm",
    "set_trainable",
    "trainable_param_names",
    "unfreeze",
]

_FROZEN_TRAIN_ATTR = "train"


def batchnorm_modules(module: nn.Module) -> Iterator[tuple[str, nn.modules.batchnorm._BatchNorm]]:
    """Yield ``(qualified name, module)`` for every BatchNorm layer in ``module``, itself included.

    Args:
        module: Any module.

    Yields:
        Name relative to ``module`` (``""`` for ``module`` itself) and the BatchNorm layer.

    Examples:
        >>> from torch import nn
        >>> net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2))
        >>> [name for name, _ in batchnorm_modules(net)]
        ['1']
    """
    for name, sub in module.named_modules():
        if isinstance(sub, nn.modules.batchnorm._BatchNorm):
            yield name, sub


def is_frozen_batchnorm(module: nn.Module) -> bool:
    """Whether ``module`` is a BatchNorm layer whose statistics are frozen by :func:`freeze`.

    Args:
        module: Any module.

    Returns:
        True for a BatchNorm layer held in evaluation mode by this module's mechanism.

    Examples:
        >>> from torch import nn
        >>> bn = nn.BatchNorm2d(2)
        >>> freeze(bn)
        >>> is_frozen_batchnorm(bn), bn.train().training
        (True, False)
    """
    return isinstance(module, nn.modules.batchnorm._BatchNorm) and _FROZEN_TRAIN_ATTR in vars(module)


def _train_frozen_batchnorm(module: nn.Module, mode: bool = True) -> nn.Module:
    """Replacement ``train`` of a frozen BatchNorm layer: evaluation mode whatever ``mode`` asks."""
    del mode
    return nn.Module.train(module, False)


def _freeze_batchnorm(bn: nn.modules.batchnorm._BatchNorm) -> None:
    if not is_frozen_batchnorm(bn):
        setattr(bn, _FROZEN_TRAIN_ATTR, functools.partial(_train_frozen_batchnorm, bn))
    nn.Module.train(bn, False)


def _release_batchnorm(bn: nn.modules.batchnorm._BatchNorm, mode: bool) -> None:
    if is_frozen_batchnorm(bn):
        delattr(bn, _FROZEN_TRAIN_ATTR)
        nn.Module.train(bn, mode)


def _set_requires_grad(params: Iterable[nn.Parameter], trainable: bool) -> None:
    for param in params:
        param.requires_grad_(trainable)
        if not trainable:
            param.grad = None


def freeze(target: nn.Module | Iterable[nn.Parameter]) -> None:
    """Freeze a module (parameters and BatchNorm statistics) or an iterable of parameters.

    A module's BatchNorm layers stay in evaluation mode until :func:`unfreeze`, even after ``model.train()``.
    Parameters passed on their own only get ``requires_grad = False`` (a bare tensor does not know its layer;
    use :func:`set_trainable` with the model to freeze by name and keep BatchNorm in step). Existing gradients
    of frozen parameters are dropped, so an optimizer does not apply a stale one.

    Args:
        target: Module, or parameters.

    Examples:
        >>> from torch import nn
        >>> net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2))
        >>> freeze(net)
        >>> any(p.requires_grad for p in net.parameters()), net.train()[1].training
        (False, False)
    """
    if isinstance(target, nn.Module):
        _set_requires_grad(target.parameters(), False)
        for _, bn in batchnorm_modules(target):
            _freeze_batchnorm(bn)
    else:
        _set_requires_grad(target, False)


def unfreeze(target: nn.Module | Iterable[nn.Parameter], mode: bool = True) -> None:
    """Undo :func:`freeze`: parameters trainable again and BatchNorm layers following ``train()`` again.

    Args:
        target: Module, or parameters.
        mode: Training mode given to the released BatchNorm layers (the caller's current mode; a later
            ``model.train()`` / ``model.eval()`` sets it as usual).

    Examples:
        >>> from torch import nn
        >>> net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2))
        >>> freeze(net)
        >>> unfreeze(net)
        >>> all(p.requires_grad for p in net.parameters()), net.train()[1].training
        (True, True)
    """
    if isinstance(target, nn.Module):
        _set_requires_grad(target.parameters(), True)
        for _, bn in batchnorm_modules(target):
            _release_batchnorm(bn, mode)
    else:
        _set_requires_grad(target, True)


def set_trainable(model: nn.Module, param_names: Iterable[str], trainable: bool) -> None:
    """Set named parameters of ``model`` trainable or frozen and keep BatchNorm statistics in step.

    After the change, every BatchNorm layer that owns one of the named parameters has frozen statistics exactly
    when all of its parameters are frozen; released layers take ``model.training`` as their mode. BatchNorm
    layers not named are left as they are.

    Args:
        model: The model.
        param_names: Qualified names as in ``model.named_parameters()``.
        trainable: True to unfreeze, False to freeze.

    Raises:
        ValueError: A name is not a parameter of ``model``.

    Examples:
        >>> from torch import nn
        >>> net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2))
        >>> set_trainable(net, ["1.weight", "1.bias"], False)
        >>> trainable_param_names(net), is_frozen_batchnorm(net[1])
        (['0.weight', '0.bias'], True)
    """
    params = dict(model.named_parameters())
    names = list(param_names)
    unknown = [name for name in names if name not in params]
    if unknown:
        raise ValueError(
            f"{len(unknown)} name(s) are not parameters of the model, e.g. {unknown[:3]}; "
            "use names from model.named_parameters()"
        )
    _set_requires_grad((params[name] for name in names), trainable)
    touched = set(names)
    for bn_name, bn in batchnorm_modules(model):
        prefix = f"{bn_name}." if bn_name else ""
        own = [f"{prefix}{local}" for local, _ in bn.named_parameters(recurse=False)]
        if not touched.intersection(own):
            continue
        if all(not params[name].requires_grad for name in own):
            _freeze_batchnorm(bn)
        else:
            _release_batchnorm(bn, model.training)


def trainable_param_names(model: nn.Module) -> list[str]:
    """Names of the parameters of ``model`` that require gradients, in registration order.

    Args:
        model: The model.

    Returns:
        Qualified parameter names.

    Examples:
        >>> from torch import nn
        >>> net = nn.Linear(2, 1)
        >>> net.bias.requires_grad_(False) is net.bias
        True
        >>> trainable_param_names(net)
        ['weight']
    """
    return [name for name, param in model.named_parameters() if param.requires_grad]
