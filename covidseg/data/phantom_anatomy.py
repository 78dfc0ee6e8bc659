"""Anatomy of the synthetic chest-CT phantom: tissue values, lung shapes, body, mediastinum and skeleton.

Everything is laid out in reference millimetres (see :mod:`covidseg.data.phantom_geometry`) with canonical axes:
x toward the patient's left, y toward posterior, z toward superior. Shape functions take broadcastable ``z, y, x``
arrays, so the same function answers for a whole grid (``(Z,1,1), (1,Y,1), (1,1,X)``) or for a list of points;
in-plane terms are combined before z terms so a grid costs few full-volume operations.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from covidseg.data.phantom_geometry import Frame, Segment, draw_segments, ellipse, polyline, split_ellipse


@dataclass(frozen=True)
class TissueHU:
    """Hounsfield units the phantom is built from (unenhanced chest CT)."""

    air: float = -1000.0
    lung: float = -860.0
    lung_gravity: float = 30.0  # posterior (dependent) lung is this much denser than anterior
    airway_lumen: float = -990.0
    fat: float = -95.0
    muscle: float = 45.0
    soft: float = 38.0
    blood: float = 40.0
    liver: float = 58.0
    csf: float = 12.0
    cartilage: float = 120.0
    cortex: float = 750.0
    vertebral_marrow: float = 420.0
    rib_marrow: float = 320.0
    ggo: tuple[float, float] = (-700.0, -300.0)
    consolidation: tuple[float, float] = (-100.0, 50.0)


HU = TissueHU()
"""Tissue values (HU) of the phantom."""

# Body and rib cage (reference mm).
BODY_CY, BODY_RX, BODY_ANT, BODY_POST = 5.0, 165.0, 110.0, 118.0
FAT_MM = 18.0
CAVITY_CY, CAVITY_RX, CAVITY_ANT, CAVITY_POST = 5.0, 130.0, 80.0, 92.0
RIB_INNER, RIB_OUTER = 1.025, 1.10  # normalised cavity radius of the ribs' inner and outer surface
RIB_DROP_MM = 95.0  # how much lower a rib's front end lies than its back
BODY_POWER = 2.4  # superellipse exponent of the body outline (a chest is boxier than an ellipse)
# Spine: vertebral body and canal centres (y) on the midline.
VERTEBRA_Y, VERTEBRA_RX, VERTEBRA_RY, CANAL_Y, CANAL_R = 62.0, 18.0, 15.0, 88.0, 8.0
# Cranio-caudal landmarks (z).
APEX_Z = {"right": 128.0, "left": 123.0}
TAPER_Z = -20.0
DOME_TOP_Z = {"right": -45.0, "left": -62.0}
CARINA_Z = 30.0
MIDLINE_GAP = 7.0  # half-width of the anterior junction between the lungs
HEART = {"cx": 24.0, "cy": -22.0, "cz": -58.0, "long": 64.0, "short": 47.0, "height": 52.0, "angle": 0.7}


def cage_narrowing(z: np.ndarray) -> np.ndarray:
    """Scale of the rib cage's cross-section at height ``z``: widest low in the chest, narrow at the top."""
    return 1.0 - 0.35 * np.clip((z + 40.0) / 200.0, 0.0, 1.0) ** 1.5


