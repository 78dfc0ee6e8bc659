from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from covidseg.errors import InputError, OutputExistsError
from covidseg.evaluate.overlays import (
    FN_COLOR,
    FP_COLOR,
    OVERLAY_ALPHA,
    TP_COLOR,
    overlay_figure,
    overlay_rgb,
    parse_slices,
    pick_slices,
    prediction_labels,
)

HU_GREY = -600.0  # 127.5 of 255 in the lung window (-1350, 150), shown as grey 128


def _blend(grey: int, color: tuple[int, int, int]) -> tuple[int, int, int]:
    out = np.round((1 - OVERLAY_ALPHA) * grey + OVERLAY_ALPHA * np.asarray(color, float)).astype(int)
    return (int(out[0]), int(out[1]), int(out[2]))


def _case() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One slice of 30 x 30: TP in columns 0-9, FN in 10-19, FP in 20-29 (rows 5-24); slice 0 empty."""
    hu = np.full((2, 30, 30), HU_GREY)
    ref = np.zeros((2, 30, 30), bool)
    pred = np.zeros((2, 30, 30), bool)
    ref[1, 5:25, 0:20] = True
    pred[1, 5:25, 0:10] = True
    pred[1, 5:25, 20:30] = True
    return hu, ref, pred


def test_overlay_rgb_has_exactly_the_colours() -> None:
    hu, ref, pred = _case()
    rgb = overlay_rgb(hu[1], ref[1], pred[1])
    grey = 128
    assert tuple(rgb[10, 5]) == _blend(grey, TP_COLOR) == (64, 192, 64)
    assert tuple(rgb[10, 15]) == _blend(grey, FN_COLOR) == (192, 192, 64)
    assert tuple(rgb[10, 25]) == _blend(grey, FP_COLOR) == (192, 64, 64)
    assert tuple(rgb[0, 0]) == (grey, grey, grey)  # true negative: the CT only
    # every pixel is one of the four colours, with the counts of the regions
    colours, counts = np.unique(rgb.reshape(-1, 3), axis=0, return_counts=True)
    found = {tuple(int(v) for v in c): int(n) for c, n in zip(colours, counts, strict=True)}
    assert found == {
        _blend(grey, TP_COLOR): 200,
        _blend(grey, FN_COLOR): 200,
        _blend(grey, FP_COLOR): 200,
        (grey, grey, grey): 900 - 600,
    }


def test_figure_pixels_read_back(tmp_path: Path) -> None:
    hu, ref, pred = _case()
    out = tmp_path / "fig.png"
    shown = overlay_figure(hu, ref, {"perfect": ref, "run": pred}, "auto", out, n_slices=1)
    assert shown == [1]
    pixels = np.asarray(Image.open(out).convert("RGB")).reshape(-1, 3)
    colours, counts = np.unique(pixels, axis=0, return_counts=True)
    found = {tuple(int(v) for v in c): int(n) for c, n in zip(colours, counts, strict=True)}
    tp, fn, fp = (found.get(_blend(128, c), 0) for c in (TP_COLOR, FN_COLOR, FP_COLOR))
    # the perfect column adds TP area (the 20 x 20 reference) and nothing else; the run's three regions are equal
    assert tp > 0 and fn > 0 and fp > 0
    assert tp == pytest.approx(3 * fn, rel=0.1)  # TP: 200 px (run) + 400 px (perfect) vs FN 200 px
    assert fp == pytest.approx(fn, rel=0.1)


def test_slices_choice() -> None:
    _, ref, pred = _case()
    assert pick_slices(ref, {"a": pred}, "auto", 3) == [1]  # slice 0 has neither opacity nor disagreement...
    empty = np.zeros_like(ref)
    assert pick_slices(empty, {"a": empty}, "auto", 2) == [1]  # ...and with nothing anywhere: the middle slice
    assert pick_slices(ref, {"a": pred}, [1, 0, 1]) == [0, 1]
    with pytest.raises(InputError, match=r"slice\(s\) \[5\] outside"):
        pick_slices(ref, {"a": pred}, [5])
    assert parse_slices("disagreement") == "disagreement" and parse_slices("3,1") == [3, 1]
    with pytest.raises(InputError, match="use auto"):
        parse_slices("middle")


def test_refusals(tmp_path: Path) -> None:
    hu, ref, pred = _case()
    out = tmp_path / "fig.png"
    out.write_bytes(b"old")
    with pytest.raises(OutputExistsError):
        overlay_figure(hu, ref, {"a": pred}, "auto", out)
    assert out.read_bytes() == b"old"
    with pytest.raises(InputError, match="prediction 'a' has shape"):
        overlay_figure(hu, ref, {"a": pred[:, :10]}, "auto", tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()
    assert prediction_labels(["a/c_labels.nii.gz", "b/c_labels.nii.gz"]) == ["a", "b"]
    with pytest.raises(InputError, match="one per prediction"):
        prediction_labels(["a.nii.gz"], ["x", "y"])
