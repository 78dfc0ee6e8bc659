"""CTVolume and the canonical orientation helpers."""

from __future__ import annotations

import numpy as np
import pytest

from covidseg.io import CANONICAL_AXCODES, CTVolume, canonical_affine
from covidseg.io.volume import as_hu_array, axcodes_of, canonicalize, reverse_axes
from tests.io.geometry import world


def test_canonical_affine_points_left_posterior_superior():
    aff = canonical_affine((5.0, 0.7, 0.6), origin=(1.0, 2.0, 3.0))
    assert axcodes_of(aff) == "".join(CANONICAL_AXCODES) == "SPL"
    np.testing.assert_allclose(world(aff, (1, 0, 0)) - world(aff, (0, 0, 0)), [0, 0, 5.0])  # z -> S
    np.testing.assert_allclose(world(aff, (0, 1, 0)) - world(aff, (0, 0, 0)), [0, -0.7, 0])  # y -> P
    np.testing.assert_allclose(world(aff, (0, 0, 1)) - world(aff, (0, 0, 0)), [-0.6, 0, 0])  # x -> L


def test_canonicalize_ras_array_flips_and_transposes():
    ras = np.arange(2 * 3 * 4).reshape(2, 3, 4)  # (x to R, y to A, z to S)
    arr, aff = canonicalize(ras, np.eye(4))
    assert arr.shape == (4, 3, 2) and arr.flags.c_contiguous
    # canonical (z, y, x) = (k, 2 - j, 1 - i) of the RAS array
    for z, y, x in np.ndindex(arr.shape):
        assert arr[z, y, x] == ras[1 - x, 2 - y, z]
        np.testing.assert_allclose(world(aff, (z, y, x)), [1 - x, 2 - y, z])


def test_spacing_and_shape_properties():
    vol = CTVolume.from_canonical(np.zeros((3, 4, 5), np.int16), canonical_affine((2.5, 0.8, 0.9)))
    assert vol.shape == (3, 4, 5)
    np.testing.assert_allclose(vol.spacing, (2.5, 0.8, 0.9))
    assert vol.source is None


def test_from_canonical_validates_inputs():
    with pytest.raises(ValueError, match="must be 3-D"):
        CTVolume.from_canonical(np.zeros((3, 4)), np.eye(4))
    with pytest.raises(ValueError, match="invertible 4x4"):
        CTVolume.from_canonical(np.zeros((3, 4, 5)), np.zeros((4, 4)))


def test_from_canonical_makes_contiguous_hu_copy_types():
    arr = np.zeros((5, 4, 3), np.float64).transpose(2, 1, 0)
    vol = CTVolume.from_canonical(arr, np.eye(4))
    assert vol.hu.flags.c_contiguous and vol.hu.dtype == np.int16


@pytest.mark.parametrize(
    ("values", "dtype"),
    [
        (np.array([-1024, 3071], np.int32), np.int16),
        (np.array([-1024.0, 3071.0]), np.int16),
        (np.array([0, 65535], np.uint16), np.float32),
        (np.array([-1024.5, 3.0]), np.float32),
        (np.array([np.nan, 3.0]), np.float32),
        (np.array([True, False]), np.int16),
    ],
)
def test_as_hu_array_dtype(values, dtype):
    out = as_hu_array(values)
    assert out.dtype == dtype
    np.testing.assert_array_equal(out, values.astype(np.float64))


def test_to_native_carries_trailing_channels_and_validates_shape():
    vol = CTVolume.from_canonical(np.zeros((2, 3, 4)), np.eye(4))
    with pytest.raises(ValueError, match="does not start with the volume shape"):
        vol.to_native(np.zeros((3, 3, 4)))
    assert reverse_axes(np.zeros((2, 3, 4, 5))).shape == (4, 3, 2, 5)
