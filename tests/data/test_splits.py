from __future__ import annotations

import json
from pathlib import Path

import pytest

from covidseg.data.cases import CaseRecord
from covidseg.data.layouts import discover_cases
from covidseg.data.splits import Splits, kfold_cases, load_splits, save_splits, split_cases
from covidseg.errors import ConfigError, InputError, OutputExistsError


def _grouped_cases(sizes: list[int]) -> list[CaseRecord]:
    """Slice cases of patients with the given numbers of slices (like unlabeled-slices)."""
    return [
        CaseRecord(
            f"p{g:02d}_{k:03d}", "slices", Path(f"p{g:02d}_{k}.jpg"), labelled=False, group=f"p{g:02d}", is_2d=True
        )
        for g, n in enumerate(sizes)
        for k in range(n)
    ]


SIZES = [100, 76, 69, 147, 166, 80, 114, 141, 114, 112, 19, 207, 66, 35, 19, 22, 37, 40, 13, 23]


def _groups_of(cases: list[CaseRecord], ids: tuple[str, ...]) -> set[str]:
    by_id = {c.case_id: c.group_id for c in cases}
    return {by_id[i] for i in ids}


def test_fractions_give_case_counts() -> None:
    cases = discover_cases("phantom", None, n_cases=20)
    splits = split_cases(cases, fractions=(0.7, 0.15, 0.15), seed=0)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (14, 3, 3)
    assert sorted(splits.train + splits.val + splits.test) == sorted(c.case_id for c in cases)
    assert not splits.grouped
    assert splits.test == tuple(sorted(splits.test))


def test_deterministic_and_order_independent() -> None:
    cases = discover_cases("phantom", None, n_cases=12)
    first = split_cases(cases, seed=5)
    assert split_cases(list(reversed(cases)), seed=5) == first
    assert any(split_cases(cases, seed=s) != first for s in range(6, 12))


@pytest.mark.parametrize("seed", range(8))
def test_groups_never_straddle_subsets(seed: int) -> None:
    cases = _grouped_cases(SIZES)
    splits = split_cases(cases, fractions=(0.6, 0.2, 0.2), seed=seed)
    parts = [_groups_of(cases, ids) for ids in (splits.train, splits.val, splits.test)]
    assert all(parts) and not (parts[0] & parts[1] or parts[0] & parts[2] or parts[1] & parts[2])
    assert len(splits.train) + len(splits.val) + len(splits.test) == sum(SIZES)
    assert splits.grouped
    # Case counts follow the fractions up to the size of one patient.
    assert abs(len(splits.val) - 0.2 * sum(SIZES)) <= max(SIZES)


def test_zero_fraction_and_too_few_groups() -> None:
    cases = _grouped_cases([5, 5, 5])
    splits = split_cases(cases, fractions=(0.5, 0.5, 0.0), seed=0)
    assert splits.test == () and len(_groups_of(cases, splits.val)) >= 1
    with pytest.raises(InputError, match="2 group"):
        split_cases(_grouped_cases([3, 3]), fractions=(0.6, 0.2, 0.2))


@pytest.mark.parametrize("fractions", [(0.5, 0.5), (0.8, 0.3, 0.1), (0.0, 0.5, 0.5), (1.2, -0.1, -0.1)])
def test_bad_fractions(fractions: tuple[float, ...]) -> None:
    with pytest.raises(ConfigError, match="fractions"):
        split_cases(discover_cases("phantom", None, n_cases=4), fractions=fractions)


def test_kfold_partitions_non_test_cases_by_group() -> None:
    cases = _grouped_cases(SIZES)
    splits = kfold_cases(cases, k=4, seed=2, test_fraction=0.2)
    non_test = {c.case_id for c in cases} - set(splits.test)
    assert {i for f in splits.folds for i in f} == non_test
    assert sum(len(f) for f in splits.folds) == len(non_test)
    fold_groups = [_groups_of(cases, f) for f in splits.folds]
    test_groups = _groups_of(cases, splits.test)
    for i, groups in enumerate(fold_groups):
        assert not groups & test_groups
        assert all(not groups & other for j, other in enumerate(fold_groups) if j != i)
        fold = splits.fold(i)
        assert fold.val == splits.folds[i] and set(fold.train) == non_test - set(fold.val)
    assert splits.fold_index == 0
    assert kfold_cases(cases, k=4, seed=2, test_fraction=0.2) == splits


def test_kfold_errors() -> None:
    cases = discover_cases("phantom", None, n_cases=3)
    with pytest.raises(ConfigError, match="k must be >= 2"):
        kfold_cases(cases, k=1)
    with pytest.raises(InputError, match="cannot make 4 folds"):
        kfold_cases(cases, k=4)
    with pytest.raises(ConfigError, match="no cross-validation folds"):
        split_cases(cases, fractions=(0.4, 0.3, 0.3)).fold(0)
    with pytest.raises(ConfigError, match="fold 3 does not exist"):
        kfold_cases(cases, k=3).fold(3)


def test_save_load_round_trip(tmp_path: Path) -> None:
    cases = _grouped_cases([3, 4, 5, 6, 7])
    splits = kfold_cases(cases, k=2, seed=1, test_fraction=0.2)
    path = save_splits(splits, tmp_path / "splits.json")
    assert load_splits(path, cases) == splits
    assert load_splits(path, cases, fold=1) == splits.fold(1)
    assert json.loads(path.read_text())["grouped"] is True
    with pytest.raises(OutputExistsError):
        save_splits(splits, path)
    save_splits(split_cases(cases, seed=0), path, overwrite=True)
    assert load_splits(path, list(reversed(cases))) == split_cases(cases, seed=0)


def test_load_names_missing_cases(tmp_path: Path) -> None:
    cases = discover_cases("phantom", None, n_cases=10)
    path = save_splits(split_cases(cases, seed=0), tmp_path / "s.json")
    with pytest.raises(
        InputError, match=r"3 case\(s\) in the splits file are not in the dataset: phantom_007, phantom_008"
    ):
        load_splits(path, cases[:7])
    assert set(load_splits(path, [*cases, *discover_cases("phantom", None, n_cases=12)[10:]]).case_ids) == {
        c.case_id for c in cases
    }


def test_load_detects_group_now_straddling(tmp_path: Path) -> None:
    cases = _grouped_cases([2, 2])
    splits = Splits(train=("p00_000",), val=("p00_001",), test=(), seed=0)
    path = save_splits(splits, tmp_path / "s.json")
    with pytest.raises(InputError, match="patient group 'p00' is split across train"):
        load_splits(path, cases)


def test_load_rejects_bad_files(tmp_path: Path) -> None:
    cases = discover_cases("phantom", None, n_cases=3)
    with pytest.raises(InputError, match="no such splits file"):
        load_splits(tmp_path / "none.json", cases)
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(InputError, match="not a readable splits JSON"):
        load_splits(tmp_path / "bad.json", cases)
    (tmp_path / "other.json").write_text('{"train": []}')
    with pytest.raises(InputError, match="not a covidseg splits file"):
        load_splits(tmp_path / "other.json", cases)
    (tmp_path / "overlap.json").write_text(
        json.dumps({"format": "covidseg-splits", "version": 1, "train": ["phantom_000"], "val": ["phantom_000"]})
    )
    with pytest.raises(InputError, match="in both train and val"):
        load_splits(tmp_path / "overlap.json", cases)


def test_duplicate_ids_rejected() -> None:
    (case,) = discover_cases("phantom", None, n_cases=1)
    with pytest.raises(InputError, match="duplicate case id"):
        split_cases([case, case])
