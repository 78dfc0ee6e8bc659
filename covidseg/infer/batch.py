"""Many scans: expanding the command line's inputs, splitting them across machines, and the batch loop.

* :func:`expand_inputs`: files, DICOM series folders, folders of scans (searched recursively) and glob patterns
  (expanded here, so a quoted ``"data/*.nii.gz"`` works the same on every shell) become one sorted list.
* :func:`select_shard`: ``--shard i/n`` takes every n-th scan of the sorted list starting at the i-th, so n
  machines given the same inputs split them without overlap or coordination.
* :func:`run_batch`: one :func:`~covidseg.infer.pipeline.predict_scan` per scan with the model loaded once; a
  scan that fails is recorded with a one-line reason and the others continue; a summary CSV ends the batch.
* :func:`resolve_model_path`: ``--model``, else ``$COVIDSEG_MODEL``, else the newest ``runs/*/best.pt``.
"""

from __future__ import annotations

import glob
import os
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from covidseg.errors import CovidsegError, InputError, OutputExistsError
from covidseg.infer.outputs import scan_name
from covidseg.infer.pipeline import PredictOptions, ScanResult, predict_scan
from covidseg.infer.segmenter import Segmenter
from covidseg.io.atomic import full_suffix
from covidseg.io.dicom_read import is_dicom_file

__all__ = [
    "MODEL_ENV",
    "SCAN_SUFFIXES",
    "BatchResult",
    "expand_inputs",
    "output_names",
    "parse_shard",
    "resolve_model_path",
    "run_batch",
    "select_shard",
    "summary_path",
]

MODEL_ENV = "COVIDSEG_MODEL"
"""Environment variable naming the default checkpoint of ``covidseg predict``."""
RUNS_GLOB = "runs/*/best.pt"
"""Where ``covidseg train`` leaves its best checkpoints (relative to the working folder)."""
SCAN_SUFFIXES = (".nii", ".nii.gz", ".mha", ".mhd", ".nrrd", ".nhdr", ".png", ".jpg", ".jpeg")
"""File suffixes picked up as scans when a folder of scans is given."""
_GLOB_CHARS = ("*", "?", "[")
_DICOM_PROBE = 8
"""Files without a scan suffix probed for DICOM content per folder."""


def _is_dicom_folder(folder: Path) -> bool:
    """True when files directly in ``folder`` are DICOM (probing a few files without a scan suffix)."""
    probed = 0
    for child in sorted(folder.iterdir()):
        if child.is_file() and not child.name.startswith(".") and full_suffix(child) not in SCAN_SUFFIXES:
            if is_dicom_file(child):
                return True
            probed += 1
            if probed >= _DICOM_PROBE:
                break
    return False


def _scans_in(folder: Path) -> list[Path]:
    """The scans in a folder: itself when it is a DICOM series, else its scan files and scan subfolders."""
    if _is_dicom_folder(folder):
        return [folder]
    found: list[Path] = []
    for child in sorted(folder.iterdir()):
        if child.name.startswith("."):
            continue
        if child.is_dir():
            found.extend(_scans_in(child))
        elif full_suffix(child) in SCAN_SUFFIXES:
            found.append(child)
    return found


