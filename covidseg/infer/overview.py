"""A PNG overview of one segmented scan: axial montage plus a coronal view, legible at a glance.

Layout: ``n_axial`` axial slices (spread through the lungs, each the slice with the most opacity in its part
of the lungs) and, on the right, a coronal slice through the lungs at the row with the most opacity (not for
a single slice, such as a 2-D image). Lung window (level -600, width 1500 HU); lungs outlined, opacity filled
semi-transparent; radiological convention (patient's right on the image left, anterior up in axial views,
superior up in the coronal view) with R/L markers; pixel aspect from the voxel spacing; axial slice positions
marked on the coronal view.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib import patheffects
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from covidseg.errors import InputError
from covidseg.infer.masks import Box, bounding_box
from covidseg.infer.postprocess import LABEL_OPACITY
from covidseg.io.atomic import atomic_path
from covidseg.io.images import LUNG_WINDOW

__all__ = ["LUNG_COLOR", "OPACITY_ALPHA", "OPACITY_COLOR", "choose_axial_slices", "save_overview"]

LUNG_COLOR = "#33c3ff"
"""Colour of the lung outline."""
OPACITY_COLOR = (1.0, 0.45, 0.0)
"""RGB of the opacity fill (orange: visible on both black air and white tissue)."""
OPACITY_ALPHA = 0.45
"""Opacity of the opacity fill."""
MARKER_COLOR = "#ffe14d"
"""Orientation markers and slice-position lines (yellow, outlined in black: readable on air and tissue)."""
CORONAL_MIN_LUNG_FRACTION = 0.7
"""The coronal view cuts the lungs where their coronal area is at least this fraction of the largest."""
CROP_MARGIN_MM = 15.0
"""Margin kept around the lungs when the views are cropped to them."""
_PANEL_INCHES = 2.6
PNG_COMPRESS_LEVEL = 1
"""zlib level of the PNG: 1 encodes about 3x faster than Pillow's default 6, for a file about 7 % larger."""


@dataclass(frozen=True)
class _Profiles:
    """Lung and opacity voxel counts per axial slice (z) and per coronal row (y), and the lungs' bounding box."""

    lung_z: np.ndarray
    opac_z: np.ndarray
    lung_y: np.ndarray
    opac_y: np.ndarray
    box: Box | None


def _profiles(labels: np.ndarray) -> _Profiles:
    """Count lung (label > 0) and opacity (label 2) voxels per z and per y, on the lungs' bounding box only."""
    n_z, n_y = labels.shape[:2]
    lung_z, opac_z = np.zeros(n_z, dtype=np.int64), np.zeros(n_z, dtype=np.int64)
    lung_y, opac_y = np.zeros(n_y, dtype=np.int64), np.zeros(n_y, dtype=np.int64)
    box = bounding_box(labels > 0)
    if box is not None:
        crop = labels[box]
        lung_zy = (crop > 0).sum(axis=2, dtype=np.int64)
        opac_zy = (crop == LABEL_OPACITY).sum(axis=2, dtype=np.int64)
        lung_z[box[0]], opac_z[box[0]] = lung_zy.sum(axis=1), opac_zy.sum(axis=1)
        lung_y[box[1]], opac_y[box[1]] = lung_zy.sum(axis=0), opac_zy.sum(axis=0)
    return _Profiles(lung_z, opac_z, lung_y, opac_y, box)


def choose_axial_slices(labels: np.ndarray, n: int) -> list[int]:
    """Pick ``n`` axial slices: the lungs' z range in ``n`` equal parts, from each the slice with most opacity.

    Parts without opacity contribute their slice with the most lung; without lungs the slices are spread
    evenly through the scan. Returned in increasing z (inferior to superior), without repeats.

    Examples:
        >>> lab = np.zeros((30, 4, 4), np.uint8)
        >>> lab[5:25] = 1
        >>> lab[7, 0, 0] = lab[22, 0, :2] = 2
        >>> choose_axial_slices(lab, 2)
        [7, 22]
        >>> choose_axial_slices(np.zeros((10, 2, 2), np.uint8), 3)
        [1, 5, 8]
    """
    return _choose_axial(_profiles(labels), n)


