"""InferenceSpec: serialisation, validation, overrides, and the spec a checkpoint implies."""

from __future__ import annotations

import json

import pytest

from covidseg.data.preprocess import PreprocessConfig
from covidseg.errors import ConfigError, InputError
from covidseg.infer.postprocess import PostprocessConfig
from covidseg.infer.spec import InferenceSpec, SliceSkipConfig, check_class_names


def test_round_trip_through_json():
    spec = InferenceSpec(
        class_names=("background", "opacity"),
        preprocess=PreprocessConfig(window=(-1100.0, 100.0), slice_size=(256, 320)),
        postprocess=PostprocessConfig(opening_mm=1.5, lung_mask_source="hu"),
        in_channels=3,
        precision="bf16",
        skip_empty_slices=SliceSkipConfig(enabled=True, margin_mm=7.5),
    )
    again = InferenceSpec.from_dict(json.loads(json.dumps(spec.to_dict())))
    assert again == spec
    assert again.opacity_index == 1 and not again.has_lung_class


@pytest.mark.parametrize(
    ("data", "match"),
    [
        ({"precision": "fp8"}, "precision"),
        ({"in_channels": 0}, "in_channels"),
        ({"resize_back_mode": "area"}, "resize_back_mode"),
        ({"version": 2}, "version"),
        ({"class_names": ["background", "lung"]}, "opacity"),
        ({"preprocess": {"slice_size": [100, 100]}}, "multiple of 32"),
        ({"postprocess": {"opening": 1}}, "unknown post-processing"),
        ({"skip_empty_slices": {"margin_mm": -1}}, "margin_mm"),
        ({"skip_empty_slices": {"lung_hu": [-500, -900]}}, "lung_hu"),
        ({"batch_size": 4}, "unknown inference spec keys"),
        ({"preprocess": [1, 2]}, "mapping"),
    ],
)
def test_bad_values_are_config_errors(data, match):
    with pytest.raises(ConfigError, match=match):
        InferenceSpec.from_dict(data)


def test_overrides_change_only_what_is_given():
    spec = InferenceSpec()
    assert spec.with_overrides() == spec
    fast = spec.with_overrides(precision="bf16", skip_empty_slices=True, postprocess={"min_lesion_ml": 0.5})
    assert (fast.precision, fast.skip_empty_slices.enabled, fast.postprocess.min_lesion_ml) == ("bf16", True, 0.5)
    assert fast.skip_empty_slices.margin_mm == spec.skip_empty_slices.margin_mm
    assert fast.preprocess == spec.preprocess


def test_from_checkpoint_entries():
    ckpt = {
        "model_config": {"class_names": ["background", "lung", "opacity"], "in_channels": 1},
        "class_names": ["background", "lung", "opacity"],
        "preprocessing": {"window": [-1000.0, 0.0], "slice_size": [128, 128], "resize_mode": "bilinear"},
    }
    spec = InferenceSpec.from_checkpoint(ckpt)
    assert spec.preprocess.slice_size == (128, 128) and spec.postprocess == PostprocessConfig()
    assert InferenceSpec.from_checkpoint({**ckpt, "preprocess": ckpt["preprocessing"]}) == spec
    stored = InferenceSpec(precision="bf16").to_dict()
    assert InferenceSpec.from_checkpoint({**ckpt, "inference_spec": stored}).precision == "bf16"
    defaults = InferenceSpec.from_checkpoint({"model_config": {"class_names": ["background", "lung", "opacity"]}})
    assert defaults.preprocess == PreprocessConfig()


@pytest.mark.parametrize(
    ("ckpt", "match"),
    [
        ({}, "no model_config"),
        ({"model_config": {"class_names": ["background", "liver"]}}, "lung-opacity model"),
        ({"model_config": {"class_names": ["background", "opacity"]}, "class_names": ["a", "b"]}, "disagree"),
        ({"model_config": {"class_names": ["background", "opacity"]}, "preprocessing": {"size": 3}}, "invalid"),
        (
            {"model_config": {"class_names": ["background", "opacity"]}, "inference_spec": InferenceSpec().to_dict()},
            "invalid",
        ),
    ],
)
def test_from_checkpoint_refusals(ckpt, match):
    with pytest.raises(InputError, match=match):
        InferenceSpec.from_checkpoint(ckpt, "m.pt")


def test_class_name_rules():
    assert check_class_names(["Background", "Opacity"]) == ("background", "opacity")
    for bad in (["background", "opacity", "opacity"], ["opacity"], ["background", "lung", "opacity", "vessel"]):
        with pytest.raises(InputError):
            check_class_names(bad)
