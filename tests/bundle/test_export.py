"""export_bundle: layout, metadata and configs generated from the InferenceSpec, TorchScript with embedded configs,
refusal of checkpoints it cannot describe, overwrite and atomicity."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from monai.data import load_net_with_metadata

import covidseg.bundle.export as export_module
from covidseg.bundle.export import export_bundle
from covidseg.bundle.inference_config import inference_config
from covidseg.errors import ConfigError, InputError, OutputExistsError
from covidseg.infer.spec import InferenceSpec
from covidseg.model import UNetConfig, load_checkpoint, save_checkpoint
from tests.bundle.helpers import write_checkpoint

EXPECTED_FILES = {
    "LICENSE",
    "configs/inference.json",
    "configs/metadata.json",
    "configs/train.json",
    "docs/README.md",
    "docs/license.txt",
    "docs/metadata_schema.json",
    "models/model.pt",
    "models/model.ts",
    "scripts/__init__.py",
    "scripts/body.py",
    "scripts/errors.py",
    "scripts/inference.py",
    "scripts/lungmask.py",
    "scripts/masks.py",
    "scripts/postprocess.py",
    "scripts/transforms.py",
}
MANDATORY = (
    "version",
    "changelog",
    "monai_version",
    "pytorch_version",
    "numpy_version",
    "required_packages_version",
    "task",
    "description",
    "authors",
    "copyright",
    "network_data_format",
    "schema",
)


def _meta(bundle: Path) -> dict:
    return json.loads((bundle / "configs" / "metadata.json").read_text())


def _leftovers(parent: Path, name: str) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if name in p.name)


def test_layout(exported):
    assert set(exported.files) == EXPECTED_FILES
    assert {str(p.relative_to(exported.path)) for p in exported.path.rglob("*") if p.is_file()} == EXPECTED_FILES


def test_metadata_comes_from_the_checkpoint(exported, checkpoint):
    meta = _meta(exported.path)
    assert all(meta.get(key) not in (None, "", {}) for key in MANDATORY)
    spec = InferenceSpec.from_checkpoint(load_checkpoint(checkpoint))
    assert meta["covidseg"]["inference_spec"] == spec.to_dict()
    image = meta["network_data_format"]["inputs"]["image"]
    assert (image["format"], image["modality"], image["num_channels"]) == ("hounsfield", "CT", 1)
    assert image["spatial_shape"] == list(spec.preprocess.slice_size) == [64, 64]
    assert image["value_range"] == [0, 1] and "[-1000, 0]" in image["channel_def"]["0"]
    pred = meta["network_data_format"]["outputs"]["pred"]
    assert pred["num_channels"] == 3
    assert pred["channel_def"] == {"0": "background", "1": "lung", "2": "opacity"}
    assert meta["eval_metrics"] == {"validation_dice_opacity": 0.8125}
    assert meta["covidseg"]["checkpoint"] == "best.pt" and len(meta["covidseg"]["checkpoint_sha256"]) == 64
    assert meta["required_packages_version"].keys() == {"nibabel", "scipy", "scikit-image"}


def test_inference_config_is_generated_from_the_spec(exported, checkpoint):
    config = json.loads((exported.path / "configs" / "inference.json").read_text())
    spec = InferenceSpec.from_checkpoint(load_checkpoint(checkpoint))
    assert config == inference_config(spec)
    post = config["postprocessing"]["transforms"][3]
    assert post["config"] == spec.postprocess.to_dict() and post["class_names"] == list(spec.class_names)


def test_readme_and_license(exported):
    readme = (exported.path / "docs" / "README.md").read_text()
    for text in ("0.8125", "l2sp", "lambda0", "monai.bundle run", "verify_metadata", "Not a medical device", "uint8"):
        assert text in readme, text
    assert "Apache" in (exported.path / "LICENSE").read_text()
    train = json.loads((exported.path / "configs" / "train.json").read_text())
    assert train["training_state"]["best_metric"] == 0.8125


def test_torchscript_embeds_the_configs_and_reproduces_the_model(exported, fitted_model):
    net, meta, extra = load_net_with_metadata(
        str(exported.path / "models" / "model.ts"), more_extra_files=("inference.json",)
    )
    assert meta == _meta(exported.path)
    assert json.loads(extra["inference.json"]) == json.loads((exported.path / "configs/inference.json").read_text())
    x = torch.rand(2, 1, 64, 64, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        torch.testing.assert_close(net(x), fitted_model(x))
    state = torch.load(exported.path / "models" / "model.pt", weights_only=True)
    assert state.keys() == fitted_model.state_dict().keys()
    assert all(torch.equal(state[k], v) for k, v in fitted_model.state_dict().items())


@pytest.mark.parametrize(
    ("drop", "message"),
    [("preprocessing", "records no preprocessing"), ("class_names", "records no class_names")],
)
def test_refuses_a_checkpoint_it_cannot_describe(tmp_path, checkpoint, drop, message):
    data = torch.load(checkpoint, weights_only=True)
    data.pop(drop)
    broken = tmp_path / "broken.pt"
    torch.save(data, broken)
    with pytest.raises(InputError, match=message) as info:
        export_bundle(broken, tmp_path / "bundle")
    assert "\n" not in str(info.value)
    assert _leftovers(tmp_path, "bundle") == []


def test_refuses_a_file_that_is_not_a_checkpoint(tmp_path):
    weights = tmp_path / "weights.pt"
    torch.save({"conv.weight": torch.ones(1)}, weights)
    with pytest.raises(InputError, match="not a covidseg checkpoint"):
        export_bundle(weights, tmp_path / "bundle")
    assert _leftovers(tmp_path, "bundle") == []


def test_refuses_a_recipe_monai_cannot_reproduce(tmp_path, fitted_model):
    spec = InferenceSpec(preprocess={"slice_size": [64, 64], "resize_mode": "bicubic"})
    path = write_checkpoint(tmp_path / "bicubic.pt", fitted_model, inference_spec=spec.to_dict())
    with pytest.raises(ConfigError, match="bicubic"):
        export_bundle(path, tmp_path / "bundle")
    assert _leftovers(tmp_path, "bundle") == []


def test_existing_output_needs_overwrite(tmp_path, checkpoint):
    target = tmp_path / "bundle"
    target.mkdir()
    (target / "keep.txt").write_text("mine")
    with pytest.raises(OutputExistsError, match="--overwrite"):
        export_bundle(checkpoint, target)
    assert (target / "keep.txt").read_text() == "mine"


def test_overwrite_replaces_the_whole_folder_and_failures_leave_nothing(tmp_path, checkpoint, monkeypatch):
    target = tmp_path / "bundle"
    target.mkdir()
    (target / "stale.txt").write_text("old")

    def fail(_folder):
        raise OSError("disk full")

    with monkeypatch.context() as patch:
        patch.setattr(export_module, "write_scripts", fail)
        with pytest.raises(OSError, match="disk full"):
            export_bundle(checkpoint, target, overwrite=True)
    assert _leftovers(tmp_path, "bundle") == ["bundle"] and (target / "stale.txt").exists()
    result = export_bundle(checkpoint, target, overwrite=True)
    assert not (target / "stale.txt").exists()
    assert set(result.files) == EXPECTED_FILES
    assert _leftovers(tmp_path, "bundle") == ["bundle"]


def test_reduced_precision_and_fast_path_are_noted(tmp_path, fitted_model):
    spec = InferenceSpec(preprocess={"slice_size": [64, 64]}, precision="bf16", skip_empty_slices={"enabled": True})
    path = write_checkpoint(tmp_path / "fast.pt", fitted_model, inference_spec=spec.to_dict())
    result = export_bundle(path, tmp_path / "bundle", version="1.2.3", name="fast-model")
    assert result.spec.precision == "fp32" and not result.spec.skip_empty_slices.enabled
    assert len(result.notes) == 2
    meta = _meta(result.path)
    assert meta["covidseg"]["notes"] == result.notes
    assert (meta["version"], meta["name"]) == ("1.2.3", "fast-model")


@pytest.mark.parametrize(("kwargs", "message"), [({"version": "1.2"}, "major.minor.patch"), ({"name": "a b"}, "name")])
def test_bad_name_or_version(tmp_path, checkpoint, kwargs, message):
    with pytest.raises(InputError, match=message):
        export_bundle(checkpoint, tmp_path / "bundle", **kwargs)


def test_model_without_lung_class(tmp_path):
    config = UNetConfig(class_names=("background", "opacity"), decoder_channels=(8, 8, 8, 8, 8))
    from covidseg.model import DenseUNet

    path = save_checkpoint(
        tmp_path / "two.pt",
        DenseUNet(config).eval(),
        model_config=config,
        extra={"class_names": ["background", "opacity"], "preprocessing": {"slice_size": [32, 32]}},
    )
    result = export_bundle(path, tmp_path / "bundle")
    meta = _meta(result.path)
    assert meta["network_data_format"]["outputs"]["pred"]["channel_def"] == {"0": "background", "1": "opacity"}
    assert "Hounsfield units" in meta["pred_classes"]
