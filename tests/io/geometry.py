"""Helpers shared by the io tests: small synthetic CT arrays, affines, and world-position checks."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from covidseg.io.volume import CTVolume

DATA_DIR = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"
MARKER_HU = 1500
BODY_HU = 40


def synthetic_ct(shape: tuple[int, int, int], marker: tuple[int, int, int], seed: int = 0) -> np.ndarray:
    """Int16 HU array: air, a soft-tissue block with noise, one bright marker voxel (unique maximum)."""
    rng = np.random.default_rng(seed)
    data = np.full(shape, -1000, np.int16)
    inner = tuple(slice(max(1, s // 5), s - max(1, s // 5)) for s in shape)
    data[inner] = BODY_HU + rng.integers(-30, 30, size=data[inner].shape).astype(np.int16)
    data[marker] = MARKER_HU
    return data


def rotation(axis: str, degrees: float) -> np.ndarray:
    """3x3 rotation matrix about a world axis."""
    t = np.radians(degrees)
    c, s = np.cos(t), np.sin(t)
    if axis == "x":
        return np.array([[1, 0, 0], [0, c, -s], [0, s, c]])
    if axis == "y":
        return np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])


def affine(linear: np.ndarray, origin: tuple[float, float, float]) -> np.ndarray:
    """4x4 affine from a 3x3 linear part and an origin."""
    out = np.eye(4)
    out[:3, :3] = linear
    out[:3, 3] = origin
    return out


def world(aff: np.ndarray, index: tuple[int, ...] | np.ndarray) -> np.ndarray:
    """World position (mm) of a voxel index under a 4x4 affine."""
    return (aff @ np.append(np.asarray(index, np.float64), 1.0))[:3]


def canonical_to_native_indices(volume: CTVolume, native_affine: np.ndarray) -> np.ndarray:
    """For every canonical voxel, the native index with the same world position, as an (N, 3) int array.

    Fails if a canonical voxel does not land exactly on a native voxel (wrong reorientation or affine).
    """
    grid = np.indices(volume.shape).reshape(3, -1)
    homog = np.vstack([grid, np.ones((1, grid.shape[1]))])
    native = (np.linalg.inv(native_affine) @ volume.affine @ homog)[:3]
    rounded = np.round(native)
    assert np.allclose(native, rounded, atol=1e-4), "canonical voxels do not map onto native voxel centres"
    return rounded.astype(int).T


def assert_same_voxels(volume: CTVolume, native: np.ndarray, native_affine: np.ndarray) -> None:
    """Every canonical voxel holds the native value found at the same world position."""
    idx = canonical_to_native_indices(volume, native_affine)
    assert sorted(idx.max(axis=0) + 1) == sorted(native.shape)
    expected = native[idx[:, 0], idx[:, 1], idx[:, 2]].reshape(volume.shape)
    np.testing.assert_array_equal(volume.hu, expected)


def labels_from_hu(hu: np.ndarray) -> np.ndarray:
    """A uint8 label map derived from HU: 1 for the body, 2 for the marker."""
    return (hu > -500).astype(np.uint8) + (hu >= MARKER_HU).astype(np.uint8)
