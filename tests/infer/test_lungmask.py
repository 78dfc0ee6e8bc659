from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage as ndi

from covidseg.data.phantom import generate_phantom
from covidseg.infer.lungmask import HU_AIRWAY_LUMEN, classical_lung_mask, large_airways, split_sides
from covidseg.io import load_ct

SHAPE = (24, 96, 96)
SPACING = (5.0, 3.5, 3.5)
REAL_CT = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "real-ct" / "abdomen-small.nii.gz"


@pytest.fixture(scope="module")
def phantom():
    return generate_phantom(SHAPE, SPACING, seed=4, n_lesions=4)


def dice(a, b):
    return 2 * np.count_nonzero(a & b) / (np.count_nonzero(a) + np.count_nonzero(b))


def lung_columns(labels):
    """x range of each phantom lung (low x = the patient's right) at the middle slice."""
    lab = ndi.label(labels > 0)[0]
    sizes = np.bincount(lab.ravel())[1:]
    comps = np.argsort(-sizes)[:2] + 1
    return sorted((np.flatnonzero((lab == k).any(axis=(0, 1)))[[0, -1]] for k in comps), key=lambda r: r[0])


def test_phantom_lungs_found(phantom):
    mask = classical_lung_mask(phantom.hu, SPACING)
    assert mask.dtype == np.bool_ and mask.shape == SHAPE
    assert dice(mask, phantom.labels > 0) > 0.9
    _, n = ndi.label(mask)
    assert n == 2


def add_airway(hu, labels):
    """A trachea from the top slice down to mid-lung and two main bronchi into the lungs (lumen -1000 HU)."""
    hu = hu.copy()
    (_, r1), (l0, _) = lung_columns(labels)
    mid_x = (r1 + l0) // 2
    lung_y = np.flatnonzero((labels > 0).any(axis=(0, 2)))
    yc = (lung_y[0] + lung_y[-1]) // 2
    carina = SHAPE[0] // 2
    hu[carina:, yc - 2 : yc + 2, mid_x - 2 : mid_x + 2] = -1000  # trachea, 14 mm wide
    hu[carina - 1 : carina + 1, yc - 1 : yc + 1, r1 - 3 : mid_x + 1] = -1000  # right main bronchus into the lung
    hu[carina - 1 : carina + 1, yc - 1 : yc + 1, mid_x - 1 : l0 + 4] = -1000  # left main bronchus
    return hu, (slice(carina, None), slice(yc - 2, yc + 2), slice(mid_x - 2, mid_x + 2))


def test_trachea_and_main_bronchi_are_excluded(phantom):
    hu, trachea = add_airway(phantom.hu, phantom.labels)
    air = np.ones(SHAPE, bool)
    airway = large_airways(hu, air & (hu < -400), SPACING, (SHAPE[2] - 1) / 2)
    assert airway[trachea].all()
    mask = classical_lung_mask(hu, SPACING)
    assert not mask[trachea].any()
    _, n = ndi.label(mask)
    assert n == 2  # the lungs are no longer joined through the airway
    assert dice(mask, phantom.labels > 0) > 0.9


def test_bowel_gas_below_the_lungs_is_excluded(phantom):
    # 8 abdominal slices below the chest: body tissue (the lowest slice with its lungs turned to soft tissue)
    abdomen = np.where(phantom.labels[0] > 0, 40, phantom.hu[0]).astype(np.int16)
    abdomen = np.repeat(abdomen[None], 8, axis=0)
    body = abdomen[0] > -500
    ys, xs = np.nonzero(body)
    yc, xc = int(ys.mean()), int(np.percentile(xs, 70))
    abdomen[1:7, yc - 6 : yc + 6, xc - 6 : xc + 6] = -1000  # stomach gas, 6 x 12 x 12 voxels = 53 mL
    hu = np.concatenate([abdomen, phantom.hu])
    truth = np.concatenate([np.zeros((8, *SHAPE[1:]), bool), phantom.labels > 0])
    mask = classical_lung_mask(hu, SPACING)
    assert not mask[:8].any()
    assert dice(mask, truth) > 0.9


