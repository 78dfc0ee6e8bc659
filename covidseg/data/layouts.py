"""Dataset layouts: an explicit registry from layout name to how its cases are found and what classes they carry.

============  ==========================================================================================
layout        folder structure
============  ==========================================================================================
volumes       ``images/<case>.<ext>`` + ``labels/<case>.<ext>`` (or nnU-Net ``imagesTr``/``labelsTr``)
covid20       the public 20-case COVID-19 CT Lung and Infection Segmentation Dataset (Ma et al. 2020)
slices        ``images/<id>.jpg`` + ``masks/<id>.png`` 2-D slices (the MedSeg layout), or images only
phantom       no files: synthetic chest CTs from :func:`covidseg.data.phantom.generate_phantom`
============  ==========================================================================================

Examples:
    >>> sorted(LAYOUTS)
    ['covid20', 'phantom', 'slices', 'volumes']
    >>> layout_class_names("slices")
    ('background', 'opacity')
    >>> cases = discover_cases("phantom", None, n_cases=3, shape=(16, 64, 64))
    >>> [(c.case_id, c.phantom.seed) for c in cases]
    [('phantom_000', 0), ('phantom_001', 1), ('phantom_002', 2)]
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from covidseg.data.cases import CLASSES_LUNG_OPACITY, CaseRecord, PhantomSpec
from covidseg.data.layouts_slices import discover_slices, slice_class_names
from covidseg.data.layouts_volumes import covid20_class_names, discover_covid20, discover_volumes, volume_class_names
from covidseg.data.validate import validate_cases
from covidseg.errors import ConfigError, InputError

__all__ = [
    "DEFAULT_PHANTOM_SHAPE",
    "DEFAULT_PHANTOM_SPACING",
    "LAYOUTS",
    "CaseRecord",
    "Layout",
    "discover_cases",
    "discover_phantom",
    "get_layout",
    "layout_class_names",
    "validate_cases",
]

DEFAULT_PHANTOM_SHAPE: tuple[int, int, int] = (32, 128, 128)
"""Voxels (z, y, x) of a phantom case: small enough to train on a CPU in minutes."""
DEFAULT_PHANTOM_SPACING: tuple[float, float, float] = (10.0, 2.8, 2.8)
"""Spacing (z, y, x) in mm of a phantom case: a 358 mm field of view and 320 mm cranio-caudal, like a chest CT."""


def phantom_class_names(**_: object) -> tuple[str, ...]:
    """Class names of phantom labels (background, lung, opacity).

    Examples:
        >>> phantom_class_names()
        ('background', 'lung', 'opacity')
    """
    return CLASSES_LUNG_OPACITY


def discover_phantom(
    root: Path | None = None,
    *,
    n_cases: int = 8,
    base_seed: int = 0,
    shape: tuple[int, int, int] | list[int] = DEFAULT_PHANTOM_SHAPE,
    spacing: tuple[float, float, float] | list[float] = DEFAULT_PHANTOM_SPACING,
    n_lesions: int | tuple[int, int] | list[int] | None = None,
) -> list[CaseRecord]:
    """Describe ``n_cases`` synthetic cases; case ``i`` is generated with seed ``base_seed + i`` when loaded.

    Args:
        root: Ignored (phantoms need no files); accepted so every layout is called the same way.
        n_cases: Number of cases.
        base_seed: Seed of the first case.
        shape: Voxels (z, y, x) of each case.
        spacing: Voxel size (z, y, x) in mm.
        n_lesions: Lesions per case, or a ``[min, max]`` range drawn per case (default: the generator's range).

    Raises:
        ConfigError: Invalid counts, shape or spacing.

    Examples:
        >>> [c.phantom.shape for c in discover_phantom(n_cases=1, shape=[16, 64, 64])]
        [(16, 64, 64)]
    """
    del root
    if n_cases < 1:
        raise ConfigError(f"n_cases must be >= 1 for the phantom layout, got {n_cases}")
    shape_t = tuple(int(v) for v in shape)
    spacing_t = tuple(float(v) for v in spacing)
    if len(shape_t) != 3 or min(shape_t) < 1:
        raise ConfigError(f"phantom shape must be three positive sizes (z, y, x), got {shape!r}")
    if len(spacing_t) != 3 or min(spacing_t) <= 0:
        raise ConfigError(f"phantom spacing must be three positive mm values (z, y, x), got {spacing!r}")
    lesions: int | tuple[int, int] | None
    if n_lesions is None or isinstance(n_lesions, int):
        lesions = n_lesions
    elif len(n_lesions) == 2 and all(isinstance(v, int) for v in n_lesions):
        lesions = (int(n_lesions[0]), int(n_lesions[1]))
    else:
        raise ConfigError(f"n_lesions must be a count or a [min, max] pair of counts, got {n_lesions!r}")
    counts = () if lesions is None else (lesions,) if isinstance(lesions, int) else lesions
    if any(v < 0 for v in counts) or (isinstance(lesions, tuple) and lesions[0] > lesions[1]):
        raise ConfigError(f"n_lesions must be >= 0 (and min <= max for a range), got {n_lesions!r}")
    width = max(3, len(str(n_cases - 1)))
    return [
        CaseRecord(
            case_id=f"phantom_{i:0{width}d}",
            layout="phantom",
            image=None,
            class_names=CLASSES_LUNG_OPACITY,
            phantom=PhantomSpec(
                seed=base_seed + i,
                shape=(shape_t[0], shape_t[1], shape_t[2]),
                spacing=(spacing_t[0], spacing_t[1], spacing_t[2]),
                n_lesions=lesions,
            ),
        )
        for i in range(n_cases)
    ]


@dataclass(frozen=True)
class Layout:
    """One dataset layout: its discovery function and the class names its labels carry.

    Attributes:
        name: Registry key.
        summary: One line describing the folder structure.
        discover: ``discover(root, **options) -> list[CaseRecord]``.
        class_names: ``class_names(**options) -> tuple[str, ...]``.
    """

    name: str
    summary: str
    discover: Callable[..., list[CaseRecord]]
    class_names: Callable[..., tuple[str, ...]]

    @property
    def options(self) -> tuple[str, ...]:
        """Names of the keyword options the layout accepts."""
        params = inspect.signature(self.discover).parameters.values()
        return tuple(p.name for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY)


LAYOUTS: dict[str, Layout] = {
    "volumes": Layout(
        "volumes", "images/<case>.<ext> + labels/<case>.<ext> volume pairs", discover_volumes, volume_class_names
    ),
    "covid20": Layout(
        "covid20",
        "COVID-19-CT-Seg_20cases/ + Lung_Mask/ + Infection_Mask/ (Ma et al. 2020)",
        discover_covid20,
        covid20_class_names,
    ),
    "slices": Layout("slices", "images/<id>.jpg + masks/<id>.png 2-D slices", discover_slices, slice_class_names),
    "phantom": Layout("phantom", "synthetic chest CTs, no files", discover_phantom, phantom_class_names),
}
"""Every dataset layout by name."""


def get_layout(name: str) -> Layout:
    """Look up a layout; an unknown name is a :class:`ConfigError` that lists the valid ones.

    Examples:
        >>> get_layout("volumes").options[:2]
        ('labelled', 'label_map')
    """
    try:
        return LAYOUTS[name]
    except KeyError:
        raise ConfigError(f"unknown dataset layout {name!r}; expected one of {sorted(LAYOUTS)}") from None


def _check_options(layout: Layout, options: dict[str, Any]) -> None:
    unknown = sorted(set(options) - set(layout.options))
    if unknown:
        raise ConfigError(
            f"unknown option(s) {unknown} for dataset layout {layout.name!r}; valid options: {list(layout.options)}"
        )


def layout_class_names(layout: str, **options: Any) -> tuple[str, ...]:
    """Class names (index = label value) that a layout's labels carry with the given options.

    Examples:
        >>> layout_class_names("covid20")
        ('background', 'lung', 'opacity')
        >>> layout_class_names("slices", masks="multiclass", merge_opacity=False)
        ('background', 'ground_glass', 'consolidation')
    """
    entry = get_layout(layout)
    _check_options(entry, options)
    return entry.class_names(**options)


def discover_cases(layout: str, root: Path | str | None, **options: Any) -> list[CaseRecord]:
    """Find the cases of a dataset folder in the given layout (no volume is read; see :func:`validate_cases`).

    Args:
        layout: A name in :data:`LAYOUTS`.
        root: The dataset folder (ignored by "phantom").
        **options: Layout options (see each layout's discover function, e.g. ``label_map`` for "volumes",
            ``labelled=False`` or ``group_pattern`` for "slices", ``n_cases`` for "phantom").

    Returns:
        The cases sorted by case id.

    Raises:
        ConfigError: Unknown layout or option.
        InputError: Missing or empty folders, duplicate case ids.

    Examples:
        >>> len(discover_cases("phantom", None, n_cases=2))
        2
    """
    entry = get_layout(layout)
    _check_options(entry, options)
    cases = entry.discover(None if root is None else Path(root), **options)
    seen: dict[str, CaseRecord] = {}
    for case in cases:
        if case.case_id in seen:
            first = seen[case.case_id].image
            raise InputError(
                f"duplicate case id {case.case_id!r}: {first} and {case.image}; give every case a unique file name"
            )
        seen[case.case_id] = case
    return sorted(cases, key=lambda c: c.case_id)
