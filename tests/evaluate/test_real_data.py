"""Evaluation on the shared real MedSeg slices (skipped where ../shared/data is absent)."""

from __future__ import annotations

from pathlib import Path

import pytest

from covidseg.evaluate.files import evaluate_paths
from covidseg.evaluate.scores import summarize

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "medseg-slices"
pytestmark = pytest.mark.skipif(not DATA.is_dir(), reason=f"real data not found at {DATA}")


def test_masks_against_themselves_and_the_multiclass_masks() -> None:
    itself = evaluate_paths(DATA / "masks", DATA / "masks", pred_labels="auto")
    assert len(itself.cases) == 50 and itself.reference_scheme.name == "binary"
    assert all(c.scores().dice == 1.0 and c.volume_unit == "px" for c in itself.cases)
    # ground glass (1) + consolidation (2) of the multi-class masks against the binary infection masks
    merged = evaluate_paths(DATA / "masks-multiclass", DATA / "masks", pred_labels="nonzero")
    summary = summarize(merged.cases)
    assert summary["n_cases"] == 50
    assert summary["pooled"]["opacity"]["dice"] == 1.0  # the two mask sets mark the same pixels
