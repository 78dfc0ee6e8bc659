"""Torch datasets over cached cases: single slices for training, whole case stacks for 3-D validation.

Items are read from the cache's memory maps one slice at a time; nothing is loaded up front. A dataset can be
pickled to DataLoader workers under any start method: the memory maps are reopened by path in each worker
instead of being copied.

Examples:
    >>> import numpy as np
    >>> case = CachedCase.from_arrays("c0", np.zeros((3, 32, 32), np.float16), np.ones((3, 32, 32), np.uint8),
    ...                               class_names=("background", "opacity"))
    >>> ds = SliceDataset([case])
    >>> item = ds[1]
    >>> tuple(item["image"].shape), item["label"].dtype, item["case_id"], item["slice_index"]
    ((1, 32, 32), torch.int64, 'c0', 1)
    >>> class_frequencies(ds).tolist()
    [0, 3072]
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from covidseg.data.cache import SLICE_FILTERS, CachedCase
from covidseg.errors import ConfigError, InputError

__all__ = ["CaseStack", "CaseStackDataset", "SliceDataset", "class_frequencies"]

Item = dict[str, Any]


def _check_cases(cases: Sequence[CachedCase]) -> tuple[tuple[str, ...], bool]:
    """The cases' common class names and whether they are labelled; mixed datasets are errors."""
    if not cases:
        raise InputError("no cached cases given; build the cache for at least one case")
    names = {c.class_names for c in cases}
    if len(names) > 1:
        raise InputError(f"cached cases carry different class names {sorted(names)}; use one set of classes")
    labelled = {c.labelled for c in cases}
    if len(labelled) > 1:
        unlabelled = [c.case_id for c in cases if not c.labelled][:3]
        raise InputError(f"cases {unlabelled} have no labels but others do; keep labelled and unlabelled cases apart")
    return cases[0].class_names, cases[0].labelled


class SliceDataset(Dataset[Item]):
    """Axial slices of cached cases as training samples.

    Each item is ``dict(image=(1, H, W) float32, label=(H, W) int64, case_id=str, slice_index=int)``; unlabelled
    cases give no ``label``. ``transform`` (e.g. :func:`covidseg.data.augment.build_train_transform`) maps an
    item to an item of the same form.

    Args:
        cached_cases: Cases from :class:`covidseg.data.cache.SliceCache`, all labelled or all unlabelled, with the
            same class names.
        transform: Applied to every item.
        slice_filter: One of :data:`covidseg.data.cache.SLICE_FILTERS`.

    Raises:
        InputError: No cases, mixed classes or labelled-ness, or no slice left after filtering.
        ConfigError: Unknown ``slice_filter``.
    """

    def __init__(
        self,
        cached_cases: Sequence[CachedCase],
        *,
        transform: Callable[[Item], Item] | None = None,
        slice_filter: str = "all",
    ) -> None:
        self.cases = list(cached_cases)
        self.class_names, self.labelled = _check_cases(self.cases)
        if slice_filter not in SLICE_FILTERS:
            raise ConfigError(f"unknown slice_filter {slice_filter!r}; expected one of {list(SLICE_FILTERS)}")
        self.slice_filter = slice_filter
        self.transform = transform
        rows = [
            np.stack([np.full(len(idx), pos), idx], axis=1)
            for pos, case in enumerate(self.cases)
            if len(idx := case.slice_indices(slice_filter))
        ]
        if not rows:
            raise InputError(
                f"slice_filter {slice_filter!r} keeps no slice of the {len(self.cases)} case(s); use slice_filter='all'"
            )
        self.index = np.concatenate(rows).astype(np.int64)

    def __len__(self) -> int:
        return int(self.index.shape[0])

    def __getitem__(self, i: int) -> Item:
        pos, k = (int(v) for v in self.index[i])
        case = self.cases[pos]
        item: Item = {
            "image": torch.from_numpy(np.asarray(case.images[k], dtype=np.float32)).unsqueeze(0),
            "case_id": case.case_id,
            "slice_index": k,
        }
        if case.labels is not None:
            item["label"] = torch.from_numpy(np.asarray(case.labels[k], dtype=np.int64))
        return self.transform(item) if self.transform is not None else item

    def set_random_state(self, seed: int) -> None:
        """Reseed the transform (``monai.data.utils.worker_init_fn`` calls this once per DataLoader worker)."""
        setter = getattr(self.transform, "set_random_state", None)
        if setter is not None:
            setter(seed)

    def class_counts(self) -> np.ndarray:
        """Pixels of each class over the dataset's slices (before augmentation), int64 ``(C,)``."""
        total = np.zeros(len(self.class_names), np.int64)
        for pos, case in enumerate(self.cases):
            rows = self.index[self.index[:, 0] == pos, 1]
            total += case.class_counts[rows].sum(axis=0)
        return total


