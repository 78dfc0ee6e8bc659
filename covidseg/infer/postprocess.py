"""From network output to the final label map: lung mask, opacity cleaned up inside it, all in physical units.

The steps, each switchable in :class:`PostprocessConfig`:

1. class probabilities -> labels (argmax, in slabs; :func:`probabilities_to_labels`);
2. lung mask = predicted lung PLUS predicted opacity, so dense consolidation stays inside the lungs (a lung
   mask without it would delete true lesions in step 4); without a lung class, the classical HU lung mask
   (:func:`covidseg.infer.lungmask.classical_lung_mask`) plus predicted opacity;
3. of its 3-D components, those inside the patient's body (:func:`covidseg.infer.body.body_mask`: not the
   table, cushions or air around the patient) or, with the HU lung mask, those holding aerated lung (fat, bowel
   or muscle taken for opacity do not); of these the ``lung_components`` largest of at least
   ``min_lung_component_ml``; holes filled (slice-wise by default, see :func:`covidseg.infer.masks.fill_holes`);
4. opacity outside the lung mask removed;
5. opening, then closing, of opacity with balls of ``opening_mm`` / ``closing_mm`` (anisotropic voxels);
6. opacity components smaller than ``min_lesion_ml`` removed (they become lung).

Output: uint8 ``(Z, Y, X)`` with 0 background, 1 lung, 2 opacity. All masks are boolean and cropped to the
lungs' bounding box; nothing here allocates a float volume.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np

from covidseg.errors import ConfigError, InputError
from covidseg.infer.body import body_mask
from covidseg.infer.lungmask import classical_lung_mask, slice_lung_mask
from covidseg.infer.masks import (
    bounding_box,
    component_sizes,
    fill_holes,
    label_components,
    morphology,
    remove_small_components,
    select_labels,
    voxel_volume_ml,
)

__all__ = [
    "LABEL_BACKGROUND",
    "LABEL_LUNG",
    "LABEL_OPACITY",
    "OUTPUT_CLASSES",
    "PostprocessConfig",
    "postprocess",
    "probabilities_to_labels",
]

LABEL_BACKGROUND = 0
"""Output label of everything outside the lungs."""
LABEL_LUNG = 1
"""Output label of lung parenchyma without opacity."""
LABEL_OPACITY = 2
"""Output label of opacity (ground glass and consolidation) inside the lungs."""
OUTPUT_CLASSES = ("background", "lung", "opacity")
"""Class names of the output label map, in label order."""

_FILL_MODES = ("slice", "volume")
_LUNG_SOURCES = ("auto", "model", "hu")
_ARGMAX_SLAB = 16
"""Axial slices per argmax slab: bounds the int64 argmax temporary to 16 slices."""


@dataclass(frozen=True)
class PostprocessConfig:
    """How network output becomes the final label map. Sizes are physical (mm, mL), never voxels.

    Attributes:
        lung_components: How many 3-D lung components to keep (the largest; 2 for two lungs, 0 keeps all).
        min_lung_component_ml: Lung components smaller than this are dropped even when among the largest.
        fill_lung_holes: Fill holes of the lung mask (vessels, missed dense lesions).
        fill_holes_mode: ``"slice"`` (each axial slice, fills vessels entering from the hilum; default) or
            ``"volume"`` (only cavities enclosed in 3-D).
        max_hole_mm2: In ``"slice"`` mode, holes with a larger area in their axial slice stay open: the
            mediastinum is enclosed when the two lungs touch in front of and behind it. 0 fills every hole.
        remove_opacity_outside_lung: Delete opacity outside the final lung mask.
        opening_mm: Radius of the ball opening opacity (removes specks and spurs thinner than twice it); 0 off.
            Off by default: probabilities resized back from the network grid are already smooth, specks go
            with ``min_lesion_ml``, and opening erodes thin subpleural and curvilinear opacity. 1 mm costs
            about 0.7 s on a 512 x 512 x 300 scan (``pipelines/bench_postprocess.py``).
        closing_mm: Radius of the ball closing opacity (bridges gaps narrower than twice it); 0 off.
        min_lesion_ml: Opacity components smaller than this become lung; 0 keeps all.
        lung_mask_source: ``"auto"`` (the model's lung class when it has one, else HU), ``"model"`` or ``"hu"``
            (the classical HU lung mask; needs ``hu``).
        within_body: With the model's lung class, lung components (lung plus opacity) that lie mostly outside
            the patient's body outline from HU (:func:`~covidseg.infer.body.body_mask`: the table, cushions,
            air around the patient) are not lungs; their opacity goes with ``remove_opacity_outside_lung``.
            Needs ``hu``; volumes only (a single slice, often a display image cropped to the thorax, has no
            outline to trust).
        opacity_connected_to_lung: With the HU lung mask, add to the lungs only the opacity components
            connected to it (dense consolidation against the chest wall is; fat, bowel and muscle the network
            took for opacity are not); otherwise all predicted opacity joins the lung mask. Volumes only.

    Examples:
        >>> cfg = PostprocessConfig(opening_mm=1.5)
        >>> PostprocessConfig.from_dict(cfg.to_dict()) == cfg
        True
    """

    lung_components: int = 2
    min_lung_component_ml: float = 20.0
    fill_lung_holes: bool = True
    fill_holes_mode: str = "slice"
    max_hole_mm2: float = 2500.0
    remove_opacity_outside_lung: bool = True
    opening_mm: float = 0.0
    closing_mm: float = 0.0
    min_lesion_ml: float = 0.05
    lung_mask_source: str = "auto"
    within_body: bool = True
    opacity_connected_to_lung: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.lung_components, bool) or int(self.lung_components) != self.lung_components:
            raise ConfigError(f"lung_components must be an integer >= 0, got {self.lung_components!r}")
        if self.lung_components < 0:
            raise ConfigError(f"lung_components must be >= 0 (0 keeps all), got {self.lung_components}")
        for name in ("min_lung_component_ml", "max_hole_mm2", "opening_mm", "closing_mm", "min_lesion_ml"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not np.isfinite(value) or value < 0:
                raise ConfigError(f"{name} must be a finite number >= 0, got {value!r}")
            object.__setattr__(self, name, float(value))
        for name in ("fill_lung_holes", "remove_opacity_outside_lung", "within_body", "opacity_connected_to_lung"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{name} must be true or false, got {getattr(self, name)!r}")
        if self.fill_holes_mode not in _FILL_MODES:
            raise ConfigError(f"fill_holes_mode must be one of {list(_FILL_MODES)}, got {self.fill_holes_mode!r}")
        if self.lung_mask_source not in _LUNG_SOURCES:
            raise ConfigError(f"lung_mask_source must be one of {list(_LUNG_SOURCES)}, got {self.lung_mask_source!r}")

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON/YAML-serialisable form."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PostprocessConfig:
        """Build from :meth:`to_dict` output; unknown keys are a :class:`~covidseg.errors.ConfigError`.

        Examples:
            >>> PostprocessConfig.from_dict({"opening": 1})
            Traceback (most recent call last):
            ...
            covidseg.errors.ConfigError: unknown post-processing keys ['opening']; expected some of [...]
        """
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown post-processing keys {unknown}; expected some of {sorted(known)}")
        return cls(**dict(data))


def probabilities_to_labels(
    probs: np.ndarray | Iterable[np.ndarray], *, channel_axis: int = 0, slab: int = _ARGMAX_SLAB
) -> np.ndarray:
    """Argmax over classes into a uint8 label volume, a few axial slices at a time.

    Args:
        probs: ``(C, Z, Y, X)`` probabilities or logits (any float dtype, numpy or a CPU tensor), or an iterable
            of chunks ``(C, z, Y, X)`` in z order (e.g. a generator that resizes slice batches back to the
            native grid), so the full multi-class volume never needs to exist.
        channel_axis: Axis of the classes in ``probs`` or in each chunk: 0 for ``(C, Z, ...)``, 1 for
            ``(Z, C, ...)`` (the layout of batched network output).
        slab: Slices per argmax step; bounds the temporary int64 argmax array.

    Returns:
        ``(Z, Y, X)`` uint8 class indices (the first class wins ties, as in ``numpy.argmax``).

    Raises:
        InputError: If an array is not 4-D or has more than 256 classes, or chunks disagree in shape.

    Examples:
        >>> p = np.zeros((3, 2, 1, 2), np.float32)
        >>> p[1, 0], p[2, 1, 0, 1] = 1.0, 1.0
        >>> probabilities_to_labels(p).tolist()
        [[[1, 1]], [[0, 2]]]
        >>> chunks = (p[:, z : z + 1] for z in range(2))
        >>> probabilities_to_labels(chunks).tolist()
        [[[1, 1]], [[0, 2]]]
    """
    if channel_axis not in (0, 1):
        raise ValueError(f"channel_axis must be 0 (C, Z, Y, X) or 1 (Z, C, Y, X), got {channel_axis}")
    if hasattr(probs, "shape") and hasattr(probs, "ndim"):
        return _argmax_array(np.asarray(probs), channel_axis, slab)
    parts = [_argmax_array(np.asarray(chunk), channel_axis, slab) for chunk in probs]
    if not parts:
        raise InputError("no probability chunks were given; pass a (C, Z, Y, X) array or a non-empty iterable")
    if len({p.shape[1:] for p in parts}) != 1:
        raise InputError(f"probability chunks differ in slice shape: {sorted({p.shape[1:] for p in parts})}")
    return np.concatenate(parts, axis=0)


def _argmax_array(arr: np.ndarray, channel_axis: int, slab: int) -> np.ndarray:
    """Argmax of one 4-D array over ``channel_axis`` in slabs of ``slab`` slices."""
    if arr.ndim != 4:
        raise InputError(f"probabilities must be 4-D (C, Z, Y, X), got shape {arr.shape}")
    n_classes = arr.shape[channel_axis]
    if not 1 <= n_classes <= 256:
        raise InputError(f"probabilities must have 1 to 256 classes along axis {channel_axis}, got {n_classes}")
    n_slices = arr.shape[1 - channel_axis]
    out = np.empty((n_slices, *arr.shape[2:]), dtype=np.uint8)
    step = max(int(slab), 1)
    for start in range(0, n_slices, step):
        rows = slice(start, min(start + step, n_slices))
        part = arr[:, rows] if channel_axis == 0 else arr[rows]
        out[rows] = np.argmax(part, axis=channel_axis)
    return out


def _class_index(class_names: Sequence[str], name: str) -> int | None:
    names = [str(n).lower() for n in class_names]
    return names.index(name) if name in names else None


def _hu_lung_mask(hu: np.ndarray, spacing: tuple[float, float, float]) -> np.ndarray:
    """The label-free lung mask: the 3-D heuristic for volumes, the per-slice variant for a single slice.

    A single 2-D slice (often a display image cropped around the thorax, HU only approximately known) has no
    body outline, trachea or left-right axis for the 3-D heuristic to use; the per-slice variant works on relative
    intensities instead (see :mod:`covidseg.train.pretrain_labels`).
    """
    if hu.shape[0] == 1:
        return slice_lung_mask(hu[0], spacing[1:])[None]
    return classical_lung_mask(hu, spacing)


def postprocess(
    labels_or_probs: np.ndarray,
    spacing: Sequence[float],
    config: PostprocessConfig | None = None,
    *,
    class_names: Sequence[str] = OUTPUT_CLASSES,
    hu: np.ndarray | None = None,
) -> np.ndarray:
    """Turn the network's labels (or probabilities) into the final lung / opacity label map.

    Args:
        labels_or_probs: ``(Z, Y, X)`` integer class indices, or ``(C, Z, Y, X)`` probabilities (argmax taken).
        spacing: Voxel size (z, y, x) in mm.
        config: The steps to run; defaults to :class:`PostprocessConfig()`.
        class_names: Name of each class index of the model. Must contain ``"background"`` and ``"opacity"``;
            ``"lung"`` is optional (without it the lung mask comes from ``hu``).
        hu: Canonical ``(Z, Y, X)`` HU volume; required when the lung mask comes from HU.

    Returns:
        uint8 ``(Z, Y, X)``: 0 background, 1 lung, 2 opacity (:data:`OUTPUT_CLASSES`).

    Raises:
        InputError: Bad shapes, class indices outside ``class_names``, or ``hu`` missing when needed.
        ConfigError: ``class_names`` without background/opacity, or ``lung_mask_source="model"`` without a
            lung class.

    Examples:
        >>> labels = np.zeros((6, 12, 12), np.uint8)
        >>> labels[1:5, 2:10, 2:10] = 1  # one lung
        >>> labels[2:4, 4:8, 4:8] = 2  # a lesion
        >>> labels[0, 0, 0] = 2  # a speck outside the lung
        >>> out = postprocess(labels, (2.0, 2.0, 2.0), PostprocessConfig(min_lung_component_ml=0.1))
        >>> np.bincount(out.ravel()).tolist()
        [608, 224, 32]
    """
    cfg = config or PostprocessConfig()
    arr = np.asarray(labels_or_probs)
    labels = probabilities_to_labels(arr) if arr.ndim == 4 else arr
    if labels.ndim != 3:
        raise InputError(f"expected (Z, Y, X) labels or (C, Z, Y, X) probabilities, got shape {arr.shape}")
    if not (np.issubdtype(labels.dtype, np.integer) or labels.dtype == np.bool_):
        raise InputError(f"labels must be integer class indices, got dtype {labels.dtype}; pass probabilities 4-D")
    spacing_t = tuple(float(s) for s in spacing)
    if len(spacing_t) != 3 or not all(np.isfinite(s) and s > 0 for s in spacing_t):
        raise InputError(f"spacing must be three positive sizes in mm (z, y, x), got {tuple(spacing)}")
    if labels.size and int(labels.max()) >= len(class_names):
        raise InputError(f"labels hold class {int(labels.max())} but only {len(class_names)} classes are named")

    i_opacity = _class_index(class_names, "opacity")
    i_lung = _class_index(class_names, "lung")
    if i_opacity is None or _class_index(class_names, "background") is None:
        raise ConfigError(f"class_names must include 'background' and 'opacity', got {list(class_names)}")
    source = cfg.lung_mask_source
    if source == "auto":
        source = "model" if i_lung is not None else "hu"
    if hu is not None and np.shape(hu) != labels.shape:
        raise InputError(f"hu shape {np.shape(hu)} differs from the label shape {labels.shape}")
    is_volume = labels.shape[0] > 1
    out = np.zeros(labels.shape, dtype=np.uint8)
    seeds = outside = None
    if source == "model":
        if i_lung is None:
            raise ConfigError(f"lung_mask_source='model' needs a 'lung' class; the model has {list(class_names)}")
        # Everything below happens on the bounding box of lung + opacity: often a quarter of the scan.
        box = bounding_box(_foreground(labels, class_names, i_lung, i_opacity))
        if box is None:
            return out
        crop = labels[box]
        opacity = crop == i_opacity
        lung = crop == i_lung
        if cfg.within_body and hu is not None and is_volume:
            outside = ~body_mask(np.asarray(hu), spacing_t, box=box)
    else:
        if hu is None:
            raise InputError(
                f"the model has no lung class ({list(class_names)}): pass the scan's HU volume (hu=...) "
                "so the lung mask can be computed from Hounsfield units"
            )
        full_opacity = labels == i_opacity
        full_lung = _hu_lung_mask(np.asarray(hu), spacing_t)
        box = bounding_box(full_lung | full_opacity)
        if box is None:
            return out
        opacity, lung = full_opacity[box], full_lung[box]
        if cfg.opacity_connected_to_lung and is_volume:
            seeds = lung.copy()
    lung |= opacity

    voxel_ml = voxel_volume_ml(spacing_t)
    min_voxels = int(np.ceil(cfg.min_lung_component_ml / voxel_ml))
    if cfg.lung_components > 0 or seeds is not None or outside is not None:
        lung = _lung_components(lung, cfg.lung_components, min_voxels, seeds=seeds, outside=outside)
    if cfg.fill_lung_holes:
        max_hole = None
        if cfg.fill_holes_mode == "slice" and cfg.max_hole_mm2 > 0:
            max_hole = int(cfg.max_hole_mm2 / (spacing_t[1] * spacing_t[2]))
        lung = fill_holes(lung, cfg.fill_holes_mode, max_hole)

    # The masks functions treat everything outside the box as background, as it is: the box holds every voxel
    # of lung and opacity, and opening/closing pad it themselves (closing never leaves a set's bounding box).
    if cfg.remove_opacity_outside_lung:
        opacity &= lung
    if cfg.opening_mm > 0:
        opacity = morphology(opacity, "opening", cfg.opening_mm, spacing_t)
    if cfg.closing_mm > 0:
        opacity = morphology(opacity, "closing", cfg.closing_mm, spacing_t)
        if cfg.remove_opacity_outside_lung:
            opacity &= lung
    if cfg.min_lesion_ml > 0:
        opacity = remove_small_components(opacity, int(np.ceil(cfg.min_lesion_ml / voxel_ml)))

    out_box = out[box]
    out_box[...] = lung.view(np.uint8)  # bool -> 0/1 without arithmetic
    np.copyto(out_box, np.uint8(LABEL_OPACITY), where=opacity)
    return out


def _lung_components(
    mask: np.ndarray,
    n_keep: int,
    min_voxels: int,
    *,
    seeds: np.ndarray | None = None,
    outside: np.ndarray | None = None,
) -> np.ndarray:
    """The 3-D face-connected components of ``mask`` kept as lungs, from one labelling.

    A component is kept if it holds a voxel of ``seeds`` (when given), has at most half of its voxels in
    ``outside`` (when given), and is among the ``n_keep`` largest such components with at least ``min_voxels``
    voxels (every such component, whatever its size, when ``n_keep`` is 0).
    """
    out = np.zeros(mask.shape, dtype=bool)
    box = bounding_box(mask)
    if box is None:
        return out
    crop = mask[box]
    labels, n = label_components(crop)
    sizes = component_sizes(labels, n, mask=crop)
    keep = sizes > 0
    if seeds is not None:
        reached = np.zeros(n + 1, dtype=bool)
        reached[labels[seeds[box]]] = True
        keep &= reached
    if outside is not None:  # outside voxels are few: count them, not the inside ones
        keep &= 2 * component_sizes(labels, n, mask=crop & outside[box]) <= sizes
    if n_keep > 0:
        keep &= sizes >= max(min_voxels, 1)
        largest = np.zeros(n + 1, dtype=bool)
        largest[np.argsort(-np.where(keep, sizes, -1), kind="stable")[:n_keep]] = True
        keep &= largest
    keep[0] = False
    out[box] = select_labels(labels, keep)
    return out


def _foreground(labels: np.ndarray, class_names: Sequence[str], i_lung: int, i_opacity: int) -> np.ndarray:
    """Boolean mask of the voxels labelled lung or opacity (one comparison when those are all non-background)."""
    names = [str(n).lower() for n in class_names]
    if len(set(names)) == len(names) and set(names) <= {"background", "lung", "opacity"}:
        return np.not_equal(labels, names.index("background"))
    return (labels == i_lung) | (labels == i_opacity)