def _choose_axial(profiles: _Profiles, n: int) -> list[int]:
    lung_z, opac_z = profiles.lung_z, profiles.opac_z
    n_z = lung_z.size
    n = max(1, min(int(n), n_z))
    present = np.flatnonzero(lung_z)
    if present.size == 0:
        return sorted({int(v) for v in np.floor((np.arange(n) + 0.5) * n_z / n)})
    edges = np.linspace(present[0], present[-1] + 1, n + 1)
    chosen: list[int] = []
    for lo, hi in itertools.pairwise(edges):
        rows = np.arange(int(np.floor(lo)), max(int(np.floor(hi)), int(np.floor(lo)) + 1))
        rows = rows[(rows < n_z) & ~np.isin(rows, chosen)]
        if rows.size == 0:
            continue
        score = opac_z[rows] if opac_z[rows].any() else lung_z[rows]
        chosen.append(int(rows[np.argmax(score)]))
    return sorted(chosen)


def _coronal_row(profiles: _Profiles) -> int:
    """Row (y) of the coronal view: through wide parts of the lungs, where the opacity is.

    Among rows with at least ``CORONAL_MIN_LUNG_FRACTION`` of the widest lung cross-section, the one with the
    most opacity (else the widest); the middle row without lungs.
    """
    lung_y = profiles.lung_y
    if not lung_y.any():
        return lung_y.size // 2
    wide = lung_y >= CORONAL_MIN_LUNG_FRACTION * lung_y.max()
    opac_y = np.where(wide, profiles.opac_y, -1)
    return int(np.argmax(opac_y)) if opac_y.max() > 0 else int(np.argmax(lung_y))


def _display_box(profiles: _Profiles, shape: Sequence[int], spacing: Sequence[float]) -> tuple[slice, slice]:
    """In-plane (y, x) crop around the lungs with a margin, or the whole slice without lungs."""
    if profiles.box is None:
        return slice(0, shape[1]), slice(0, shape[2])
    margins = (int(CROP_MARGIN_MM / spacing[1]), int(CROP_MARGIN_MM / spacing[2]))
    y, x = (
        slice(max(s.start - m, 0), min(s.stop + m, int(size)))
        for s, m, size in zip(profiles.box[1:], margins, shape[1:], strict=True)
    )
    return y, x


def _composite(image: np.ndarray, lab: np.ndarray) -> np.ndarray:
    """RGB uint8 of a HU image in the lung window with the opacity filled in semi-transparent orange."""
    low, high = LUNG_WINDOW
    gray = np.clip((image.astype(np.float32) - low) * (255.0 / (high - low)), 0.0, 255.0)
    rgb = np.repeat(gray[..., None], 3, axis=2)
    opacity = lab == LABEL_OPACITY
    if opacity.any():
        fill = np.asarray(OPACITY_COLOR, np.float32) * 255.0
        rgb[opacity] = rgb[opacity] * (1.0 - OPACITY_ALPHA) + fill * OPACITY_ALPHA
    return rgb.round().astype(np.uint8)


