from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from covidseg.bundle.export import BundleExport, export_bundle
from covidseg.model import DenseUNet
from tests.bundle.helpers import fitted_unet, no_covidseg_env, run, write_checkpoint, write_scans


@pytest.fixture(scope="session", autouse=True)
def one_torch_thread() -> Iterator[None]:
    """One torch thread for these small networks: OpenMP threads wait on each other on a busy 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def fitted_model() -> DenseUNet:
    """A DenseUNet with decisive, meaningful outputs on toy chests (see tests/bundle/helpers.py)."""
    with torch.random.fork_rng():
        return fitted_unet()


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory: pytest.TempPathFactory, fitted_model: DenseUNet) -> Path:
    """The fitted model as covidseg train writes best.pt (classes, preprocessing, training state, config)."""
    return write_checkpoint(tmp_path_factory.mktemp("ckpt") / "best.pt", fitted_model)


@pytest.fixture(scope="session")
def exported(tmp_path_factory: pytest.TempPathFactory, checkpoint: Path) -> BundleExport:
    """The bundle of :func:`checkpoint`, exported once for the session (tests must not modify it)."""
    return export_bundle(checkpoint, tmp_path_factory.mktemp("bundles") / "covidseg_lung_opacity")


@pytest.fixture(scope="session")
def scans(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One toy chest stored as RAS (usual NIfTI) and as PSL (permuted axes, flips) NIfTI files."""
    return write_scans(tmp_path_factory.mktemp("scans"), ("RAS", "PSL"))


@pytest.fixture(scope="session")
def bundle_outputs(tmp_path_factory: pytest.TempPathFactory, exported: BundleExport, scans: dict[str, Path]) -> Path:
    """``python -m monai.bundle run`` of the exported bundle over the scans, where covidseg cannot be imported."""
    out = tmp_path_factory.mktemp("bundle_out")
    prefix, env = no_covidseg_env(out)
    folder = next(iter(scans.values())).parent
    result = run(
        [
            *prefix,
            "-m",
            "monai.bundle",
            "run",
            "--config_file",
            "configs/inference.json",
            "--meta_file",
            "configs/metadata.json",
            "--dataset_dir",
            str(folder),
            "--output_dir",
            str(out),
        ],
        env=env,
        cwd=exported.path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return out
