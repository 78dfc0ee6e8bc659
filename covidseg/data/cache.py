"""Preprocess every case once into memory-mapped slice arrays, reused across epochs and runs.

An entry of the cache is a folder ``<root>/<case id>-<key>/`` holding

* ``images.npy``: float16 ``(N, H, W)`` in [0, 1], the case's axial slices windowed and resized by
  :func:`covidseg.data.preprocess.iter_slice_batches` (the one preprocessing definition);
* ``labels.npy``: uint8 ``(N, H, W)`` class indices resized with nearest neighbour ("nearest-exact", the pixel
  centres of the bilinear image resize), absent for unlabelled cases;
* ``class_counts.npy``: int64 ``(N, C)`` pixels of each class per slice (class weights and slice filters without
  reading the labels again), ``lung_fraction.npy``: float32 ``(N,)`` fraction of each native slice with
  lung-parenchyma HU;
* ``index.json``: case id, slice count, spacing, class names, the HU mapping applied, the key and what it hashes.

The key hashes the preprocessing settings, the case's layout options, each file's path, size and modification
time, and :data:`CACHE_FORMAT_VERSION`: changed settings or files get a new entry, unchanged ones are reused.
Entries are built under a temporary name and renamed when complete, so a killed caching run leaves no half entry.
Volumes are streamed in slice batches; the whole float volume never exists in memory.

Examples:
    >>> import tempfile, pathlib, nibabel as nib
    >>> from covidseg.data.layouts import discover_cases
    >>> root = pathlib.Path(tempfile.mkdtemp())
    >>> for sub in ("images", "labels"):
    ...     (root / sub).mkdir()
    >>> hu = np.full((50, 40, 4), -1000, np.int16); hu[10:40, 10:30] = 40
    >>> nib.save(nib.Nifti1Image(hu, np.eye(4)), root / "images" / "ct.nii.gz")
    >>> nib.save(nib.Nifti1Image((hu > 0).astype(np.uint8), np.eye(4)), root / "labels" / "ct.nii.gz")
    >>> (case,) = discover_cases("volumes", root)
    >>> cached = SliceCache(root / "cache").get_or_build(case, PreprocessConfig(slice_size=(32, 32)))
    >>> cached.images.shape, cached.images.dtype.name, cached.labels.dtype.name, cached.n_slices
    ((4, 32, 32), 'float16', 'uint8', 4)
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from covidseg.data.cached_case import MIN_LUNG_FRACTION, SLICE_FILTERS, CachedCase
from covidseg.data.cases import CaseRecord, load_case
from covidseg.data.preprocess import PreprocessConfig, iter_slice_batches
from covidseg.errors import InputError, OutputExistsError
from covidseg.io.atomic import atomic_dir

__all__ = [
    "CACHE_FORMAT_VERSION",
    "LUNG_HU_RANGE",
    "MIN_LUNG_FRACTION",
    "SLICE_FILTERS",
    "CachedCase",
    "SliceCache",
    "cache_key",
]

CACHE_FORMAT_VERSION = 1
"""Bump when the entry layout or its computation changes: every entry is rebuilt."""
CACHE_FORMAT = "covidseg-slice-cache"
LUNG_HU_RANGE: tuple[float, float] = (-950.0, -500.0)
"""HU of aerated lung parenchyma (above the air outside the body, below ground glass and soft tissue)."""
LABEL_RESIZE_MODE = "nearest-exact"
DEFAULT_BATCH = 32
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def _fingerprint(path: Path) -> list[Any]:
    """Path, size and modification time of a file, or of every file in a folder (DICOM series)."""
    if not path.exists():
        raise InputError(f"{path}: no such file; check the dataset folder (run validate_cases before caching)")
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    out: list[Any] = []
    for file in files:
        stat = file.stat()
        out.append([str(file.resolve()), stat.st_size, stat.st_mtime_ns])
    return out


def _generator_fingerprint() -> list[Any]:
    """Fingerprint of the phantom generator's source, so a changed generator re-caches phantom cases."""
    spec = importlib.util.find_spec("covidseg.data.phantom")
    if spec is None or spec.origin is None:
        raise InputError("covidseg.data.phantom is missing: the phantom layout needs it; reinstall covidseg")
    sources = sorted(Path(spec.origin).parent.glob("phantom*.py"))  # the generator and its helper modules
    return [entry for source in sources for entry in _fingerprint(source)]


