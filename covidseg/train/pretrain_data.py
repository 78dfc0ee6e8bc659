"""The data side of pre-training: per task, checked cases, a case split, cached slices, datasets and a loss.

Each task is prepared like a ``covidseg train`` run on its own ``data`` section (same checks, same splits, the
same slice cache, the same augmentation), through a training :class:`~covidseg.config.RunConfig` built for the
task (:func:`task_run_config`). Tasks whose labels come from a generator skip the label checks (their cases may
be unlabelled) and read their slices from generated-label cache entries
(:func:`covidseg.train.pretrain_labels.generated_entry`).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.data.utils import worker_init_fn
from torch.utils.data import DataLoader, RandomSampler

from covidseg.config import RunConfig
from covidseg.config.pretrain import DATASET_LABELS, PretrainConfig, TaskSection
from covidseg.data.augment import build_train_transform
from covidseg.data.cache import SliceCache
from covidseg.data.datasets import CaseStackDataset, SliceDataset, class_frequencies
from covidseg.data.layouts import discover_cases, validate_cases
from covidseg.data.splits import Splits
from covidseg.errors import InputError
from covidseg.train import prepare as P
from covidseg.train.loss import SegmentationLoss, resolve_class_weights
from covidseg.train.pretrain_labels import generated_entry

__all__ = [
    "TaskData",
    "batches_per_pass",
    "cycle_batches",
    "default_cache_root",
    "prepare_task",
    "reseed_loader",
    "task_loader",
    "task_run_config",
]


def task_run_config(config: PretrainConfig, task: TaskSection) -> RunConfig:
    """A training config describing ``task`` alone (its data, its classes, the shared settings).

    Examples:
        >>> from covidseg.config.pretrain import load_pretrain_config
        >>> cfg = load_pretrain_config(overrides=["tasks=[{name: a, data: {layout: phantom}}]"])
        >>> task_run_config(cfg, cfg.tasks[0]).model.class_names
        ('background', 'lung', 'opacity')
    """
    return RunConfig(
        data=task.data,
        preprocess=config.preprocess,
        model=config.model_section(task),
        loss=task.loss or config.loss,
        augment=config.augment,
        train=config.train.model_copy(update={"monitor": "dice_mean"}),
        output=config.output,
    )


@dataclass
class TaskData:
    """A prepared task.

    Attributes:
        name: Task name.
        class_names: Its classes.
        splits: Its case split.
        train: Augmented training slices.
        val: Validation cases (whole stacks).
        class_counts: Training pixels per class.
        criterion: Its loss (class-ratio weights from ``class_counts`` unless configured otherwise).
    """

    name: str
    class_names: tuple[str, ...]
    splits: Splits
    train: SliceDataset | P.IndexedDataset
    val: CaseStackDataset
    class_counts: np.ndarray
    criterion: SegmentationLoss


def prepare_task(
    config: PretrainConfig,
    task: TaskSection,
    *,
    cache_root: Path,
    reuse_splits: Path | None = None,
) -> TaskData:
    """Check, split and cache one task and build its datasets and loss.

    Args:
        config: The pretrain config.
        task: The task.
        cache_root: The slice cache folder.
        reuse_splits: A splits file to reuse exactly (a resumed run's).

    Raises:
        ConfigError, InputError, NotHUError: Bad options, folders, files or labels (before any training).
    """
    run_cfg = task_run_config(config, task)
    classes = task.classes
    if task.labels == DATASET_LABELS:
        P.check_classes(run_cfg)
        cases = P.prepare_cases(run_cfg)
    else:
        cases = discover_cases(task.data.layout, task.data.root, **task.data.options)
        validate_cases(cases)
    try:
        splits = P.make_splits(run_cfg, cases, reuse=reuse_splits)
    except InputError as exc:
        raise InputError(f"task {task.name!r}: {exc}") from None
    if not splits.val:
        raise InputError(
            f"task {task.name!r} has no validation cases; pre-training validates every task (set val_fraction > 0)"
        )
    if task.labels == DATASET_LABELS:
        data = P.build_datasets(run_cfg, P.PreparedData(cases, splits, classes), cache_root=cache_root)
        train: SliceDataset | P.IndexedDataset = data.train
        assert data.val is not None  # splits.val is not empty (checked above)
        val, counts = data.val, data.class_counts
    else:
        by_id = {c.case_id: c for c in cases}
        cache = SliceCache(cache_root)
        preprocess = config.preprocess.to_preprocess_config()

        def entries(ids: tuple[str, ...]) -> list[Any]:
            return [generated_entry(cache, by_id[i], preprocess, task.labels) for i in ids]

        transform = build_train_transform(P.parse_augment(config.augment), seed=config.train.seed)
        train = SliceDataset(entries(splits.train), transform=transform, slice_filter=task.data.slice_filter)
        val = CaseStackDataset(entries(splits.val))
        counts = class_frequencies(train)
    loss = task.loss or config.loss
    weights = resolve_class_weights(loss.class_weights, counts, len(classes))
    return TaskData(task.name, classes, splits, train, val, counts, SegmentationLoss(weights, loss.dice_weight))


def task_loader(data: TaskData, config: PretrainConfig, device: torch.device) -> DataLoader[Any]:
    """A shuffling loader over a task's training slices (seeded per epoch by the caller's generator)."""
    tcfg = config.train
    return DataLoader(
        data.train,
        batch_size=tcfg.batch_size,
        sampler=RandomSampler(data.train, generator=torch.Generator()),
        num_workers=tcfg.num_workers,
        drop_last=len(data.train) >= tcfg.batch_size,
        worker_init_fn=worker_init_fn if tcfg.num_workers > 0 else None,
        pin_memory=device.type == "cuda",
    )


def reseed_loader(loader: DataLoader[Any], dataset: Any, seed: int) -> None:
    """Reseed a :func:`task_loader`'s shuffling and the dataset's augmentation for one epoch."""
    sampler = loader.sampler
    if isinstance(sampler, RandomSampler) and sampler.generator is not None:
        sampler.generator.manual_seed(seed)
    setter = getattr(dataset, "set_random_state", None)
    if setter is not None:
        setter(seed % (2**32))


def cycle_batches(loader: DataLoader[Any]) -> Iterator[dict[str, Any]]:
    """Batches of ``loader`` without end: a new shuffled pass starts when one is used up.

    Examples:
        >>> from itertools import islice
        >>> [b.tolist() for b in islice(cycle_batches(DataLoader(torch.arange(3), batch_size=2)), 3)]
        [[0, 1], [2], [0, 1]]
    """
    while True:
        empty = True
        for batch in loader:
            empty = False
            yield batch
        if empty:
            raise InputError("a task has no training batch; give it more slices or lower train.batch_size")


def batches_per_pass(data: TaskData, batch_size: int) -> int:
    """Optimizer steps of one pass over a task's training slices (at least 1)."""
    return max(1, len(data.train) // batch_size)


def default_cache_root(config: PretrainConfig, task: TaskSection) -> Path:
    """The task's ``data.cache_dir``, else ``<output.root>/cache`` (shared with ``covidseg train`` runs)."""
    if task.data.cache_dir is not None:
        return Path(task.data.cache_dir)
    return Path(os.fspath(config.output.root)) / "cache"
