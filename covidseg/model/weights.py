"""Source weights for fine-tuning: ImageNet DenseNet121 files, covidseg checkpoints and plain state dicts.

Nothing is downloaded: every source is a local file read with ``torch.load(..., weights_only=True)``.
:func:`load_source` detects what the file holds:

* ``covidseg-checkpoint``: written by :func:`covidseg.model.checkpoint.save_checkpoint` (training, pretraining);
* ``densenet121``: a torchvision DenseNet121 state dict (``features.denseblock1.denselayer1.norm1.weight``, the
  older dotted ``norm.1`` / ``conv.1`` forms, ``classifier.*``) or a MONAI ``DenseNet121`` state dict
  (``features.denseblock1.denselayer1.layers.norm1.weight``, ``class_layers.*``); ``features.*`` is mapped onto
  ``encoder.*`` in MONAI's names and the classifier is skipped;
* ``unet-state-dict``: a plain ``DenseUNet.state_dict()`` (``encoder.*``, ``decoder.*``, ``head.*``);
* ``encoder-state-dict``: a plain state dict of the encoder alone (``conv0.weight``, ``denseblock1...``).

DDP / ``torch.compile`` prefixes (``module.``, ``_orig_mod.``) are removed, and a dict that only wraps a state
dict under ``"state_dict"`` or ``"model"`` is unwrapped. Tensors load when name and shape match; a tensor with
another shape (e.g. the head of a source trained on other classes) is reported as shape-mismatched, not an
error. For a covidseg checkpoint whose class names differ from the target's with the same count, the head is
skipped as well: its outputs would mean other classes.

Input channel adaptation of ``conv0`` (source with ``C_s`` input channels, target with ``C_t != C_s``): the
source kernel is reduced over its input channels and spread evenly over the target's,
``W'_c = R(W) / C_t`` for every target channel ``c``, where ``R`` is

* ``"sum"`` (default): ``R(W) = Σ_c W_c``. A gray image fed to the target gives exactly the source's output for
  that gray image replicated to ``C_s`` channels (the usual way to show a CT slice to an ImageNet network).
* ``"mean"``: ``R(W) = Σ_c W_c / C_s``; the first conv's output is ``C_s`` times smaller than with ``"sum"`` for
  the same gray image (the ``norm0`` BatchNorm then sees other statistics; use it only to keep weight scale).

ImageNet's per-channel input normalisation is not folded into the weights: covidseg feeds HU windowed to [0, 1]
and fine-tuning adapts ``norm0``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from covidseg.errors import ConfigError, InputError
from covidseg.model.checkpoint import (
    describe_object,
    is_checkpoint,
    read_torch_file,
    unwrap_model,
    validate_checkpoint,
)
from covidseg.model.unet import DenseUNet

CHANNEL_ADAPTATIONS: tuple[str, ...] = ("sum", "mean")
KIND_CHECKPOINT = "covidseg-checkpoint"
KIND_DENSENET = "densenet121"
KIND_UNET = "unet-state-dict"
KIND_ENCODER = "encoder-state-dict"
FIRST_CONV = "encoder.conv0.weight"
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")
_WRAPPER_KEYS = ("state_dict", "model")
_CLASSIFIER_PREFIXES = ("classifier.", "class_layers.")
_UNET_PREFIXES = ("encoder.", "decoder.", "head.")
_ENCODER_TOP = re.compile(r"^(conv0|norm0|denseblock\d+|transition\d+|norm5)\.")
# torchvision "denselayer1.norm1." / old "denselayer1.norm.1." / MONAI "denselayer1.layers.norm1."
_DENSE_LAYER_PART = re.compile(r"(denselayer\d+)\.(?:layers\.)?(norm|relu|conv)\.?(\d+)\.")
_NAMES_SHOWN = 3


@dataclass(frozen=True)
class LoadReport:
    """What :func:`load_source` did, by full model tensor names (parameters and buffers).

    Attributes:
        loaded: Model tensors set from the source.
        missing: Model tensors the source has no counterpart for (left as they were).
        unexpected: Source tensors with no counterpart in the model.
        shape_mismatched: Tensors present in both with different shapes (left as they were).
        skipped: Source tensors deliberately not loaded (an ImageNet classifier, a head for other classes).
        notes: Human-readable remarks (channel adaptation, why something was skipped).
        source_kind: The detected kind of file (see the module docstring).
    """

    loaded: tuple[str, ...]
    missing: tuple[str, ...]
    unexpected: tuple[str, ...]
    shape_mismatched: tuple[str, ...]
    skipped: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()
    source_kind: str = ""

    def summary(self) -> str:
        """Return a one-line summary.

        Examples:
            >>> LoadReport(("encoder.conv0.weight",), ("head.weight",), (), ()).summary()
            'loaded 1 tensors (encoder 1); missing 1 (encoder 0, decoder/head 1); unexpected 0; shape mismatched 0'
        """
        n_encoder = sum(name.startswith("encoder.") for name in self.loaded)
        missing_encoder = sum(name.startswith("encoder.") for name in self.missing)
        parts = [
            f"loaded {len(self.loaded)} tensors (encoder {n_encoder})"
            + (f" from a {self.source_kind}" if self.source_kind else ""),
            f"missing {len(self.missing)} (encoder {missing_encoder}, "
            f"decoder/head {len(self.missing) - missing_encoder})",
            f"unexpected {len(self.unexpected)}{_examples(self.unexpected)}",
            f"shape mismatched {len(self.shape_mismatched)}{_examples(self.shape_mismatched)}",
        ]
        if self.skipped:
            parts.append(f"skipped {len(self.skipped)}{_examples(self.skipped)}")
        parts.extend(self.notes)
        return "; ".join(parts)


def _examples(names: tuple[str, ...]) -> str:
    if not names:
        return ""
    more = ", ..." if len(names) > _NAMES_SHOWN else ""
    return f" ({', '.join(names[:_NAMES_SHOWN])}{more})"


def densenet_key_to_model(key: str) -> str | None:
    """Map a torchvision/MONAI DenseNet121 key onto the DenseUNet name; None for classifier keys.

    Examples:
        >>> densenet_key_to_model("features.denseblock1.denselayer1.norm.1.weight")
        'encoder.denseblock1.denselayer1.layers.norm1.weight'
        >>> densenet_key_to_model("features.denseblock2.denselayer3.conv2.weight")
        'encoder.denseblock2.denselayer3.layers.conv2.weight'
        >>> densenet_key_to_model("features.transition1.conv.weight")
        'encoder.transition1.conv.weight'
        >>> densenet_key_to_model("classifier.weight") is None
        True
    """
    if not key.startswith("features."):
        return None
    return "encoder." + _DENSE_LAYER_PART.sub(r"\1.layers.\2\3.", key[len("features.") :])


def adapt_input_channels(weight: torch.Tensor, in_channels: int, mode: str = "sum") -> torch.Tensor:
    """Adapt a conv kernel ``(out, C_s, ...)`` to ``in_channels`` input channels (see the module docstring).

    Examples:
        >>> w = torch.randn(4, 3, 7, 7)
        >>> x = torch.rand(1, 1, 16, 16)
        >>> a = torch.nn.functional.conv2d(x.repeat(1, 3, 1, 1), w)
        >>> b = torch.nn.functional.conv2d(x, adapt_input_channels(w, 1, "sum"))
        >>> torch.allclose(a, b, atol=1e-5)
        True
    """
    if mode not in CHANNEL_ADAPTATIONS:
        raise ConfigError(f"unknown channel adaptation {mode!r}; expected one of {list(CHANNEL_ADAPTATIONS)}")
    if weight.dim() < 2 or in_channels < 1:
        raise ConfigError(f"cannot adapt a weight of shape {list(weight.shape)} to {in_channels} channels")
    if weight.shape[1] == in_channels:
        return weight.clone()
    reduced = weight.sum(dim=1, keepdim=True)
    if mode == "mean":
        reduced = reduced / weight.shape[1]
    repeats = [1, in_channels] + [1] * (weight.dim() - 2)
    return (reduced / in_channels).repeat(*repeats)


def _strip_wrappers(state: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in state.items():
        name = str(key)
        changed = True
        while changed:
            changed = False
            for prefix in _WRAPPER_PREFIXES:
                if name.startswith(prefix):
                    name, changed = name[len(prefix) :], True
        out[name] = value
    return out


def detect_source(obj: Any, source: str) -> tuple[str, dict[str, torch.Tensor], dict[str, Any] | None]:
    """Classify a loaded object; return ``(kind, state dict in the file's names, checkpoint or None)``.

    Raises:
        InputError: The object is not a checkpoint or state dict of a DenseNet121 / DenseUNet.

    Examples:
        >>> detect_source({"features.conv0.weight": torch.ones(1)}, "f.pt")[0]
        'densenet121'
        >>> detect_source({"module.encoder.conv0.weight": torch.ones(1)}, "f.pt")[:2]
        ('unet-state-dict', {'encoder.conv0.weight': tensor([1.])})
    """
    if is_checkpoint(obj):
        ckpt = validate_checkpoint(obj, source)
        return KIND_CHECKPOINT, _strip_wrappers(ckpt["state_dict"]), ckpt
    if isinstance(obj, Mapping):
        for wrapper in _WRAPPER_KEYS:
            inner = obj.get(wrapper)
            if isinstance(inner, Mapping) and inner and all(isinstance(v, torch.Tensor) for v in inner.values()):
                return detect_source(inner, source)
    if isinstance(obj, Mapping) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        state = _strip_wrappers(obj)
        if any(k.startswith("features.") for k in state):
            return KIND_DENSENET, state, None
        if any(k.startswith(_UNET_PREFIXES) for k in state):
            return KIND_UNET, state, None
        if any(_ENCODER_TOP.match(k) for k in state):
            return KIND_ENCODER, state, None
    raise InputError(
        f"{source} is not a DenseNet121 / covidseg model file: found {describe_object(obj)}; pass a covidseg "
        "checkpoint, a torchvision or MONAI DenseNet121 state dict, or a DenseUNet state dict"
    )


def _to_model_names(kind: str, state: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Rename source tensors to model names; return them and the source keys skipped as classifiers."""
    mapped: dict[str, torch.Tensor] = {}
    skipped: list[str] = []
    for key, value in state.items():
        if kind == KIND_DENSENET:
            name = densenet_key_to_model(key)
            if name is None:
                if key.startswith(_CLASSIFIER_PREFIXES):
                    skipped.append(key)
                else:
                    mapped[key] = value  # reported as unexpected
                continue
        elif kind == KIND_ENCODER:
            name = "encoder." + key
        else:
            name = key
        mapped[name] = value
    return mapped, skipped


def load_state_into(
    model: nn.Module,
    obj: Any,
    *,
    source: str = "source",
    channel_adaptation: str = "sum",
) -> LoadReport:
    """Load an already-read checkpoint / state dict into ``model`` (see :func:`load_source`).

    Examples:
        >>> from covidseg.model.unet import DenseUNet, UNetConfig
        >>> donor = DenseUNet(UNetConfig(in_channels=3))
        >>> report = load_state_into(DenseUNet(), donor.encoder.state_dict())
        >>> report.source_kind, report.notes
        ('encoder-state-dict', ('encoder.conv0.weight adapted from 3 to 1 input channels (sum)',))
    """
    if channel_adaptation not in CHANNEL_ADAPTATIONS:
        raise ConfigError(
            f"unknown channel adaptation {channel_adaptation!r}; expected one of {list(CHANNEL_ADAPTATIONS)}"
        )
    target_model = unwrap_model(model)
    kind, state, ckpt = detect_source(obj, source)
    mapped, skipped = _to_model_names(kind, state)
    notes: list[str] = []
    if ckpt is not None and isinstance(target_model, DenseUNet):
        source_classes = list(ckpt["model_config"].get("class_names", []))
        target_classes = list(target_model.config.class_names)
        if source_classes and source_classes != target_classes:
            if len(source_classes) == len(target_classes):  # same shapes, other meaning: skip explicitly
                heads = [k for k in mapped if k.startswith("head.")]
                skipped.extend(heads)
                for key in heads:
                    del mapped[key]
            notes.append(f"head not loaded: source classes {source_classes}, model classes {target_classes}")
    target = target_model.state_dict()
    to_load: dict[str, torch.Tensor] = {}
    unexpected: list[str] = []
    mismatched: list[str] = []
    for name, value in mapped.items():
        if name not in target:
            unexpected.append(name)
            continue
        wanted = target[name]
        if value.shape != wanted.shape and name == FIRST_CONV and _adaptable(value, wanted):
            value = adapt_input_channels(value, wanted.shape[1], channel_adaptation)
            notes.append(
                f"{FIRST_CONV} adapted from {mapped[name].shape[1]} to {wanted.shape[1]} input channels "
                f"({channel_adaptation})"
            )
        if value.shape != wanted.shape:
            mismatched.append(name)
            continue
        to_load[name] = value
    if not to_load:
        examples = ", ".join(list(state)[:_NAMES_SHOWN])
        raise InputError(
            f"nothing in {source} matches the model (source tensors such as {examples}); "
            "pass weights of a DenseNet121 / DenseUNet with the same architecture"
        )
    target_model.load_state_dict(to_load, strict=False)
    return LoadReport(
        loaded=tuple(to_load),
        missing=tuple(k for k in target if k not in to_load and k not in mismatched),
        unexpected=tuple(unexpected),
        shape_mismatched=tuple(mismatched),
        skipped=tuple(skipped),
        notes=tuple(notes),
        source_kind=kind,
    )


def _adaptable(source: torch.Tensor, target: torch.Tensor) -> bool:
    return source.dim() == target.dim() and source.shape[0] == target.shape[0] and source.shape[2:] == target.shape[2:]


def load_source(model: nn.Module, path: str | os.PathLike[str], *, channel_adaptation: str = "sum") -> LoadReport:
    """Load source weights from a local file into ``model``, detecting the file kind.

    Args:
        model: The :class:`DenseUNet` to fill (in place).
        path: A covidseg checkpoint, a torchvision/MONAI DenseNet121 state dict, or a DenseUNet / encoder
            state dict, saved with ``torch.save``.
        channel_adaptation: ``"sum"`` or ``"mean"``, used when conv0's input channels differ (module docstring).

    Returns:
        A :class:`LoadReport`; tensors absent from the source or of another shape keep their values.

    Raises:
        InputError: The file is missing, not loadable with ``weights_only=True``, not a model file, or nothing in
            it matches the model.

    Examples:
        >>> import tempfile, pathlib
        >>> from covidseg.model.unet import DenseUNet, UNetConfig
        >>> f = pathlib.Path(tempfile.mkdtemp()) / "source.pt"
        >>> torch.save(DenseUNet(UNetConfig(class_names=("bg", "opacity"))).state_dict(), f)
        >>> report = load_source(DenseUNet(), f)
        >>> report.shape_mismatched
        ('head.weight', 'head.bias')
    """
    return load_state_into(model, read_torch_file(path), source=str(path), channel_adaptation=channel_adaptation)


def load_torchvision_densenet121(
    model: nn.Module, path: str | os.PathLike[str], *, channel_adaptation: str = "sum"
) -> LoadReport:
    """Load a torchvision-format DenseNet121 (ImageNet) state-dict file into ``model.encoder``.

    Keys ``features.*`` (current ``norm1`` and old ``norm.1`` forms) are mapped onto MONAI's names;
    ``classifier.*`` is skipped; conv0 is adapted to the model's input channels (module docstring).

    Raises:
        InputError: The file is not a DenseNet121 state dict (e.g. a covidseg checkpoint: use
            :func:`load_source`), or does not match.

    Examples:
        >>> import tempfile, pathlib
        >>> from covidseg.model.unet import DenseUNet
        >>> f = pathlib.Path(tempfile.mkdtemp()) / "densenet121.pth"
        >>> torch.save({"features.conv0.weight": torch.zeros(64, 3, 7, 7), "classifier.bias": torch.zeros(1000)}, f)
        >>> load_torchvision_densenet121(DenseUNet(), f).skipped
        ('classifier.bias',)
    """
    obj = read_torch_file(path)
    kind = detect_source(obj, str(path))[0]
    if kind != KIND_DENSENET:
        raise InputError(
            f"{path} is a {kind}, not a torchvision DenseNet121 state dict (keys 'features.*'); "
            "load it with load_source"
        )
    return load_state_into(model, obj, source=str(path), channel_adaptation=channel_adaptation)
