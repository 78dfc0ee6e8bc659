"""Loading a run configuration: YAML files merged in order, ``key=value`` overrides, one-line errors.

A run is described by one :class:`~covidseg.config.sections.RunConfig`. It is assembled from any number of YAML
files (later files override earlier ones key by key, so a dataset preset and a regularization preset combine)
and command-line overrides such as ``train.epochs=5`` or ``regularization.schedule.lambda0=15``, whose values
are parsed as YAML (``yaml.safe_load``). Every error is a one-line :class:`~covidseg.errors.ConfigError` that
names the key and what is allowed.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from covidseg.config.sections import RunConfig
from covidseg.errors import ConfigError

__all__ = ["apply_overrides", "load_config", "merge_yaml_files", "read_yaml_mapping", "save_config"]


def _deep_merge(base: Mapping[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    """Merge ``update`` into a copy of ``base``, recursing into mappings present in both."""
    merged = {k: _deep_merge(v, {}) if isinstance(v, Mapping) else v for k, v in base.items()}
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        elif isinstance(value, Mapping):
            merged[key] = _deep_merge({}, value)
        else:
            merged[key] = value
    return merged


def _read_yaml(path: Path) -> dict[str, Any]:
    return read_yaml_mapping(
        path,
        name="config file",
        see="see configs/ for presets",
        contents="of sections (data:, train:, ...)",
        allow_empty=True,
    )


def apply_overrides(data: dict[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """Apply ``section.key=value`` overrides (values parsed as YAML) to a raw config mapping.

    Examples:
        >>> apply_overrides({"train": {"epochs": 3}}, ["train.epochs=5", "optim.lr=1e-4", "data.options.n_cases=4"])
        {'train': {'epochs': 5}, 'optim': {'lr': 0.0001}, 'data': {'options': {'n_cases': 4}}}
    """
    result = _deep_merge({}, data)
    for item in overrides:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key or any(not part for part in key.split(".")):
            raise ConfigError(f"override {item!r} must look like section.key=value, e.g. train.epochs=5")
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError:
            value = raw
        if isinstance(value, str):
            value = _number_or_text(value)
        node = result
        parts = key.split(".")
        for part in parts[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            elif not isinstance(child, dict):
                raise ConfigError(f"override {item!r}: {part!r} is a value, not a section")
            node = child
        node[parts[-1]] = value
    return result


def _number_or_text(text: str) -> Any:
    """YAML 1.1 reads ``1e-4`` as a string; read it as the number a user meant."""
    try:
        return float(text) if any(c in text for c in ".eE") else int(text)
    except ValueError:
        return text


def _format_validation_error(exc: ValidationError) -> str:
    messages = []
    for error in exc.errors():
        loc = ".".join(str(part) for part in error["loc"])
        message = error["msg"].removeprefix("Value error, ")
        if error["type"] == "extra_forbidden":
            message = f"unknown key {loc!r}"
            parent = _section_for(error["loc"][:-1])
            if parent is not None:
                message += f"; allowed keys: {sorted(parent.model_fields)}"
            messages.append(message)
            continue
        received = error.get("input")
        shown = "" if isinstance(received, dict) else f" (got {received!r})"
        messages.append(f"{loc}: {message}{shown}" if loc else message)
    return "invalid config: " + "; ".join(messages)


def _section_for(loc: Sequence[Any]) -> type[BaseModel] | None:
    model: type[BaseModel] = RunConfig
    for part in loc:
        field = model.model_fields.get(str(part))
        if field is None or not (isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)):
            return None
        model = field.annotation
    return model


def merge_yaml_files(paths: Sequence[str | os.PathLike[str]], base: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Merge ``base`` and the YAML files in order (later keys override earlier ones) into one raw mapping.

    Examples:
        >>> merge_yaml_files([], base={"train": {"epochs": 3}})
        {'train': {'epochs': 3}}
    """
    data: dict[str, Any] = _deep_merge({}, base or {})
    for path in paths:
        data = _deep_merge(data, _read_yaml(Path(path)))
    return data


def read_yaml_mapping(
    path: str | os.PathLike[str], *, name: str, see: str, contents: str, allow_empty: bool = False
) -> dict[str, Any]:
    """Read a preset file (sweep, Table 1, study ...) that must hold a YAML mapping; one-line errors otherwise.

    Args:
        path: The YAML file.
        name: What the file is, for the messages (e.g. ``"sweep spec"``).
        see: Where examples are, e.g. ``"see configs/sweep/ for examples"``.
        contents: What the mapping holds, e.g. ``"with base:, grid:, ..."``.
        allow_empty: Read an empty file as an empty mapping (else it is refused as not a mapping).

    Raises:
        ConfigError: Missing file, invalid YAML, or not a mapping.

    Examples:
        >>> read_yaml_mapping("no/such.yaml", name="sweep spec", see="see configs/sweep/", contents="")
        Traceback (most recent call last):
        ...
        covidseg.errors.ConfigError: sweep spec no/such.yaml does not exist; see configs/sweep/
    """
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"{name} {file} does not exist; {see}")
    try:
        raw = yaml.safe_load(file.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{file} is not valid YAML: {' '.join(str(exc).split())}") from None
    if raw is None and allow_empty:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{file} must hold a mapping {contents}, got {type(raw).__name__}")
    return raw


def load_config(
    paths: Sequence[str | os.PathLike[str]] = (),
    overrides: Iterable[str] = (),
    *,
    base: Mapping[str, Any] | None = None,
) -> RunConfig:
    """Build a :class:`RunConfig` from YAML files (merged in order) and ``key=value`` overrides.

    Args:
        paths: YAML files; later ones override earlier ones key by key.
        overrides: ``section.key=value`` strings applied last.
        base: A raw mapping applied before the files (e.g. a resolved config saved by an earlier run).

    Raises:
        ConfigError: A missing or malformed file, an unknown key, or an invalid value (one line).

    Examples:
        >>> cfg = load_config(overrides=["train.epochs=2", "preprocess.slice_size=[128, 128]"])
        >>> cfg.train.epochs, cfg.preprocess.slice_size
        (2, (128, 128))
        >>> load_config(overrides=["train.epoch=2"])
        Traceback (most recent call last):
        ...
        covidseg.errors.ConfigError: invalid config: unknown key 'train.epoch'; allowed keys: [...]
    """
    data = apply_overrides(merge_yaml_files(paths, base), overrides)
    try:
        return RunConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format_validation_error(exc)) from None
    except ConfigError as exc:
        message = str(exc)
        raise ConfigError(message if message.startswith("invalid config") else f"invalid config: {message}") from None


def save_config(config: RunConfig, path: str | os.PathLike[str], *, overwrite: bool = True) -> Path:
    """Write the resolved config as YAML (atomically); :func:`load_config` with ``base`` reads it back."""
    from covidseg.io.atomic import atomic_path

    with atomic_path(path, overwrite=overwrite) as tmp:
        tmp.write_text(yaml.safe_dump(config.to_yaml_dict(), sort_keys=False))
    return Path(path)
