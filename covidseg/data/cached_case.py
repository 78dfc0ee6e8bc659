"""A preprocessed case as the slice cache holds it: memory-mapped slices and labels plus per-slice statistics.

:class:`CachedCase` objects come from :class:`covidseg.data.cache.SliceCache` (memory maps of an entry folder)
or from :meth:`CachedCase.from_arrays` (in memory, for tests and tools). They pickle cheaply: the memory maps are
reopened by path rather than copied, so DataLoader workers started by spawn or forkserver read the same files.

Examples:
    >>> case = CachedCase.from_arrays("c", np.zeros((3, 32, 32), np.float16), np.zeros((3, 32, 32), np.uint8))
    >>> case.n_slices, case.labelled, case.slice_indices("labelled").tolist()
    (3, True, [])
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from covidseg.data.cases import CLASSES_LUNG_OPACITY
from covidseg.errors import ConfigError

__all__ = ["MIN_LUNG_FRACTION", "SLICE_FILTERS", "CachedCase"]

MIN_LUNG_FRACTION = 0.01
"""A slice without a lung label "contains lung" when at least this fraction of it has lung-parenchyma HU."""
SLICE_FILTERS = ("all", "labelled", "nonempty_lung")
"""Which slices of a case a dataset uses: all, those with a non-background label, those containing lung."""


@dataclass
class CachedCase:
    """A cached case: memory-mapped slices and labels plus what the index records.

    Attributes:
        case_id: The case's id.
        path: The entry folder (None for in-memory cases made by :meth:`from_arrays`).
        images: float16 ``(N, H, W)`` memmap in [0, 1] (read-only).
        labels: uint8 ``(N, H, W)`` memmap of class indices, or None for unlabelled cases.
        class_counts: int64 ``(N, C)`` pixels per class and slice (zeros when unlabelled).
        lung_fraction: float32 ``(N,)`` fraction of each native slice with lung-parenchyma HU.
        spacing: Native voxel size (z, y, x) in mm.
        native_shape: Native ``(Z, Y, X)`` shape.
        class_names: Names of the label classes.
        hu_mapping: How stored values were mapped to HU (None when already HU).
        group: Patient group of the case (None: its own).
        index: The full index record.
    """

    case_id: str
    path: Path | None
    images: np.ndarray
    labels: np.ndarray | None
    class_counts: np.ndarray
    lung_fraction: np.ndarray
    spacing: tuple[float, float, float]
    native_shape: tuple[int, int, int]
    class_names: tuple[str, ...]
    hu_mapping: str | None
    group: str | None
    index: dict[str, Any]

    @classmethod
    def from_arrays(
        cls,
        case_id: str,
        images: np.ndarray,
        labels: np.ndarray | None = None,
        *,
        class_names: tuple[str, ...] = CLASSES_LUNG_OPACITY,
        spacing: tuple[float, float, float] = (1.0, 1.0, 1.0),
        lung_fraction: np.ndarray | None = None,
        group: str | None = None,
    ) -> CachedCase:
        """An in-memory case from preprocessed ``(N, H, W)`` images in [0, 1] and uint8 labels (tests, tools).

        ``lung_fraction`` defaults to zeros (no intensity-based lung estimate without the HU volume).

        Examples:
            >>> case = CachedCase.from_arrays("c", np.zeros((2, 32, 32), np.float16), np.ones((2, 32, 32), np.uint8))
            >>> case.class_counts.tolist()
            [[0, 1024, 0], [0, 1024, 0]]
        """
        imgs = np.asarray(images)
        if imgs.ndim != 3:
            raise ValueError(f"images must be (N, H, W), got shape {imgs.shape}")
        n = int(imgs.shape[0])
        counts = np.zeros((n, len(class_names)), np.int64)
        labs = None
        if labels is not None:
            labs = np.asarray(labels, np.uint8)
            if labs.shape != imgs.shape:
                raise ValueError(f"labels shape {labs.shape} differs from images shape {imgs.shape}")
            counts = np.stack([np.bincount(s.ravel(), minlength=len(class_names)) for s in labs]).astype(np.int64)
        fraction = np.zeros(n, np.float32) if lung_fraction is None else np.asarray(lung_fraction, np.float32)
        z, y, x = (int(v) for v in imgs.shape)
        return cls(
            case_id=case_id,
            path=None,
            images=imgs,
            labels=labs,
            class_counts=counts,
            lung_fraction=fraction,
            spacing=spacing,
            native_shape=(z, y, x),
            class_names=tuple(class_names),
            hu_mapping=None,
            group=group,
            index={"case_id": case_id, "labelled": labs is not None},
        )

    def __getstate__(self) -> dict[str, Any]:
        """Pickle without the memory maps (a DataLoader worker reopens them by path instead of copying)."""
        state = dict(self.__dict__)
        if self.path is not None:
            state["images"] = state["labels"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        if self.path is not None:
            self.images = np.load(self.path / "images.npy", mmap_mode="r")
            if self.index.get("labelled"):
                self.labels = np.load(self.path / "labels.npy", mmap_mode="r")

    @property
    def n_slices(self) -> int:
        """Number of axial slices."""
        return int(self.images.shape[0])

    @property
    def labelled(self) -> bool:
        """Whether the case has labels."""
        return self.labels is not None

    @property
    def cached_spacing(self) -> tuple[float, float, float]:
        """Voxel size (z, y, x) in mm of the cached (resized) slices."""
        _, height, width = self.images.shape
        _, y, x = self.native_shape
        return (self.spacing[0], self.spacing[1] * y / height, self.spacing[2] * x / width)

    def slice_indices(self, slice_filter: str = "all") -> np.ndarray:
        """Indices of the slices that ``slice_filter`` keeps (see :data:`SLICE_FILTERS`).

        "labelled" keeps slices with any non-background label (none for unlabelled cases); "nonempty_lung"
        keeps slices with a lung label when the classes include "lung", else slices whose lung-parenchyma
        fraction is at least :data:`MIN_LUNG_FRACTION`.
        """
        if slice_filter not in SLICE_FILTERS:
            raise ConfigError(f"unknown slice_filter {slice_filter!r}; expected one of {list(SLICE_FILTERS)}")
        foreground = self.class_counts[:, 1:].sum(axis=1) > 0
        if slice_filter == "all":
            keep = np.ones(self.n_slices, bool)
        elif slice_filter == "labelled":
            keep = foreground
        elif self.labelled and "lung" in self.class_names:
            keep = foreground  # lung and opacity (which lies in the lung) are the non-background classes
        else:
            keep = self.lung_fraction >= MIN_LUNG_FRACTION
        return np.flatnonzero(keep)
