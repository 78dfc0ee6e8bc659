from __future__ import annotations

import pytest

from covidseg.errors import InputError
from covidseg.evaluate.labels import (
    BINARY,
    MULTICLASS,
    ROLE_BACKGROUND,
    ROLE_LUNG,
    ROLE_OPACITY,
    resolve_scheme,
    role_confusion,
    scheme_from_class_names,
)


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ({0}, "binary"),
        ({0, 255}, "binary"),
        ({255}, "binary"),
        ({0, 1}, "binary"),
        ({0, 2}, "multiclass"),
        ({0, 1, 2}, "multiclass"),
    ],
)
def test_auto_detection(values: set[int], expected: str) -> None:
    assert resolve_scheme("auto", values).name == expected


def test_explicit_schemes_refuse_foreign_values() -> None:
    assert resolve_scheme("multiclass", {0, 1}).has_lung
    with pytest.raises(InputError, match="values 255"):
        resolve_scheme("multiclass", {0, 255})
    with pytest.raises(InputError, match="values 2"):
        resolve_scheme("binary", {0, 2}, "prediction")
    with pytest.raises(InputError, match="neither binary"):
        resolve_scheme("auto", {0, 1, 255, 2})
    with pytest.raises(InputError, match="unknown reference label scheme"):
        resolve_scheme("rgb", {0})


def test_nonzero_scheme_merges_opacity_subclasses() -> None:
    scheme = resolve_scheme("nonzero", {0, 1, 2})
    assert [scheme.role_of(v) for v in (0, 1, 2, 255)] == [ROLE_BACKGROUND, ROLE_OPACITY, ROLE_OPACITY, ROLE_OPACITY]
    assert scheme.describe() == "nonzero (0 background, any other value opacity)"
    assert resolve_scheme("auto", {0, 1, 2}).name == "multiclass"  # never chosen by auto


def test_roles_of_class_names() -> None:
    scheme = scheme_from_class_names(("background", "ground_glass", "consolidation"))
    assert [scheme.role_of(i) for i in range(3)] == [ROLE_BACKGROUND, ROLE_OPACITY, ROLE_OPACITY]
    assert not scheme.has_lung
    with pytest.raises(InputError, match="no opacity class"):
        scheme_from_class_names(("background", "lung"))
    with pytest.raises(InputError, match="'vessel' is neither"):
        scheme_from_class_names(("background", "vessel", "opacity"))


def test_role_confusion_maps_both_sides() -> None:
    joint = {(0, 0): 10, (255, 2): 4, (255, 1): 2, (0, 2): 1, (1, 0): 3}
    matrix = role_confusion(joint, BINARY, MULTICLASS)
    assert matrix[ROLE_OPACITY, ROLE_OPACITY] == 4
    assert matrix[ROLE_OPACITY, ROLE_LUNG] == 2
    assert matrix[ROLE_OPACITY, ROLE_BACKGROUND] == 3  # reference value 1 is opacity in binary masks
    assert matrix[ROLE_BACKGROUND, ROLE_OPACITY] == 1
    assert matrix.sum() == sum(joint.values())