def test_merged_lungs_are_split_and_both_kept(phantom):
    hu = phantom.hu.copy()
    (_, r1), (l0, _) = lung_columns(phantom.labels)
    lung_y = np.flatnonzero((phantom.labels > 0).any(axis=(0, 2)))
    yc = (lung_y[0] + lung_y[-1]) // 2
    hu[8:16, yc - 3 : yc + 3, r1 - 2 : l0 + 3] = -850  # the lungs touch in front of the mediastinum
    mask = classical_lung_mask(hu, SPACING)
    assert dice(mask, phantom.labels > 0) > 0.9
    low, high = split_sides(mask, (SHAPE[2] - 1) / 2)
    assert low.sum() > 0.3 * mask.sum() and high.sum() > 0.3 * mask.sum()
    assert low[:, :, : r1 + 1].sum() == np.count_nonzero(mask[:, :, : r1 + 1])


def test_split_sides_names_components_by_centroid():
    m = np.zeros((4, 10, 30), bool)
    m[:, 2:8, 2:10] = True
    m[:, 2:8, 18:28] = True
    low, high = split_sides(m, 14.5)
    assert low[:, :, :10].all() == m[:, :, :10].all() and not low[:, :, 15:].any()
    assert high.sum() == 4 * 6 * 10
    low2, high2 = split_sides(m[:, :, :14], 20.0)  # a single lung left of the midline
    assert low2.sum() == m[:, :, :14].sum() and not high2.any()


@pytest.mark.parametrize("value", [-1000, 40])
def test_scans_without_lungs_give_an_empty_mask(value):
    hu = np.full((6, 32, 32), value, np.int16)
    assert not classical_lung_mask(hu, (3.0, 1.0, 1.0)).any()


def test_body_without_air_gives_an_empty_mask():
    hu = np.full((6, 40, 40), -1000, np.int16)
    hu[:, 4:36, 4:36] = 40
    hu[:, 18:22, 18:22] = -1000  # a tiny pocket (0.3 mL): too small to be a lung
    assert not classical_lung_mask(hu, (3.0, 1.0, 1.0)).any()


@pytest.mark.skipif(not REAL_CT.exists(), reason="real data folder ../shared/data is not present")
def test_real_abdominal_ct_has_no_lungs_besides_the_bases():
    volume = load_ct(REAL_CT)
    mask = classical_lung_mask(volume.hu, volume.spacing)
    ml = np.count_nonzero(mask) * np.prod(volume.spacing) / 1000
    # The scan shows no chest; only the posterior costophrenic recesses (lung bases, about 0.1 L) reach into
    # its top slices. Bowel and stomach gas (about 0.2 L, nearly pure air) must not be called lung.
    assert ml < 200
    rows = np.flatnonzero(mask.any(axis=(1, 2)))
    if rows.size:
        assert rows[0] >= 0.5 * volume.shape[0]  # superior half only (z increases toward superior)
        assert np.mean(volume.hu[mask] < HU_AIRWAY_LUMEN) < 0.1


@pytest.mark.parametrize(("pocket_hu", "is_lung"), [(-1000, False), (-850, True)])
def test_pure_air_pockets_are_gas_and_parenchyma_is_lung(pocket_hu, is_lung):
    rng = np.random.default_rng(0)
    hu = np.full((10, 60, 60), -1000.0)
    hu[:, 4:56, 4:56] = 40
    hu[2:8, 15:45, 10:30] = pocket_hu  # 6 x 30 x 20 voxels at 3 x 1.5 x 1.5 mm = 24 mL
    hu = (hu + rng.normal(0, 15, hu.shape)).round().astype(np.int16)
    mask = classical_lung_mask(hu, (3.0, 1.5, 1.5))
    assert mask[2:8, 15:45, 10:30].all() == is_lung
    assert mask.sum() == (3600 if is_lung else 0)
