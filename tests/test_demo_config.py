"""The demo recipe: configs/demo/*.yaml merged, validated by the same config classes the commands use."""

import pytest

from covidseg.config import load_config
from covidseg.demo_config import CONFIG_DIR, DEFAULT_RECIPE, load_demo_config
from covidseg.errors import ConfigError


def test_default_recipe_is_the_papers_layerwise_l2sp_from_the_scheme_preset():
    plan = load_demo_config()
    preset = load_config([CONFIG_DIR.parent / "schemes" / "l2sp_layerwise_20_1.5.yaml"], ["source.path=x.pt"])
    assert plan.finetune.regularization == preset.regularization
    assert plan.finetune.strategy == preset.strategy
    assert plan.files == (DEFAULT_RECIPE,)
    assert plan.heldout.seed not in plan.dataset.seeds
    assert str(plan.source_path) == "runs/pretrain/source.pt" and str(plan.data_root) == "data"
    assert plan.finetune.preprocess.slice_size == plan.pretrain.preprocess.slice_size == (128, 128)


def test_quick_recipe_overrides_sizes_and_keeps_the_scheme():
    full, quick = load_demo_config(), load_demo_config(quick=True)
    assert quick.dataset.shape == (8, 64, 64) and quick.finetune.preprocess.slice_size == (64, 64)
    assert quick.finetune.train.steps_per_epoch == 2 and full.finetune.train.steps_per_epoch is None
    assert quick.finetune.regularization == full.finetune.regularization
    assert [t.name for t in quick.pretrain.tasks] == ["phantom"]


def test_own_recipe_file_and_presets_relative_to_it(tmp_path):
    scheme = tmp_path / "schemes" / "mine.yaml"
    scheme.parent.mkdir()
    scheme.write_text("regularization: {name: l2sp, sp_lambda: 0.5, decoder_lambda: 0.0}\n")
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("finetune_presets: [schemes/mine.yaml]\nfinetune: {train: {epochs: 2}}\n")
    plan = load_demo_config(files=[recipe])
    assert plan.finetune.regularization.name == "l2sp" and plan.finetune.regularization.params()["sp_lambda"] == 0.5
    assert plan.finetune.train.epochs == 2 and plan.finetune.train.batch_size == 4  # the rest from demo.yaml
    assert plan.files[-1] == recipe


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["dataset.n_case=3"], "dataset.n_case: unknown key"),
        (["dataset.n_cases=2"], "dataset.n_cases"),
        (["dataset.n_lesions=[5, 2]"], "dataset.n_lesions must be a [min, max] range"),
        (["finetune.data.layout=phantom"], "finetune.data must be {layout: volumes"),
        (["pretrain.train.epochs=0"], "invalid pretrain config: train.epochs"),
        (["finetune.regularization.sp_lambda=1"], "has no parameter(s) ['sp_lambda']"),
        (["predict.precision=fp16"], "predict.precision"),
    ],
)
def test_invalid_recipes_are_one_line_errors(overrides, message):
    with pytest.raises(ConfigError) as err:
        load_demo_config(overrides=overrides)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_missing_recipe_file_says_what_to_do(tmp_path):
    with pytest.raises(ConfigError, match="does not exist; check the path given to --config"):
        load_demo_config(files=[tmp_path / "nope.yaml"])
