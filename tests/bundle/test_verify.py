"""MONAI's own bundle checks pass on an exported bundle, offline, and catch broken metadata."""

from __future__ import annotations

import json
import shutil

import pytest

from covidseg.bundle.metadata import LOCAL_SCHEMA
from covidseg.bundle.verify import verify_bundle, verify_metadata_offline
from covidseg.errors import InputError
from tests.bundle.helpers import no_covidseg_env, run


def test_verify_metadata_offline_with_the_monai_cli(exported, tmp_path):
    prefix, env = no_covidseg_env(tmp_path)
    shipped = __import__("covidseg.bundle", fromlist=["x"]).__path__[0] + "/" + LOCAL_SCHEMA
    for schema in ("docs/metadata_schema.json", shipped):
        result = run(
            [
                *prefix,
                "-m",
                "monai.bundle",
                "verify_metadata",
                "--meta_file",
                "configs/metadata.json",
                "--filepath",
                schema,
            ],
            env=env,
            cwd=exported.path,
        )
        assert result.returncode == 0, result.stderr[-2000:]
        assert "metadata is verified with no error" in result.stdout + result.stderr


def test_verify_net_in_out_with_the_monai_cli(exported, tmp_path):
    prefix, env = no_covidseg_env(tmp_path)
    result = run(
        [
            *prefix,
            "-m",
            "monai.bundle",
            "verify_net_in_out",
            "network_def",
            "--meta_file",
            "configs/metadata.json",
            "--config_file",
            "configs/inference.json",
            "--device",
            "cpu",
        ],
        env=env,
        cwd=exported.path,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "data shape of network is verified with no error" in result.stdout + result.stderr


def test_verify_bundle_in_process(exported):
    assert verify_bundle(exported.path) == ["verify_metadata", "verify_net_in_out"]


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda m: m.pop("task"), "task"),
        (lambda m: m["network_data_format"]["inputs"]["image"].pop("num_channels"), "num_channels"),
        (lambda m: m.__setitem__("version", "one"), "'one' does not match"),
    ],
)
def test_broken_metadata_fails_the_offline_schema(exported, tmp_path, edit, message):
    copy = tmp_path / "bundle"
    shutil.copytree(exported.path / "configs", copy / "configs")
    shutil.copytree(exported.path / "docs", copy / "docs")
    meta_file = copy / "configs" / "metadata.json"
    meta = json.loads(meta_file.read_text())
    edit(meta)
    meta_file.write_text(json.dumps(meta))
    with pytest.raises(InputError, match="fails the metadata schema") as info:
        verify_metadata_offline(copy)
    assert message in str(info.value)
