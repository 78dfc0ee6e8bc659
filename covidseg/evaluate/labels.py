"""What the values of a label map mean: background, lung or opacity, for predictions and references alike.

Evaluation works on three *roles*: :data:`ROLE_BACKGROUND` (0), :data:`ROLE_LUNG` (1, lung parenchyma without
opacity) and :data:`ROLE_OPACITY` (2, ground glass and consolidation). A :class:`LabelScheme` maps the values a
file stores to these roles:

* ``multiclass``: 0 background, 1 lung, 2 opacity (what ``covidseg predict`` writes, and the paper's labels);
* ``binary``: infection masks, 0 background and 1 or 255 opacity; such a reference has no lung;
* ``nonzero``: 0 background, any other value opacity, for masks that split opacity into sub-classes (MedSeg's
  multi-class masks: 1 ground glass, 2 consolidation). ``auto`` never chooses it: pass it.

``auto`` decides from every value the reference files hold together (not file by file, so that a lung-only case
of a multi-class set is not taken for a binary mask): 255 means binary, 2 means multi-class, and a set that only
holds 0 and 1 is read as **binary** (1 = opacity). Pass ``multiclass`` for references whose 1 means lung.

Examples:
    >>> resolve_scheme("auto", {0, 255}).name, resolve_scheme("auto", {0, 1, 2}).name
    ('binary', 'multiclass')
    >>> role_confusion({(0, 0): 5, (255, 2): 3, (255, 1): 1}, BINARY, MULTICLASS).tolist()
    [[5, 0, 0], [0, 0, 0], [0, 1, 3]]
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from covidseg.errors import InputError

__all__ = [
    "BINARY",
    "LABEL_SCHEMES",
    "MULTICLASS",
    "NONZERO",
    "OPACITY_CLASS_NAMES",
    "ROLE_BACKGROUND",
    "ROLE_LUNG",
    "ROLE_NAMES",
    "ROLE_OPACITY",
    "SCHEME_CHOICES",
    "LabelScheme",
    "resolve_scheme",
    "role_confusion",
    "scheme_from_class_names",
]

ROLE_BACKGROUND = 0
"""Role index of background (everything outside the lungs)."""
ROLE_LUNG = 1
"""Role index of lung parenchyma without opacity."""
ROLE_OPACITY = 2
"""Role index of opacity (ground glass and consolidation)."""
ROLE_NAMES: tuple[str, str, str] = ("background", "lung", "opacity")
"""Role names by index; also the class order of ``covidseg predict`` label maps."""
OPACITY_CLASS_NAMES = frozenset({"opacity", "ground_glass", "consolidation", "infection", "lesion"})
"""Model/dataset class names evaluated as opacity."""
BINARY_VALUES = frozenset({0, 1, 255})
MULTICLASS_VALUES = frozenset({0, 1, 2})
SCHEME_CHOICES = ("auto", "binary", "multiclass", "nonzero")
MAX_VALUE = 255
"""Values of the ``--ref-labels`` / ``--pred-labels`` options."""
_MAX_SHOWN = 8


@dataclass(frozen=True)
class LabelScheme:
    """How the stored values of a label map become roles.

    Attributes:
        name: ``"binary"``, ``"multiclass"`` or ``"classes"`` (built from a model's class names).
        value_roles: ``((stored value, role), ...)``; any other value is an error.
        has_lung: Whether the scheme labels lung (only then lung scores are computed).
        description: How :meth:`describe` shows the values (default: listed by role).

    Examples:
        >>> MULTICLASS.role_of(2), BINARY.role_of(255), BINARY.has_lung
        (2, 2, False)
    """

    name: str
    value_roles: tuple[tuple[int, int], ...]
    has_lung: bool
    description: str = ""

    @property
    def values(self) -> frozenset[int]:
        """Stored values the scheme accepts."""
        return frozenset(v for v, _ in self.value_roles)

    def role_of(self, value: int) -> int:
        """Role of a stored value; InputError for values the scheme does not know."""
        for stored, role in self.value_roles:
            if stored == value:
                return role
        raise InputError(f"label value {value} is not one of {sorted(self.values)} of {self.name} label maps")

    def describe(self) -> str:
        """One phrase for reports, e.g. ``'binary (0 background, 1/255 opacity)'``.

        Examples:
            >>> MULTICLASS.describe()
            'multiclass (0 background, 1 lung, 2 opacity)'
        """
        if self.description:
            return f"{self.name} ({self.description})"
        by_role: dict[int, list[str]] = {}
        for value, role in self.value_roles:
            by_role.setdefault(role, []).append(str(value))
        parts = [f"{'/'.join(by_role[r])} {ROLE_NAMES[r]}" for r in sorted(by_role)]
        return f"{self.name} ({', '.join(parts)})"


MULTICLASS = LabelScheme("multiclass", ((0, ROLE_BACKGROUND), (1, ROLE_LUNG), (2, ROLE_OPACITY)), has_lung=True)
"""0 background, 1 lung, 2 opacity."""
BINARY = LabelScheme("binary", ((0, ROLE_BACKGROUND), (1, ROLE_OPACITY), (255, ROLE_OPACITY)), has_lung=False)
"""Infection masks: 0 background, 1 or 255 opacity."""
NONZERO = LabelScheme(
    "nonzero",
    tuple((v, ROLE_BACKGROUND if v == 0 else ROLE_OPACITY) for v in range(MAX_VALUE + 1)),
    has_lung=False,
    description="0 background, any other value opacity",
)
"""Opacity sub-classes merged: 0 background, every other value opacity (e.g. 1 ground glass, 2 consolidation)."""
LABEL_SCHEMES: dict[str, LabelScheme] = {"binary": BINARY, "multiclass": MULTICLASS, "nonzero": NONZERO}
"""Scheme name -> scheme (``auto`` is resolved by :func:`resolve_scheme`)."""


def _shown(values: Collection[int]) -> str:
    ordered = sorted(values)
    more = f" and {len(ordered) - _MAX_SHOWN} more" if len(ordered) > _MAX_SHOWN else ""
    return ", ".join(str(v) for v in ordered[:_MAX_SHOWN]) + more


def resolve_scheme(option: str, values: Collection[int], side: str = "reference") -> LabelScheme:
    """The scheme for ``option`` (auto, binary, multiclass), checked against every value the files hold.

    Args:
        option: One of :data:`SCHEME_CHOICES`.
        values: The union of the stored values of all files of this side.
        side: ``"reference"`` or ``"prediction"``, for messages.

    Raises:
        InputError: An unknown option, or values the scheme cannot interpret (the message lists them).

    Examples:
        >>> resolve_scheme("auto", {0, 1}).name  # 0/1 only: binary opacity masks
        'binary'
        >>> resolve_scheme("multiclass", {0, 1}).name
        'multiclass'
        >>> resolve_scheme("auto", {0, 7})  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        covidseg.errors.InputError: reference label values 0, 7 are neither binary ...
    """
    present = {int(v) for v in values}
    if option not in SCHEME_CHOICES:
        raise InputError(f"unknown {side} label scheme {option!r}; expected one of {list(SCHEME_CHOICES)}")
    if option == "auto":
        if present <= BINARY_VALUES and 2 not in present:
            option = "binary"
        elif present <= MULTICLASS_VALUES:
            option = "multiclass"
        else:
            raise InputError(
                f"{side} label values {_shown(present)} are neither binary (0 and 1 or 255) nor multi-class "
                "(0 background, 1 lung, 2 opacity); convert the masks or pass the right --ref-labels/--pred-labels"
            )
    scheme = LABEL_SCHEMES[option]
    unknown = present - scheme.values
    if unknown:
        raise InputError(
            f"{side} label maps hold values {_shown(unknown)}, which {scheme.describe()} label maps do not have; "
            f"pass the right --{'ref' if side == 'reference' else 'pred'}-labels ({', '.join(SCHEME_CHOICES)})"
        )
    return scheme


def scheme_from_class_names(class_names: Sequence[str]) -> LabelScheme:
    """The scheme of class-index maps of a model or dataset with ``class_names`` (index i = class i).

    Raises:
        InputError: No opacity class among the names, or a name that is neither background, lung nor opacity.

    Examples:
        >>> scheme_from_class_names(("background", "opacity")).value_roles
        ((0, 0), (1, 2))
        >>> scheme_from_class_names(("background", "lung", "opacity")).has_lung
        True
    """
    pairs: list[tuple[int, int]] = []
    for index, raw in enumerate(class_names):
        name = str(raw).lower()
        if name == "background":
            role = ROLE_BACKGROUND
        elif name == "lung":
            role = ROLE_LUNG
        elif name in OPACITY_CLASS_NAMES:
            role = ROLE_OPACITY
        else:
            raise InputError(
                f"class {raw!r} is neither background, lung nor an opacity class ({sorted(OPACITY_CLASS_NAMES)}); "
                "evaluation needs the paper's classes"
            )
        pairs.append((index, role))
    roles = {role for _, role in pairs}
    if ROLE_OPACITY not in roles:
        raise InputError(f"classes {list(class_names)} have no opacity class; evaluation scores opacity")
    return LabelScheme("classes", tuple(pairs), has_lung=ROLE_LUNG in roles)


def role_confusion(joint: Mapping[tuple[int, int], int], reference: LabelScheme, prediction: LabelScheme) -> np.ndarray:
    """The 3 x 3 role confusion matrix ``M[reference role, predicted role]`` from stored-value pair counts.

    Args:
        joint: ``{(reference value, predicted value): voxel count}`` of one case (or several, summed).
        reference: Scheme of the reference values.
        prediction: Scheme of the predicted values.

    Raises:
        InputError: A value that a scheme does not know.

    Examples:
        >>> role_confusion({(0, 0): 2, (1, 2): 1}, MULTICLASS, MULTICLASS).tolist()
        [[2, 0, 0], [0, 0, 1], [0, 0, 0]]
    """
    matrix = np.zeros((len(ROLE_NAMES), len(ROLE_NAMES)), np.int64)
    for (ref_value, pred_value), count in joint.items():
        matrix[reference.role_of(int(ref_value)), prediction.role_of(int(pred_value))] += int(count)
    return matrix
