"""Write preprocessed slices to disk (streamed into a memory-mapped ``.npy``) and a PNG preview of them."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from covidseg.data.preprocess import PreprocessConfig, iter_slice_batches
from covidseg.errors import InputError
from covidseg.io.atomic import atomic_path, check_writable

if TYPE_CHECKING:
    from covidseg.io import CTVolume

__all__ = ["save_slice_preview", "write_preprocessed"]


def write_preprocessed(
    volume: CTVolume,
    config: PreprocessConfig,
    output: str | Path,
    *,
    preview: str | Path | None = None,
    batch_size: int = 32,
    overwrite: bool = False,
) -> str:
    """Preprocess ``volume`` slice batch by slice batch into a float16 ``(Z, H, W)`` ``.npy`` file.

    Both outputs are checked before any work starts, written under temporary names and renamed when complete.

    Args:
        volume: A loaded CT volume (canonical ``(Z, Y, X)`` HU).
        config: The preprocessing to apply.
        output: Destination ``.npy`` file.
        preview: Optional PNG with a few evenly spaced preprocessed slices.
        batch_size: Slices converted to float at once.
        overwrite: Replace existing outputs.

    Returns:
        A one-line summary of what was written.

    Examples:
        >>> import tempfile
        >>> from covidseg.io import CTVolume
        >>> vol = CTVolume.from_canonical(np.full((4, 64, 64), -1000, np.int16), np.eye(4))
        >>> out = Path(tempfile.mkdtemp()) / "slices.npy"
        >>> _ = write_preprocessed(vol, PreprocessConfig(slice_size=(32, 32)), out)
        >>> np.load(out).shape
        (4, 32, 32)
    """
    output = Path(output)
    if output.suffix.lower() != ".npy":
        raise InputError(f"output must be a .npy file, got {output.name!r}; for example -o slices.npy")
    check_writable(output, overwrite)
    if preview is not None:
        check_writable(preview, overwrite)
    shape = (volume.hu.shape[0], *config.slice_size)
    with atomic_path(output, overwrite=overwrite) as tmp:
        slices = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float16, shape=shape)
        for rows, batch in iter_slice_batches(volume.hu, config, batch_size):
            slices[rows] = batch[:, 0].numpy().astype(np.float16)
        slices.flush()
        del slices
    if preview is not None:
        save_slice_preview(np.load(output, mmap_mode="r"), preview, overwrite=overwrite)
    return f"wrote {output}: {shape[0]} slices of {shape[1]} x {shape[2]}, HU window {config.window} -> [0, 1], float16"


def save_slice_preview(
    slices: np.ndarray, path: str | Path, *, n_slices: int = 6, title: str = "", overwrite: bool = False
) -> Path:
    """Save a PNG row of ``n_slices`` evenly spaced slices from a ``(Z, H, W)`` array in [0, 1].

    Examples:
        >>> import tempfile
        >>> out = Path(tempfile.mkdtemp()) / "preview.png"
        >>> save_slice_preview(np.random.rand(10, 32, 32), out).stat().st_size > 0
        True
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    count = min(n_slices, slices.shape[0])
    picks = np.linspace(0, slices.shape[0] - 1, count + 2)[1:-1].round().astype(int) if count > 1 else [0]
    fig, axes = plt.subplots(1, len(picks), figsize=(2.6 * len(picks), 2.9), squeeze=False)
    for ax, k in zip(axes[0], picks, strict=True):
        ax.imshow(np.asarray(slices[k], dtype=np.float32), cmap="gray", vmin=0.0, vmax=1.0)
        ax.set_title(f"slice {k}", fontsize=9)
        ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    with atomic_path(path, overwrite=overwrite) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return Path(path)