def cache_key(case: CaseRecord, config: PreprocessConfig) -> str:
    """Hex SHA-256 of everything that determines a case's cache entry (for phantoms, also the generator's source).

    Examples:
        >>> import tempfile, pathlib
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "ct.nii.gz"
        >>> _ = path.write_bytes(b"scan")
        >>> case = CaseRecord("ct", "volumes", path, labelled=False)
        >>> cache_key(case, PreprocessConfig()) == cache_key(case, PreprocessConfig(slice_size=(256, 256)))
        False
    """
    record = asdict(case)
    record.pop("image")
    record["labels"] = [[list(pair) for pair in source.value_map] for source in case.labels]
    payload = {
        "format": CACHE_FORMAT,
        "version": CACHE_FORMAT_VERSION,
        "preprocess": config.to_dict(),
        "label_resize": LABEL_RESIZE_MODE,
        "lung_hu_range": list(LUNG_HU_RANGE),
        "case": record,
        "files": [_fingerprint(p) for p in case.files],
        "generator": _generator_fingerprint() if case.phantom is not None else None,
    }
    text = json.dumps(payload, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def _safe_name(case_id: str) -> str:
    return _UNSAFE.sub("_", case_id)[:80] or "case"


def _write_entry(folder: Path, case: CaseRecord, config: PreprocessConfig, key: str, batch_size: int) -> None:
    loaded = load_case(case)
    hu = loaded.hu
    n = int(hu.shape[0])
    n_classes = len(case.class_names)
    height, width = config.slice_size
    images = np.lib.format.open_memmap(folder / "images.npy", mode="w+", dtype=np.float16, shape=(n, height, width))
    labels = None
    if loaded.labels is not None:
        if int(loaded.labels.max(initial=0)) >= n_classes:
            raise InputError(
                f"case {case.case_id}: label value {int(loaded.labels.max())} but only {n_classes} classes "
                f"{list(case.class_names)}; fix the labels or the class names"
            )
        labels = np.lib.format.open_memmap(folder / "labels.npy", mode="w+", dtype=np.uint8, shape=(n, height, width))
    counts = np.zeros((n, n_classes), np.int64)
    lung = np.zeros(n, np.float32)
    low, high = LUNG_HU_RANGE
    for rows, batch in iter_slice_batches(hu, config, batch_size):
        images[rows] = batch[:, 0].numpy().astype(np.float16)
        native = hu[rows]
        lung[rows] = ((native > low) & (native <= high)).mean(axis=(1, 2))
        if labels is not None and loaded.labels is not None:
            lab = torch.from_numpy(np.ascontiguousarray(loaded.labels[rows])).unsqueeze(1)
            if tuple(lab.shape[-2:]) != (height, width):
                lab = F.interpolate(lab, size=(height, width), mode=LABEL_RESIZE_MODE)
            resized = lab[:, 0].numpy()
            labels[rows] = resized
            counts[rows] = [np.bincount(s.ravel(), minlength=n_classes) for s in resized]
    images.flush()
    del images
    if labels is not None:
        labels.flush()
        del labels
    np.save(folder / "class_counts.npy", counts)
    np.save(folder / "lung_fraction.npy", lung)
    index = {
        "format": CACHE_FORMAT,
        "version": CACHE_FORMAT_VERSION,
        "key": key,
        "case_id": case.case_id,
        "layout": case.layout,
        "group": case.group,
        "n_slices": n,
        "slice_shape": [height, width],
        "native_shape": [int(s) for s in hu.shape],
        "spacing": list(loaded.spacing),
        "class_names": list(case.class_names),
        "labelled": loaded.labels is not None,
        "hu_mapping": loaded.hu_mapping,
        "preprocess": config.to_dict(),
        "files": [str(p) for p in case.files],
    }
    (folder / "index.json").write_text(json.dumps(index, indent=1) + "\n")


def open_entry(folder: Path) -> CachedCase:
    """Open a complete cache entry read-only (arrays memory-mapped).

    Raises:
        InputError: The folder is not a complete entry of this cache format version.
    """
    try:
        index = json.loads((folder / "index.json").read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise InputError(f"{folder}: not a complete slice-cache entry ({err}); delete it to rebuild") from err
    if index.get("format") != CACHE_FORMAT or index.get("version") != CACHE_FORMAT_VERSION:
        raise InputError(f"{folder}: slice-cache entry of another format version; delete it to rebuild")
    images = np.load(folder / "images.npy", mmap_mode="r")
    labels = np.load(folder / "labels.npy", mmap_mode="r") if index["labelled"] else None
    z, y, x = (int(v) for v in index["native_shape"])
    sz, sy, sx = (float(v) for v in index["spacing"])
    return CachedCase(
        case_id=str(index["case_id"]),
        path=folder,
        images=images,
        labels=labels,
        class_counts=np.load(folder / "class_counts.npy"),
        lung_fraction=np.load(folder / "lung_fraction.npy"),
        spacing=(sz, sy, sx),
        native_shape=(z, y, x),
        class_names=tuple(index["class_names"]),
        hu_mapping=index["hu_mapping"],
        group=index["group"],
        index=index,
    )


class SliceCache:
    """A folder of preprocessed cases, keyed by preprocessing settings and file fingerprints.

    Args:
        root: Cache folder (created when needed). Several runs and processes may share it.

    Examples:
        >>> import tempfile
        >>> SliceCache(tempfile.mkdtemp()).root.is_dir()
        True
    """

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def entry_path(self, case: CaseRecord, config: PreprocessConfig) -> Path:
        """Folder of the entry for ``case`` under ``config`` (whether it exists or not)."""
        key = cache_key(case, config)
        return self.root / f"{_safe_name(case.case_id)}-{key[:20]}"

    def get_or_build(
        self, case: CaseRecord, config: PreprocessConfig, *, batch_size: int = DEFAULT_BATCH
    ) -> CachedCase:
        """Open the case's entry, building it first when it does not exist (or is from another version).

        Args:
            case: The case.
            config: Preprocessing settings.
            batch_size: Slices converted to float at once while building.

        Raises:
            InputError, NotHUError: The case cannot be read (see :func:`covidseg.data.cases.load_case`).
        """
        key = cache_key(case, config)
        folder = self.root / f"{_safe_name(case.case_id)}-{key[:20]}"
        if folder.is_dir():
            try:
                cached = open_entry(folder)
                if cached.index.get("key") == key:
                    return cached
            except (InputError, OSError, ValueError, KeyError):
                pass  # rebuilt below, replacing the stale folder
        try:
            with atomic_dir(folder, overwrite=folder.exists()) as tmp:
                _write_entry(tmp, case, config, key, batch_size)
        except OutputExistsError:
            pass  # another process finished the same entry first; it is identical
        return open_entry(folder)

    def build_all(
        self,
        cases: Sequence[CaseRecord],
        config: PreprocessConfig,
        *,
        batch_size: int = DEFAULT_BATCH,
        progress: Callable[[int, int, CaseRecord], None] | None = None,
    ) -> list[CachedCase]:
        """:meth:`get_or_build` every case, in order; ``progress(done, total, case)`` after each."""
        out = []
        for i, case in enumerate(cases):
            out.append(self.get_or_build(case, config, batch_size=batch_size))
            if progress is not None:
                progress(i + 1, len(cases), case)
        return out
