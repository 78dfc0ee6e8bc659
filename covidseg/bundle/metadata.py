"""``configs/metadata.json`` of an exported bundle, and the schema it is verified against offline.

The mandatory keys of the MONAI bundle specification (version, changelog, MONAI / PyTorch / NumPy versions,
required packages, task, description, authors, copyright, network_data_format) are filled from the
:class:`~covidseg.infer.spec.InferenceSpec` and the checkpoint. ``network_data_format`` describes the network
the bundle ships: one windowed axial CT slice in, one logit channel per class out. The label map the bundle
writes after post-processing is described in ``label_classes`` / ``pred_classes``.

The official schema (:data:`SCHEMA_URL`) cannot be downloaded everywhere; :data:`LOCAL_SCHEMA` is a JSON
schema written from the specification's mandatory fields, shipped with covidseg and in every bundle
(``docs/metadata_schema.json``), so ``python -m monai.bundle verify_metadata --filepath`` works offline.
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Mapping
from importlib.resources import files
from typing import Any

from covidseg.infer.postprocess import OUTPUT_CLASSES
from covidseg.infer.spec import InferenceSpec

__all__ = [
    "LOCAL_SCHEMA",
    "REQUIRED_PACKAGES",
    "SCHEMA_URL",
    "build_metadata",
    "local_schema_text",
    "package_version",
]

SCHEMA_URL = "https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/0.8.1/meta_schema_20240725.json"
"""The official MONAI bundle metadata schema the ``schema`` entry points at."""
LOCAL_SCHEMA = "schema/metadata_schema.json"
"""The offline schema, relative to the ``covidseg.bundle`` package."""
REQUIRED_PACKAGES = ("nibabel", "scipy", "scikit-image")
"""Packages the bundle needs besides MONAI, PyTorch and NumPy (NIfTI reading, post-processing, the 2-D lung
mask). Written as ``required_packages_version``: MONAI 1.4+ reads the older ``optional_packages_version`` as a
deprecated alias of it (and replaces one with the other), so only the current name is written."""
_UNKNOWN = "unknown"


def package_version(name: str) -> str:
    """The installed version of a distribution, or ``"unknown"``.

    Examples:
        >>> package_version("numpy") != "unknown"
        True
    """
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return _UNKNOWN


def local_schema_text() -> str:
    """The offline metadata schema shipped with covidseg (JSON text).

    Examples:
        >>> import json
        >>> "network_data_format" in json.loads(local_schema_text())["required"]
        True
    """
    return files("covidseg.bundle").joinpath(LOCAL_SCHEMA).read_text(encoding="utf-8")


def _input_format(spec: InferenceSpec) -> dict[str, Any]:
    low, high = spec.preprocess.window
    height, width = spec.preprocess.slice_size
    slice_text = (
        f"CT axial slice: Hounsfield units clipped to [{low:g}, {high:g}] and mapped linearly to [0, 1], "
        f"resized to {height} x {width} ({spec.preprocess.resize_mode})"
    )
    return {
        "type": "image",
        "format": "hounsfield",
        "modality": "CT",
        "num_channels": spec.in_channels,
        "spatial_shape": [height, width],
        "dtype": "float32",
        "value_range": [0, 1],
        "is_patch_data": False,
        "channel_def": {str(c): slice_text for c in range(spec.in_channels)},
    }


def _output_format(spec: InferenceSpec) -> dict[str, Any]:
    height, width = spec.preprocess.slice_size
    return {
        "type": "image",
        "format": "labels",
        "num_channels": len(spec.class_names),
        "spatial_shape": [height, width],
        "dtype": "float32",
        "value_range": [],
        "is_patch_data": False,
        "channel_def": {str(i): name for i, name in enumerate(spec.class_names)},
    }


def _eval_metrics(checkpoint: Mapping[str, Any]) -> dict[str, float]:
    training = checkpoint.get("training")
    if not isinstance(training, Mapping):
        return {}
    value, monitor = training.get("best_metric"), training.get("monitor")
    if isinstance(value, int | float) and not isinstance(value, bool) and float(value) > float("-inf"):
        return {f"validation_{monitor or 'metric'}": round(float(value), 6)}
    return {}


def build_metadata(
    spec: InferenceSpec,
    checkpoint: Mapping[str, Any],
    *,
    version: str = "0.1.0",
    name: str = "covidseg_lung_opacity",
    authors: str = "covidseg developers",
    copyright_text: str = "Copyright (c) the covidseg developers and the model's trainers",
    source: str = "",
    sha256: str = "",
    notes: tuple[str, ...] | list[str] = (),
) -> dict[str, Any]:
    """The ``metadata.json`` content for a bundle of ``checkpoint`` run with ``spec``.

    Args:
        spec: The inference definition the bundle runs.
        checkpoint: The loaded covidseg checkpoint (for its covidseg version and validation metric).
        version: Bundle version.
        name: Bundle name.
        authors: Authors of the model.
        copyright_text: Copyright statement.
        source: Checkpoint file name, recorded in the changelog.
        sha256: Checkpoint SHA-256, recorded with the covidseg provenance.
        notes: Differences between the bundle and the checkpoint's own settings.

    Examples:
        >>> meta = build_metadata(InferenceSpec(), {"training": {"best_metric": 0.8, "monitor": "dice_opacity"}})
        >>> meta["network_data_format"]["outputs"]["pred"]["channel_def"]
        {'0': 'background', '1': 'lung', '2': 'opacity'}
        >>> meta["eval_metrics"]
        {'validation_dice_opacity': 0.8}
    """
    from covidseg import __version__

    classes = ", ".join(f"{i} {n}" for i, n in enumerate(spec.class_names))
    lung_source = "the model's lung class" if spec.has_lung_class else "Hounsfield units (the model has no lung class)"
    return {
        "schema": SCHEMA_URL,
        "version": version,
        "changelog": {version: f"exported by covidseg {__version__} from {source or 'a covidseg checkpoint'}"},
        "monai_version": package_version("monai"),
        "pytorch_version": package_version("torch").split("+")[0],
        "numpy_version": package_version("numpy"),
        "required_packages_version": {p: package_version(p) for p in REQUIRED_PACKAGES},
        "name": name,
        "task": "Segmentation of the lungs and COVID-19 lung opacities (ground glass, consolidation) in chest CT",
        "description": (
            "A 2-D U-Net with a DenseNet121 encoder, run on every axial slice of a chest CT in Hounsfield units, "
            "followed by covidseg's post-processing: lung mask = predicted lung plus opacity (largest components, "
            "holes filled), opacity outside the lungs removed, small lesions dropped. Writes a uint8 label map "
            "(0 background, 1 lung, 2 opacity) in the input's geometry, the mask `covidseg predict` writes."
        ),
        "authors": authors,
        "copyright": copyright_text,
        "data_source": "see docs/README.md (training configuration recorded in the checkpoint)",
        "data_type": "nibabel",
        "image_classes": "one channel: chest CT in Hounsfield units (NIfTI), any size and orientation",
        "label_classes": ", ".join(f"{i} {n}" for i, n in enumerate(OUTPUT_CLASSES)),
        "pred_classes": (
            f"network output: {len(spec.class_names)} logit channels ({classes}); after softmax, resizing back, "
            f"argmax and post-processing (lung mask from {lung_source}): one uint8 channel, "
            + ", ".join(f"{i} {n}" for i, n in enumerate(OUTPUT_CLASSES))
        ),
        "eval_metrics": _eval_metrics(checkpoint),
        "intended_use": "Research only. Not a medical device; not for diagnosis or treatment decisions.",
        "references": [],
        "network_data_format": {
            "inputs": {"image": _input_format(spec)},
            "outputs": {"pred": _output_format(spec)},
        },
        "covidseg": {
            "covidseg_version": __version__,
            "checkpoint": source,
            "checkpoint_sha256": sha256,
            "checkpoint_covidseg_version": str(checkpoint.get("covidseg_version", _UNKNOWN)),
            "inference_spec": spec.to_dict(),
            "notes": list(notes),
        },
    }
