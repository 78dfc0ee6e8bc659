"""Writing phantoms: the scan and its labels in the volume formats and as a DICOM series, and a PNG montage."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from covidseg.errors import InputError, OutputExistsError

if TYPE_CHECKING:
    from covidseg.data.phantom import Phantom

PHANTOM_FORMATS = ("nifti", "mha", "nrrd", "dicom")
"""Formats :func:`save_phantom` writes."""
MONTAGE_WINDOW = (-1350.0, 150.0)
"""Lung window (level -600, width 1500) of the montage, in HU."""
_SUFFIXES = {"nifti": ".nii.gz", "mha": ".mha", "nrrd": ".nrrd"}


def save_phantom(
    phantom: Phantom,
    out_dir: str | Path,
    *,
    name: str = "phantom",
    formats: Sequence[str] = ("nifti",),
    overwrite: bool = False,
) -> dict[str, Path]:
    """Write the phantom's HU volume (int16) and label map (uint8, always as NIfTI).

    Args:
        phantom: What :func:`covidseg.data.phantom.generate_phantom` returned.
        out_dir: Destination folder (created).
        name: File name stem.
        formats: Any of ``nifti`` (``<name>.nii.gz``), ``mha``, ``nrrd`` and ``dicom`` (a ``<name>_dicom/``
            CT series).
        overwrite: Replace existing outputs; without it an existing output is an error and nothing is written.

    Returns:
        Paths by kind: ``labels`` (``<name>_labels.nii.gz``) and one per requested format.

    Raises:
        InputError: For an unknown format.
        OutputExistsError: If an output exists and ``overwrite`` is false.

    Examples:
        >>> import tempfile
        >>> from covidseg.data.phantom import generate_phantom
        >>> paths = save_phantom(generate_phantom((6, 32, 32), (50.0, 11.0, 11.0)), tempfile.mkdtemp())
        >>> sorted(paths), paths["nifti"].name
        (['labels', 'nifti'], 'phantom.nii.gz')
    """
    from covidseg.io import CTVolume, save_mask, save_volume, write_dicom_series

    unknown = sorted(set(formats) - set(PHANTOM_FORMATS))
    if unknown:
        raise InputError(f"unknown phantom format(s) {unknown}; expected some of {list(PHANTOM_FORMATS)}")
    folder = Path(out_dir)
    targets = {"labels": folder / f"{name}_labels.nii.gz"}
    for fmt in dict.fromkeys(formats):
        targets[fmt] = folder / (f"{name}_dicom" if fmt == "dicom" else f"{name}{_SUFFIXES[fmt]}")
    if not overwrite:
        existing = [str(p) for p in targets.values() if p.exists()]
        if existing:
            raise OutputExistsError(f"{existing[0]} already exists; pass --overwrite to replace it")
    volume = CTVolume.from_canonical(phantom.hu, phantom.affine)
    written: dict[str, Path] = {}
    for kind, path in targets.items():
        if kind == "labels":
            save_mask(phantom.labels, volume, path, overwrite=overwrite)
        elif kind == "dicom":
            write_dicom_series(
                volume,
                path,
                series_description="covidseg synthetic chest CT",
                patient_id="PHANTOM",
                overwrite=overwrite,
            )
        else:
            save_volume(phantom.hu, volume, path, dtype=np.int16, overwrite=overwrite)
        written[kind] = path
    return written


def montage_slices(labels: np.ndarray | None, depth: int, n_slices: int) -> np.ndarray:
    """Axial slice indices for a montage: evenly through the lungs (top first), or the whole volume.

    Examples:
        >>> lab = np.zeros((20, 4, 4), np.uint8)
        >>> lab[5:15] = 1
        >>> montage_slices(lab, 20, 3).tolist()
        [12, 10, 7]
    """
    rows = np.flatnonzero((labels > 0).any(axis=(1, 2))) if labels is not None else np.zeros(0, dtype=int)
    if len(rows) == 0:
        rows = np.arange(depth)
    picks = np.linspace(rows[0], rows[-1], n_slices + 2)[1:-1] if len(rows) > n_slices else rows
    return np.unique(np.rint(picks).astype(int))[::-1]


def save_montage(
    hu: np.ndarray,
    labels: np.ndarray | None,
    path: str | Path,
    *,
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    n_slices: int = 6,
    overwrite: bool = False,
) -> Path:
    """Save a PNG of axial slices and a coronal view in a lung window: plain on top, with label outlines below.

    Images are in radiological display (the patient's right on the image's left; anterior at the top of axial
    slices, superior at the top of the coronal view). Lung outlines are cyan, opacity outlines orange.

    Args:
        hu: Canonical ``(Z, Y, X)`` HU volume.
        labels: Label map of the same shape (0 background, 1 lung, 2 opacity), or None for no outlines.
        path: Output ``.png`` (written atomically).
        spacing: Voxel size ``(z, y, x)`` in mm, for the aspect ratio.
        n_slices: Number of axial slices.
        overwrite: Replace an existing file.

    Returns:
        ``path``.

    Examples:
        >>> import tempfile
        >>> from covidseg.data.phantom import generate_phantom
        >>> ph = generate_phantom((12, 48, 48), (26.0, 7.5, 7.5))
        >>> out = save_montage(ph.hu, ph.labels, Path(tempfile.mkdtemp()) / "m.png", spacing=ph.spacing)
        >>> out.stat().st_size > 0
        True
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from covidseg.io.atomic import atomic_path, check_writable

    hu = np.asarray(hu)
    if hu.ndim != 3 or (labels is not None and np.shape(labels) != hu.shape) or n_slices < 1:
        raise InputError(f"montage needs a 3-D volume, labels of its shape and n_slices >= 1, got {hu.shape}")
    check_writable(path, overwrite)
    sz, sy, sx = (float(v) for v in spacing)
    picks = montage_slices(labels, hu.shape[0], n_slices)
    lung_y = (labels > 0).sum(axis=(0, 2)) if labels is not None else np.zeros(0)
    row = int(np.argmax(lung_y)) if lung_y.any() else hu.shape[1] // 2
    views: list[tuple[str, np.ndarray, np.ndarray | None, float]] = [
        (f"axial z={k}", hu[k], None if labels is None else labels[k], sy / sx) for k in picks
    ]
    views.append((f"coronal y={row}", hu[::-1, row, :], None if labels is None else labels[::-1, row, :], sz / sx))
    low, high = MONTAGE_WINDOW
    fig, axes = plt.subplots(2, len(views), figsize=(2.4 * len(views), 5.0), squeeze=False, facecolor="black")
    for col, (title, image, lab, aspect) in enumerate(views):
        for line in (0, 1):
            ax = axes[line][col]
            ax.imshow(image, cmap="gray", vmin=low, vmax=high, aspect=aspect, interpolation="bilinear")
            ax.set_axis_off()
            ax.text(0.02, 0.5, "R", color="yellow", fontsize=7, transform=ax.transAxes, va="center")
            ax.text(0.98, 0.5, "L", color="yellow", fontsize=7, transform=ax.transAxes, va="center", ha="right")
            if line == 0:
                ax.set_title(title, color="white", fontsize=8)
            elif lab is not None:
                for level, color in ((0.5, "cyan"), (1.5, "orange")):
                    if (lab > level).any() and (lab <= level).any():
                        ax.contour(lab > level, levels=[0.5], colors=color, linewidths=0.6)
    fig.tight_layout(pad=0.3)
    with atomic_path(path, overwrite=overwrite) as tmp:
        fig.savefig(tmp, format="png", dpi=110, facecolor="black")
    plt.close(fig)
    return Path(path)
