"""2-D U-Net with a DenseNet121 encoder (MONAI) and the paper's transpose-convolution decoder.

The encoder is MONAI's ``DenseNet121(spatial_dims=2).features``, kept under the attribute ``encoder`` so its
parameter names are MONAI's (``encoder.conv0.weight``, ``encoder.denseblock1.denselayer1.layers.conv1.weight``,
...). Five decoder blocks each upsample by 2 with a transpose convolution, concatenate the encoder skip of the
same resolution and apply two [3x3 conv, BatchNorm, ReLU]. Skips, from the encoder's ``features`` sequence:

====================  =========  ===========
encoder output        size       channels
====================  =========  ===========
relu0                 H/2        64
denseblock1           H/4        256
denseblock2           H/8        512
denseblock3           H/16       1024
norm5 + ReLU          H/32       1024 (bottleneck, decoder input)
====================  =========  ===========

Default decoder channels ``(256, 128, 64, 32, 16)`` (the U-Net / segmentation_models.pytorch default) give
12.86 M parameters in total: encoder 6.95 M (362 tensors), decoder 5.91 M, 1x1 head 51. This matches the
about 12.9 M of the reference model; wider decoders grow quickly (the first block alone holds 4.6 M).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from monai.networks.nets import DenseNet121
from torch import nn

from covidseg.errors import ConfigError, InputError

#: Spatial sizes must be multiples of the encoder's total stride (five halvings).
SIZE_DIVISOR = 32
#: Default classes of the CT segmenter; index = label value.
DEFAULT_CLASS_NAMES: tuple[str, ...] = ("background", "lung", "opacity")
#: Decoder widths, deepest block first; chosen so the whole model has about 12.9 M parameters.
DEFAULT_DECODER_CHANNELS: tuple[int, ...] = (256, 128, 64, 32, 16)
#: Channels of the encoder skips, shallowest (H/2) first, and of the bottleneck (H/32).
SKIP_CHANNELS: tuple[int, ...] = (64, 256, 512, 1024)
BOTTLENECK_CHANNELS = 1024
#: Indices in ``DenseNet121.features`` after which a skip is taken: relu0, denseblock1, denseblock2, denseblock3.
SKIP_MODULE_INDICES: tuple[int, ...] = (2, 4, 6, 8)
NUM_DECODER_BLOCKS = 5
_HEAD_KERNEL_SIZES = (1, 3)


@dataclass
class UNetConfig:
    """Architecture of a :class:`DenseUNet`; stored in checkpoints as plain JSON-able values.

    Attributes:
        in_channels: Image channels (1 for CT; 3 to feed replicated gray or RGB images).
        class_names: Output classes; index = label value. At least two, unique, non-empty.
        decoder_channels: Output channels of the five decoder blocks, deepest (H/16) first.
        head_kernel_size: Kernel of the final conv to the class logits, 1 or 3.

    Examples:
        >>> cfg = UNetConfig(class_names=("background", "opacity"))
        >>> cfg.num_classes
        2
        >>> UNetConfig.from_dict(cfg.to_dict()) == cfg
        True
    """

    in_channels: int = 1
    class_names: tuple[str, ...] = DEFAULT_CLASS_NAMES
    decoder_channels: tuple[int, ...] = DEFAULT_DECODER_CHANNELS
    head_kernel_size: int = 1

    def __post_init__(self) -> None:
        """Normalise sequences to tuples and validate every field (ConfigError on a bad value)."""
        self.class_names = tuple(self.class_names)
        self.decoder_channels = tuple(self.decoder_channels)
        if isinstance(self.in_channels, bool) or not isinstance(self.in_channels, int) or self.in_channels < 1:
            raise ConfigError(f"in_channels must be a positive integer, got {self.in_channels!r}")
        names = self.class_names
        if len(names) < 2 or not all(isinstance(n, str) and n for n in names) or len(set(names)) != len(names):
            raise ConfigError(f"class_names must be at least two unique non-empty strings, got {list(names)!r}")
        channels = self.decoder_channels
        if len(channels) != NUM_DECODER_BLOCKS or not all(
            isinstance(c, int) and not isinstance(c, bool) and c > 0 for c in channels
        ):
            raise ConfigError(
                f"decoder_channels must be {NUM_DECODER_BLOCKS} positive integers (deepest first), "
                f"got {list(channels)!r}"
            )
        if self.head_kernel_size not in _HEAD_KERNEL_SIZES:
            raise ConfigError(f"head_kernel_size must be 1 or 3, got {self.head_kernel_size!r}")

    @property
    def num_classes(self) -> int:
        """Number of output classes (logit channels)."""
        return len(self.class_names)

    def to_dict(self) -> dict[str, Any]:
        """Return the config as plain JSON-able types (lists instead of tuples).

        Examples:
            >>> UNetConfig().to_dict()["class_names"]
            ['background', 'lung', 'opacity']
        """
        return {
            "in_channels": self.in_channels,
            "class_names": list(self.class_names),
            "decoder_channels": list(self.decoder_channels),
            "head_kernel_size": self.head_kernel_size,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> UNetConfig:
        """Build a config from a mapping; unknown keys and bad values raise :class:`ConfigError`.

        Examples:
            >>> UNetConfig.from_dict({"in_channels": 3}).in_channels
            3
        """
        if not isinstance(data, Mapping):
            raise ConfigError(f"model config must be a mapping, got {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(str(k) for k in data if k not in known)
        if unknown:
            raise ConfigError(f"unknown model config keys {unknown}; expected some of {sorted(known)}")
        values = dict(data)
        for key in ("class_names", "decoder_channels"):
            if key in values:
                if isinstance(values[key], (str, bytes)) or not hasattr(values[key], "__iter__"):
                    raise ConfigError(f"{key} must be a list, got {values[key]!r}")
                values[key] = tuple(values[key])
        return cls(**values)


def size_error_message(height: int, width: int, divisor: int = SIZE_DIVISOR) -> str:
    """Return the error message for an input of ``height`` x ``width``, or ``""`` if the size is valid.

    Valid means both are positive multiples of ``divisor``; the message names the received size and, per axis,
    the nearest valid sizes below and above. Written in TorchScript's Python subset so ``forward`` can use it.

    Examples:
        >>> size_error_message(384, 384)
        ''
        >>> size_error_message(100, 64).split("; ")[1]
        'resize or pad it to a valid size: height 96 or 128, width 64'
    """
    if height > 0 and width > 0 and height % divisor == 0 and width % divisor == 0:
        return ""
    parts: list[str] = []
    for label, size in [("height", height), ("width", width)]:
        if size > 0 and size % divisor == 0:
            parts.append(label + " " + str(size))
        else:
            below = (size // divisor) * divisor
            if below > 0:
                parts.append(label + " " + str(below) + " or " + str(below + divisor))
            else:
                parts.append(label + " " + str(divisor))
    return (
        "input size "
        + str(height)
        + "x"
        + str(width)
        + " (HxW) is not a multiple of "
        + str(divisor)
        + "; resize or pad it to a valid size: "
        + ", ".join(parts)
    )


def check_input_size(height: int, width: int, divisor: int = SIZE_DIVISOR) -> None:
    """Raise :class:`InputError` unless ``height`` and ``width`` are positive multiples of ``divisor``.

    Examples:
        >>> check_input_size(384, 384)
        >>> check_input_size(100, 64)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        covidseg.errors.InputError: input size 100x64 (HxW) is not a multiple of 32; ... height 96 or 128, width 64
    """
    message = size_error_message(height, width, divisor)
    if message:
        raise InputError(message)


class DecoderBlock(nn.Module):
    """Transpose conv (x2 upsampling), optional skip concatenation, then two [3x3 conv, BatchNorm, ReLU].

    Examples:
        >>> block = DecoderBlock(8, 4, 6)
        >>> block(torch.zeros(1, 8, 4, 4), torch.zeros(1, 4, 8, 8)).shape
        torch.Size([1, 6, 8, 8])
    """

    #: The (conv, BatchNorm) neighbours :func:`covidseg.model.fusion.fold_batchnorm` folds for inference.
    conv_bn_pairs: tuple[tuple[str, str], ...] = (("conv1", "norm1"), ("conv2", "norm2"))

    def __init__(self, in_channels: int, skip_channels: int, out_channels: int) -> None:
        super().__init__()
        self.up = nn.ConvTranspose2d(in_channels, out_channels, kernel_size=2, stride=2)
        self.conv1 = nn.Conv2d(out_channels + skip_channels, out_channels, 3, padding=1, bias=False)
        self.norm1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.norm2 = nn.BatchNorm2d(out_channels)

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        """Upsample ``x`` by 2, concatenate ``skip`` (same size) if given, and convolve."""
        x = self.up(x)
        if skip is not None:
            x = torch.cat([x, skip.to(x.dtype)], dim=1)
        # In place: the BatchNorm outputs are not needed again (BatchNorm's backward uses its input).
        x = F.relu(self.norm1(self.conv1(x)), inplace=True)
        return F.relu(self.norm2(self.conv2(x)), inplace=True)


class DenseUNet(nn.Module):
    """U-Net with MONAI's DenseNet121 encoder; returns class logits at the input resolution.

    Attributes:
        config: The :class:`UNetConfig` it was built from.
        encoder: ``monai.networks.nets.DenseNet121(spatial_dims=2, in_channels=...).features``.
        decoder: Five :class:`DecoderBlock` (deepest first) in an ``nn.ModuleList``.
        head: Conv from the last decoder width to ``num_classes`` logits.

    Examples:
        >>> model = DenseUNet(UNetConfig()).eval()
        >>> model(torch.zeros(1, 1, 64, 64)).shape
        torch.Size([1, 3, 64, 64])
    """

    def __init__(self, config: UNetConfig | None = None) -> None:
        super().__init__()
        self.config = config if config is not None else UNetConfig()
        cfg = self.config
        # Only ``features`` is kept; MONAI's classification layers are dropped with the temporary network.
        self.encoder = DenseNet121(spatial_dims=2, in_channels=cfg.in_channels, out_channels=1).features
        ins = (BOTTLENECK_CHANNELS, *cfg.decoder_channels[:-1])
        skips = (*reversed(SKIP_CHANNELS), 0)
        self.decoder = nn.ModuleList(
            DecoderBlock(i, s, o) for i, s, o in zip(ins, skips, cfg.decoder_channels, strict=True)
        )
        k = cfg.head_kernel_size
        self.head = nn.Conv2d(cfg.decoder_channels[-1], cfg.num_classes, k, padding=k // 2)
        self.skip_indices = list(SKIP_MODULE_INDICES)
        self.in_channels = cfg.in_channels
        self.size_divisor = SIZE_DIVISOR

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return logits ``(N, num_classes, H, W)`` for images ``(N, in_channels, H, W)``, H and W % 32 == 0."""
        self._check_input(x)
        skips: list[torch.Tensor] = []
        for i, layer in enumerate(self.encoder):
            x = layer(x)
            if i in self.skip_indices:
                skips.append(x)
        x = F.relu(x)  # not in place: hooks (pseudo-task regularization) may hold norm5's output
        n_skips = len(skips)
        for j, block in enumerate(self.decoder):
            x = block(x, skips[n_skips - 1 - j]) if j < n_skips else block(x, None)
        return self.head(x)

    @torch.jit.export
    def predict_proba(self, x: torch.Tensor) -> torch.Tensor:
        """Return class probabilities (softmax over dim 1) for images ``(N, in_channels, H, W)``.

        Examples:
            >>> model = DenseUNet(UNetConfig(class_names=("background", "opacity"))).eval()
            >>> with torch.no_grad():
            ...     proba = model.predict_proba(torch.rand(1, 1, 64, 64))
            >>> proba.shape, bool(torch.allclose(proba.sum(1), torch.ones(1, 64, 64)))
            (torch.Size([1, 2, 64, 64]), True)
        """
        return torch.softmax(self.forward(x), dim=1)

    def _check_input(self, x: torch.Tensor) -> None:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise InputError(
                "expected images of shape (N, "
                + str(self.in_channels)
                + ", H, W), got "
                + str(list(x.shape))
                + "; add the batch/channel axes or build the model with that in_channels"
            )
        message = size_error_message(x.shape[2], x.shape[3], self.size_divisor)
        if message != "":
            raise InputError(message)


def count_parameters(module: nn.Module) -> int:
    """Return the number of parameter elements of ``module``.

    Examples:
        >>> count_parameters(nn.Linear(3, 2))
        8
    """
    return sum(p.numel() for p in module.parameters())
