"""Label-free segmentation targets for pre-training: lung masks from intensities, cached beside the slices.

A pre-training task may take its labels from a generator instead of the dataset (``labels:`` in the pretrain
config). Generators map a case's canonical ``(Z, Y, X)`` HU and spacing to a ``uint8`` class map:

========================  ==============================================================================
``classical_lung_mask``   classes (background, lung). Volumes (Z > 1): the 3-D HU heuristic
                          :func:`covidseg.infer.lungmask.classical_lung_mask`. Single slices (Z = 1, the
                          2-D slice layouts): :func:`slice_lung_mask`, each slice on its own.
``slice_lung_mask``       classes (background, lung): :func:`slice_lung_mask` on every axial slice, also
                          for volumes.
========================  ==============================================================================

Why a per-slice variant. The 3-D heuristic needs what a 2-D display slice does not have: a body outline that
closes around the lungs (8-bit slices are often cropped tightly around the thorax, cutting the body at the
image border), a trachea followed over several slices, the patient's left-right axis (slices may be rotated or
mirrored), volumes in mL, and true HU (the display window of an 8-bit JPEG is rarely recorded, so the HU mapped
back from it can be off by hundreds of HU). On the 1,600 unlabelled COVID-19 slices in
``../shared/data/unlabeled-slices`` it finds no lung in most coronacases.org slices and only one lung in
rotated Radiopaedia slices. :func:`slice_lung_mask` instead works on one slice and on relative intensities:

1. Air-like pixels: below the Otsu threshold of the slice's intensities without its darkest pixels
   (:data:`AIR_EXCLUSION_FRACTION`), i.e. lung against soft tissue; it adapts to an unknown display window
   (about -430 HU on a correctly windowed slice).
2. Components of air-like pixels (2-D, face connectivity). "Pure air" is the darkest
   :data:`PURE_AIR_RANGE_FRACTION` of the range between the slice's low percentile and the threshold. A
   component is outside air, the trachea, a main bronchus or bowel gas (not lung) when more than
   :data:`MAX_PURE_AIR_FRACTION` of it is pure air (aerated lung is brighter than air: parenchyma, vessels),
   or when it touches at least :data:`OUTSIDE_AIR_SIDES` sides of the image (air around an uncropped body).
   A lung that touches one or two sides of a tight crop is kept.
3. The :data:`MAX_LUNG_COMPONENTS` largest remaining components of at least :data:`MIN_LUNG_AREA_MM2` are the
   lungs; holes up to :data:`MAX_HOLE_MM2` (vessels, small lesions) are filled in the slice.

Limits: dense consolidation at the lung border is not air-like and stays outside the mask (as in the 3-D
heuristic); a lung cut into pieces by the crop keeps only its two largest pieces.

Cache. Generated labels are computed once per case from its native HU, resized to the slice size with the
slice cache's nearest-neighbour mode, and stored as a complete slice-cache entry under
``<cache root>/generated/``: ``images.npy`` and ``lung_fraction.npy`` hard-linked (or copied) from the case's
own entry, ``labels.npy`` and ``class_counts.npy`` from the generator, and an ``index.json`` whose key hashes
the image entry's key, the generator and the source of this module and of the 3-D heuristic (a changed
heuristic re-generates). Entries are built under a temporary name and renamed when complete.

Examples:
    >>> hu = np.full((1, 64, 64), -1000, np.int16)
    >>> hu[0, 4:60, 4:60] = 40  # body
    >>> hu[0, 12:52, 10:28] = -850  # right lung
    >>> hu[0, 12:52, 36:54] = -850  # left lung
    >>> labels = generate_labels("classical_lung_mask", hu, (1.0, 1.0, 1.0))
    >>> labels.dtype.name, int(labels.sum()) == 2 * 40 * 18
    ('uint8', True)
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from covidseg.data.cache import LABEL_RESIZE_MODE, CachedCase, SliceCache, open_entry
from covidseg.data.cases import CaseRecord, load_case
from covidseg.data.preprocess import PreprocessConfig
from covidseg.errors import ConfigError, InputError, OutputExistsError
from covidseg.infer.lungmask import (
    AIR_EXCLUSION_FRACTION,
    MAX_LUNG_COMPONENTS,
    MAX_PURE_AIR_FRACTION,
    MIN_LUNG_AREA_MM2,
    OUTSIDE_AIR_SIDES,
    PURE_AIR_RANGE_FRACTION,
    classical_lung_mask,
    slice_lung_mask,
)
from covidseg.io.atomic import atomic_dir

__all__ = [
    "AIR_EXCLUSION_FRACTION",
    "GENERATED_DIR",
    "LABEL_GENERATORS",
    "LUNG_CLASSES",
    "MAX_LUNG_COMPONENTS",
    "MAX_PURE_AIR_FRACTION",
    "MIN_LUNG_AREA_MM2",
    "OUTSIDE_AIR_SIDES",
    "PURE_AIR_RANGE_FRACTION",
    "generate_labels",
    "generated_entry",
    "generator_class_names",
    "slice_lung_mask",
]

LUNG_CLASSES: tuple[str, ...] = ("background", "lung")
"""Classes of the lung-mask generators (index = label value)."""
GENERATED_DIR = "generated"
"""Folder under the slice-cache root that holds generated-label entries."""
_FORMAT = "covidseg-generated-labels"
_VERSION = 1
_BATCH = 32


def _slicewise(hu: np.ndarray, spacing: Sequence[float]) -> np.ndarray:
    return np.stack([slice_lung_mask(s, spacing[1:]) for s in hu])


def _auto(hu: np.ndarray, spacing: Sequence[float]) -> np.ndarray:
    return _slicewise(hu, spacing) if hu.shape[0] == 1 else classical_lung_mask(hu, spacing)


LABEL_GENERATORS: dict[str, Callable[[np.ndarray, Sequence[float]], np.ndarray]] = {
    "classical_lung_mask": _auto,
    "slice_lung_mask": _slicewise,
}
"""Generator name -> ``f(hu (Z, Y, X), spacing (z, y, x)) -> boolean lung mask``."""


def generator_class_names(name: str) -> tuple[str, ...]:
    """Class names of a label generator's output.

    Raises:
        ConfigError: Unknown generator (the message lists the valid names).

    Examples:
        >>> generator_class_names("slice_lung_mask")
        ('background', 'lung')
    """
    if name not in LABEL_GENERATORS:
        raise ConfigError(f"unknown label generator {name!r}; expected one of {sorted(LABEL_GENERATORS)}")
    return LUNG_CLASSES


def generate_labels(name: str, hu: np.ndarray, spacing: Sequence[float]) -> np.ndarray:
    """Class map ``uint8 (Z, Y, X)`` of generator ``name`` for a canonical HU volume (one slice: Z = 1).

    Examples:
        >>> generate_labels("slice_lung_mask", np.zeros((2, 8, 8), np.int16), (1.0, 1.0, 1.0)).shape
        (2, 8, 8)
    """
    generator_class_names(name)
    volume = np.asarray(hu)
    if volume.ndim != 3:
        raise ValueError(f"hu must be a (Z, Y, X) volume, got shape {volume.shape}")
    return LABEL_GENERATORS[name](volume, tuple(float(s) for s in spacing)).astype(np.uint8)


def _source_fingerprint() -> list[str]:
    """SHA-256 of the generators' source files (a changed heuristic gets new cache entries)."""
    digests = []
    for module in (__name__, "covidseg.infer.lungmask"):
        spec = importlib.util.find_spec(module)
        if spec is None or spec.origin is None:
            raise InputError(f"{module} is missing; reinstall covidseg")
        digests.append(hashlib.sha256(Path(spec.origin).read_bytes()).hexdigest())
    return digests