@dataclass(frozen=True)
class _Panel:
    """One view placed on the overview's single canvas (layout units: native in-plane pixels, y down)."""

    x: float
    y: float
    width: float
    height: float

    def extent(self) -> tuple[float, float, float, float]:
        """``imshow`` extent (left, right, bottom, top) on the y-down canvas."""
        return self.x, self.x + self.width, self.y + self.height, self.y

    def draw(self, ax: Axes, image: np.ndarray, lab: np.ndarray) -> None:
        """The HU image with the opacity fill, and the lung outline as a vector contour."""
        ax.imshow(_composite(image, lab), extent=self.extent(), interpolation="antialiased")
        lung = lab > 0
        if lung.any() and min(lung.shape) > 1:  # a contour needs at least 2 x 2 samples
            rows, cols = lung.shape
            xs = self.x + (np.arange(cols) + 0.5) * (self.width / cols)
            ys = self.y + (np.arange(rows) + 0.5) * (self.height / rows)
            ax.contour(xs, ys, lung.astype(np.uint8), levels=[0.5], colors=[LUNG_COLOR], linewidths=1.0)

    def row_y(self, row: float, n_rows: int) -> float:
        """Canvas y of the centre of image row ``row`` of an image with ``n_rows`` rows."""
        return self.y + (row + 0.5) * self.height / n_rows

    def markers(self, ax: Axes, top: str) -> None:
        """Radiological R (image left) and L (image right) markers, and the top label."""
        style: dict[str, Any] = {
            "color": MARKER_COLOR,
            "fontsize": 10,
            "fontweight": "bold",
            "path_effects": [patheffects.withStroke(linewidth=2.5, foreground="black")],
        }
        middle = self.y + self.height / 2
        ax.text(self.x + 0.02 * self.width, middle, "R", ha="left", va="center", **style)
        ax.text(self.x + 0.98 * self.width, middle, "L", ha="right", va="center", **style)
        ax.text(self.x + self.width / 2, self.y + 0.02 * self.height, top, ha="center", va="top", **style)

    def title(self, ax: Axes, text: str) -> None:
        """A caption just above the panel."""
        ax.text(
            self.x + self.width / 2,
            self.y - 0.015 * self.height,
            text,
            color="white",
            fontsize=9,
            ha="center",
            va="bottom",
        )


