"""The covidseg checkpoint format: a plain dict of tensors and Python primitives.

A checkpoint is written with ``torch.save`` and read with ``torch.load(..., weights_only=True)``, so it may only
contain tensors, dicts, lists, tuples, strings, numbers, booleans and None. Keys:

================== =============================================================
``format``         ``"covidseg-checkpoint"``
``format_version`` :data:`FORMAT_VERSION` (an int; newer files are refused)
``model_config``   :meth:`UNetConfig.to_dict` of the model
``state_dict``     the model's ``state_dict()`` (CPU tensors)
``covidseg_version`` the package version that wrote it
...                any ``extra`` entries (training adds optimizer state, epoch, θ̄, ...)
================== =============================================================
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from covidseg import __version__
from covidseg.errors import ConfigError, InputError
from covidseg.io.atomic import atomic_path
from covidseg.model.unet import DenseUNet, UNetConfig

CHECKPOINT_FORMAT = "covidseg-checkpoint"
FORMAT_VERSION = 1
RESERVED_KEYS: tuple[str, ...] = ("format", "format_version", "model_config", "state_dict", "covidseg_version")
_MAX_KEYS_SHOWN = 8
_PLAIN_SCALARS = (str, int, float, bool, torch.Tensor, torch.dtype, torch.Size)


def unwrap_model(model: nn.Module) -> nn.Module:
    """Return the user model inside DistributedDataParallel / DataParallel / ``torch.compile`` wrappers.

    Examples:
        >>> inner = nn.Linear(2, 2)
        >>> unwrap_model(nn.DataParallel(inner)) is inner
        True
    """
    while True:
        for attribute in ("module", "_orig_mod"):
            inner = getattr(model, attribute, None)
            if isinstance(inner, nn.Module):
                model = inner
                break
        else:
            return model


def check_plain(value: Any, where: str = "value") -> None:
    """Raise ConfigError unless ``value`` holds only tensors and Python primitives (``weights_only``-loadable).

    Examples:
        >>> check_plain({"epoch": 3, "losses": [0.5, 0.25], "theta": {"w": torch.ones(2)}})
        >>> check_plain({"when": object()}, "extra")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        covidseg.errors.ConfigError: extra['when'] is a object; ...
    """
    if value is None or isinstance(value, _PLAIN_SCALARS):
        return
    if isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, _PLAIN_SCALARS):
                raise ConfigError(f"{where} has a key of type {type(key).__name__}; use str or int keys")
            check_plain(item, f"{where}[{key!r}]")
        return
    if isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            check_plain(item, f"{where}[{i}]")
        return
    raise ConfigError(
        f"{where} is a {type(value).__name__}; checkpoints hold only tensors, dicts, lists, tuples, "
        "str, int, float, bool and None (convert it, e.g. with .tolist() or str())"
    )


def save_checkpoint(
    path: str | os.PathLike[str],
    model: nn.Module,
    *,
    model_config: UNetConfig | Mapping[str, Any],
    extra: Mapping[str, Any] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write ``model`` as a covidseg checkpoint, atomically (a killed write leaves no partial file).

    Args:
        path: Destination file (``.pt`` by convention).
        model: The model; DDP / ``torch.compile`` wrappers are unwrapped so keys carry no prefix.
        model_config: The architecture, as :class:`UNetConfig` or its ``to_dict()``; must match a
            :class:`DenseUNet` model's own config.
        extra: More entries to store (tensors and Python primitives only, checked); no reserved key.
        overwrite: Replace an existing file; without it an existing file raises ``OutputExistsError``.

    Returns:
        The path written.

    Examples:
        >>> import tempfile, pathlib
        >>> from covidseg.model.unet import DenseUNet, UNetConfig
        >>> cfg = UNetConfig(class_names=("background", "opacity"))
        >>> out = pathlib.Path(tempfile.mkdtemp()) / "model.pt"
        >>> _ = save_checkpoint(out, DenseUNet(cfg), model_config=cfg, extra={"epoch": 3})
        >>> ckpt = load_checkpoint(out)
        >>> ckpt["epoch"], ckpt["model_config"]["class_names"]
        (3, ['background', 'opacity'])
    """
    config = model_config if isinstance(model_config, UNetConfig) else UNetConfig.from_dict(model_config)
    inner = unwrap_model(model)
    if isinstance(inner, DenseUNet) and inner.config != config:
        raise ConfigError(
            f"model_config {config.to_dict()} does not describe the model ({inner.config.to_dict()}); "
            "pass the config the model was built with"
        )
    clashes = sorted(set(extra or {}) & set(RESERVED_KEYS))
    if clashes:
        raise ConfigError(f"extra checkpoint keys {clashes} are reserved; rename them")
    check_plain(dict(extra or {}), "extra")
    payload: dict[str, Any] = {
        "format": CHECKPOINT_FORMAT,
        "format_version": FORMAT_VERSION,
        "model_config": config.to_dict(),
        "state_dict": {k: v.detach().cpu() for k, v in inner.state_dict().items()},
        "covidseg_version": __version__,
        **(extra or {}),
    }
    with atomic_path(path, overwrite=overwrite) as tmp:
        torch.save(payload, tmp)
    return Path(path)


