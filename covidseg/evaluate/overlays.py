"""Figure 2 of the paper: TP / FP / FN overlays of the same slices under several runs, side by side.

Rows are axial slices, columns are runs. Each panel is the CT slice in grey (a lung window) with the opacity
of the run compared with the reference blended on top: true positives green, false positives red, false
negatives yellow (:data:`TP_COLOR`, :data:`FP_COLOR`, :data:`FN_COLOR`, at :data:`OVERLAY_ALPHA`). Each panel's
title names the run and that slice's 2-D Dice. The RGB panels are computed here (:func:`overlay_rgb`) and drawn
unscaled in colour (nearest-neighbour), so the figure holds exactly these colours.

Slices: ``auto`` takes the slices with the most reference opacity (then, when fewer slices have any, those where
the runs disagree most with the reference); ``disagreement`` takes those with the most FP + FN summed over runs;
or give the indices.

Examples:
    >>> ref = np.zeros((3, 4, 4), bool); ref[1, :2] = True
    >>> pred = np.zeros((3, 4, 4), bool); pred[1, 1:3] = True
    >>> pick_slices(ref, {"run": pred}, "auto", 1), round(slice_dice(ref[1], pred[1]), 3)
    ([1], 0.5)
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from covidseg.errors import InputError
from covidseg.io.atomic import atomic_path, check_writable
from covidseg.io.images import LUNG_WINDOW
from covidseg.train.metrics import scores_from_confusion

__all__ = [
    "FN_COLOR",
    "FP_COLOR",
    "OVERLAY_ALPHA",
    "SLICE_MODES",
    "TP_COLOR",
    "overlay_figure",
    "overlay_rgb",
    "parse_slices",
    "pick_slices",
    "slice_dice",
]

TP_COLOR: tuple[int, int, int] = (0, 255, 0)
"""True positives: green."""
FP_COLOR: tuple[int, int, int] = (255, 0, 0)
"""False positives: red."""
FN_COLOR: tuple[int, int, int] = (255, 255, 0)
"""False negatives: yellow."""
OVERLAY_ALPHA = 0.5
"""Opacity of the colours over the grey CT."""
SLICE_MODES = ("auto", "disagreement")
"""Automatic slice choices."""
DEFAULT_N_SLICES = 3
PANEL_INCHES = 3.0
DPI = 100
GREY_MAX = 255


def parse_slices(text: str) -> str | list[int]:
    """``auto``, ``disagreement`` or comma-separated slice indices.

    Examples:
        >>> parse_slices("auto"), parse_slices("12, 3,40")
        ('auto', [12, 3, 40])
    """
    value = text.strip().lower()
    if value in SLICE_MODES:
        return value
    try:
        indices = [int(part) for part in value.split(",") if part.strip()]
    except ValueError:
        raise InputError(f"--slices {text!r}: use auto, disagreement or indices like 10,20,30") from None
    if not indices:
        raise InputError(f"--slices {text!r}: use auto, disagreement or indices like 10,20,30")
    return indices


def _as_masks(reference: np.ndarray, predictions: Mapping[str, np.ndarray]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    ref = np.asarray(reference).astype(bool, copy=False)
    if ref.ndim != 3:
        raise InputError(f"the reference must be a (Z, Y, X) mask, got shape {ref.shape}")
    preds = {}
    for label, pred in predictions.items():
        mask = np.asarray(pred).astype(bool, copy=False)
        if mask.shape != ref.shape:
            raise InputError(f"prediction {label!r} has shape {mask.shape}, the reference {ref.shape}; use one grid")
        preds[label] = mask
    if not preds:
        raise InputError("give at least one prediction to overlay")
    return ref, preds


def pick_slices(
    reference: np.ndarray,
    predictions: Mapping[str, np.ndarray],
    slices: str | Sequence[int] = "auto",
    n: int = DEFAULT_N_SLICES,
) -> list[int]:
    """The slice indices to show, sorted (see the module docstring for ``auto`` and ``disagreement``).

    Raises:
        InputError: An index outside the volume, or an unknown mode.

    Examples:
        >>> ref = np.zeros((4, 2, 2), bool); ref[3] = True; ref[0, 0, 0] = True
        >>> pred = np.zeros((4, 2, 2), bool); pred[2] = True
        >>> pick_slices(ref, {"a": pred}, "auto", 3), pick_slices(ref, {"a": pred}, "disagreement", 1)
        ([0, 2, 3], [3])
    """
    ref, preds = _as_masks(reference, predictions)
    depth = ref.shape[0]
    if not isinstance(slices, str):
        chosen = sorted({int(k) for k in slices})
        bad = [k for k in chosen if not 0 <= k < depth]
        if bad:
            raise InputError(f"slice(s) {bad} outside the volume's 0..{depth - 1}")
        return chosen
    if slices not in SLICE_MODES:
        raise InputError(f"unknown slice choice {slices!r}; expected {list(SLICE_MODES)} or indices")
    count = max(1, min(int(n), depth))
    disagreement = np.zeros(depth, np.int64)
    for pred in preds.values():
        disagreement += np.count_nonzero(pred != ref, axis=(1, 2))
    opacity = np.count_nonzero(ref, axis=(1, 2))
    # Rank by (primary, secondary, -index): stable and deterministic.
    primary, secondary = (opacity, disagreement) if slices == "auto" else (disagreement, opacity)
    order = sorted(range(depth), key=lambda k: (-int(primary[k]), -int(secondary[k]), k))
    chosen = [k for k in order if primary[k] > 0][:count]
    if len(chosen) < count:
        rest = [k for k in sorted(range(depth), key=lambda k: (-int(secondary[k]), k)) if k not in chosen]
        chosen += [k for k in rest if secondary[k] > 0][: count - len(chosen)]
    if not chosen:
        chosen = [depth // 2]
    return sorted(chosen)


def slice_dice(reference: np.ndarray, prediction: np.ndarray) -> float:
    """2-D Dice of two boolean masks (1.0 when both are empty, as :mod:`covidseg.train.metrics`).

    Examples:
        >>> slice_dice(np.zeros((2, 2), bool), np.zeros((2, 2), bool))
        1.0
    """
    ref = np.asarray(reference, bool)
    pred = np.asarray(prediction, bool)
    tp = int(np.count_nonzero(ref & pred))
    fp = int(np.count_nonzero(~ref & pred))
    fn = int(np.count_nonzero(ref & ~pred))
    matrix = np.array([[ref.size - tp - fp - fn, fp], [fn, tp]], np.int64)
    return scores_from_confusion(matrix, ("rest", "opacity")).dice["opacity"]


def overlay_rgb(
    image: np.ndarray,
    reference: np.ndarray,
    prediction: np.ndarray,
    *,
    window: tuple[float, float] = LUNG_WINDOW,
    alpha: float = OVERLAY_ALPHA,
) -> np.ndarray:
    """uint8 ``(H, W, 3)``: the HU slice in grey (``window`` -> 0..255), TP/FP/FN colours blended with ``alpha``.

    Examples:
        >>> hu = np.full((1, 3), -600.0)  # mid-grey in the lung window
        >>> ref, pred = np.array([[1, 1, 0]], bool), np.array([[1, 0, 1]], bool)
        >>> overlay_rgb(hu, ref, pred).tolist()  # TP green, FN yellow, FP red over grey 128
        [[[64, 192, 64], [192, 192, 64], [192, 64, 64]]]
    """
    low, high = (float(w) for w in window)
    if not low < high:
        raise InputError(f"display window {window} must be (low, high) with low < high")
    hu = np.asarray(image, np.float64)
    ref = np.asarray(reference, bool)
    pred = np.asarray(prediction, bool)
    if hu.shape != ref.shape or ref.shape != pred.shape or hu.ndim != 2:
        raise InputError(f"image {hu.shape}, reference {ref.shape} and prediction {pred.shape} must be one 2-D shape")
    grey = np.round(np.clip((hu - low) / (high - low), 0.0, 1.0) * GREY_MAX)
    rgb = np.repeat(grey[..., None], 3, axis=2)
    for mask, color in ((ref & pred, TP_COLOR), (~ref & pred, FP_COLOR), (ref & ~pred, FN_COLOR)):
        rgb[mask] = (1.0 - alpha) * rgb[mask] + alpha * np.asarray(color, np.float64)
    return np.round(rgb).astype(np.uint8)


def overlay_figure(
    image: np.ndarray,
    reference: np.ndarray,
    predictions: Mapping[str, np.ndarray],
    slices: str | Sequence[int],
    path: str | os.PathLike[str],
    *,
    n_slices: int = DEFAULT_N_SLICES,
    window: tuple[float, float] = LUNG_WINDOW,
    alpha: float = OVERLAY_ALPHA,
    title: str | None = None,
    overwrite: bool = False,
) -> list[int]:
    """Draw Figure 2: rows = slices, columns = runs, TP/FP/FN over the CT; return the slices drawn.

    Args:
        image: CT in HU, canonical ``(Z, Y, X)`` (``hu[k]`` is displayed as stored: radiological convention).
        reference: Reference opacity mask (bool, or any array whose non-zero voxels are opacity), same shape.
        predictions: Run label -> predicted opacity mask, same shape; columns in this order.
        slices: ``"auto"``, ``"disagreement"`` or slice indices (see :func:`pick_slices`).
        path: Output image (.png, .pdf, .svg).
        n_slices: Rows for the automatic choices.
        window: HU display window (default the lung window).
        alpha: Opacity of the TP/FP/FN colours.
        title: Figure title.
        overwrite: Replace an existing image.

    Raises:
        InputError: Shapes that differ, bad slices.
        OutputExistsError: ``path`` exists and ``overwrite`` is false.

    Examples:
        >>> import tempfile
        >>> hu = np.full((2, 16, 16), -800.0)
        >>> ref = np.zeros((2, 16, 16), bool); ref[1, 4:12, 4:12] = True
        >>> out = Path(tempfile.mkdtemp()) / "fig.png"
        >>> overlay_figure(hu, ref, {"A": ref, "B": np.roll(ref, 2, axis=2)}, "auto", out, n_slices=1)
        [1]
    """
    check_writable(path, overwrite)
    hu = np.asarray(image)
    ref, preds = _as_masks(reference, predictions)
    if hu.shape != ref.shape:
        raise InputError(f"the image has shape {hu.shape} but the masks {ref.shape}; pass the scan they were made on")
    rows = pick_slices(ref, preds, slices, n_slices)
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    height, width = ref.shape[1:]
    aspect = height / width
    fig = Figure(figsize=(PANEL_INCHES * len(preds), PANEL_INCHES * aspect * len(rows) + 0.9), dpi=DPI)
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(rows), len(preds), squeeze=False)
    for r, k in enumerate(rows):
        for c, (label, pred) in enumerate(preds.items()):
            ax = axes[r][c]
            ax.imshow(overlay_rgb(hu[k], ref[k], pred[k], window=window, alpha=alpha), interpolation="nearest")
            ax.set_title(f"{label}: Dice {slice_dice(ref[k], pred[k]):.3f}", fontsize="small")
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(f"slice {k}")
    handles = [
        Patch(facecolor=(color[0] / GREY_MAX, color[1] / GREY_MAX, color[2] / GREY_MAX), label=name)
        for name, color in (("TP", TP_COLOR), ("FP", FP_COLOR), ("FN", FN_COLOR))
    ]
    fig.legend(handles=handles, loc="lower center", ncol=3, frameon=False)
    if title:
        fig.suptitle(title)
    fig.subplots_adjust(left=0.06, right=0.98, bottom=0.9 / fig.get_figheight(), top=0.92, wspace=0.05, hspace=0.25)
    with atomic_path(Path(path), overwrite=overwrite) as tmp:
        fig.savefig(tmp, dpi=DPI)
    return rows


def prediction_labels(paths: Sequence[str | os.PathLike[str]], labels: Sequence[str] | None = None) -> list[str]:
    """Column labels: the given ones, else the case names of the files, else their folders' names.

    Raises:
        InputError: A number of labels other than the number of predictions, or labels that are not unique.

    Examples:
        >>> prediction_labels(["l2sp/c1_labels.nii.gz", "layerwise/c1_labels.nii.gz"])
        ['l2sp', 'layerwise']
    """
    from covidseg.evaluate.matching import case_name

    if labels:
        if len(labels) != len(paths):
            raise InputError(f"{len(labels)} --label value(s) for {len(paths)} prediction(s); give one per prediction")
        chosen = [str(label) for label in labels]
    else:
        chosen = [case_name(p) for p in paths]
        if len(set(chosen)) < len(chosen):
            chosen = [Path(p).resolve().parent.name for p in paths]
    if len(set(chosen)) < len(chosen):
        raise InputError(f"column labels {chosen} are not unique; pass one --label per prediction")
    return chosen


def overlay_figure_from_files(
    image: str | os.PathLike[str],
    reference: str | os.PathLike[str],
    predictions: Sequence[str | os.PathLike[str]],
    slices: str | Sequence[int],
    path: str | os.PathLike[str],
    *,
    labels: Sequence[str] | None = None,
    ref_labels: str = "auto",
    pred_labels: str = "multiclass",
    image_window: tuple[float, float] | None = None,
    **kwargs: Any,
) -> list[int]:
    """:func:`overlay_figure` from files: a CT scan, a reference mask and predicted label maps of that scan.

    The label maps are read as ``covidseg evaluate`` reads them (opacity by ``ref_labels`` / ``pred_labels``,
    grids checked against the reference); ``image_window`` is the display window of a PNG/JPEG CT slice.
    Other keyword arguments go to :func:`overlay_figure`.

    Raises:
        InputError: Unreadable files, grids that differ, label values the schemes cannot read.
        OutputExistsError: ``path`` exists and ``overwrite`` is not set.
    """
    from covidseg.evaluate.labels import ROLE_OPACITY, resolve_scheme
    from covidseg.evaluate.reading import LabelMap, check_same_grid, read_label_map
    from covidseg.io import load_ct

    check_writable(path, bool(kwargs.get("overwrite", False)))
    if not predictions:
        raise InputError("give at least one prediction to overlay")
    names = prediction_labels(predictions, labels)
    ref_map = read_label_map(reference)
    volume = load_ct(image, image_window=image_window, assume_hu=True)
    if volume.hu.shape != ref_map.array.shape:
        raise InputError(
            f"{Path(image).name} has shape {volume.hu.shape} (z, y, x) but {ref_map.path.name} has "
            f"{ref_map.array.shape}; pass the scan the masks were made on"
        )
    image_is_2d = volume.source is not None and volume.source.format == "image"
    if not image_is_2d and not ref_map.is_2d:
        check_same_grid(LabelMap(ref_map.array, volume.affine, Path(image)), ref_map)

    def opacity(label_map: LabelMap, option: str, side: str) -> np.ndarray:
        scheme = resolve_scheme(option, np.unique(label_map.array).tolist(), side)
        values = [v for v, role in scheme.value_roles if role == ROLE_OPACITY]
        return np.isin(label_map.array, values)

    masks = {}
    for name, pred_path in zip(names, predictions, strict=True):
        pred_map = read_label_map(pred_path)
        check_same_grid(pred_map, ref_map)
        masks[name] = opacity(pred_map, pred_labels, "prediction")
    return overlay_figure(volume.hu, opacity(ref_map, ref_labels, "reference"), masks, slices, path, **kwargs)
