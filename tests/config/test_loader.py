import pytest
import yaml

from covidseg.config import RunConfig, apply_overrides, load_config, save_config
from covidseg.errors import ConfigError


def _write(path, data):
    path.write_text(yaml.safe_dump(data))
    return path


def test_defaults_are_the_paper_preprocessing():
    cfg = load_config()
    assert cfg.preprocess.window == (-1000.0, 0.0)
    assert cfg.preprocess.slice_size == (384, 384)
    assert cfg.model.class_names == ("background", "lung", "opacity")


def test_files_merge_in_order_and_overrides_win(tmp_path):
    a = _write(tmp_path / "a.yaml", {"train": {"epochs": 3, "batch_size": 4}, "data": {"layout": "phantom"}})
    b = _write(tmp_path / "b.yaml", {"train": {"epochs": 7}})
    cfg = load_config([a, b], ["train.batch_size=2", "optim.lr=3e-4"])
    assert (cfg.train.epochs, cfg.train.batch_size, cfg.optim.lr) == (7, 2, 3e-4)


def test_unknown_key_names_key_and_allowed_keys():
    with pytest.raises(ConfigError) as err:
        load_config(overrides=["train.epoch=2"])
    message = str(err.value)
    assert "'train.epoch'" in message and "epochs" in message and "\n" not in message


def test_bad_literal_lists_allowed_values():
    with pytest.raises(ConfigError, match=r"train\.precision.*'fp32'.*'bf16'"):
        load_config(overrides=["train.precision=fp64"])


def test_unknown_section():
    with pytest.raises(ConfigError, match="unknown key 'trian'"):
        load_config(overrides=["trian.epochs=2"])


def test_penalty_params_checked_against_registry():
    base = ["source.path=/tmp/src.pt"]
    with pytest.raises(ConfigError, match=r"unknown regularization 'l2spp'.*'l2sp_layerwise'"):
        load_config(overrides=[*base, "regularization.name=l2spp"])
    with pytest.raises(ConfigError, match=r"has no parameter\(s\) \['lambda0'\]"):
        load_config(overrides=[*base, "regularization.name=l2sp", "regularization.lambda0=3"])
    with pytest.raises(ConfigError, match="needs"):
        load_config(overrides=[*base, "regularization.name=l2sp", "regularization.sp_lambda=3"])
    cfg = load_config(
        overrides=[
            *base,
            "regularization.name=l2sp_layerwise",
            "regularization.schedule={name: log, lambda0: 20, alpha: 1.5}",
            "regularization.decoder_lambda=0.01",
        ]
    )
    assert cfg.regularization.params() == {
        "schedule": {"name": "log", "lambda0": 20, "alpha": 1.5},
        "decoder_lambda": 0.01,
    }


def test_sp_penalty_without_source_is_refused():
    with pytest.raises(ConfigError, match=r"set source\.path"):
        load_config(
            overrides=["regularization.name=l2sp", "regularization.sp_lambda=3", "regularization.decoder_lambda=0"]
        )


def test_strategy_params_checked():
    with pytest.raises(ConfigError, match="unknown strategy 'lpft'"):
        load_config(overrides=["strategy.name=lpft"])
    cfg = load_config(overrides=["strategy.name=lp_ft", "strategy.lp_epochs=2"])
    assert cfg.strategy.params() == {"lp_epochs": 2}


@pytest.mark.parametrize(
    "override",
    [
        "preprocess.slice_size=[100, 100]",
        "preprocess.window=[0, -1000]",
        "model.class_names=[background]",
        "data.layout=volumes",  # needs data.root
        "data.fold=1",  # needs data.folds
        "train.device=gpu",
        "optim.lr=-1",
        "loss.class_weights=[1.0, 2.0]",  # three classes
    ],
)
def test_invalid_values_are_one_line_config_errors(override):
    with pytest.raises(ConfigError) as err:
        load_config(overrides=[override])
    assert "\n" not in str(err.value)


def test_resolved_config_round_trips(tmp_path):
    cfg = load_config(overrides=["train.epochs=4", "preprocess.slice_size=[128, 96]", "strategy.name=lp_ft"])
    path = save_config(cfg, tmp_path / "config.yaml")
    again = load_config(base=yaml.safe_load(path.read_text()))
    assert again == cfg
    assert isinstance(again, RunConfig)


def test_yaml_is_parsed_safely(tmp_path):
    bad = tmp_path / "evil.yaml"
    bad.write_text("train: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config([bad])


def test_missing_file_and_bad_override_syntax(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config([tmp_path / "nope.yaml"])
    with pytest.raises(ConfigError, match=r"section\.key=value"):
        apply_overrides({}, ["epochs"])


def test_augment_keys_are_checked_when_the_config_loads():
    with pytest.raises(ConfigError, match=r"augment\.rotate: unknown key; allowed keys: \[.*'rotate_degrees'") as info:
        load_config(overrides=["augment.rotate=5"])
    assert str(info.value).count("invalid config") == 1
    assert load_config(overrides=["augment.rotate_degrees=5"]).augment == {"rotate_degrees": 5}


def test_fisher_tensor_is_not_a_config_key():
    base = ["source.path=/s.pt", "regularization.name=l2sp_fisher", "regularization.schedule=3"]
    base.append("regularization.decoder_lambda=0.0")
    assert load_config(overrides=base).regularization.params() == {"schedule": 3, "decoder_lambda": 0.0}
    with pytest.raises(ConfigError, match=r"has no parameter\(s\) \['fisher'\]"):
        load_config(overrides=[*base, "regularization.fisher=3"])