def save_overview(
    hu: np.ndarray,
    labels: np.ndarray,
    spacing: Sequence[float],
    path: str | Path,
    *,
    n_axial: int = 6,
    title: str = "",
    overwrite: bool = False,
) -> Path:
    r"""Write the PNG overview of a scan and its final label map (atomically).

    Args:
        hu: Canonical ``(Z, Y, X)`` HU volume (x toward the patient's left, y posterior, z superior).
        labels: Same shape; 0 background, 1 lung, 2 opacity.
        spacing: Voxel size (z, y, x) in mm (sets each view's pixel aspect).
        path: Destination ``.png``.
        n_axial: Number of axial slices in the montage.
        title: Shown above the figure (e.g. the scan name); the opacity summary is appended.
        overwrite: Replace an existing file.

    Returns:
        The written path.

    Raises:
        InputError: If the arrays are not 3-D or differ in shape.
        OutputExistsError: If ``path`` exists and ``overwrite`` is false.

    Examples:
        >>> import tempfile, pathlib
        >>> hu = np.full((8, 40, 40), -1000, np.int16)
        >>> lab = np.zeros(hu.shape, np.uint8)
        >>> lab[2:6, 10:30, 5:18] = lab[2:6, 10:30, 22:35] = 1
        >>> lab[3:5, 15:20, 8:12] = 2
        >>> out = save_overview(hu, lab, (5.0, 1.0, 1.0), pathlib.Path(tempfile.mkdtemp()) / "o.png", n_axial=2)
        >>> out.read_bytes()[:4] == b"\x89PNG"
        True
    """
    hu_arr, lab = np.asarray(hu), np.asarray(labels)
    if hu_arr.ndim != 3 or hu_arr.shape != lab.shape:
        raise InputError(f"hu and labels must be (Z, Y, X) of one shape, got {hu_arr.shape} and {lab.shape}")
    sz, sy, sx = (float(s) for s in spacing)
    profiles = _profiles(lab)
    rows_yx = _display_box(profiles, lab.shape, (sz, sy, sx))
    axial = _choose_axial(profiles, n_axial)
    opac_z, lung_z = profiles.opac_z, profiles.lung_z
    y_cor = _coronal_row(profiles)

    # One Axes holds every view (an Axes per view made matplotlib's figure set-up cost more than the drawing);
    # the canvas is measured in native in-plane pixels, y down, each view at its physical aspect.
    n_cols = int(np.ceil(len(axial) / 2)) if len(axial) > 3 else len(axial)
    n_rows = int(np.ceil(len(axial) / n_cols))
    crop_h, crop_w = rows_yx[0].stop - rows_yx[0].start, rows_yx[1].stop - rows_yx[1].start
    panel_w = float(crop_w)
    panel_h = crop_h * sy / sx  # the crop at its physical aspect: never stretched
    gap, band = 0.04 * panel_w, 0.12 * panel_h  # between panels, and above each row for its captions
    montage_h = n_rows * (band + panel_h)
    coronal_panel: _Panel | None = None  # a single slice (a 2-D image) has no coronal view
    canvas_w = n_cols * (panel_w + gap)
    if lab.shape[0] > 1:
        cor_h = lab.shape[0] * sz / sx  # the coronal view at the axial views' scale
        scale = min((montage_h - band) / cor_h, 2.2 * panel_w / crop_w)
        coronal_panel = _Panel(n_cols * (panel_w + gap) + gap, band, crop_w * scale, cor_h * scale)
        canvas_w = coronal_panel.x + coronal_panel.width + 0.12 * panel_w  # room for the z labels
    inches = _PANEL_INCHES / panel_w
    fig = Figure(figsize=(canvas_w * inches + 0.2, montage_h * inches + 1.0), facecolor="black")
    FigureCanvasAgg(fig)
    fig_w, fig_h = fig.get_size_inches()
    ax = fig.add_axes((0.1 / fig_w, 0.45 / fig_h, canvas_w * inches / fig_w, montage_h * inches / fig_h))
    ax.set_xlim(0, canvas_w)
    ax.set_ylim(montage_h, 0)
    ax.set_axis_off()

    lines: list[tuple[float, float, float]] = []  # (y, x from, x to) of the dotted slice-position lines
    for i, z in enumerate(axial[::-1]):  # superior first, as a radiologist scrolls
        row, col = divmod(i, n_cols)
        panel = _Panel(gap / 2 + col * (panel_w + gap), band + row * (band + panel_h), panel_w, panel_h)
        panel.draw(ax, hu_arr[z][rows_yx], lab[z][rows_yx])
        if coronal_panel is not None:
            lines.append((panel.row_y(y_cor - rows_yx[0].start, crop_h), panel.x, panel.x + panel.width))
        pct = f"{100 * opac_z[z] / lung_z[z]:.0f}% opac." if lung_z[z] else "no lung"
        panel.title(ax, f"axial z={z} ({pct})")
        panel.markers(ax, "A")

    if coronal_panel is not None:
        coronal_panel.draw(ax, hu_arr[::-1, y_cor, rows_yx[1]], lab[::-1, y_cor, rows_yx[1]])  # superior on top
        right = coronal_panel.x + coronal_panel.width
        for z in axial:
            y = coronal_panel.row_y(lab.shape[0] - 1 - z, lab.shape[0])
            lines.append((y, coronal_panel.x, right))
            ax.text(right, y, f" z={z}", color=MARKER_COLOR, fontsize=7, va="center", ha="left")
        ys, starts, stops = zip(*lines, strict=True)
        ax.hlines(ys, starts, stops, colors=MARKER_COLOR, linewidth=0.8, linestyles=":", alpha=0.8)
        coronal_panel.title(ax, f"coronal y={y_cor}")
        coronal_panel.markers(ax, "S")

    total_lung, total_opac = int(lung_z.sum()), int(opac_z.sum())
    summary = f"opacity {100 * total_opac / total_lung:.1f}% of lung volume" if total_lung else "no lungs in view"
    heading = f"{title} - {summary}" if title else summary
    fig.suptitle(heading, color="white", fontsize=11, y=0.995)
    fig.legend(
        handles=[
            Line2D([], [], color=LUNG_COLOR, linewidth=1.5, label="lung outline"),
            Patch(facecolor=OPACITY_COLOR, edgecolor="none", label="opacity (filled)"),
        ],
        loc="lower center",
        ncol=2,
        frameon=False,
        labelcolor="white",
        fontsize=9,
    )
    with atomic_path(path, overwrite=overwrite) as tmp:
        fig.savefig(
            tmp, format="png", dpi=100, facecolor=fig.get_facecolor(), pil_kwargs={"compress_level": PNG_COMPRESS_LEVEL}
        )
    return Path(path)
