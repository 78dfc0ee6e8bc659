"""Dataset discovery, validation, splits and caching on the shared real slices (skipped when absent)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from covidseg.data.cache import SliceCache
from covidseg.data.cases import load_case
from covidseg.data.datasets import SliceDataset, class_frequencies
from covidseg.data.layouts import discover_cases, validate_cases
from covidseg.data.preprocess import PreprocessConfig
from covidseg.data.splits import split_cases

DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"
MEDSEG = DATA / "medseg-slices"
UNLABELED = DATA / "unlabeled-slices"


@pytest.mark.skipif(not MEDSEG.is_dir(), reason=f"real data not present at {MEDSEG}")
def test_medseg_slices_discover_validate_and_cache(tmp_path: Path) -> None:
    cases = discover_cases("slices", MEDSEG)
    assert len(cases) == 50 and cases[0].class_names == ("background", "opacity")
    validate_cases(cases)
    loaded = load_case(cases[0])
    assert loaded.hu.shape[0] == 1 and -1350 <= loaded.hu.min() < -900 and loaded.hu.max() <= 150
    assert loaded.labels is not None and set(np.unique(loaded.labels)) <= {0, 1}
    cached = SliceCache(tmp_path).build_all(cases[:2], PreprocessConfig(slice_size=(64, 64)))
    assert [c.images.shape for c in cached] == [(1, 64, 64)] * 2
    assert all(float(c.images.min()) >= 0 and float(c.images.max()) <= 1 for c in cached)
    counts = class_frequencies(cached)
    assert counts.sum() == 2 * 64 * 64 and counts[1] > 0
    assert len(SliceDataset(cached)) == 2


@pytest.mark.skipif(not UNLABELED.is_dir(), reason=f"real data not present at {UNLABELED}")
def test_unlabeled_slices_grouped_by_patient(tmp_path: Path) -> None:
    cases = discover_cases("slices", UNLABELED, labelled=False)
    groups = {c.group for c in cases}
    assert len(cases) == 1600 and len(groups) == 20 and None not in groups
    splits = split_cases(cases, fractions=(0.8, 0.1, 0.1), seed=0)
    by_id = {c.case_id: c.group for c in cases}
    parts = [{by_id[i] for i in ids} for ids in (splits.train, splits.val, splits.test)]
    assert not (parts[0] & parts[1] or parts[0] & parts[2] or parts[1] & parts[2])
    cached = SliceCache(tmp_path).build_all(cases[:2], PreprocessConfig(slice_size=(64, 64)))
    assert all(c.labels is None and c.images.shape == (1, 64, 64) for c in cached)
