from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from covidseg.data import cache as cache_module
from covidseg.data.cache import CACHE_FORMAT_VERSION, MIN_LUNG_FRACTION, CachedCase, SliceCache, cache_key
from covidseg.data.cases import CaseRecord
from covidseg.data.layouts import discover_cases
from covidseg.data.preprocess import PreprocessConfig, preprocess_volume
from covidseg.errors import ConfigError
from tests.data import synth

NATIVE = (16, 48, 80)
CONFIG = PreprocessConfig(slice_size=(64, 64))


@pytest.fixture
def dataset(tmp_path: Path) -> tuple[list[CaseRecord], dict[str, tuple[np.ndarray, np.ndarray]]]:
    data = synth.volumes_dataset(tmp_path / "data", n=2, shape=NATIVE)
    return discover_cases("volumes", tmp_path / "data"), data


def test_entry_matches_the_preprocessing_definition(tmp_path: Path, dataset) -> None:
    cases, data = dataset
    cached = SliceCache(tmp_path / "cache").get_or_build(cases[0], CONFIG)
    hu, labels = data["case00"]
    assert isinstance(cached.images, np.memmap) and cached.images.dtype == np.float16
    assert cached.images.shape == (16, 64, 64) and not cached.images.flags.writeable
    expected = preprocess_volume(hu, CONFIG)[:, 0].numpy()
    np.testing.assert_allclose(cached.images.astype(np.float32), expected, atol=1e-3)  # float16: 11-bit mantissa
    assert float(cached.images.min()) >= 0.0 and float(cached.images.max()) <= 1.0
    nearest = F.interpolate(torch.from_numpy(labels).unsqueeze(1), size=(64, 64), mode="nearest-exact")[:, 0]
    assert cached.labels is not None and cached.labels.dtype == np.uint8
    np.testing.assert_array_equal(cached.labels, nearest.numpy())
    counts = np.stack([np.bincount(s.ravel(), minlength=3) for s in nearest.numpy()])
    np.testing.assert_array_equal(cached.class_counts, counts)
    assert cached.spacing == pytest.approx(synth.SPACING)
    assert cached.cached_spacing == pytest.approx((5.0, 1.5 * 48 / 64, 1.5 * 80 / 64))
    assert cached.native_shape == NATIVE and cached.n_slices == 16


def test_index_records_the_case(tmp_path: Path, dataset) -> None:
    cases, _ = dataset
    cached = SliceCache(tmp_path / "cache").get_or_build(cases[1], CONFIG)
    index = json.loads((cached.path / "index.json").read_text())
    assert index["case_id"] == "case01" and index["n_slices"] == 16
    assert index["class_names"] == ["background", "lung", "opacity"]
    assert index["hu_mapping"] is None and index["version"] == CACHE_FORMAT_VERSION
    assert index["preprocess"] == CONFIG.to_dict() and index["key"] == cache_key(cases[1], CONFIG)
    assert sorted(p.name for p in cached.path.iterdir()) == [
        "class_counts.npy",
        "images.npy",
        "index.json",
        "labels.npy",
        "lung_fraction.npy",
    ]


def test_reused_when_unchanged_rebuilt_when_settings_or_files_change(tmp_path: Path, dataset, monkeypatch) -> None:
    cases, data = dataset
    cache = SliceCache(tmp_path / "cache")
    first = cache.get_or_build(cases[0], CONFIG)
    calls: list[str] = []
    original = cache_module.load_case
    monkeypatch.setattr(cache_module, "load_case", lambda case: calls.append(case.case_id) or original(case))
    again = SliceCache(tmp_path / "cache").get_or_build(cases[0], CONFIG)  # a new run, same settings
    assert again.path == first.path and calls == []
    other = cache.get_or_build(cases[0], PreprocessConfig(slice_size=(32, 32)))
    assert other.path != first.path and calls == ["case00"] and other.images.shape == (16, 32, 32)
    windowed = cache.get_or_build(cases[0], PreprocessConfig(window=(-1200.0, 200.0), slice_size=(64, 64)))
    assert windowed.path not in (first.path, other.path)
    # A changed label file (new content, new mtime) gets a new entry with the new labels.
    label_file = cases[0].labels[0].path
    new_labels = np.zeros_like(data["case00"][1])
    synth.save_nifti(new_labels, label_file)
    os.utime(label_file, ns=(10**18, 10**18))
    rebuilt = cache.get_or_build(cases[0], CONFIG)
    assert rebuilt.path != first.path and rebuilt.labels is not None and int(rebuilt.labels.max()) == 0


def test_layout_options_change_the_key(tmp_path: Path, dataset) -> None:
    cases, _ = dataset
    mapped = discover_cases("volumes", tmp_path / "data", label_map={0: 0, 1: 1, 2: 1})
    assert cache_key(cases[0], CONFIG) != cache_key(mapped[0], CONFIG)
    assert cache_key(cases[0], CONFIG) == cache_key(discover_cases("volumes", tmp_path / "data")[0], CONFIG)


