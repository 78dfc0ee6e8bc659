"""``covidseg export-bundle``: a covidseg checkpoint as a self-contained MONAI bundle.

Layout written (MONAI bundle specification)::

    <out>/
      configs/metadata.json    mandatory metadata, network_data_format, covidseg provenance and inference spec
      configs/inference.json   standard MONAI components generated from the InferenceSpec
      configs/train.json       where the model came from (covidseg train; not a MONAI training workflow)
      models/model.pt          state dict
      models/model.ts          TorchScript (scripted) with metadata.json and inference.json embedded
      scripts/                 covidseg's post-processing and the bundle's transforms (no covidseg needed)
      docs/README.md, docs/license.txt, docs/metadata_schema.json, LICENSE

The bundle is written into a temporary folder next to ``out`` and renamed when complete
(:func:`covidseg.io.atomic.atomic_dir`): a failed export leaves nothing behind.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from covidseg.bundle.docs import license_text, readme_text
from covidseg.bundle.inference_config import MODEL_PT, MODEL_TS, bundle_spec, inference_config
from covidseg.bundle.metadata import build_metadata, local_schema_text
from covidseg.bundle.shipping import write_scripts
from covidseg.errors import InputError, OutputExistsError
from covidseg.infer.spec import SPEC_KEY, InferenceSpec
from covidseg.io.atomic import atomic_dir

__all__ = ["BundleExport", "check_describable", "export_bundle"]

_VERSION_PARTS = 3


@dataclass
class BundleExport:
    """What :func:`export_bundle` wrote.

    Attributes:
        path: The bundle folder.
        spec: The inference definition the bundle runs.
        files: Every file written, relative to ``path``.
        notes: Differences between the bundle and the checkpoint's own settings.
    """

    path: Path
    spec: InferenceSpec
    files: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def check_describable(checkpoint: Mapping[str, Any], source: str = "checkpoint") -> InferenceSpec:
    """The checkpoint's inference spec, if the checkpoint states its preprocessing and classes explicitly.

    A bundle must say how scans were windowed and resized and what each output channel is; defaults guessed for
    a checkpoint that does not record them could describe a different model.

    Raises:
        InputError: No ``preprocessing`` (or stored inference spec), no ``class_names`` (or stored spec), or
            an invalid recipe.

    Examples:
        >>> ckpt = {"model_config": {"class_names": ["background", "opacity"]}, "class_names": ["background",
        ...         "opacity"], "preprocessing": {"window": [-1000, 0], "slice_size": [64, 64]}}
        >>> check_describable(ckpt).preprocess.slice_size
        (64, 64)
        >>> check_describable({"model_config": {}, "class_names": ["background", "opacity"]}, "m.pt")
        Traceback (most recent call last):
        ...
        covidseg.errors.InputError: m.pt records no preprocessing (HU window, slice size), so a bundle cannot ...
    """
    has_spec = isinstance(checkpoint.get(SPEC_KEY), Mapping)
    if not has_spec and not any(isinstance(checkpoint.get(k), Mapping) for k in ("preprocessing", "preprocess")):
        raise InputError(
            f"{source} records no preprocessing (HU window, slice size), so a bundle cannot describe its input; "
            "export a checkpoint written by covidseg train (best.pt)"
        )
    if not has_spec and not checkpoint.get("class_names"):
        raise InputError(
            f"{source} records no class_names, so a bundle cannot describe its output channels; export a "
            "checkpoint written by covidseg train (best.pt)"
        )
    return InferenceSpec.from_checkpoint(checkpoint, source)


def _check_version(version: str) -> str:
    parts = version.split(".")
    if len(parts) != _VERSION_PARTS or not all(p.isdigit() for p in parts):
        raise InputError(f"bundle version must look like 1.2.3 (major.minor.patch), got {version!r}")
    return version


def _check_name(name: str) -> str:
    if not name or not all(c.isalnum() or c in "_-." for c in name):
        raise InputError(f"bundle name must use letters, digits, '_', '-' or '.', got {name!r}")
    return name


def _write_json(path: Path, data: Mapping[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=4) + "\n", encoding="utf-8")


def _train_config(checkpoint: Mapping[str, Any], source: str) -> dict[str, Any]:
    """``configs/train.json``: where the weights came from (no MONAI training workflow is shipped)."""
    return {
        "trained_with": "covidseg train (https://pypi.org/project/covidseg; `covidseg train --config RUN.yaml`)",
        "checkpoint": source,
        "covidseg_run_config": checkpoint.get("config") if isinstance(checkpoint.get("config"), Mapping) else None,
        "training_state": checkpoint.get("training") if isinstance(checkpoint.get("training"), Mapping) else None,
    }


def _script_model(model: torch.nn.Module, spec: InferenceSpec) -> torch.jit.ScriptModule:
    """TorchScript of the model, checked to give the eager model's output on a random slice batch."""
    scripted = torch.jit.script(model.eval())
    height, width = spec.preprocess.slice_size
    probe = torch.rand(2, spec.in_channels, height, width, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        if not torch.allclose(scripted(probe), model(probe), rtol=1e-4, atol=1e-5):
            raise InputError("the TorchScript network does not reproduce the model's output; report this as a bug")
    return scripted


def export_bundle(
    model_path: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    overwrite: bool = False,
    name: str = "covidseg_lung_opacity",
    version: str = "0.1.0",
    authors: str = "covidseg developers",
    copyright_text: str = "Copyright (c) the covidseg developers and the model's trainers",
) -> BundleExport:
    """Export a covidseg checkpoint as a MONAI bundle folder (see the module docstring for the layout).

    Args:
        model_path: A checkpoint written by ``covidseg train`` (``best.pt``).
        out_dir: The bundle folder to create.
        overwrite: Replace an existing ``out_dir``.
        name: Bundle name (metadata ``name``).
        version: Bundle version, ``major.minor.patch``.
        authors: Metadata ``authors``.
        copyright_text: Metadata ``copyright``.

    Returns:
        What was written.

    Raises:
        OutputExistsError: ``out_dir`` exists and ``overwrite`` is false (checked before anything is read).
        InputError: Not a covidseg checkpoint, or one that does not record its preprocessing or classes; a bad
            name or version.
        ConfigError: A recipe the bundle's MONAI components cannot reproduce.
    """
    from covidseg.infer.segmenter import file_sha256
    from covidseg.model.checkpoint import build_model_from_checkpoint, load_checkpoint

    target = Path(out_dir)
    if target.exists() and not overwrite:
        raise OutputExistsError(f"{target} already exists; pass --overwrite to replace it or choose another --out")
    if target.exists() and not target.is_dir():
        raise InputError(f"{target} exists and is not a folder; choose another --out")
    _check_name(name)
    _check_version(version)
    source = Path(model_path)
    checkpoint = load_checkpoint(source)
    spec, notes = bundle_spec(check_describable(checkpoint, str(source)))
    config = inference_config(spec)
    model = build_model_from_checkpoint(checkpoint)
    metadata = build_metadata(
        spec,
        checkpoint,
        version=version,
        name=name,
        authors=authors,
        copyright_text=copyright_text,
        source=source.name,
        sha256=file_sha256(source),
        notes=notes,
    )
    scripted = _script_model(model, spec)
    from monai.data import save_net_with_metadata

    with atomic_dir(target, overwrite=overwrite) as tmp:
        _write_json(tmp / "configs" / "metadata.json", metadata)
        _write_json(tmp / "configs" / "inference.json", config)
        _write_json(tmp / "configs" / "train.json", _train_config(checkpoint, source.name))
        (tmp / "models").mkdir()
        torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, tmp / MODEL_PT)
        extra = {"inference.json": json.dumps(config).encode("utf-8")}
        save_net_with_metadata(
            scripted, str(tmp / MODEL_TS), include_config_vals=False, meta_values=metadata, more_extra_files=extra
        )
        write_scripts(tmp)
        docs = tmp / "docs"
        docs.mkdir()
        (docs / "README.md").write_text(readme_text(metadata, checkpoint), encoding="utf-8")
        (docs / "license.txt").write_text(license_text(metadata), encoding="utf-8")
        (docs / "metadata_schema.json").write_text(local_schema_text(), encoding="utf-8")
        shutil.copyfile(docs / "license.txt", tmp / "LICENSE")
        files = sorted(str(p.relative_to(tmp)) for p in tmp.rglob("*") if p.is_file())
    return BundleExport(path=target, spec=spec, files=files, notes=notes)