def _link_or_copy(source: Path, target: Path) -> None:
    try:
        os.link(source, target)
    except OSError:
        target.write_bytes(source.read_bytes())


def _write_generated(folder: Path, case: CaseRecord, base: CachedCase, generator: str, key: str) -> None:
    loaded = load_case(case)
    mask = generate_labels(generator, loaded.hu, loaded.spacing)
    n, height, width = base.images.shape
    if mask.shape[0] != n:
        raise InputError(f"case {case.case_id}: {mask.shape[0]} label slices for {n} cached slices; rebuild the cache")
    n_classes = len(LUNG_CLASSES)
    labels = np.lib.format.open_memmap(folder / "labels.npy", mode="w+", dtype=np.uint8, shape=(n, height, width))
    counts = np.zeros((n, n_classes), np.int64)
    for start in range(0, n, _BATCH):
        rows = slice(start, min(start + _BATCH, n))
        batch = torch.from_numpy(np.ascontiguousarray(mask[rows])).unsqueeze(1)
        if tuple(batch.shape[-2:]) != (height, width):
            batch = F.interpolate(batch, size=(height, width), mode=LABEL_RESIZE_MODE)
        resized = batch[:, 0].numpy()
        labels[rows] = resized
        counts[rows] = [np.bincount(s.ravel(), minlength=n_classes) for s in resized]
    labels.flush()
    del labels
    np.save(folder / "class_counts.npy", counts)
    if base.path is None:
        raise InputError(f"case {case.case_id}: the image entry has no folder; build it with SliceCache")
    for name in ("images.npy", "lung_fraction.npy"):
        _link_or_copy(base.path / name, folder / name)
    index = dict(base.index)
    index.update(
        key=key, labelled=True, class_names=list(LUNG_CLASSES), labels_from=generator, image_entry=str(base.path)
    )
    (folder / "index.json").write_text(json.dumps(index, indent=1) + "\n")


def generated_entry(cache: SliceCache, case: CaseRecord, config: PreprocessConfig, generator: str) -> CachedCase:
    """The case's cached slices with generator labels, building the image entry and the labels when missing.

    Args:
        cache: The slice cache (the image entry is built there as for training).
        case: The case (labelled or not; its own labels are not used).
        config: Preprocessing settings.
        generator: A name in :data:`LABEL_GENERATORS`.

    Returns:
        A memory-mapped :class:`CachedCase` labelled with :data:`LUNG_CLASSES`.

    Raises:
        ConfigError: Unknown generator.
        InputError, NotHUError: The case cannot be read.
    """
    generator_class_names(generator)
    base = cache.get_or_build(case, config)
    record = {
        "format": _FORMAT,
        "version": _VERSION,
        "image_key": base.index.get("key"),
        "generator": generator,
        "source": _source_fingerprint(),
        "label_resize": LABEL_RESIZE_MODE,
    }
    key = hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()
    name = base.path.name if base.path is not None else case.case_id
    folder = cache.root / GENERATED_DIR / f"{name}-{generator}-{key[:12]}"
    if folder.is_dir():
        try:
            entry = open_entry(folder)
            if entry.index.get("key") == key:
                return entry
        except (InputError, OSError, ValueError, KeyError):
            pass  # incomplete or stale: rebuilt below
    try:
        with atomic_dir(folder, overwrite=folder.exists()) as tmp:
            _write_generated(tmp, case, base, generator, key)
    except OutputExistsError:
        pass  # another process finished the same entry first
    return open_entry(folder)
