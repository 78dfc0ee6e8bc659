"""2-D slice images (.png, .jpg, .jpeg): 8-bit display values mapped back to approximate Hounsfield units.

A slice image is a display rendering: an HU window ``(low, high)`` was mapped linearly onto 0..255 and values
outside it were clipped. The inverse used here, ``hu = low + value / 255 * (high - low)``, recovers HU inside the
window only; soft tissue and bone above ``high`` saturate to ``high``. The window of the shared medseg slices is
not recorded; ``LUNG_WINDOW`` (level -600, width 1500) is an assumption that matches their appearance (air
black, soft tissue white). Pass the true window when it is known.

Orientation is unknown for images (the medseg slices are partly mirrored): the pixel rows and columns are used
as stored, as canonical y and x, and pixel spacing is 1 mm unless known.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from covidseg.errors import InputError
from covidseg.io.sanity import one_line

#: Assumed display window (low, high) in HU of 8-bit lung-window slices: level -600, width 1500.
LUNG_WINDOW: tuple[float, float] = (-1350.0, 150.0)
#: Pixel spacing (mm) assumed for images, which record none.
DEFAULT_IMAGE_SPACING_MM = 1.0
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def window_to_hu(values: np.ndarray, window: tuple[float, float], max_value: float = 255.0) -> np.ndarray:
    """Map display values ``0..max_value`` linearly onto the HU window ``(low, high)`` (float32).

    Examples:
        >>> import numpy as np
        >>> window_to_hu(np.array([0, 255]), LUNG_WINDOW).tolist()
        [-1350.0, 150.0]
    """
    low, high = (float(w) for w in window)
    scale = (high - low) / float(max_value)
    return (np.asarray(values, np.float32) * np.float32(scale) + np.float32(low)).astype(np.float32)


def read_image(path: Path, window: tuple[float, float] | None = None) -> tuple[np.ndarray, list[str]]:
    """Read a grayscale (or RGB, converted) slice image as approximate HU of shape ``(1, H, W)``.

    Args:
        path: A .png, .jpg or .jpeg file.
        window: Display window ``(low, high)`` in HU the image was rendered with; ``LUNG_WINDOW`` if None.

    Returns:
        The float32 HU array ``(1, H, W)`` and warnings about the assumptions made.

    Raises:
        InputError: If the file is not a readable image or the window is invalid.

    Examples:
        >>> import tempfile, pathlib, numpy as np
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "s.png"
        >>> Image.fromarray(np.array([[0, 255]], np.uint8)).save(p)
        >>> read_image(p)[0].tolist()
        [[[-1350.0, 150.0]]]
    """
    win = LUNG_WINDOW if window is None else (float(window[0]), float(window[1]))
    if not win[0] < win[1]:
        raise InputError(f"image window {win} is invalid; give (low, high) in HU with low < high, e.g. {LUNG_WINDOW}")
    try:
        with Image.open(path) as img:
            img.load()
            mode = img.mode
            if mode in ("I;16", "I;16B", "I;16L", "I"):
                values = np.asarray(img, dtype=np.float32)
                max_value = 65535.0
            else:
                values = np.asarray(img.convert("L"), dtype=np.float32)
                max_value = 255.0
    except (UnidentifiedImageError, OSError, ValueError) as err:
        raise InputError(f"{path}: cannot read the image ({one_line(err)}); pass a valid .png or .jpg slice") from err
    warnings = [
        f"slice image: display values mapped to approximate HU with window {win[0]:g}..{win[1]:g} "
        f"({'assumed lung window' if window is None else 'given'}); values outside the window are clipped",
        f"slice image: pixel spacing unknown, assuming {DEFAULT_IMAGE_SPACING_MM:g} mm; orientation unknown",
    ]
    if mode not in ("L", "I;16", "I;16B", "I;16L", "I"):
        warnings.append(f"slice image: converted {mode} to grayscale")
    return window_to_hu(values, win, max_value)[None], warnings
