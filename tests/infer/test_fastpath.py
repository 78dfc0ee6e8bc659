"""Fast-path slice selection from HU: lung slices and their margin run, body-only and empty slices do not."""

from __future__ import annotations

import numpy as np
import pytest

from covidseg.infer.fastpath import lung_slice_fractions, slices_to_run
from covidseg.infer.spec import SliceSkipConfig
from tests.infer.analytic import toy_chest


def _padded_chest() -> np.ndarray:
    hu, _ = toy_chest((12, 64, 64))
    body = np.where(hu[:1] > -500, np.int16(40), np.int16(-1000))
    return np.concatenate([np.repeat(body, 6, axis=0), hu, np.full((3, 64, 64), -1000, np.int16)], axis=0)


def test_fractions_see_lungs_but_not_rims_or_gas():
    hu = _padded_chest()
    frac = lung_slice_fractions(hu)
    assert (frac[:6] == 0).all() and (frac[-3:] == 0).all()
    assert frac[6 + 6] > 0.2  # a middle slice of the chest
    gas = np.full((1, 64, 64), -1000, np.int16)
    gas[0, 8:56, 8:56] = 40
    gas[0, 30:40, 30:40] = -1000  # bowel gas with a partial-volume rim
    gas[0, 29, 30:40] = gas[0, 40, 30:40] = -700
    assert lung_slice_fractions(gas)[0] == 0


def test_margin_and_disabled():
    hu = _padded_chest()
    lungs = lung_slice_fractions(hu) >= 0.005
    first, last = np.flatnonzero(lungs)[[0, -1]]
    run = slices_to_run(hu, (5.0, 1.5, 1.5), SliceSkipConfig(enabled=True, margin_mm=10.0))
    assert run[first - 2 : last + 3].all() and not run[: first - 2].any() and not run[last + 3 :].any()
    assert slices_to_run(hu, (5.0, 1.5, 1.5), SliceSkipConfig(enabled=False)).all()
    empty = np.full((4, 32, 32), -1000, np.int16)
    assert not slices_to_run(empty, (1.0, 1.0, 1.0), SliceSkipConfig(enabled=True)).any()


def test_large_slices_are_subsampled_consistently():
    hu = _padded_chest()
    big = np.repeat(np.repeat(hu, 8, axis=1), 8, axis=2)  # 512 x 512 slices
    fine, coarse = lung_slice_fractions(big), lung_slice_fractions(hu)
    assert np.array_equal(fine >= 0.005, coarse >= 0.005)
    np.testing.assert_allclose(fine, coarse, rtol=0.25)  # the one-voxel rim erosion weighs more at 64 px


@pytest.mark.parametrize("axis", [1, 2])
def test_body_extent_is_everything_between_the_first_and_last_voxel(axis):
    from covidseg.infer.fastpath import _between

    rng = np.random.default_rng(axis)
    mask = rng.random((3, 20, 30)) < 0.05  # many lines with no True voxel
    forward = np.logical_or.accumulate(mask, axis=axis)
    backward = np.flip(np.logical_or.accumulate(np.flip(mask, axis=axis), axis=axis), axis=axis)
    np.testing.assert_array_equal(_between(mask, axis), forward & backward)
