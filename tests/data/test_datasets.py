from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from covidseg.data.augment import AugmentConfig, build_train_transform
from covidseg.data.cache import CachedCase, SliceCache
from covidseg.data.datasets import CaseStackDataset, SliceDataset, class_frequencies
from covidseg.data.layouts import discover_cases
from covidseg.data.preprocess import PreprocessConfig
from covidseg.errors import ConfigError, InputError
from tests.data import synth

CONFIG = PreprocessConfig(slice_size=(64, 64))


@pytest.fixture(scope="module")
def cached(tmp_path_factory: pytest.TempPathFactory) -> list[CachedCase]:
    root = tmp_path_factory.mktemp("ds")
    synth.volumes_dataset(root / "data", n=2)
    return SliceCache(root / "cache").build_all(discover_cases("volumes", root / "data"), CONFIG)


def test_items_have_the_training_format(cached: list[CachedCase]) -> None:
    ds = SliceDataset(cached)
    assert len(ds) == 32 and ds.class_names == ("background", "lung", "opacity")
    item = ds[20]
    assert set(item) == {"image", "label", "case_id", "slice_index"}
    assert item["image"].shape == (1, 64, 64) and item["image"].dtype == torch.float32
    assert item["label"].shape == (64, 64) and item["label"].dtype == torch.int64
    assert (item["case_id"], item["slice_index"]) == ("case01", 4)
    np.testing.assert_array_equal(item["image"][0].numpy(), cached[1].images[4].astype(np.float32))
    np.testing.assert_array_equal(item["label"].numpy(), cached[1].labels[4])


def test_batches_collate(cached: list[CachedCase]) -> None:
    batch = next(iter(DataLoader(SliceDataset(cached), batch_size=4, shuffle=False)))
    assert batch["image"].shape == (4, 1, 64, 64) and batch["label"].shape == (4, 64, 64)
    assert batch["case_id"] == ["case00"] * 4 and batch["slice_index"].tolist() == [0, 1, 2, 3]


def test_slice_filter_selects_labelled_slices(cached: list[CachedCase]) -> None:
    ds = SliceDataset(cached, slice_filter="labelled")
    expected = sum(len(c.slice_indices("labelled")) for c in cached)
    assert len(ds) == expected < 32
    assert all(int(ds[i]["label"].max()) > 0 for i in range(len(ds)))
    with pytest.raises(ConfigError, match="slice_filter"):
        SliceDataset(cached, slice_filter="some")


def test_class_frequencies_equal_label_pixel_counts(cached: list[CachedCase]) -> None:
    direct = sum(np.bincount(np.asarray(c.labels).ravel(), minlength=3) for c in cached)
    np.testing.assert_array_equal(class_frequencies(cached), direct)
    np.testing.assert_array_equal(class_frequencies(SliceDataset(cached)), direct)
    filtered = SliceDataset(cached, slice_filter="labelled")
    by_items = sum(np.bincount(filtered[i]["label"].numpy().ravel(), minlength=3) for i in range(len(filtered)))
    np.testing.assert_array_equal(class_frequencies(filtered), by_items)
    np.testing.assert_array_equal(class_frequencies(cached, slice_filter="labelled"), by_items)
    assert by_items[0] < direct[0] and by_items[1:].tolist() == direct[1:].tolist()


def test_transform_is_applied(cached: list[CachedCase]) -> None:
    flip = AugmentConfig(
        affine_prob=0, flip_lr_prob=1, intensity_scale_prob=0, intensity_shift_prob=0, noise_prob=0, gamma_prob=0
    )
    plain, flipped = SliceDataset(cached), SliceDataset(cached, transform=build_train_transform(flip, seed=0))
    torch.testing.assert_close(flipped[5]["image"], plain[5]["image"].flip(-1))
    torch.testing.assert_close(flipped[5]["label"], plain[5]["label"].flip(-1))


def test_set_random_state_reseeds_the_transform(cached: list[CachedCase]) -> None:
    ds = SliceDataset(cached, transform=build_train_transform(AugmentConfig(affine_prob=1.0), seed=0))
    ds.set_random_state(3)
    first = ds[7]["image"]
    ds.set_random_state(3)
    torch.testing.assert_close(ds[7]["image"], first)


def test_unlabelled_and_mixed(tmp_path: Path, cached: list[CachedCase]) -> None:
    unlabelled = CachedCase.from_arrays("u", np.zeros((3, 64, 64), np.float16))
    ds = SliceDataset([unlabelled])
    assert "label" not in ds[0] and len(ds) == 3
    with pytest.raises(InputError, match="no labels but others do"):
        SliceDataset([*cached, unlabelled])
    with pytest.raises(InputError, match="no slice"):
        SliceDataset([unlabelled], slice_filter="labelled")
    with pytest.raises(InputError, match="need labelled cases"):
        class_frequencies([unlabelled])
    with pytest.raises(InputError, match="no cached cases"):
        SliceDataset([])


def test_dataset_pickles_small(cached: list[CachedCase]) -> None:
    ds = SliceDataset(cached)
    blob = pickle.dumps(ds)
    assert len(blob) < sum(c.images.nbytes for c in cached) / 4
    again = pickle.loads(blob)
    torch.testing.assert_close(again[9]["image"], ds[9]["image"])


def test_case_stacks_for_3d_validation(cached: list[CachedCase]) -> None:
    stacks = CaseStackDataset(cached)
    assert len(stacks) == 2
    stack = stacks[1]
    assert stack.case_id == "case01" and stack.n_slices == 16
    assert stack.images.shape == (16, 1, 64, 64) and stack.images.dtype == torch.float32
    assert stack.labels is not None and stack.labels.shape == (16, 64, 64) and stack.labels.dtype == torch.int64
    np.testing.assert_array_equal(stack.labels.numpy(), cached[1].labels)
    chunks = list(stack.batches(6))
    assert [rows.start for rows, _ in chunks] == [0, 6, 12]
    torch.testing.assert_close(torch.cat([x for _, x in chunks]), stack.images)
    assert stack.spacing == pytest.approx(cached[1].cached_spacing)
    with pytest.raises(ConfigError, match="batch_size"):
        next(stack.batches(0))