def read_torch_file(path: str | os.PathLike[str]) -> Any:
    """Load a ``torch.save`` file safely (``weights_only=True``, on CPU); InputError if impossible.

    Examples:
        >>> import tempfile, pathlib
        >>> f = pathlib.Path(tempfile.mkdtemp()) / "t.pt"
        >>> torch.save({"w": torch.ones(2)}, f)
        >>> read_torch_file(f)["w"]
        tensor([1., 1.])
    """
    file = Path(path)
    if not file.is_file():
        raise InputError(f"{file} does not exist or is not a file; check the path")
    try:
        return torch.load(file, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises UnpicklingError, RuntimeError, EOFError, ... for bad files
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(
            f"{file} is not a PyTorch weights file that can be loaded safely ({reason[:200]}); "
            "pass a covidseg checkpoint or a state-dict file saved with torch.save"
        ) from exc


def describe_object(obj: Any) -> str:
    """Describe a loaded object in a few words for error messages.

    Examples:
        >>> describe_object({"a": 1, "b": 2})
        "a dict with keys ['a', 'b']"
        >>> describe_object(torch.zeros(2, 3))
        'a tensor of shape [2, 3]'
    """
    if isinstance(obj, Mapping):
        keys = [str(k) for k in list(obj)[:_MAX_KEYS_SHOWN]]
        more = f" and {len(obj) - _MAX_KEYS_SHOWN} more" if len(obj) > _MAX_KEYS_SHOWN else ""
        return f"a dict with keys {keys}{more}"
    if isinstance(obj, torch.Tensor):
        return f"a tensor of shape {list(obj.shape)}"
    return f"a {type(obj).__name__}"


def is_checkpoint(obj: Any) -> bool:
    """Return True if ``obj`` claims to be a covidseg checkpoint (has the format marker).

    Examples:
        >>> is_checkpoint({"format": "covidseg-checkpoint"}), is_checkpoint({"conv0.weight": torch.ones(1)})
        (True, False)
    """
    return isinstance(obj, Mapping) and obj.get("format") == CHECKPOINT_FORMAT


def validate_checkpoint(obj: Any, source: str = "checkpoint") -> dict[str, Any]:
    """Check the structure of a loaded checkpoint and return it as a dict; InputError naming what is wrong.

    Args:
        obj: The object loaded from a file.
        source: Where it came from, for messages (usually the path).

    Examples:
        >>> validate_checkpoint({"epoch": 1}, "x.pt")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        covidseg.errors.InputError: x.pt is not a covidseg checkpoint: found a dict with keys ['epoch']; ...
    """
    if not is_checkpoint(obj):
        raise InputError(
            f"{source} is not a covidseg checkpoint: found {describe_object(obj)}; "
            "pass a file written by covidseg (train / pretrain)"
        )
    version = obj.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise InputError(f"{source} has an invalid format_version {version!r}; the file is damaged")
    if version > FORMAT_VERSION:
        raise InputError(
            f"{source} has checkpoint format version {version}, newer than this covidseg reads "
            f"({FORMAT_VERSION}); upgrade covidseg"
        )
    missing = [k for k in ("model_config", "state_dict") if k not in obj]
    if missing:
        raise InputError(f"{source} is an incomplete covidseg checkpoint: missing {missing}")
    try:
        UNetConfig.from_dict(obj["model_config"])
    except ConfigError as exc:
        raise InputError(f"{source} has an invalid model_config: {exc}") from exc
    state = obj["state_dict"]
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise InputError(f"{source} has a state_dict that is not a dict of tensors: {describe_object(state)}")
    return dict(obj)


def load_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read and validate a covidseg checkpoint file (``weights_only=True``, tensors on CPU).

    Raises:
        InputError: The file is missing, not loadable, not a covidseg checkpoint (the message says what was
            found), from a newer format version, or incomplete.

    Examples:
        >>> import tempfile, pathlib
        >>> f = pathlib.Path(tempfile.mkdtemp()) / "weights.pt"
        >>> torch.save({"conv0.weight": torch.ones(1)}, f)
        >>> load_checkpoint(f)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        covidseg.errors.InputError: ... is not a covidseg checkpoint: found a dict with keys ['conv0.weight']; ...
    """
    return validate_checkpoint(read_torch_file(path), str(path))


def build_model_from_checkpoint(checkpoint: str | os.PathLike[str] | Mapping[str, Any]) -> DenseUNet:
    """Build the :class:`DenseUNet` a checkpoint describes and load its weights; returned in eval mode.

    Args:
        checkpoint: A checkpoint path, or a checkpoint dict already loaded with :func:`load_checkpoint`.

    Examples:
        >>> import tempfile, pathlib
        >>> from covidseg.model.unet import DenseUNet, UNetConfig
        >>> cfg = UNetConfig(in_channels=3)
        >>> f = save_checkpoint(pathlib.Path(tempfile.mkdtemp()) / "m.pt", DenseUNet(cfg), model_config=cfg)
        >>> build_model_from_checkpoint(f).config.in_channels
        3
    """
    if isinstance(checkpoint, Mapping):
        ckpt = validate_checkpoint(checkpoint)
        source = "checkpoint"
    else:
        ckpt = load_checkpoint(checkpoint)
        source = str(checkpoint)
    model = DenseUNet(UNetConfig.from_dict(ckpt["model_config"]))
    try:
        model.load_state_dict(ckpt["state_dict"], strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        detail = " ".join(line.strip() for line in first[1:3]) if len(first) > 1 else first[0]
        raise InputError(
            f"{source}: state_dict does not match its model_config ({detail[:300]}); the file is damaged"
        ) from exc
    return model.eval()
