"""The MedSeg preset trains on the real 2-D slices in ../shared/data (skipped where the folder is absent)."""

from __future__ import annotations

from pathlib import Path

import pytest

from covidseg.config import load_config
from covidseg.train.trainer import train
from tests.train.synth import TINY_DECODER

REPO = Path(__file__).parents[2]
MEDSEG = REPO.parent / "shared" / "data" / "medseg-slices"

pytestmark = pytest.mark.skipif(not MEDSEG.is_dir(), reason=f"real data not present at {MEDSEG}")


def test_medseg_preset_trains_one_epoch(tmp_path: Path) -> None:
    config = load_config(
        [REPO / "configs" / "datasets" / "medseg.yaml", REPO / "configs" / "schemes" / "none.yaml"],
        [
            f"data.root={MEDSEG}",
            f"output.root={tmp_path}",
            "output.name=medseg",
            "output.tensorboard=false",
            "preprocess.slice_size=[64, 64]",
            f"model.decoder_channels={TINY_DECODER}",
            "train.epochs=1",
            "train.steps_per_epoch=2",
            "train.batch_size=4",
            "train.device=cpu",
        ],
    )
    result = train(config)
    row = result.history[0]
    assert set(row) >= {"val_dice_opacity", "val_dice_mean"} and "val_dice_lung" not in row
    assert len(result.run_dir.joinpath("splits.json").read_text()) > 0
    assert 0.0 <= result.best_metric <= 1.0
