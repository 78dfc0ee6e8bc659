"""Inference-only rewrites of a trained network that keep its outputs: BatchNorm folded into the conv before it.

In eval mode a BatchNorm is a fixed per-channel affine map, ``y = γ (x − μ) / √(σ² + ε) + β``. When it directly
follows a convolution, the map can be folded into the convolution's weights and bias, and the BatchNorm pass
over the activations disappears. In covidseg's :class:`~covidseg.model.DenseUNet` that is every decoder
BatchNorm (``conv1 -> norm1``, ``conv2 -> norm2`` of each block), the stem's ``conv0 -> norm0`` and the
``conv1 -> norm2`` bottleneck pair of each of the 58 dense layers; the pre-activation BatchNorms of the dense
layers and transitions normalise a concatenation before a ReLU and stay. The outputs agree with the
original's to float rounding (a few 1e-7 in fp32).

Only for inference: the folded model has no BatchNorm statistics to train, and its parameter names differ.
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Iterator

from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

_CONV_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_BATCHNORM_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)

#: Attribute a module sets to name its (conv, BatchNorm) pairs that are not neighbours in an ``nn.Sequential``,
#: e.g. :class:`~covidseg.model.unet.DecoderBlock`'s ``(("conv1", "norm1"), ("conv2", "norm2"))``.
CONV_BN_PAIRS_ATTRIBUTE = "conv_bn_pairs"


def _sequential_pairs(sequence: nn.Sequential) -> Iterator[tuple[str, str]]:
    names = list(sequence._modules)
    for conv_name, norm_name in itertools.pairwise(names):
        if isinstance(sequence._modules[conv_name], _CONV_TYPES) and isinstance(
            sequence._modules[norm_name], _BATCHNORM_TYPES
        ):
            yield conv_name, norm_name


def _declared_pairs(module: nn.Module) -> Iterator[tuple[str, str]]:
    for conv_name, norm_name in getattr(module, CONV_BN_PAIRS_ATTRIBUTE, ()):
        conv, norm = getattr(module, conv_name, None), getattr(module, norm_name, None)
        if isinstance(conv, _CONV_TYPES) and isinstance(norm, _BATCHNORM_TYPES):
            yield conv_name, norm_name


def fold_batchnorm(model: nn.Module, *, inplace: bool = False) -> nn.Module:
    """Return ``model`` in eval mode with every BatchNorm that directly follows a conv folded into that conv.

    Pairs are found structurally: neighbours ``conv, BatchNorm`` in any ``nn.Sequential`` (MONAI's DenseNet
    layers), and the pairs a module lists in its ``conv_bn_pairs`` attribute (covidseg's decoder blocks). A
    folded BatchNorm becomes ``nn.Identity``. Modules without such pairs come back unchanged (but in eval
    mode).

    Args:
        model: A network; its BatchNorm running statistics are used as they are (eval-mode semantics).
        inplace: Rewrite ``model`` itself instead of a deep copy (saves the copy's memory when the caller
            owns the model and needs nothing else of it).

    Returns:
        The rewritten model (``model`` itself when ``inplace``), in eval mode.

    Examples:
        >>> import torch
        >>> net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4), nn.ReLU())
        >>> _ = net.eval()
        >>> with torch.no_grad():
        ...     _ = net[1].running_mean.uniform_(-1, 1), net[1].running_var.uniform_(0.5, 2)
        >>> folded = fold_batchnorm(net)
        >>> type(folded[1]).__name__, type(net[1]).__name__
        ('Identity', 'BatchNorm2d')
        >>> x = torch.rand(2, 1, 8, 8)
        >>> with torch.no_grad():
        ...     bool(torch.allclose(folded(x), net(x), atol=1e-6))
        True
    """
    target = model if inplace else copy.deepcopy(model)
    target.eval()
    for module in list(target.modules()):
        pairs = list(_sequential_pairs(module)) if isinstance(module, nn.Sequential) else []
        pairs += list(_declared_pairs(module))
        for conv_name, norm_name in pairs:
            conv = getattr(module, conv_name)
            norm = getattr(module, norm_name)
            setattr(module, conv_name, fuse_conv_bn_eval(conv, norm))
            setattr(module, norm_name, nn.Identity())
    return target


def count_batchnorms(model: nn.Module) -> int:
    """Number of BatchNorm modules in ``model`` (what :func:`fold_batchnorm` could not fold stays counted).

    Examples:
        >>> count_batchnorms(nn.Sequential(nn.Conv2d(1, 2, 1), nn.BatchNorm2d(2)))
        1
        >>> count_batchnorms(fold_batchnorm(nn.Sequential(nn.Conv2d(1, 2, 1), nn.BatchNorm2d(2))))
        0
    """
    return sum(isinstance(m, _BATCHNORM_TYPES) for m in model.modules())
