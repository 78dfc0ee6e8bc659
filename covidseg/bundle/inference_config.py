"""``configs/inference.json``: the :class:`~covidseg.infer.spec.InferenceSpec` written as standard MONAI components.

Every value that decides the mask comes from the spec, step by step as ``covidseg predict`` runs it:

====================================  =========================================================================
covidseg (``predict``)                bundle component
====================================  =========================================================================
``load_ct``: canonical (z, y, x)      ``LoadImaged`` (nibabel), ``EnsureChannelFirstd``, ``CopyItemsd(image ->
                                      hu)``, ``Orientationd(axcodes="PLS")`` of both: arrays (y, x, z), so an
                                      axial slice ``[:, :, k]`` has covidseg's rows (y) and columns (x)
HU window -> [0, 1] (``window_hu``)   ``ScaleIntensityRanged(a_min, a_max, 0, 1, clip=True)``
slice resize (``preprocess_slices``)  ``Resized([H, W, -1])``: a 3-D resize that keeps z resizes each axial
                                      slice alone (``bilinear`` becomes ``trilinear`` with weight 1 on z)
channel repeat (``in_channels > 1``)  ``RepeatChanneld``
network, slice by slice               ``SliceInferer(roi_size=[H, W], spatial_dim=2)``, TorchScript network
softmax                               ``Activationsd(softmax=True)``
probabilities to native size          ``Invertd`` of the ``Resized`` step (same interpolation, or nearest)
argmax                                ``AsDiscreted(argmax=True)``
``postprocess`` (spec's config)       ``scripts.transforms.LungOpacityPostprocessd`` (covidseg's own code)
label map in the input geometry       ``Invertd`` of ``Orientationd`` (via ``hu``), ``SaveImaged`` (uint8)
====================================  =========================================================================

The bundle runs in float32 without the fast path (``skip_empty_slices``); :func:`bundle_spec` makes that
explicit and says what changed.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from covidseg.bundle.bundle_scripts.transforms import MONAI_AXCODES
from covidseg.errors import ConfigError
from covidseg.infer.spec import InferenceSpec, SliceSkipConfig

__all__ = [
    "DEFAULT_SW_BATCH_SIZE",
    "RESIZE_3D_MODES",
    "bundle_spec",
    "inference_config",
]

DEFAULT_SW_BATCH_SIZE = 8
"""Axial slices per network call in the bundle (does not change results)."""
RESIZE_3D_MODES = {"bilinear": "trilinear", "nearest": "nearest", "area": "area"}
"""covidseg's per-slice resize mode -> the mode of a 3-D ``Resized`` that keeps z (identical per slice)."""
MODEL_TS = "models/model.ts"
"""The TorchScript network, relative to the bundle root."""
MODEL_PT = "models/model.pt"
"""The state dict, relative to the bundle root."""
AXIS_LABELS = (("L", "R"), ("P", "A"), ("I", "S"))
"""nibabel's axis labels (RAS+ world), given to ``Orientationd`` explicitly."""
OUTPUT_POSTFIX = "labels"
"""Outputs are ``<scan name>_labels.nii.gz``, as ``covidseg predict`` names them."""


def bundle_spec(spec: InferenceSpec) -> tuple[InferenceSpec, list[str]]:
    """The spec the bundle runs: float32, every slice through the network; plus notes on what changed.

    Examples:
        >>> spec, notes = bundle_spec(InferenceSpec(precision="bf16"))
        >>> spec.precision, len(notes)
        ('fp32', 1)
    """
    notes: list[str] = []
    if spec.precision != "fp32":
        notes.append(
            f"the checkpoint's precision {spec.precision} is not used: the bundle runs float32 (compare it with "
            "covidseg predict --precision fp32)"
        )
    if spec.skip_empty_slices.enabled:
        notes.append(
            "the checkpoint's fast path (skip slices without lung tissue) is off in the bundle: every slice runs "
            "through the network (compare it with covidseg predict --no-fast)"
        )
    fixed = replace(spec, precision="fp32", skip_empty_slices=replace(spec.skip_empty_slices, enabled=False))
    if not isinstance(fixed.skip_empty_slices, SliceSkipConfig):  # pragma: no cover - dataclass invariant
        raise ConfigError("invalid fast-path settings")
    return fixed, notes


def _resize_modes(spec: InferenceSpec) -> tuple[str, bool]:
    """The 3-D ``Resized`` mode and ``Invertd``'s ``nearest_interp`` that reproduce the spec's two resizes."""
    forward = spec.preprocess.resize_mode
    mode = RESIZE_3D_MODES.get(forward)
    if mode is None:
        raise ConfigError(
            f"resize_mode {forward!r} has no 3-D MONAI equivalent that resizes each axial slice alone; "
            f"the bundle supports {sorted(RESIZE_3D_MODES)}"
        )
    nearest_back = spec.resize_back_mode == "nearest"
    if not nearest_back and spec.resize_back_mode != forward:
        raise ConfigError(
            f"resize_mode {forward!r} with resize_back_mode {spec.resize_back_mode!r} cannot be expressed with "
            "Invertd (it resizes back with the forward mode or nearest); use the same mode or nearest"
        )
    return mode, nearest_back


