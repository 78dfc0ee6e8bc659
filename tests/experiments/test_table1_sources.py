"""Table 1 sources: the torchvision-layout ImageNet stand-in, pretrain configs, missing files, changed settings."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from covidseg.errors import ConfigError, InputError
from covidseg.experiments.table1_sources import (
    STAND_IN_NAME,
    prepare_sources,
    pretrain_source_config,
    torchvision_densenet121_state,
    write_imagenet_stand_in,
)
from covidseg.experiments.table1_spec import PretrainedSource, Table1Spec
from covidseg.model import DenseUNet, load_torchvision_densenet121

SCHEMES = {"zero": "none.yaml", "fixed": "l2sp.yaml", "layerwise": "lw.yaml"}


def test_stand_in_is_a_full_torchvision_densenet121_that_loads_into_the_encoder(tmp_path: Path) -> None:
    rng_before = torch.random.get_rng_state()
    path = write_imagenet_stand_in(tmp_path / "in.pth", seed=3)
    assert torch.equal(torch.random.get_rng_state(), rng_before)  # the caller's random stream is untouched
    state = torch.load(path, weights_only=True)
    assert all(k.startswith(("features.", "classifier.")) for k in state)
    assert not any(".layers." in k for k in state)  # torchvision names, not MONAI's
    model = DenseUNet()
    report = load_torchvision_densenet121(model, path)
    encoder = [f"encoder.{k}" for k in model.encoder.state_dict()]
    assert sorted(report.loaded) == sorted(encoder)
    assert report.skipped == ("classifier.weight", "classifier.bias")
    loaded = model.state_dict()
    gray = state["features.conv0.weight"].sum(dim=1, keepdim=True)
    assert torch.equal(loaded["encoder.conv0.weight"], gray)
    deep = "denseblock3.denselayer7.{}conv1.weight"
    assert torch.equal(loaded["encoder." + deep.format("layers.")], state["features." + deep.format("")])
    again = torchvision_densenet121_state(seed=3)
    other = torchvision_densenet121_state(seed=4)
    assert torch.equal(again["features.conv0.weight"], state["features.conv0.weight"])
    assert not torch.equal(other["features.conv0.weight"], state["features.conv0.weight"])
    with pytest.raises(Exception, match="already exists"):
        write_imagenet_stand_in(path)


def _pretrain_file(tmp: Path) -> Path:
    path = tmp / "pretrain.yaml"
    path.write_text("tasks: [{name: ph, data: {layout: phantom}}]\ntrain: {epochs: 3}\n")
    return path


def test_pretrain_config_of_a_built_source(tmp_path: Path) -> None:
    source = PretrainedSource(pretrain=[_pretrain_file(tmp_path)], set=["train.epochs=1"])
    plain = pretrain_source_config(source, tmp_path / "out", "medicalnet")
    assert (plain.output.root, plain.output.name) == (tmp_path / "out" / "sources", "pretrain-medicalnet")
    assert plain.train.epochs == 1
    assert plain.init.imagenet is None
    both = pretrain_source_config(source, tmp_path / "out", "imagenet_medicalnet", imagenet=tmp_path / "in.pth")
    assert both.init.imagenet == tmp_path / "in.pth"
    assert both.output.name == "pretrain-imagenet_medicalnet"


def _spec(tmp: Path, **sources: object) -> Table1Spec:
    rows = ["none", *sources]
    return Table1Spec.model_validate(
        {"base": ["b.yaml"], "schemes": SCHEMES, "sources": sources, "grid": {"rows": rows}}
    )


def test_stand_in_is_written_once_and_existing_sources_are_used(tmp_path: Path) -> None:
    given = tmp_path / "medicalnet.pt"
    given.write_bytes(b"x")
    spec = _spec(tmp_path, imagenet={"stand_in": True}, medicalnet={"path": str(given)})
    found = prepare_sources(spec, tmp_path / "out")
    stand_in = tmp_path / "out" / "sources" / STAND_IN_NAME
    assert found == {"none": None, "imagenet": stand_in, "medicalnet": given}
    stamp = stand_in.stat().st_mtime_ns
    assert prepare_sources(spec, tmp_path / "out")["imagenet"] == stand_in
    assert stand_in.stat().st_mtime_ns == stamp
    assert prepare_sources(spec, tmp_path / "out2", rows=["none"]) == {"none": None}
    assert not (tmp_path / "out2").exists()


def test_missing_source_files_fail_before_anything_is_built(tmp_path: Path) -> None:
    spec = _spec(tmp_path, imagenet={"path": str(tmp_path / "missing.pth")})
    with pytest.raises(InputError, match=r"ImageNet file .*missing\.pth does not exist"):
        prepare_sources(spec, tmp_path / "out")
    spec = _spec(
        tmp_path,
        imagenet={"stand_in": True},
        medicalnet={"pretrain": [str(_pretrain_file(tmp_path))]},
        imagenet_medicalnet={"path": str(tmp_path / "gone.pt")},
    )
    with pytest.raises(InputError, match=r"imagenet_medicalnet source .*gone\.pt does not exist"):
        prepare_sources(spec, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_source_folder_built_with_other_settings_is_refused(tmp_path: Path) -> None:
    spec = _spec(tmp_path, medicalnet={"pretrain": [str(_pretrain_file(tmp_path))]})
    run_dir = tmp_path / "out" / "sources" / "pretrain-medicalnet"
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text(yaml.safe_dump({"tasks": [], "train": {"epochs": 99}}))
    with pytest.raises(ConfigError, match="pre-trained with other settings than this preset asks for"):
        prepare_sources(spec, tmp_path / "out")


def test_run_stops_at_a_missing_source_before_any_training(tmp_path: Path) -> None:
    from covidseg.experiments.table1 import run_table1

    preset = Path(__file__).resolve().parents[2] / "configs" / "experiments" / "table1_phantom.yaml"
    missing = tmp_path / "densenet121.pth"
    overrides = [f"sources.imagenet={{path: {missing}}}", "grid.cells=[imagenet__l2sp-5]"]
    with pytest.raises(InputError, match=r"ImageNet file .*densenet121\.pth does not exist"):
        run_table1(preset, tmp_path / "out", overrides=overrides)
    assert not (tmp_path / "out").exists()