def test_killed_build_leaves_no_entry(tmp_path: Path, dataset, monkeypatch) -> None:
    cases, _ = dataset
    cache = SliceCache(tmp_path / "cache")

    def explode(*args, **kwargs):
        yield slice(0, 1), torch.zeros(1, 1, 64, 64)
        raise KeyboardInterrupt  # killed after the first batch was written

    monkeypatch.setattr(cache_module, "iter_slice_batches", explode)
    with pytest.raises(KeyboardInterrupt):
        cache.get_or_build(cases[0], CONFIG)
    assert list(cache.root.iterdir()) == []
    monkeypatch.undo()
    assert cache.get_or_build(cases[0], CONFIG).n_slices == 16


def test_stale_entry_is_replaced(tmp_path: Path, dataset) -> None:
    cases, _ = dataset
    cache = SliceCache(tmp_path / "cache")
    entry = cache.get_or_build(cases[0], CONFIG).path
    (entry / "index.json").write_text("{}")  # e.g. written by another format version
    rebuilt = cache.get_or_build(cases[0], CONFIG)
    assert rebuilt.path == entry and rebuilt.index["case_id"] == "case00"


def test_volumes_are_streamed_in_batches(tmp_path: Path, dataset, monkeypatch) -> None:
    cases, _ = dataset
    sizes: list[int] = []
    original = cache_module.iter_slice_batches

    def spy(hu, config, batch_size):
        for rows, batch in original(hu, config, batch_size):
            sizes.append(batch.shape[0])
            yield rows, batch

    monkeypatch.setattr(cache_module, "iter_slice_batches", spy)
    SliceCache(tmp_path / "cache").get_or_build(cases[0], CONFIG, batch_size=5)
    assert sizes == [5, 5, 5, 1]


def test_slice_filters(tmp_path: Path, dataset) -> None:
    cases, data = dataset
    cached = SliceCache(tmp_path / "cache").get_or_build(cases[0], CONFIG)
    labels = data["case00"][1]
    assert cached.slice_indices("all").tolist() == list(range(16))
    with_label = np.flatnonzero(labels.reshape(16, -1).max(axis=1) > 0)
    np.testing.assert_array_equal(cached.slice_indices("labelled"), with_label)
    np.testing.assert_array_equal(cached.slice_indices("nonempty_lung"), with_label)  # lung is a class here
    with pytest.raises(ConfigError, match="slice_filter"):
        cached.slice_indices("lungs")


def test_nonempty_lung_from_intensity_without_lung_class(tmp_path: Path) -> None:
    synth.slices_dataset(tmp_path / "s", n=1)
    (case,) = discover_cases("slices", tmp_path / "s")
    cached = SliceCache(tmp_path / "cache").get_or_build(case, CONFIG)
    assert cached.lung_fraction[0] > MIN_LUNG_FRACTION and cached.slice_indices("nonempty_lung").tolist() == [0]
    assert cached.hu_mapping is not None and "-1350" in cached.hu_mapping
    blank = CachedCase.from_arrays("b", np.zeros((2, 32, 32), np.float16), class_names=("background", "opacity"))
    assert blank.slice_indices("nonempty_lung").tolist() == [] and blank.slice_indices("labelled").tolist() == []


def test_pickle_reopens_memmaps_instead_of_copying(tmp_path: Path, dataset) -> None:
    cases, _ = dataset
    cached = SliceCache(tmp_path / "cache").get_or_build(cases[0], CONFIG)
    blob = pickle.dumps(cached)
    assert len(blob) < cached.images.nbytes
    restored = pickle.loads(blob)
    assert isinstance(restored.images, np.memmap) and restored.labels is not None
    np.testing.assert_array_equal(restored.images, cached.images)


def test_build_all_reports_progress(tmp_path: Path, dataset) -> None:
    cases, _ = dataset
    seen: list[tuple[int, int, str]] = []
    out = SliceCache(tmp_path / "cache").build_all(
        cases, CONFIG, progress=lambda i, n, c: seen.append((i, n, c.case_id))
    )
    assert [c.case_id for c in out] == ["case00", "case01"]
    assert seen == [(1, 2, "case00"), (2, 2, "case01")]


def test_phantom_case_is_cached(tmp_path: Path) -> None:
    pytest.importorskip("covidseg.data.phantom", reason="covidseg.data.phantom not available yet")
    (case,) = discover_cases("phantom", None, n_cases=1, shape=(16, 64, 64))
    cached = SliceCache(tmp_path).get_or_build(case, CONFIG)
    assert cached.images.shape == (16, 64, 64) and cached.labels is not None
    assert set(np.unique(cached.labels)) <= {0, 1, 2} and cached.class_counts[:, 2].sum() > 0