def _preprocessing(spec: InferenceSpec, mode: str) -> dict[str, Any]:
    low, high = spec.preprocess.window
    transforms: list[Any] = [
        {"_target_": "LoadImaged", "keys": "image", "reader": "NibabelReader", "image_only": True},
        {"_target_": "EnsureChannelFirstd", "keys": "image"},
        {"_target_": "CopyItemsd", "keys": "image", "names": "hu"},
        "@orientation",
        {
            "_target_": "ScaleIntensityRanged",
            "keys": "image",
            "a_min": low,
            "a_max": high,
            "b_min": 0.0,
            "b_max": 1.0,
            "clip": True,
        },
        "@resize",
    ]
    if spec.in_channels > 1:
        transforms.append({"_target_": "RepeatChanneld", "keys": "image", "repeats": spec.in_channels})
    transforms.append({"_target_": "EnsureTyped", "keys": "image", "dtype": "$torch.float32"})
    return {"_target_": "Compose", "transforms": transforms}


def _postprocessing(spec: InferenceSpec, nearest_back: bool) -> dict[str, Any]:
    return {
        "_target_": "Compose",
        "transforms": [
            {"_target_": "Activationsd", "keys": "pred", "softmax": True},
            {
                "_target_": "Invertd",
                "keys": "pred",
                "transform": "@resize",
                "orig_keys": "image",
                "nearest_interp": nearest_back,
                "to_tensor": True,
            },
            {"_target_": "AsDiscreted", "keys": "pred", "argmax": True},
            {
                "_target_": "scripts.transforms.LungOpacityPostprocessd",
                "keys": "pred",
                "hu_key": "hu",
                "class_names": list(spec.class_names),
                "config": spec.postprocess.to_dict(),
            },
            {"_target_": "Invertd", "keys": "pred", "transform": "@orientation", "orig_keys": "hu", "to_tensor": True},
            {
                "_target_": "SaveImaged",
                "keys": "pred",
                "output_dir": "@output_dir",
                "output_postfix": "@output_postfix",
                "output_ext": "@output_ext",
                "output_dtype": "@output_dtype",
                "separate_folder": "@separate_folder",
                "resample": False,
                "print_log": True,
            },
        ],
    }


def inference_config(spec: InferenceSpec, *, sw_batch_size: int = DEFAULT_SW_BATCH_SIZE) -> dict[str, Any]:
    """The ``inference.json`` content for a spec (run :func:`bundle_spec` on it first).

    Args:
        spec: The inference definition (float32, fast path off).
        sw_batch_size: Slices per network call.

    Raises:
        ConfigError: A spec the bundle cannot reproduce (reduced precision, fast path, resize modes without a
            MONAI equivalent).

    Examples:
        >>> config = inference_config(InferenceSpec())
        >>> config["inferer"]["roi_size"], config["orientation"]["axcodes"]
        ([384, 384], 'PLS')
        >>> config["postprocessing"]["transforms"][3]["config"]["lung_components"]
        2
    """
    if spec.precision != "fp32" or spec.skip_empty_slices.enabled:
        raise ConfigError("the bundle runs float32 without the fast path; pass the spec through bundle_spec()")
    mode, nearest_back = _resize_modes(spec)
    height, width = spec.preprocess.slice_size
    align = False if mode in ("trilinear",) else None
    return {
        "imports": ["$import glob", "$import os", "$import numpy", "$import torch"],
        "bundle_root": ".",
        "device": "$torch.device('cuda:0' if torch.cuda.is_available() else 'cpu')",
        "dataset_dir": "$@bundle_root + '/input'",
        "datalist": (
            "$list(sorted(glob.glob(os.path.join(@dataset_dir, '*.nii')) "
            "+ glob.glob(os.path.join(@dataset_dir, '*.nii.gz'))))"
        ),
        "output_dir": "$@bundle_root + '/eval'",
        "output_postfix": OUTPUT_POSTFIX,
        "output_ext": ".nii.gz",
        "output_dtype": "$numpy.uint8",
        "separate_folder": False,
        "network_def": f"$torch.jit.load(os.path.join(@bundle_root, '{MODEL_TS}'), map_location='cpu')",
        "network": "$@network_def.to(@device)",
        "checkpoint": f"$os.path.join(@bundle_root, '{MODEL_PT}')",
        "orientation": {
            "_target_": "Orientationd",
            "keys": ["image", "hu"],
            "axcodes": MONAI_AXCODES,
            "labels": [list(pair) for pair in AXIS_LABELS],
        },
        "resize": {
            "_target_": "Resized",
            "keys": "image",
            "spatial_size": [height, width, -1],
            "mode": mode,
            "align_corners": align,
            "anti_aliasing": False,
        },
        "preprocessing": _preprocessing(spec, mode),
        "dataset": {"_target_": "Dataset", "data": "$[{'image': i} for i in @datalist]", "transform": "@preprocessing"},
        "inferer": {
            "_target_": "SliceInferer",
            "roi_size": [height, width],
            "spatial_dim": 2,
            "sw_batch_size": int(sw_batch_size),
            "progress": False,
        },
        "postprocessing": _postprocessing(spec, nearest_back),
        "evaluator": {
            "_target_": "scripts.inference.SliceEvaluator",
            "dataset": "@dataset",
            "network": "@network",
            "inferer": "@inferer",
            "postprocessing": "@postprocessing",
            "device": "@device",
        },
        "initialize": ["$@network.load_state_dict(torch.load(@checkpoint, map_location=@device, weights_only=True))"],
        "run": ["$@evaluator.run()"],
    }