def cavity_radius(z: np.ndarray, y: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Normalised radius of the rib cage's interior (< 1 inside); it narrows toward the apices."""
    narrow = cage_narrowing(z)
    return split_ellipse(y, x, CAVITY_CY, CAVITY_RX, CAVITY_ANT, CAVITY_POST) / narrow


def heart_radius(z: np.ndarray, y: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Squared normalised radius of the heart, an ellipsoid tilted toward the anterior left (< 1 inside)."""
    c, s = np.cos(HEART["angle"]), np.sin(HEART["angle"])
    dx, dy = x - HEART["cx"], y - HEART["cy"]
    u, v = dx * c - dy * s, dx * s + dy * c  # u along the long axis (toward anterior left)
    return (u / HEART["long"]) ** 2 + (v / HEART["short"]) ** 2 + ((z - HEART["cz"]) / HEART["height"]) ** 2


def dome_z(y: np.ndarray, x: np.ndarray, side: str) -> np.ndarray:
    """Height of a hemidiaphragm: highest in front of the lung's centre, lowest in the posterior recess."""
    cx = -55.0 if side == "right" else 55.0
    ry = np.where(y < -30.0, 150.0, 95.0)  # a gentle slope to the front, a steep one to the back
    q = ((y + 30.0) / ry) ** 2 + ((x - cx) / 80.0) ** 2
    return DOME_TOP_Z[side] - 50.0 * q * (1.0 + 0.3 * np.clip(y / 90.0, 0.0, 1.0))


def mediastinum(z: np.ndarray, y: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Everything between and behind the lungs they must not enter (with a pleural margin)."""
    central = ellipse(y, x, 0.0, 3.0, 56.0, 24.0) <= 1.0
    junction = (np.abs(x) < MIDLINE_GAP) & (y < 0.0)
    spine = ellipse(y, x, VERTEBRA_Y + 8.0, 0.0, 38.0, 27.0) <= 1.0
    aorta = ellipse(y, x, 42.0, 26.0, 17.0, 17.0) <= 1.0
    upper = ellipse(y, x, -5.0, 4.0, 58.0, 44.0) <= 1.0  # great vessels above the arch
    trunk = ellipse(y, x, -30.0, 8.0, 24.0, 30.0) <= 1.0  # ascending aorta and pulmonary trunk
    fixed = central | junction | spine | (aorta & (z < 80.0))
    great = (upper & (z > 45.0)) | (trunk & (z > -12.0) & (z < 50.0))
    bronchi = ellipse(y, x, 17.0, 0.0, 18.0, 52.0) <= 1.0 - ((z - 18.0) / 30.0) ** 2  # around the main bronchi
    return fixed | great | bronchi | hila(z, y, x) | (heart_radius(z, y, x) <= 1.18)


def lung_masks(z: np.ndarray, y: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Right and left lung (booleans broadcast from ``z, y, x``); the right lung lies at negative x.

    Examples:
        >>> right, left = lung_masks(np.array([0.0, 0.0]), np.array([0.0, 0.0]), np.array([-90.0, 90.0]))
        >>> right.tolist(), left.tolist()
        ([True, False], [False, True])
    """
    inside = (cavity_radius(z, y, x) < 0.985) & ~mediastinum(z, y, x)
    out = []
    for side, sign in (("right", -1.0), ("left", 1.0)):
        # Apex: the lung's cross-section shrinks to a rounded dome above TAPER_Z.
        shrink = np.clip((z - TAPER_Z) / (APEX_Z[side] - TAPER_Z), 0.0, 1.0)
        apex = ellipse(y, x, 20.0, sign * 62.0, 100.0, 78.0) <= 1.0 - shrink**2
        out.append(inside & (sign * x > MIDLINE_GAP) & (z > dome_z(y, x, side)) & apex)
    return out[0], out[1]


def paint_tubes(
    hu: np.ndarray,
    frame: Frame,
    segments: list[Segment],
    value: float,
    *,
    grow_mm: float = 0.0,
    where: np.ndarray | None = None,
    cover: np.ndarray | None = None,
) -> None:
    """Blend tubes of tissue ``value`` into ``hu`` by their partial-volume cover (only ``where``, if given).

    ``cover`` is a zeroed float32 scratch array of ``hu``'s shape (returned zeroed), to avoid reallocating it.
    """
    scratch = np.zeros(hu.shape, np.float32) if cover is None else cover
    box = draw_segments(scratch, frame, segments, grow_mm=grow_mm)
    if box is None:
        return
    sub, frac = hu[box], scratch[box]
    delta = (value - sub) * frac
    if where is not None:
        delta *= where[box]
    sub += delta
    frac[...] = 0.0


def paint_body(hu: np.ndarray, frame: Frame) -> None:
    """Body (subcutaneous fat, muscle), thoracic contents below the lungs' level (fat, liver, upper abdomen)."""
    z, y, x = frame.axes()
    body_r = split_ellipse(y, x, BODY_CY, BODY_RX, BODY_ANT, BODY_POST, BODY_POWER)[0]
    muscle_r = split_ellipse(
        y, x, BODY_CY, BODY_RX - FAT_MM, BODY_ANT - FAT_MM + 3.0, BODY_POST - FAT_MM + 2.0, BODY_POWER
    )[0]
    edge = frame.pixel / min(BODY_RX, BODY_ANT)  # one voxel in normalised units: soft edges
    plane = np.full(body_r.shape, HU.air, dtype=np.float32)  # the same in every slice
    plane += np.clip((1.0 - body_r) / edge + 0.5, 0.0, 1.0) * (HU.fat - plane)
    plane += np.clip((1.0 - muscle_r) / edge + 0.5, 0.0, 1.0) * (HU.muscle - plane)
    hu[...] = plane
    cavity = cavity_radius(z, y, x) <= RIB_INNER
    hu[cavity] = HU.fat  # mediastinal fat; organs are painted on top
    below = z < np.where(x < 15.0, dome_z(y, x, "right"), dome_z(y, x, "left")) - 4.0
    abdomen = cavity & below & (heart_radius(z, y, x) > 1.0)
    hu[abdomen & (x < 15.0)] = HU.liver
    hu[abdomen & (x >= 15.0)] = HU.soft


def paint_mediastinum(hu: np.ndarray, frame: Frame) -> np.ndarray:
    """Heart, great vessels, trachea and main bronchi, oesophagus; return where lungs must not be (airways)."""
    z, y, x = frame.axes()
    hu[heart_radius(z, y, x) <= 1.0] = HU.blood
    hu[hila(z, y, x, margin=0.8)] = HU.blood  # hilar vessels and lymph nodes
    top, bottom = 175.0, -175.0
    # Points are (z, y, x) in reference mm.
    vessels = [
        *polyline([(-5, -30, -4), (60, -26, -4), (78, -6, 10), (76, 20, 30), (62, 40, 27), (bottom, 42, 26)], 13.0),
        *polyline([(-2, -46, 14), (20, -26, 22)], 13.0),  # pulmonary trunk
        *polyline([(20, -20, 16), (16, 4, -36)], 10.0),  # right pulmonary artery
        *polyline([(20, -24, 20), (24, 6, 42)], 10.0),  # left pulmonary artery
        *polyline([(0, -16, -28), (top, -10, -26)], 10.0),  # superior vena cava
        *polyline([(74, -22, -2), (top, -24, -14)], 6.5),  # brachiocephalic trunk
        *polyline([(80, -8, 10), (top, -12, 14)], 5.0),  # left common carotid
        *polyline([(79, 8, 22), (top, 4, 28)], 5.0),  # left subclavian
    ]
    cover = np.zeros(hu.shape, np.float32)
    paint_tubes(hu, frame, vessels, HU.blood, cover=cover)
    gullet = polyline([(top, 32, 3), (CARINA_Z, 33, 4), (bottom, 36, 6)], 7.0)
    paint_tubes(hu, frame, gullet, HU.muscle, cover=cover)
    lumen = central_airways()
    paint_tubes(hu, frame, lumen, HU.soft, grow_mm=2.0, cover=cover)
    box = draw_segments(cover, frame, lumen)
    airway = np.zeros(hu.shape, dtype=bool)
    if box is not None:
        sub = hu[box]
        sub += cover[box] * (HU.airway_lumen - sub)
        # Voxels next to the lumen (two in-plane, one across slices) are wall, never lung, at any resolution:
        # the lungs touch the airways only through the small bronchi drawn inside them.
        wide = tuple(
            slice(max(b.start - m, 0), min(b.stop + m, n)) for b, m, n in zip(box, (1, 2, 2), hu.shape, strict=True)
        )
        grown = ndimage.binary_dilation(cover[wide] > 0.05, structure=np.ones((1, 3, 3), bool), iterations=2)
        airway[wide] = ndimage.binary_dilation(grown, structure=np.ones((3, 1, 1), bool))
    return airway


def central_airways() -> list[Segment]:
    """Lumen of the trachea and the main bronchi (reference mm); the carina lies at ``CARINA_Z``."""
    carina = (CARINA_Z, 16.0, 0.0)
    return [
        *polyline([(175.0, 12.0, 0.0), (90.0, 14.0, 0.0), carina], 9.0),
        *polyline([carina, (5.0, 16.0, -34.0)], [7.0, 6.0]),  # right main bronchus: short and steep
        *polyline([carina, (12.0, 20.0, 26.0), (5.0, 22.0, 44.0)], [6.5, 6.0, 5.5]),  # left: long, more level
    ]


def hila(z: np.ndarray, y: np.ndarray, x: np.ndarray, margin: float = 1.0) -> np.ndarray:
    """The lung roots, where bronchi and pulmonary vessels enter the lungs (``margin`` < 1 for their core)."""
    right = ellipse(y, x, 8.0, -38.0, 22.0, 14.0) <= margin - ((z - 8.0) / 32.0) ** 2
    left = ellipse(y, x, 12.0, 42.0, 22.0, 14.0) <= margin - ((z - 5.0) / 32.0) ** 2
    return right | left


def paint_skeleton(hu: np.ndarray, frame: Frame) -> None:
    """Ribs (descending from back to front), costal cartilages, sternum, spine, scapulae and clavicles."""
    z, y, x = frame.axes()
    zz = z[:, 0, 0]
    rho2d = split_ellipse(y, x, CAVITY_CY, CAVITY_RX, CAVITY_ANT, CAVITY_POST)[0]
    phi = np.abs(np.arctan2(x, y - CAVITY_CY))[0]  # 0 at the spine, pi at the sternum
    narrow = cage_narrowing(zz)
    band = (rho2d > RIB_INNER * narrow.min() - 0.02) & (rho2d < RIB_OUTER + 0.02) & (phi > 0.3)
    iy, ix = np.nonzero(band)
    if len(iy):
        rho = rho2d[iy, ix][None, :] / narrow[:, None]
        mid, half = (RIB_INNER + RIB_OUTER) / 2, (RIB_OUTER - RIB_INNER) / 2
        dr = (rho - mid) / half
        drop = RIB_DROP_MM * (1.0 - np.cos(phi[iy, ix])) / 2.0  # a rib runs lower in front than at the back
        k = np.clip(np.rint((150.0 - drop[None, :] - zz[:, None]) / 22.0), 0, 11)
        dz = (zz[:, None] - (150.0 - 22.0 * k - drop[None, :])) / 5.5
        q = dr**2 + dz**2
        reach = np.where(k >= 10, 1.7, 2.45)  # floating ribs are short
        bone = (q <= 1.0) & (phi[iy, ix][None, :] < reach)
        cartilage = (q <= 1.0) & ~bone & (k < 7) & (phi[iy, ix][None, :] < 2.9)
        values = np.where(q <= 0.45, HU.rib_marrow, HU.cortex)
        sub = hu[:, iy, ix]
        sub[cartilage] = HU.cartilage
        sub[bone] = values[bone]
        hu[:, iy, ix] = sub
    # Sternum on the anterior midline, body and manubrium.
    sternum = ellipse(y, x, -CAVITY_ANT + CAVITY_CY - 9.0, 0.0, 6.5, 14.0)
    in_z = (z > -95.0) & (z < 120.0)
    hu[np.broadcast_to((sternum <= 1.0) & in_z, hu.shape)] = HU.cortex
    hu[np.broadcast_to((sternum <= 0.4) & in_z, hu.shape)] = HU.rib_marrow
    _paint_spine(hu, frame)
    # Scapulae: curved plates behind the upper ribs; clavicles at the top.
    muscle_r = split_ellipse(
        y, x, BODY_CY, BODY_RX - FAT_MM, BODY_ANT - FAT_MM + 3.0, BODY_POST - FAT_MM + 2.0, BODY_POWER
    )[0]
    scap = (rho2d > RIB_OUTER + 0.06) & (muscle_r > 0.86) & (muscle_r < 0.9) & (phi > 0.45) & (phi < 1.2)
    hu[np.broadcast_to(scap & (z > 20.0) & (z < 145.0), hu.shape)] = HU.cortex
    clavicles = [
        segment
        for sign in (-1.0, 1.0)
        for segment in polyline([(140, -88, 18 * sign), (150, -86, 80 * sign), (157, -45, 135 * sign)], 7.0)
    ]
    paint_tubes(hu, frame, clavicles, HU.cortex)


def _paint_spine(hu: np.ndarray, frame: Frame) -> None:
    """Vertebral bodies with discs, spinal canal, pedicles, laminae, transverse and spinous processes."""
    z, y, x = frame.axes()
    body = ellipse(y, x, VERTEBRA_Y, 0.0, VERTEBRA_RY, VERTEBRA_RX)
    canal = ellipse(y, x, CANAL_Y, 0.0, CANAL_R, CANAL_R)
    arch = (canal > 1.0) & (canal <= 2.6) & (y > VERTEBRA_Y + VERTEBRA_RY - 4.0)
    # Transverse processes run back and out from the pedicles.
    along = np.clip((np.abs(x) - 10.0) / 18.0, 0.0, 1.0)
    transverse = np.hypot(np.abs(x) - (10.0 + 18.0 * along), y - (CANAL_Y - 4.0 + 9.0 * along)) < 3.5
    spinous = (np.abs(x) < 3.5) & (y > CANAL_Y + 8.0) & (y < CANAL_Y + 26.0)
    phase = np.mod(z + 7.0, 26.0)
    disc = phase < 5.0
    level = np.broadcast_to((body <= 1.0), hu.shape)
    hu[level] = HU.cortex
    inner = np.broadcast_to(body <= 0.72, hu.shape)
    hu[inner] = HU.vertebral_marrow
    hu[np.broadcast_to(body <= 1.0, hu.shape) & np.broadcast_to(disc, hu.shape)] = 85.0
    hu[np.broadcast_to(canal <= 1.0, hu.shape)] = HU.csf
    posterior = np.broadcast_to(arch | transverse | spinous, hu.shape) & np.broadcast_to(phase > 7.0, hu.shape)
    hu[posterior] = HU.cortex
