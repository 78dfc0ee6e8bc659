"""Checks of an exported bundle with MONAI's own bundle tools, offline.

* :func:`verify_metadata_offline`: ``monai.bundle.verify_metadata`` against the schema shipped with covidseg
  (``docs/metadata_schema.json``; an existing ``filepath`` is never downloaded over);
* :func:`verify_network`: ``monai.bundle.verify_net_in_out`` on ``network_def`` (the TorchScript network) with
  the shapes declared in ``network_data_format``.

Both raise :class:`~covidseg.errors.InputError` with MONAI's reason on failure.
"""

from __future__ import annotations

import os
from pathlib import Path

from covidseg.errors import InputError

__all__ = ["BUNDLE_SCHEMA", "verify_bundle", "verify_metadata_offline", "verify_network"]

BUNDLE_SCHEMA = "docs/metadata_schema.json"
"""The offline schema inside a bundle, relative to its root."""
_META = "configs/metadata.json"
_INFERENCE = "configs/inference.json"


def _bundle(path: str | os.PathLike[str]) -> Path:
    root = Path(path)
    if not (root / _META).is_file():
        raise InputError(f"{root} is not a bundle folder (no {_META}); pass the folder export-bundle wrote")
    return root


def _reason(exc: Exception) -> str:
    text = " ".join(str(exc).split())
    return text[:300] if text else type(exc).__name__


def verify_metadata_offline(bundle: str | os.PathLike[str], schema: str | os.PathLike[str] | None = None) -> None:
    """Validate ``configs/metadata.json`` with ``monai.bundle.verify_metadata`` against a local schema.

    Args:
        bundle: The bundle folder.
        schema: A local JSON schema; defaults to the bundle's ``docs/metadata_schema.json``.

    Raises:
        InputError: Not a bundle, no schema file, or metadata that fail the schema.
    """
    from monai.bundle import verify_metadata

    root = _bundle(bundle)
    schema_file = Path(schema) if schema is not None else root / BUNDLE_SCHEMA
    if not schema_file.is_file():
        raise InputError(f"schema file {schema_file} does not exist; pass an existing local schema")
    try:
        verify_metadata(meta_file=str(root / _META), filepath=str(schema_file))
    except (ValueError, KeyError, OSError) as exc:
        raise InputError(f"{root / _META} fails the metadata schema {schema_file}: {_reason(exc)}") from exc


def verify_network(bundle: str | os.PathLike[str]) -> None:
    """Run ``monai.bundle.verify_net_in_out`` on the bundle's ``network_def`` on CPU.

    Raises:
        InputError: Not a bundle, or a network whose output does not match ``network_data_format``.
    """
    from monai.bundle import verify_net_in_out

    root = _bundle(bundle)
    try:
        verify_net_in_out(
            net_id="network_def",
            meta_file=str(root / _META),
            config_file=str(root / _INFERENCE),
            device="cpu",
            bundle_root=str(root),
        )
    except (ValueError, KeyError, RuntimeError, OSError) as exc:
        raise InputError(f"{root}: the network does not match network_data_format: {_reason(exc)}") from exc


def verify_bundle(bundle: str | os.PathLike[str]) -> list[str]:
    """Run every check; return the names of those that passed (all, or an InputError is raised).

    Examples:
        >>> verify_bundle("/nonexistent")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        covidseg.errors.InputError: /nonexistent is not a bundle folder (no configs/metadata.json); ...
    """
    verify_metadata_offline(bundle)
    verify_network(bundle)
    return ["verify_metadata", "verify_net_in_out"]
