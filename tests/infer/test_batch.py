"""Batch mode: input expansion, shards, output names, the default model, and a batch that survives a bad file."""

from __future__ import annotations

import csv
import os
import time
from pathlib import Path

import numpy as np
import pytest

from covidseg.errors import InputError, OutputExistsError
from covidseg.infer.batch import (
    MODEL_ENV,
    expand_inputs,
    output_names,
    parse_shard,
    resolve_model_path,
    run_batch,
    select_shard,
    summary_path,
)
from covidseg.infer.outputs import OutputOptions
from covidseg.infer.pipeline import PredictOptions
from covidseg.io import CTVolume, canonical_affine, save_volume, write_dicom_series
from tests.infer.analytic import analytic_segmenter, toy_chest


def _touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


@pytest.fixture
def tree(tmp_path) -> Path:
    """root/{a.nii.gz, b.mha, notes.txt, .hidden.nii.gz, sub/c.nrrd, sub/d.png, series/<DICOM>, out/x.nii.gz}."""
    for name in ("a.nii.gz", "b.mha", "notes.txt", ".hidden.nii.gz", "sub/c.nrrd", "sub/d.png", "out/x.nii.gz"):
        _touch(tmp_path / name)
    volume = CTVolume.from_canonical(np.full((2, 8, 8), -800, np.int16), canonical_affine())
    write_dicom_series(volume, tmp_path / "series")
    return tmp_path


def test_expand_folders_files_and_dicom_series(tree):
    names = [p.relative_to(tree).as_posix() for p in expand_inputs([tree], exclude=tree / "out")]
    assert names == ["a.nii.gz", "b.mha", "series", "sub/c.nrrd", "sub/d.png"]
    assert expand_inputs([tree / "series"]) == [tree / "series"]
    assert "x.nii.gz" in [p.name for p in expand_inputs([tree])]  # without exclude, "out" is just a folder


def test_expand_globs_dedupes_and_keeps_missing_paths(tree):
    found = expand_inputs([str(tree / "**" / "*.nii.gz"), tree / "a.nii.gz", tree / "missing.nii.gz"])
    assert [p.name for p in found] == ["a.nii.gz", "missing.nii.gz", "x.nii.gz"]
    with pytest.raises(InputError, match="no files match"):
        expand_inputs([str(tree / "*.nrrd")])
    with pytest.raises(InputError, match="no scans found"):
        expand_inputs([tree / "out"], exclude=tree / "out")


def test_shards_partition_the_sorted_inputs():
    scans = [Path(f"scan_{i:02d}.nii.gz") for i in range(11)]
    shuffled = list(reversed(scans))
    parts = [select_shard(shuffled, i, 3) for i in (1, 2, 3)]
    assert sorted(p for part in parts for p in part) == scans
    assert sum(len(p) for p in parts) == len(scans)
    assert parts[0] == select_shard(scans, 1, 3)  # independent of the input order
    assert parse_shard(" 3/3 ") == (3, 3)
    for bad in ("4/3", "0/2", "1", "a/b", "1/0", "1/2/3"):
        with pytest.raises(InputError, match="--shard"):
            parse_shard(bad)
    assert summary_path(Path("o")).name == "summary.csv"


def test_output_names_are_unique():
    scans = [Path("p1/ct/scan.nii.gz"), Path("p2/ct/scan.nii.gz"), Path("p3/x/scan.nii.gz"), Path("other.mha")]
    names = output_names(scans)
    assert len(set(names.values())) == len(scans)
    assert names[Path("other.mha")] == "other"
    assert names[Path("p3/x/scan.nii.gz")] == "x_scan"


def test_resolve_model_path(tmp_path, monkeypatch):
    monkeypatch.delenv(MODEL_ENV, raising=False)
    with pytest.raises(InputError, match="covidseg train"):
        resolve_model_path(None, tmp_path)
    old, new = _touch(tmp_path / "runs" / "old" / "best.pt"), _touch(tmp_path / "runs" / "new" / "best.pt")
    now = time.time()
    os.utime(old, (now - 100, now - 100))
    os.utime(new, (now, now))
    assert resolve_model_path(None, tmp_path) == new
    monkeypatch.setenv(MODEL_ENV, str(tmp_path / "env.pt"))
    assert resolve_model_path(None, tmp_path) == tmp_path / "env.pt"
    assert resolve_model_path(tmp_path / "given.pt", tmp_path) == tmp_path / "given.pt"


def test_batch_survives_a_bad_file(tmp_path):
    hu, _ = toy_chest((8, 64, 64))
    volume = CTVolume.from_canonical(hu, canonical_affine((5.0, 1.5, 1.5)))
    good = [save_volume(hu, volume, tmp_path / f"good{i}.nii.gz") for i in (1, 2)]
    bad = tmp_path / "broken.nii.gz"
    bad.write_bytes(b"this is not a NIfTI file")
    scans = sorted([*good, bad])
    out = tmp_path / "out"
    seen: list[tuple[str, bool]] = []
    options = PredictOptions(OutputOptions(overview=False))
    result = run_batch(
        scans,
        analytic_segmenter(64),
        out,
        options=options,
        summary=out / "summary.csv",
        on_result=lambda scan, res, reason: seen.append((scan.name, res is not None)),
    )
    assert [r.scan for r in result.results] == good
    assert list(result.failures) == [bad] and "broken.nii.gz" in result.failures[bad]
    assert "\n" not in result.failures[bad]
    assert seen == [("broken.nii.gz", False), ("good1.nii.gz", True), ("good2.nii.gz", True)]
    assert (out / "good1_labels.nii.gz").is_file() and not (out / "broken_labels.nii.gz").exists()
    rows = list(csv.DictReader((out / "summary.csv").open()))
    assert [Path(r["scan"]).name for r in rows] == ["broken.nii.gz", "good1.nii.gz", "good2.nii.gz"]
    assert rows[0]["error"] and not rows[1]["error"] and float(rows[1]["lung_volume_ml.total"]) > 0

    # a second run into the same folder: every scan's outputs exist, the summary too
    with pytest.raises(OutputExistsError, match=r"summary\.csv"):
        run_batch(scans, analytic_segmenter(64), out, options=options, summary=out / "summary.csv")
    again = run_batch(good, analytic_segmenter(64), out, options=options)
    assert len(again.failures) == 2 and all("exist already" in r for r in again.failures.values())
