from __future__ import annotations

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from covidseg.data.augment import AugmentConfig, build_train_transform

OFF = {
    "affine_prob": 0.0,
    "flip_lr_prob": 0.0,
    "intensity_scale_prob": 0.0,
    "intensity_shift_prob": 0.0,
    "noise_prob": 0.0,
    "gamma_prob": 0.0,
}


def _item(seed: int = 0, size: int = 64) -> dict[str, object]:
    """A slice with large central label regions (so rotations and scalings keep every class)."""
    yy, xx = np.mgrid[:size, :size] / (size - 1) * 2 - 1
    label = np.zeros((size, size), np.int64)
    label[(yy / 0.6) ** 2 + (xx / 0.7) ** 2 < 1] = 1
    label[(yy / 0.25) ** 2 + (xx / 0.25) ** 2 < 1] = 2
    rng = np.random.default_rng(seed)
    image = np.clip(0.1 + 0.3 * label + rng.normal(0, 0.02, label.shape), 0, 1).astype(np.float32)
    return {"image": torch.from_numpy(image)[None], "label": torch.from_numpy(label), "case_id": "c", "slice_index": 3}


def _run(cfg: AugmentConfig, seed: int, n: int = 6) -> list[dict[str, object]]:
    tf = build_train_transform(cfg, seed=seed)
    return [tf(_item(i)) for i in range(n)]


def test_output_format_and_label_values_preserved() -> None:
    cfg = AugmentConfig(affine_prob=1.0, rotate_degrees=30, scale_range=(0.8, 1.2), elastic=True, elastic_prob=1.0)
    for out in _run(cfg, seed=1):
        label, image = out["label"], out["image"]
        assert isinstance(label, torch.Tensor) and isinstance(image, torch.Tensor)
        assert type(image) is torch.Tensor and type(label) is torch.Tensor  # plain tensors, no MONAI metadata
        assert label.dtype == torch.int64 and label.shape == (64, 64)
        assert image.dtype == torch.float32 and image.shape == (1, 64, 64)
        assert set(torch.unique(label).tolist()) == {0, 1, 2}
        assert (out["case_id"], out["slice_index"]) == ("c", 3)


def test_image_range_plausible() -> None:
    cfg = AugmentConfig(
        **{
            **OFF,
            "intensity_shift_prob": 1,
            "intensity_scale_prob": 1,
            "noise_prob": 1,
            "gamma_prob": 1,
            "noise_std": 0.1,
            "intensity_shift": 0.3,
        }
    )
    images = torch.stack([out["image"] for out in _run(cfg, seed=0, n=10)])  # type: ignore[misc]
    assert float(images.min()) >= 0.0 and float(images.max()) <= 1.0
    raw = torch.stack(
        [build_train_transform(cfg.model_copy(update={"clip": False}), 0)(_item(i))["image"] for i in range(10)]
    )
    assert float(raw.min()) < 0.0 or float(raw.max()) > 1.0  # the clip did something: the test can fail


def test_deterministic_for_a_seed_and_seed_dependent() -> None:
    cfg = AugmentConfig(affine_prob=1.0, noise_prob=1.0)
    first, again, other = _run(cfg, 7), _run(cfg, 7), _run(cfg, 8)
    for a, b in zip(first, again, strict=True):
        torch.testing.assert_close(a["image"], b["image"])
        torch.testing.assert_close(a["label"], b["label"])
    assert any(not torch.equal(a["image"], b["image"]) for a, b in zip(first, other, strict=True))


def test_disabled_is_identity() -> None:
    item = _item()
    tf = build_train_transform(AugmentConfig(enabled=False, affine_prob=1.0), seed=0)
    assert tf(item) is item
    tf.set_random_state(5)  # harmless without transforms


def test_all_probabilities_zero_leave_the_item_unchanged() -> None:
    item = _item()
    out = build_train_transform(AugmentConfig(**OFF), seed=0)(item)
    torch.testing.assert_close(out["image"], item["image"])
    torch.testing.assert_close(out["label"], item["label"])


def test_flip_mirrors_left_right() -> None:
    item = _item()
    item["label"][5:10, 2:6] = 2  # type: ignore[index]  # an asymmetric patch
    out = build_train_transform(AugmentConfig(**{**OFF, "flip_lr_prob": 1.0}), seed=0)(item)
    torch.testing.assert_close(out["image"], item["image"].flip(-1))  # type: ignore[union-attr]
    torch.testing.assert_close(out["label"], item["label"].flip(-1))  # type: ignore[union-attr]


def test_rotation_moves_image_and_label_together() -> None:
    cfg = AugmentConfig(**{**OFF, "affine_prob": 1.0, "rotate_degrees": 45.0, "scale_range": (1.0, 1.0)})
    item = _item()
    item["label"][:, 50:] = 0  # type: ignore[index]
    item["image"] = (item["label"] > 0).to(torch.float32)[None]  # type: ignore[union-attr]
    out = build_train_transform(cfg, seed=3)(item)
    assert not torch.equal(out["label"], item["label"])
    agree = ((out["image"][0] > 0.5) == (out["label"] > 0)).float().mean()
    assert float(agree) > 0.98


def test_unlabelled_items() -> None:
    item = _item()
    del item["label"]
    out = build_train_transform(AugmentConfig(affine_prob=1.0), seed=0)(item)
    assert "label" not in out and out["image"].shape == (1, 64, 64)


@pytest.mark.parametrize(
    "kwargs",
    [{"rotate": 5}, {"flip_lr_prob": 1.5}, {"scale_range": (1.1, 0.9)}, {"gamma_range": (0.0, 1.0)}, {"noise_std": -1}],
)
def test_config_validation(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        AugmentConfig(**kwargs)


def test_config_round_trip() -> None:
    cfg = AugmentConfig(rotate_degrees=5, elastic=True)
    assert AugmentConfig.model_validate(cfg.model_dump()) == cfg
