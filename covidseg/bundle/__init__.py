"""MONAI bundle export and verification: a covidseg checkpoint as a bundle that runs without covidseg.

* :func:`export_bundle` (``export``): writes the bundle (``covidseg export-bundle``);
* :func:`inference_config` (``inference_config``): the InferenceSpec as MONAI components (``inference.json``);
* :func:`build_metadata` (``metadata``): ``metadata.json`` and the offline schema;
* :func:`write_scripts` (``shipping``): covidseg's post-processing shipped in the bundle's ``scripts/``;
* :func:`verify_bundle` (``verify``): ``verify_metadata`` (offline) and ``verify_net_in_out``.

Names are imported on first access, so ``import covidseg.bundle`` does not load torch or MONAI.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from covidseg.bundle.export import BundleExport, check_describable, export_bundle
    from covidseg.bundle.inference_config import bundle_spec, inference_config
    from covidseg.bundle.metadata import build_metadata
    from covidseg.bundle.shipping import write_scripts
    from covidseg.bundle.verify import verify_bundle, verify_metadata_offline, verify_network

_EXPORTS: dict[str, str] = {
    "BundleExport": "export",
    "check_describable": "export",
    "export_bundle": "export",
    "bundle_spec": "inference_config",
    "inference_config": "inference_config",
    "build_metadata": "metadata",
    "write_scripts": "shipping",
    "verify_bundle": "verify",
    "verify_metadata_offline": "verify",
    "verify_network": "verify",
}

__all__ = [
    "BundleExport",
    "build_metadata",
    "bundle_spec",
    "check_describable",
    "export_bundle",
    "inference_config",
    "verify_bundle",
    "verify_metadata_offline",
    "verify_network",
    "write_scripts",
]


def __getattr__(name: str) -> Any:
    """Import an exported name from its submodule on first access (PEP 562)."""
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'covidseg.bundle' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"covidseg.bundle.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
