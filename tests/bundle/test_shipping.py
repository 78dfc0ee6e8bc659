"""The bundle's scripts/ package: covidseg's own post-processing, runnable without covidseg, equal to covidseg."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from covidseg.bundle.bundle_scripts.transforms import WORKING_FROM_CANONICAL, LungOpacityPostprocessd
from covidseg.bundle.shipping import SHIPPED_MODULES, rewrite_imports, shipped_sources, write_scripts
from covidseg.errors import ConfigError
from covidseg.infer.postprocess import PostprocessConfig, postprocess
from tests.bundle.helpers import no_covidseg_env, run
from tests.infer.analytic import toy_chest

SPACING = (2.5, 0.8, 0.8)


def test_rewrite_imports():
    source = "import numpy as np\nfrom covidseg.errors import InputError\n    from covidseg.infer.lungmask import (x,\n"
    assert (
        rewrite_imports(source) == "import numpy as np\nfrom .errors import InputError\n    from .lungmask import (x,\n"
    )
    with pytest.raises(ConfigError, match=r"covidseg\.io"):
        rewrite_imports("from covidseg.io.load import load_ct\n", "mod")
    with pytest.raises(ConfigError, match="still imports covidseg"):
        rewrite_imports("import covidseg.infer.masks\n", "mod")


def test_shipped_sources_do_not_import_covidseg():
    sources = shipped_sources()
    assert set(sources) == {f"{name}.py" for name in SHIPPED_MODULES}
    for name, text in sources.items():
        assert not re.search(r"^\s*(from|import)\s+covidseg", text, re.MULTILINE), name
        compile(text, name, "exec")


def test_scripts_import_and_run_without_covidseg(tmp_path):
    write_scripts(tmp_path)
    prefix, env = no_covidseg_env(tmp_path)
    code = (
        "import numpy as np, scripts.transforms as t, scripts.postprocess as p\n"
        "labels = np.zeros((4, 20, 20), np.uint8); labels[:, 4:16, 4:16] = 1\n"
        "out = p.postprocess(labels, (2.0, 2.0, 2.0), p.PostprocessConfig(min_lung_component_ml=0.1))\n"
        "print(int(out.sum()), t.LungOpacityPostprocessd.__module__)\n"
    )
    result = run([*prefix, "-c", code], env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [str(4 * 12 * 12), "scripts.transforms"]


def _working(volume: np.ndarray) -> torch.Tensor:
    return torch.as_tensor(np.ascontiguousarray(np.transpose(volume, WORKING_FROM_CANONICAL))[None])


def _pls_affine(spacing=SPACING) -> torch.Tensor:
    sz, sy, sx = spacing
    return torch.tensor([[0, -sx, 0, 10.0], [-sy, 0, 0, 20.0], [0, 0, sz, -5.0], [0, 0, 0, 1.0]], dtype=torch.float64)


@pytest.mark.parametrize("classes", [("background", "lung", "opacity"), ("background", "opacity")])
def test_transform_equals_covidseg_postprocess(classes):
    hu, truth = toy_chest((12, 64, 64), seed=3)
    spacing = (5.0, 2.0, 2.0)  # lungs of about 150 mL: the HU lung mask keeps air spaces from 20 mL
    indices = truth if "lung" in classes else (truth == 2).astype(np.uint8)  # opacity index 1 without lung
    indices = indices.copy()
    indices[0, 0, 0] = classes.index("opacity")  # a speck outside the lungs
    config = PostprocessConfig(min_lung_component_ml=0.5, closing_mm=1.0)
    expected = postprocess(indices, spacing, config, class_names=classes, hu=hu)
    transform = LungOpacityPostprocessd("pred", class_names=classes, config=config.to_dict())
    hu_meta = MetaTensor(_working(hu.astype(np.float32)), affine=_pls_affine(spacing))
    out = transform({"pred": MetaTensor(_working(indices).float()), "hu": hu_meta})["pred"]
    assert isinstance(out, MetaTensor)
    np.testing.assert_array_equal(out.numpy()[0], np.transpose(expected, WORKING_FROM_CANONICAL))
    assert expected[0, 0, 0] == 0 and (expected == 2).sum() > 0


def test_transform_rejects_other_orientations_and_handles_one_slice():
    affine = _pls_affine()
    affine[:, [0, 1]] = affine[:, [1, 0]]  # LPS: transposed slices
    transform = LungOpacityPostprocessd("pred")
    with pytest.raises(ValueError, match="PLS"):
        transform({"pred": torch.zeros(1, 8, 8, 2), "hu": MetaTensor(torch.zeros(1, 8, 8, 2), affine=affine)})
    assert transform.config_for(1).min_lung_component_ml == 0.0
    assert transform.config_for(2).min_lung_component_ml == PostprocessConfig().min_lung_component_ml
