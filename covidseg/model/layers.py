"""Encoder layer index: the DenseNet121 encoder's conv layers in forward order, and parameter groupings.

Layer-wise transfer regularization (``λ_i = max(0, λ0 − α·log i)``), per-layer learning rates and drift
analysis all need "layer i" of the encoder. For DenseNet121 the layers are its 120 convolutions in the order
the forward pass calls them:

* 1: ``conv0`` (stem);
* per dense layer ``conv1`` (1x1 bottleneck) then ``conv2`` (3x3): 2 x (6 + 12 + 24 + 16) = 116;
* the ``conv`` of ``transition1..3`` after dense blocks 1-3: 3.

Every encoder *parameter* tensor belongs to exactly one layer. BatchNorm affine parameters are assigned as:

* a BatchNorm inside a dense layer or transition normalises the input of the conv that follows it in the same
  module (DenseNet is pre-activation: ``norm1 -> relu1 -> conv1``, ``norm2 -> relu2 -> conv2``,
  ``norm -> relu -> conv``), so it belongs to that conv;
* the top-level ``norm0`` normalises the output of ``conv0`` and belongs to conv0 (layer 1);
* the top-level ``norm5`` normalises the output of the last dense block and belongs to the last conv
  (``denseblock4.denselayer16.layers.conv2``, layer 120).

In general: a BatchNorm belongs to the next conv inside its own parent module, otherwise to the closest
preceding conv in forward order. BatchNorm buffers (running statistics) are not parameters and not part of the
index; find BatchNorm modules with :func:`batchnorm_modules`.

All names are full model names (``encoder.conv0.weight``), as in ``model.named_parameters()``.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from covidseg.model.unet import DenseUNet

ENCODER_PREFIX = "encoder."
#: Model attributes that hold the new (not transferred) layers.
DECODER_PREFIXES: tuple[str, ...] = ("decoder.", "head.")
#: Stage names in forward order; ``stem`` is conv0/norm0, ``norm5`` goes with ``denseblock4``.
STAGES: tuple[str, ...] = (
    "stem",
    "denseblock1",
    "transition1",
    "denseblock2",
    "transition2",
    "denseblock3",
    "transition3",
    "denseblock4",
)
_STEM_MODULES = ("conv0", "norm0", "relu0", "pool0")
_FINAL_MODULES = ("norm5",)
_LAST_STAGE = "denseblock4"
_BATCHNORM_TYPES = (nn.modules.batchnorm._BatchNorm,)


@dataclass(frozen=True)
class EncoderLayer:
    """One conv layer of the encoder with the parameter tensors assigned to it.

    Attributes:
        index: 1-based position in forward order (1..120 for DenseNet121).
        conv_name: Full module name of the conv, e.g. ``"encoder.denseblock1.denselayer1.layers.conv1"``.
        param_names: Full names of the parameters of this layer: the conv weight (and bias, if any) plus the
            BatchNorm affine parameters assigned to it (see the module docstring).
        stage: One of :data:`STAGES`.
    """

    index: int
    conv_name: str
    param_names: tuple[str, ...]
    stage: str


def _stage_of(relative_name: str) -> str:
    top = relative_name.split(".", 1)[0]
    if top in _STEM_MODULES:
        return "stem"
    if top in _FINAL_MODULES:
        return _LAST_STAGE
    return top


def _parent(name: str) -> str:
    return name.rsplit(".", 1)[0] if "." in name else ""


def encoder_layers(model: DenseUNet) -> list[EncoderLayer]:
    """Return the encoder's conv layers in forward order with their parameters (see module docstring).

    Args:
        model: A :class:`DenseUNet` (anything with a DenseNet ``encoder`` attribute).

    Returns:
        ``EncoderLayer`` objects with indices 1..N (N = 120 for DenseNet121).

    Examples:
        >>> from covidseg.model.unet import DenseUNet
        >>> layers = encoder_layers(DenseUNet())
        >>> len(layers), layers[0].conv_name, layers[0].param_names
        (120, 'encoder.conv0', ('encoder.conv0.weight', 'encoder.norm0.weight', 'encoder.norm0.bias'))
        >>> layers[-1].param_names[-2:]
        ('encoder.norm5.weight', 'encoder.norm5.bias')
    """
    # Module registration order equals call order for DenseNet's nested Sequentials (checked in the tests).
    modules = [(name, m) for name, m in model.encoder.named_modules() if name]
    conv_pos = [pos for pos, (_, m) in enumerate(modules) if isinstance(m, nn.modules.conv._ConvNd)]
    if not conv_pos:
        raise ValueError("the encoder has no convolution layers")
    owner_of: dict[int, int] = {pos: pos for pos in conv_pos}  # module position -> owning conv position
    for pos, (name, module) in enumerate(modules):
        if isinstance(module, _BATCHNORM_TYPES):
            owner_of[pos] = _bn_owner(pos, name, modules, conv_pos)
    owned: dict[int, list[str]] = {pos: [] for pos in conv_pos}
    for pos in sorted(owner_of):
        name, module = modules[pos]
        owned[owner_of[pos]].extend(f"{ENCODER_PREFIX}{name}.{p}" for p, _ in module.named_parameters(recurse=False))
    return [
        EncoderLayer(
            index=i,
            conv_name=ENCODER_PREFIX + modules[pos][0],
            param_names=tuple(owned[pos]),
            stage=_stage_of(modules[pos][0]),
        )
        for i, pos in enumerate(conv_pos, start=1)
    ]


def _bn_owner(pos: int, name: str, modules: list[tuple[str, nn.Module]], conv_pos: list[int]) -> int:
    """Position of the conv owning the BatchNorm at ``pos``: next conv in its parent, else the previous conv."""
    parent = _parent(name)
    for c in conv_pos:
        if c > pos and _parent(modules[c][0]) == parent:
            return c
    earlier = [c for c in conv_pos if c < pos]
    return earlier[-1] if earlier else conv_pos[0]


def encoder_param_layer(model: DenseUNet) -> dict[str, int]:
    """Map every encoder parameter name to the index of its layer (1-based, forward order).

    Examples:
        >>> from covidseg.model.unet import DenseUNet
        >>> index = encoder_param_layer(DenseUNet())
        >>> index["encoder.conv0.weight"], index["encoder.transition1.norm.weight"], index["encoder.norm5.bias"]
        (1, 14, 120)
    """
    return {name: layer.index for layer in encoder_layers(model) for name in layer.param_names}


def stage_groups(model: DenseUNet) -> dict[str, list[str]]:
    """Group the encoder parameter names by stage, in forward order (keys as :data:`STAGES`).

    ``stem`` holds conv0 and norm0; ``norm5`` belongs to ``denseblock4``. Every encoder parameter appears in
    exactly one group. Used by strategies that work per block (gradual unfreezing).

    Examples:
        >>> from covidseg.model.unet import DenseUNet
        >>> groups = stage_groups(DenseUNet())
        >>> list(groups)[:3], groups["stem"]
        (['stem', 'denseblock1', 'transition1'], ['encoder.conv0.weight', 'encoder.norm0.weight', 'encoder.norm0.bias'])
    """
    groups: dict[str, list[str]] = {stage: [] for stage in STAGES}
    for layer in encoder_layers(model):
        groups.setdefault(layer.stage, []).extend(layer.param_names)
    return {stage: names for stage, names in groups.items() if names}


def decoder_param_names(model: nn.Module) -> list[str]:
    """Return the names of the new (not transferred) parameters: the decoder and the head.

    Examples:
        >>> from covidseg.model.unet import DenseUNet
        >>> names = decoder_param_names(DenseUNet())
        >>> names[0], names[-1]
        ('decoder.0.up.weight', 'head.bias')
    """
    return [name for name, _ in model.named_parameters() if name.startswith(DECODER_PREFIXES)]


def batchnorm_modules(module: nn.Module) -> list[tuple[str, nn.Module]]:
    """Return ``(name, module)`` for every BatchNorm in ``module`` (any dimension, incl. SyncBatchNorm).

    Matches by type, not by name: DenseNet calls its BatchNorms ``norm0``, ``norm1``, ``norm``, ``norm5``.

    Examples:
        >>> from covidseg.model.unet import DenseUNet
        >>> model = DenseUNet()
        >>> len(batchnorm_modules(model.encoder)), len(batchnorm_modules(model.decoder))
        (121, 10)
    """
    return [(name, m) for name, m in module.named_modules() if isinstance(m, _BATCHNORM_TYPES)]