def expand_inputs(items: Sequence[str | os.PathLike[str]], *, exclude: Path | None = None) -> list[Path]:
    """Turn SCAN arguments into a sorted, de-duplicated list of scans (files and DICOM series folders).

    Args:
        items: Files, DICOM folders, folders of scans, or glob patterns (``*``, ``?``, ``[...]``, ``**``).
            A path that does not exist and is no pattern is kept, so it fails (and is reported) as a scan.
        exclude: A folder whose contents are never inputs (the output folder, when it lies among the inputs).

    Raises:
        InputError: A pattern that matches nothing, or no scans at all.

    Examples:
        >>> import tempfile
        >>> root = Path(tempfile.mkdtemp())
        >>> for name in ("b.nii.gz", "a.mha", "notes.txt"):
        ...     _ = (root / name).write_bytes(b"")
        >>> [p.name for p in expand_inputs([root])]
        ['a.mha', 'b.nii.gz']
        >>> [p.name for p in expand_inputs([str(root / "*.nii.gz"), root / "b.nii.gz"])]
        ['b.nii.gz']
    """
    found: list[Path] = []
    for item in items:
        text = os.path.expanduser(str(item))
        path = Path(text)
        if not path.exists() and any(c in text for c in _GLOB_CHARS):
            matches = sorted(glob.glob(text, recursive=True))
            if not matches:
                raise InputError(f"no files match {text!r}; check the pattern")
            candidates = [Path(m) for m in matches]
        else:
            candidates = [path]
        for candidate in candidates:
            found.extend(_scans_in(candidate) if candidate.is_dir() else [candidate])
    excluded = exclude.resolve() if exclude is not None else None
    unique: dict[Path, Path] = {}
    for scan in found:
        key = scan.resolve()
        if excluded is not None and (key == excluded or excluded in key.parents):
            continue
        unique.setdefault(key, scan)
    if not unique:
        raise InputError(f"no scans found in {[str(i) for i in items]}; pass NIfTI/MHA/NRRD files or DICOM folders")
    return sorted(unique.values(), key=lambda p: str(p))


def parse_shard(text: str) -> tuple[int, int]:
    """Parse ``--shard i/n`` (1-based: ``1/4`` ... ``4/4``).

    Raises:
        InputError: Not of the form i/n with 1 <= i <= n.

    Examples:
        >>> parse_shard("2/4")
        (2, 4)
        >>> parse_shard("0/4")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        covidseg.errors.InputError: --shard must be i/n with 1 <= i <= n (e.g. 1/4 ... 4/4), got '0/4'
    """
    parts = str(text).strip().split("/")
    try:
        index, count = (int(p) for p in parts)
    except ValueError:
        index, count = 0, 0
    if len(parts) != 2 or count < 1 or not 1 <= index <= count:
        raise InputError(f"--shard must be i/n with 1 <= i <= n (e.g. 1/4 ... 4/4), got {text!r}")
    return index, count


def select_shard(scans: Sequence[Path], index: int, count: int) -> list[Path]:
    """Shard ``index`` of ``count`` (1-based) of the sorted scan list: every ``count``-th scan.

    Examples:
        >>> scans = [Path(f"s{i}.nii.gz") for i in range(5)]
        >>> [p.name for p in select_shard(scans, 2, 2)]
        ['s1.nii.gz', 's3.nii.gz']
    """
    ordered = sorted(scans, key=lambda p: str(p))
    return ordered[index - 1 :: count]


def output_names(scans: Sequence[Path]) -> dict[Path, str]:
    """Output stems per scan; scans with equal names get their parent folders prefixed until unique.

    Examples:
        >>> names = output_names([Path("a/ct.nii.gz"), Path("b/ct.nii.gz"), Path("c.nii.gz")])
        >>> [names[p] for p in (Path("a/ct.nii.gz"), Path("b/ct.nii.gz"), Path("c.nii.gz"))]
        ['a_ct', 'b_ct', 'c']
    """
    names = {scan: scan_name(scan) for scan in scans}
    for depth in range(1, 64):
        counts = Counter(names.values())
        clashing = [s for s in scans if counts[names[s]] > 1]
        if not clashing:
            return names
        for scan in clashing:
            parents = [p.name for p in scan.resolve().parents][:depth][::-1]
            names[scan] = "_".join([*[p for p in parents if p], scan_name(scan)])
    for i, scan in enumerate(scans):  # pathological: identical paths up to the root
        names[scan] = f"{names[scan]}_{i}"
    return names


def summary_path(out_dir: Path, shard: tuple[int, int] | None = None) -> Path:
    """The batch summary CSV: ``summary.csv``, or ``summary_shard-i-of-n.csv`` for a shard.

    Examples:
        >>> summary_path(Path("out"), (2, 4)).name
        'summary_shard-2-of-4.csv'
    """
    return out_dir / ("summary.csv" if shard is None else f"summary_shard-{shard[0]}-of-{shard[1]}.csv")


