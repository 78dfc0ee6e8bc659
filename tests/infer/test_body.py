from pathlib import Path

import numpy as np
import pytest

from covidseg.data.phantom import generate_phantom
from covidseg.infer.body import body_mask
from covidseg.infer.lungmask import HU_BODY, classical_lung_mask
from covidseg.infer.masks import fill_holes, keep_largest_components
from covidseg.io import load_ct

REAL_CT = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "real-ct" / "abdomen-small.nii.gz"
SPACING = (5.0, 1.6, 1.6)


def on_the_table(hu: np.ndarray) -> np.ndarray:
    """The phantom lying on a foam cushion on a table: 20 rows added below it."""
    z, rows, cols = hu.shape
    out = np.full((z, rows + 20, cols), -1000, np.int16)
    out[:, :rows] = hu
    back = int(np.flatnonzero((hu > HU_BODY).any(axis=(0, 2)))[-1])
    out[:, back + 1 : back + 8, 4:-4] = -900  # the cushion's foam, touching the back
    out[:, back + 8, 4:-4] = 100  # the cushion's cover
    out[:, back + 10 : back + 14, :] = 300  # the table, across the whole field of view
    return out


@pytest.fixture(scope="module")
def phantom():
    return generate_phantom((12, 112, 112), SPACING, seed=5, n_lesions=2)


def test_body_holds_the_lungs_and_not_the_table_cushion_or_air(phantom):
    hu = on_the_table(phantom.hu)
    body = body_mask(hu, SPACING)
    assert body.shape == hu.shape and body.dtype == bool
    rows = phantom.hu.shape[1]
    assert body[:, :rows][phantom.labels > 0].all()
    assert body[:, :rows].sum() > 0.95 * fill_holes(phantom.hu > HU_BODY, "slice").sum()
    assert not body[:, rows:].any()  # cushion, cover and table
    assert not body[:, :2].any() and not body[:, :, :2].any()  # the air around the patient


def test_subsampled_body_agrees_with_the_full_resolution_one():
    fine = (5.0, 0.8, 0.8)
    phantom = generate_phantom((6, 224, 224), fine, seed=1, n_lesions=1)
    full = body_mask(phantom.hu, fine, pixel_mm=0.8)
    half = body_mask(phantom.hu, fine)  # every 2nd row and column
    assert full[phantom.labels > 0].all() and half[phantom.labels > 0].all()
    outline = np.count_nonzero(full) ** 0.5 * 4 * full.shape[0]  # about the voxels along the outline
    assert np.count_nonzero(full != half) < outline / 2


def test_slices_cut_by_the_field_of_view_count_as_body_and_an_empty_scan_has_none(phantom):
    hu = phantom.hu.copy()
    cut = hu.shape[0] // 2
    rows = np.flatnonzero((hu[cut] > HU_BODY).any(axis=1))
    hu[cut, rows[0] : rows[-1], :] = np.maximum(hu[cut, rows[0] : rows[-1], :], 40)  # tissue reaches both edges
    body = body_mask(hu, SPACING)
    assert body[cut].all() and not body[cut - 1].all()
    assert not body_mask(np.full((3, 20, 20), -1000, np.int16), SPACING).any()
    with pytest.raises(ValueError, match="volume"):
        body_mask(hu[0], SPACING)
    with pytest.raises(ValueError, match="positive"):
        body_mask(hu, (5.0, 0.0, 1.0))


@pytest.mark.skipif(not REAL_CT.is_file(), reason="real CT not available (../shared/data/real-ct)")
def test_real_abdominal_ct_body_excludes_the_table_and_holds_the_lung_bases():
    volume = load_ct(REAL_CT)
    body = body_mask(volume.hu, volume.spacing)
    # The cushion and table surfaces lie below the patient's back, in rows 93-100 of this 101-row scan; the
    # cushion's cover touches the back (rows 96-97 join the body), the table below does not.
    tissue = volume.hu > HU_BODY
    table = tissue & ~keep_largest_components(tissue, 1)
    table[:, :90] = False  # (above: bits of bowel content, holes of the body)
    assert table[:, 98:].any() and not (body & table).any() and not body[:, 98:].any()
    assert body[:, 40, 30:90].all()  # the abdomen
    lung_bases = classical_lung_mask(volume.hu, volume.spacing)
    assert lung_bases.any() and body[lung_bases].all()
