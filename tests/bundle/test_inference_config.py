"""inference.json from the InferenceSpec: values, refusals, and the equivalence of each MONAI step with covidseg's.

The orientation: covidseg's canonical (z, y, x) array has x toward L, y toward P, z toward S. MONAI's
Orientationd(axcodes="PLS") gives (y, x, z) arrays, whose axial slices [:, :, k] are covidseg's hu[k] with the
same rows and columns. "LPS" would give (x, y, z): the same voxels, but every slice transposed for the 2-D
network. Both facts are checked below on files stored in several orientations.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser
from monai.data import MetaTensor
from monai.transforms import Compose, EnsureChannelFirstd, Invertd, LoadImaged, Orientationd

from covidseg.bundle.bundle_scripts.transforms import CANONICAL_FROM_WORKING
from covidseg.bundle.inference_config import bundle_spec, inference_config
from covidseg.data.preprocess import PreprocessConfig, preprocess_slices, resize_to_native
from covidseg.errors import ConfigError
from covidseg.infer.postprocess import PostprocessConfig
from covidseg.infer.spec import InferenceSpec
from covidseg.io import load_ct
from tests.bundle.helpers import write_scans


def _transform(config: dict, name: str) -> dict:
    return next(t for t in config["preprocessing"]["transforms"] if isinstance(t, dict) and t["_target_"] == name)


def test_values_follow_the_spec():
    spec = InferenceSpec(
        class_names=("background", "opacity"),
        in_channels=3,
        preprocess=PreprocessConfig(window=(-1200.0, 200.0), slice_size=(96, 64)),
        postprocess=PostprocessConfig(lung_components=1, opening_mm=1.5, min_lesion_ml=0.2),
    )
    config = inference_config(spec, sw_batch_size=3)
    scale = _transform(config, "ScaleIntensityRanged")
    assert (scale["a_min"], scale["a_max"], scale["b_min"], scale["b_max"], scale["clip"]) == (-1200, 200, 0, 1, True)
    assert config["resize"]["spatial_size"] == [96, 64, -1] and config["resize"]["mode"] == "trilinear"
    assert _transform(config, "RepeatChanneld")["repeats"] == 3
    assert config["inferer"] == {
        "_target_": "SliceInferer",
        "roi_size": [96, 64],
        "spatial_dim": 2,
        "sw_batch_size": 3,
        "progress": False,
    }
    post = config["postprocessing"]["transforms"][3]
    assert post["class_names"] == ["background", "opacity"]
    assert PostprocessConfig.from_dict(post["config"]) == spec.postprocess


def test_default_spec_has_no_channel_repeat_and_parses():
    config = inference_config(InferenceSpec())
    assert not any(
        isinstance(t, dict) and t["_target_"] == "RepeatChanneld" for t in config["preprocessing"]["transforms"]
    )
    parser = ConfigParser(config)
    assert isinstance(parser.get_parsed_content("preprocessing"), Compose)


@pytest.mark.parametrize(
    ("forward", "back", "expected"),
    [
        ("bilinear", "bilinear", ("trilinear", False)),
        ("nearest", "nearest", ("nearest", True)),
        ("area", "nearest", ("area", True)),
        ("bilinear", "nearest", ("trilinear", True)),
    ],
)
def test_resize_modes(forward, back, expected):
    spec = InferenceSpec(preprocess=PreprocessConfig(resize_mode=forward), resize_back_mode=back)
    config = inference_config(spec)
    invert = config["postprocessing"]["transforms"][1]
    assert (config["resize"]["mode"], invert["nearest_interp"]) == expected


@pytest.mark.parametrize(("forward", "back"), [("bicubic", "bilinear"), ("area", "bilinear")])
def test_modes_without_a_monai_equivalent_are_refused(forward, back):
    with pytest.raises(ConfigError, match="resize"):
        inference_config(InferenceSpec(preprocess=PreprocessConfig(resize_mode=forward), resize_back_mode=back))


def test_reduced_precision_needs_bundle_spec():
    with pytest.raises(ConfigError, match="bundle_spec"):
        inference_config(InferenceSpec(precision="bf16"))
    spec, notes = bundle_spec(InferenceSpec(precision="bf16", skip_empty_slices={"enabled": True}))
    assert inference_config(spec)["orientation"]["axcodes"] == "PLS" and len(notes) == 2


def _monai_array(path, axcodes: str) -> np.ndarray:
    load = Compose(
        [
            LoadImaged("image", reader="NibabelReader", image_only=True),
            EnsureChannelFirstd("image"),
            Orientationd("image", axcodes=axcodes, labels=(("L", "R"), ("P", "A"), ("I", "S"))),
        ]
    )
    return load({"image": str(path)})["image"]


@pytest.mark.parametrize("codes", ["RAS", "LPS", "PSL", "ASR", "SLA"])
def test_pls_orientation_is_covidseg_canonical(tmp_path, codes):
    path = write_scans(tmp_path, (codes,))[codes]
    volume = load_ct(path)
    working = _monai_array(path, "PLS")
    np.testing.assert_array_equal(np.transpose(working.numpy()[0], CANONICAL_FROM_WORKING), volume.hu)
    spacing = np.linalg.norm(working.affine.numpy()[:3, :3], axis=0)
    np.testing.assert_allclose(spacing[[2, 0, 1]], volume.spacing)
    transposed = _monai_array(path, "LPS").numpy()[0]  # (x, y, z): the slices the network must NOT get
    np.testing.assert_array_equal(transposed, np.transpose(working.numpy()[0], (1, 0, 2)))
    assert not np.array_equal(transposed[:, :, 8], volume.hu[8])


def test_window_and_slice_resize_equal_covidseg(tmp_path):
    path = write_scans(tmp_path, ("RAS",))["RAS"]
    spec = InferenceSpec(preprocess=PreprocessConfig(slice_size=(64, 64)))
    parser = ConfigParser(inference_config(spec))
    parser["datalist"] = [str(path)]
    image = parser.get_parsed_content("dataset")[0]["image"]  # (1, y, x, z) at 64 x 64
    ours = preprocess_slices(load_ct(path).hu, spec.preprocess)  # (z, 1, 64, 64)
    torch.testing.assert_close(image.as_tensor().permute(3, 0, 1, 2), ours, atol=1e-6, rtol=0)


def test_resize_back_equals_covidseg(tmp_path):
    path = write_scans(tmp_path, ("PSL",))["PSL"]
    spec = InferenceSpec(preprocess=PreprocessConfig(slice_size=(64, 64)))
    parser = ConfigParser(inference_config(spec))
    parser["datalist"] = [str(path)]
    item = parser.get_parsed_content("dataset")[0]
    probs = torch.rand(3, 64, 64, item["image"].shape[-1], generator=torch.Generator().manual_seed(0)).softmax(0)
    step = parser["postprocessing"]["transforms"][1]  # the Invertd of the resize, as configured
    invert = Invertd("pred", transform=parser.get_parsed_content("resize"), orig_keys="image", nearest_interp=False)
    assert (step["transform"], step["orig_keys"], step["nearest_interp"]) == ("@resize", "image", False)
    back = invert({**item, "pred": MetaTensor(probs)})[
        "pred"
    ]  # Activationsd makes the MetaTensor in the bundle  # (3, y, x, z) at the native slice size
    ours = resize_to_native(probs.permute(3, 0, 1, 2), tuple(item["hu"].shape[1:3]), "bilinear")
    torch.testing.assert_close(torch.as_tensor(back).permute(3, 0, 1, 2), ours, atol=1e-6, rtol=0)
