from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from covidseg.config import load_config
from covidseg.train.prepare import check_classes
from covidseg.transfer.penalties import PENALTIES
from covidseg.transfer.strategies import STRATEGIES

CONFIGS = Path(__file__).parents[2] / "configs"
SCHEMES = sorted((CONFIGS / "schemes").glob("*.yaml"))
DATASETS = sorted((CONFIGS / "datasets").glob("*.yaml"))


def test_presets_cover_every_registry_entry() -> None:
    penalties = {yaml.safe_load(p.read_text())["regularization"]["name"] for p in SCHEMES}
    strategies = {yaml.safe_load(p.read_text())["strategy"]["name"] for p in SCHEMES}
    assert set(PENALTIES) | {"none"} <= penalties
    assert set(STRATEGIES) <= strategies
    assert {"none", "l2", "l2sp", "l2sp_layerwise_20_1.5", "l2sp_layerwise_15_2.0", "lp_ft", "ptr"} <= {
        p.stem for p in SCHEMES
    }
    assert {p.stem for p in DATASETS} == {"phantom", "medseg", "covid20", "volumes"}


@pytest.mark.parametrize("dataset", DATASETS, ids=lambda p: p.stem)
@pytest.mark.parametrize("scheme", SCHEMES, ids=lambda p: p.stem)
def test_every_preset_pair_validates(dataset: Path, scheme: Path) -> None:
    config = load_config([dataset, scheme], ["source.path=/models/densenet121.pth"])
    assert check_classes(config) == tuple(config.model.class_names)


def test_paper_schedule_preset() -> None:
    config = load_config([CONFIGS / "schemes" / "l2sp_layerwise_20_1.5.yaml"], ["source.path=s.pt"])
    assert config.regularization.params()["schedule"] == {"name": "log", "lambda0": 20.0, "alpha": 1.5}


def test_scheme_without_source_is_refused_with_a_hint() -> None:
    from covidseg.errors import ConfigError

    with pytest.raises(ConfigError, match=r"set source\.path"):
        load_config([CONFIGS / "schemes" / "l2sp.yaml"])