def class_frequencies(source: SliceDataset | Sequence[CachedCase], *, slice_filter: str = "all") -> np.ndarray:
    """Pixel count of every class over a dataset (its slices) or cached cases (``slice_filter``'s slices).

    The counts come from each cache entry's per-slice class counts, so no label is read. Class-ratio weights for
    the cross-entropy follow from them, e.g. ``w = counts.sum() / (len(counts) * counts)``.

    Examples:
        >>> labels = np.eye(4, dtype=np.uint8)[None].repeat(2, 0)  # 2 slices, 4 pixels of class 1 each
        >>> case = CachedCase.from_arrays("c", np.zeros((2, 4, 4), np.float16), labels)
        >>> class_frequencies([case]).tolist()
        [24, 8, 0]
    """
    if isinstance(source, SliceDataset):
        return source.class_counts()
    cases = list(source)
    names, labelled = _check_cases(cases)
    if not labelled:
        raise InputError("class frequencies need labelled cases; these have no labels")
    total = np.zeros(len(names), np.int64)
    for case in cases:
        total += case.class_counts[case.slice_indices(slice_filter)].sum(axis=0)
    return total


@dataclass
class CaseStack:
    """All slices of one case, for predicting slice by slice and scoring in 3-D.

    Attributes:
        case_id: The case's id.
        image_slices: float16 ``(N, H, W)`` memory map of the preprocessed slices.
        label_slices: uint8 ``(N, H, W)`` memory map of the labels, or None.
        spacing: Voxel size (z, y, x) in mm of the cached grid.
        class_names: Names of the label classes.
    """

    case_id: str
    image_slices: np.ndarray
    label_slices: np.ndarray | None
    spacing: tuple[float, float, float]
    class_names: tuple[str, ...]

    @property
    def n_slices(self) -> int:
        """Number of slices."""
        return int(self.image_slices.shape[0])

    @property
    def images(self) -> torch.Tensor:
        """float32 ``(N, 1, H, W)`` network input (read on access)."""
        return torch.from_numpy(np.asarray(self.image_slices, dtype=np.float32)).unsqueeze(1)

    @property
    def labels(self) -> torch.Tensor | None:
        """int64 ``(N, H, W)`` class indices (read on access), or None for unlabelled cases."""
        if self.label_slices is None:
            return None
        return torch.from_numpy(np.asarray(self.label_slices, dtype=np.int64))

    def batches(self, batch_size: int) -> Iterator[tuple[slice, torch.Tensor]]:
        """Yield ``(rows, float32 (n, 1, H, W))`` chunks of the image stack, reading one chunk at a time.

        Examples:
            >>> stack = CaseStack("c", np.zeros((5, 32, 32), np.float16), None, (1.0, 1.0, 1.0), ("bg", "fg"))
            >>> [(rows.start, tuple(x.shape)) for rows, x in stack.batches(2)]
            [(0, (2, 1, 32, 32)), (2, (2, 1, 32, 32)), (4, (1, 1, 32, 32))]
        """
        if batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
        for start in range(0, self.n_slices, batch_size):
            rows = slice(start, min(start + batch_size, self.n_slices))
            chunk = np.asarray(self.image_slices[rows], dtype=np.float32)
            yield rows, torch.from_numpy(chunk).unsqueeze(1)


class CaseStackDataset(Dataset[CaseStack]):
    """Whole cases for validation: item ``i`` is the :class:`CaseStack` of case ``i`` (all its slices).

    Use it directly or with ``DataLoader(..., batch_size=None)`` and a ``DistributedSampler`` to score different
    cases on different ranks.

    Examples:
        >>> case = CachedCase.from_arrays("c", np.zeros((3, 32, 32), np.float16), np.zeros((3, 32, 32), np.uint8))
        >>> stack = CaseStackDataset([case])[0]
        >>> tuple(stack.images.shape), tuple(stack.labels.shape)
        ((3, 1, 32, 32), (3, 32, 32))
    """

    def __init__(self, cached_cases: Sequence[CachedCase]) -> None:
        self.cases = list(cached_cases)
        self.class_names, self.labelled = _check_cases(self.cases)

    def __len__(self) -> int:
        return len(self.cases)

    def __getitem__(self, i: int) -> CaseStack:
        case = self.cases[i]
        return CaseStack(
            case_id=case.case_id,
            image_slices=case.images,
            label_slices=case.labels,
            spacing=case.cached_spacing,
            class_names=case.class_names,
        )
