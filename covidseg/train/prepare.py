"""The data side of a run: checks before training, case splits, the slice cache and the datasets.

Everything a user can get wrong about the data is found here, before a model is built or a file of the run is
written: a class-name mismatch between the dataset layout and ``model.class_names`` (the error says what to
set), a monitored metric the classes cannot give, missing or unreadable files, labels off the image grid or
with unexpected values, empty folders, an empty training or validation split.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import ValidationError
from torch.utils.data import Dataset

from covidseg.config import RunConfig
from covidseg.data.augment import AugmentConfig, build_train_transform
from covidseg.data.cache import CachedCase, SliceCache
from covidseg.data.cases import CaseRecord
from covidseg.data.datasets import CaseStackDataset, SliceDataset, class_frequencies
from covidseg.data.layouts import discover_cases, layout_class_names, validate_cases
from covidseg.data.splits import Splits, kfold_cases, load_splits, split_cases
from covidseg.errors import ConfigError, InputError

__all__ = [
    "IndexedDataset",
    "PreparedData",
    "RunData",
    "build_datasets",
    "check_classes",
    "epoch_seed",
    "make_splits",
    "parse_augment",
    "prepare_cases",
]

MONITOR_CLASS = {"dice_opacity": "opacity"}
"""Monitored metrics that need a particular class."""


def parse_augment(raw: dict[str, Any]) -> AugmentConfig:
    """Validate the ``augment`` section into an :class:`AugmentConfig` (one-line ConfigError on a bad key).

    Examples:
        >>> parse_augment({"flip_lr_prob": 0.0}).flip_lr_prob
        0.0
        >>> parse_augment({"flip": 1})  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        covidseg.errors.ConfigError: invalid config: augment.flip: ...
    """
    try:
        return AugmentConfig(**raw)
    except ValidationError as exc:
        parts = []
        for error in exc.errors():
            loc = ".".join(str(p) for p in error["loc"])
            message = "unknown key" if error["type"] == "extra_forbidden" else error["msg"]
            if error["type"] == "extra_forbidden":
                message += f"; allowed keys: {sorted(AugmentConfig.model_fields)}"
            parts.append(f"augment.{loc}: {message}")
        raise ConfigError("invalid config: " + "; ".join(parts)) from None


def check_classes(config: RunConfig) -> tuple[str, ...]:
    """Check that the dataset's classes are the model's and that the monitored metric exists; return them.

    Raises:
        ConfigError: The layout's classes differ from ``model.class_names`` (the message says what to set), or
            ``train.monitor`` names a class the model does not have.

    Examples:
        >>> from covidseg.config import load_config
        >>> check_classes(load_config(overrides=["data.layout=phantom"]))
        ('background', 'lung', 'opacity')
        >>> check_classes(load_config(overrides=["data.layout=slices", "data.root=/d"]))  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        covidseg.errors.ConfigError: dataset layout 'slices' labels the classes ['background', 'opacity'] but ...
    """
    data = config.data
    dataset_classes = tuple(layout_class_names(data.layout, **data.options))
    model_classes = tuple(config.model.class_names)
    if dataset_classes != model_classes:
        listed = ",".join(dataset_classes)
        raise ConfigError(
            f"dataset layout {data.layout!r} labels the classes {list(dataset_classes)} but model.class_names is "
            f"{list(model_classes)}; set model.class_names=[{listed}] (e.g. --set 'model.class_names=[{listed}]' "
            f"or use configs/datasets/ presets)"
        )
    needed = MONITOR_CLASS.get(config.train.monitor)
    if needed is not None and needed not in model_classes:
        raise ConfigError(
            f"train.monitor={config.train.monitor} needs a class {needed!r}, but the classes are "
            f"{list(model_classes)}; set train.monitor=dice_mean"
        )
    if len(model_classes) < 2:
        raise ConfigError("a segmentation model needs a background class and at least one other class")
    return model_classes


def prepare_cases(config: RunConfig) -> list[CaseRecord]:
    """Discover the dataset's cases and validate them (headers, label files, label values, shapes).

    Raises:
        ConfigError: Unknown layout options.
        InputError: Missing or empty folders, missing labels, shape mismatches, unexpected label values.
    """
    data = config.data
    cases = discover_cases(data.layout, data.root, **data.options)
    validate_cases(cases)
    unlabelled = [c.case_id for c in cases if not c.labelled]
    if unlabelled:
        raise InputError(
            f"cases {unlabelled[:3]} have no labels; training needs labelled cases (remove labelled=False)"
        )
    return cases


def make_splits(config: RunConfig, cases: list[CaseRecord], reuse: Path | None = None) -> Splits:
    """The case split of the run: ``reuse`` (a resumed run's file), ``data.splits``, k-fold or fractions.

    ``data.val_fraction: 0`` (without folds or a splits file) trains on every case that is not held out for
    testing and validates nothing: no early stopping, no ``best.pt``, ``last.pt`` is the model (the final
    model of a study, trained on all labelled data with settings chosen by cross-validation).

    Raises:
        InputError: A splits file that does not fit the cases, or a split without training or validation cases.
    """
    data = config.data
    path = reuse if reuse is not None else data.splits
    if path is not None:
        splits = load_splits(path, cases, fold=None if reuse is not None else data.fold)
    elif data.folds is not None and data.fold is not None:
        splits = kfold_cases(cases, k=data.folds, seed=data.split_seed, test_fraction=data.test_fraction).fold(
            data.fold
        )
    else:
        train_fraction = 1.0 - data.val_fraction - data.test_fraction
        splits = split_cases(
            cases, fractions=(train_fraction, data.val_fraction, data.test_fraction), seed=data.split_seed
        )
    no_validation_wanted = path is None and data.folds is None and data.val_fraction == 0
    if not splits.train or (not splits.val and not no_validation_wanted):
        raise InputError(
            f"the split has {len(splits.train)} training and {len(splits.val)} validation case(s) out of "
            f"{len(cases)}; both need at least one (add cases or change data.val_fraction)"
        )
    return splits


class IndexedDataset(Dataset[dict[str, Any]]):
    """A dataset whose items also carry their position ``index`` (the ``sample_ids`` of the strategy protocol).

    Examples:
        >>> from covidseg.data.cache import CachedCase
        >>> case = CachedCase.from_arrays("c", np.zeros((2, 32, 32), np.float16), np.zeros((2, 32, 32), np.uint8))
        >>> IndexedDataset(SliceDataset([case]))[1]["index"]
        1
    """

    def __init__(self, base: SliceDataset) -> None:
        self.base = base

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {**self.base[i], "index": i}

    def set_random_state(self, seed: int) -> None:
        """Reseed the augmentation (called per epoch and by MONAI's DataLoader ``worker_init_fn``)."""
        self.base.set_random_state(seed)


@dataclass
class RunData:
    """The datasets of a run.

    Attributes:
        splits: The case split.
        train: Training slices (augmented), items with ``index``.
        train_plain: The same slices without augmentation (Fisher estimation).
        val: Validation cases as whole stacks (None when the run validates nothing).
        class_counts: Training-set pixels per class (before augmentation).
    """

    splits: Splits
    train: IndexedDataset
    train_plain: SliceDataset
    val: CaseStackDataset | None
    class_counts: np.ndarray


@dataclass
class PreparedData:
    """Cases and split of a run, checked but not cached yet."""

    cases: list[CaseRecord]
    splits: Splits
    class_names: tuple[str, ...]


def build_datasets(
    config: RunConfig,
    prepared: PreparedData,
    *,
    cache_root: Path,
    progress: Callable[[int, int, CaseRecord], None] | None = None,
) -> RunData:
    """Cache the training and validation cases (once; later runs reuse the entries) and build the datasets."""
    by_id = {c.case_id: c for c in prepared.cases}
    cache = SliceCache(cache_root)
    preprocess = config.preprocess.to_preprocess_config()
    wanted = [by_id[i] for i in (*prepared.splits.train, *prepared.splits.val)]
    cached: dict[str, CachedCase] = {
        case.case_id: entry
        for case, entry in zip(wanted, cache.build_all(wanted, preprocess, progress=progress), strict=True)
    }
    augment = parse_augment(config.augment)
    train_cases = [cached[i] for i in prepared.splits.train]
    transform = build_train_transform(augment, seed=config.train.seed)
    train = SliceDataset(train_cases, transform=transform, slice_filter=config.data.slice_filter)
    plain = SliceDataset(train_cases, slice_filter=config.data.slice_filter)
    val = CaseStackDataset([cached[i] for i in prepared.splits.val]) if prepared.splits.val else None
    counts = class_frequencies(train)
    return RunData(prepared.splits, IndexedDataset(train), plain, val, counts)


def epoch_seed(seed: int, epoch: int, rank: int = 0) -> int:
    """A 32-bit seed for the augmentation and loader of one epoch on one process (independent streams).

    Examples:
        >>> epoch_seed(0, 1) == epoch_seed(0, 1), epoch_seed(0, 1) == epoch_seed(0, 2)
        (True, False)
    """
    return int(np.random.SeedSequence([seed, epoch, rank]).generate_state(1)[0])


def default_cache_root(config: RunConfig) -> Path:
    """``data.cache_dir``, else ``<output.root>/cache`` (shared by the runs under that root)."""
    return Path(config.data.cache_dir) if config.data.cache_dir is not None else Path(config.output.root) / "cache"


def seed_everything(seed: int, deterministic: bool) -> None:
    """Seed Python, NumPy and torch; with ``deterministic``, ask torch for deterministic algorithms."""
    import random

    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