def resolve_model_path(model: str | os.PathLike[str] | None, cwd: Path | None = None) -> Path:
    """The checkpoint to use: ``model``, else ``$COVIDSEG_MODEL``, else the newest ``runs/*/best.pt`` in ``cwd``.

    Raises:
        InputError: None of them names an existing file; the message says how to get a model.

    Examples:
        >>> import tempfile
        >>> resolve_model_path(None, Path(tempfile.mkdtemp()))  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        covidseg.errors.InputError: no model given: pass --model CKPT, set COVIDSEG_MODEL=CKPT, or train one ...
    """
    if model is not None:
        return Path(model)
    env = os.environ.get(MODEL_ENV, "").strip()
    if env:
        return Path(env)
    base = cwd or Path.cwd()
    runs = [p for p in base.glob(RUNS_GLOB) if p.is_file()]
    if runs:
        return max(runs, key=lambda p: (p.stat().st_mtime, str(p)))
    raise InputError(
        f"no model given: pass --model CKPT, set {MODEL_ENV}=CKPT, or train one with covidseg train "
        f"(its runs/<name>/best.pt under {base} is then used)"
    )


@dataclass
class BatchResult:
    """Outcome of :func:`run_batch`.

    Attributes:
        results: Successful scans in input order.
        failures: Scan -> one-line reason, for scans that failed.
        summary: The summary CSV, when written.
    """

    results: list[ScanResult] = field(default_factory=list)
    failures: dict[Path, str] = field(default_factory=dict)
    summary: Path | None = None


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    if isinstance(exc, CovidsegError):
        return text or type(exc).__name__
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def run_batch(
    scans: Sequence[Path],
    segmenter: Segmenter,
    out_dir: Path,
    *,
    options: PredictOptions | None = None,
    summary: Path | None = None,
    run_scan: Callable[..., ScanResult] = predict_scan,
    on_result: Callable[[Path, ScanResult | None, str | None], None] | None = None,
    scan_kwargs: Callable[[Path, int], dict[str, Any]] | None = None,
) -> BatchResult:
    """Segment every scan with one loaded model; failures are recorded, never fatal to the batch.

    Args:
        scans: The scans (see :func:`expand_inputs`).
        segmenter: The loaded model.
        out_dir: Output folder for all scans.
        options: Reading options and outputs.
        summary: Where to write the summary CSV (one row per scan, failed scans with their error); None: none.
        run_scan: The per-scan function (``predict_scan``; replaceable in tests).
        on_result: Called after each scan with ``(scan, result, None)`` or ``(scan, None, reason)``.
        scan_kwargs: Extra keyword arguments for ``run_scan`` per ``(scan, position)`` (progress callbacks).

    Raises:
        OutputExistsError: ``summary`` exists and overwrite is off (checked before any scan runs).
    """
    from covidseg.infer.report import write_summary_csv

    opts = options or PredictOptions()
    overwrite = opts.outputs.overwrite
    if summary is not None and summary.exists() and not overwrite:
        raise OutputExistsError(f"{summary} already exists; pass --overwrite to replace it or choose another -o")
    names = output_names(list(scans))
    batch = BatchResult()
    rows: list[tuple[str, dict[str, Any]]] = []
    for position, scan in enumerate(scans):
        extra = scan_kwargs(scan, position) if scan_kwargs is not None else {}
        try:
            result = run_scan(scan, segmenter, out_dir, options=opts, name=names[scan], **extra)
        except Exception as exc:  # one bad scan must not stop the batch; the reason is reported per scan
            reason = _one_line(exc)
            batch.failures[scan] = reason
            rows.append((str(scan), {"error": reason}))
            if on_result is not None:
                on_result(scan, None, reason)
            continue
        batch.results.append(result)
        rows.append((str(scan), {**result.report, "name": result.name}))
        if on_result is not None:
            on_result(scan, result, None)
    if summary is not None:
        batch.summary = write_summary_csv(rows, summary, overwrite=overwrite)
    return batch
