"""Per-scan numbers from a final label map: lung and opacity volumes per side, involvement, zone scores.

Sides: in canonical ``(Z, Y, X)`` arrays the x index increases toward the patient's left, so the patient's
RIGHT lung lies at SMALL x (radiological display shows it on the image's left). The lung mask (lung + opacity)
is split into its components, each named by its centroid's x relative to the body midline
(:func:`covidseg.infer.lungmask.split_sides`; two touching lungs are cut at their junction).

Zone severity: each lung's cranio-caudal extent is cut into upper / middle / lower thirds (z increases toward
superior, so "upper" is large z), and the percentage of each zone's lung volume that is opacity is graded 0-5
with the scale commonly used for COVID-19 CT severity: 0 none, 1 < 5 %, 2 5-25 %, 3 26-49 %, 4 50-75 %,
5 > 75 % (Pan F. et al., "Time course of lung changes at chest CT during recovery from coronavirus disease 2019
(COVID-19)", Radiology 2020;295(3):715-721, who graded each of the five lobes, total 0-25). covidseg has no
lobe segmentation and grades six zones instead, three per lung: total 0-30. Interval edges: 5 % is grade 2,
25 % grade 2, 50 % and 75 % grade 4; values between 25 % and 26 % count as grade 3.
"""

from __future__ import annotations

import csv
import json
import platform
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timezone
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

import numpy as np

from covidseg.errors import InputError
from covidseg.infer.lungmask import HU_BODY, body_midline_x, split_sides
from covidseg.infer.masks import Box, bounding_box, label_components, voxel_volume_ml
from covidseg.infer.postprocess import LABEL_OPACITY
from covidseg.io.atomic import atomic_path

__all__ = [
    "REPORT_VERSION",
    "SEVERITY_SCHEME",
    "ZONES",
    "scan_report",
    "severity_grade",
    "software_versions",
    "write_report_json",
    "write_summary_csv",
]

REPORT_VERSION = 1
"""Version of the report's JSON layout."""
ZONES = ("upper", "middle", "lower")
"""Cranio-caudal thirds of each lung."""
SIDES = ("right", "left")
"""Patient sides, in the order reported."""
GRADE_UPPER_BOUNDS = ((0.0, 0), (5.0, 1), (25.0, 2), (50.0, 3), (75.0, 4))
"""``(bound, grade)``: below ``bound`` % (for 0 %: at it) the grade is ``grade``; above all bounds grade 5."""
SEVERITY_SCHEME = (
    "0-5 per zone (0 none, 1 <5%, 2 5-25%, 3 26-49%, 4 50-75%, 5 >75% of the zone's lung volume), "
    "three cranio-caudal zones per lung, total 0-30; the per-lobe scale of Pan et al., Radiology 2020, "
    "applied to zones"
)
"""How the severity score is defined (written into each report)."""
_SOFTWARE = ("covidseg", "numpy", "scipy", "scikit-image", "torch", "monai", "nibabel", "SimpleITK")


def severity_grade(percent: float) -> int:
    """The 0-5 CT severity grade of an involvement percentage (see the module docstring for the scale).

    Examples:
        >>> [severity_grade(p) for p in (0, 0.1, 4.99, 5, 25, 25.5, 49.9, 50, 75, 75.1, 100)]
        [0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5]
    """
    value = float(percent)
    if not np.isfinite(value) or value < 0:
        raise ValueError(f"involvement must be a percentage >= 0, got {percent!r}")
    if value == 0.0:
        return 0
    if value < 5.0:
        return 1
    if value <= 25.0:
        return 2
    if value < 50.0:
        return 3
    if value <= 75.0:
        return 4
    return 5


def _orientation(affine: np.ndarray | None) -> tuple[bool, bool]:
    """``(x_toward_left, z_toward_superior)`` of the label array's axes from its RAS+ affine."""
    if affine is None:
        return True, True
    aff = np.asarray(affine, dtype=np.float64)
    if aff.shape != (4, 4):
        raise InputError(f"affine must be 4x4, got shape {aff.shape}")
    x_col, z_col = aff[:3, 2], aff[:3, 0]
    if np.argmax(np.abs(x_col)) != 0 or np.argmax(np.abs(z_col)) != 2:
        raise InputError(
            "labels are not in canonical (Z, Y, X) orientation (axis 0 superior-inferior, axis 2 left-right); "
            "reorient them first, e.g. with covidseg.io.volume.canonicalize"
        )
    # RAS+: world +x is the patient's right, +z superior.
    return bool(x_col[0] < 0), bool(z_col[2] > 0)


def _x_centroid(mask: np.ndarray) -> float:
    """Mean x index of a non-empty mask's voxels (no float volume allocated)."""
    profile = np.count_nonzero(mask, axis=(0, 1))
    return float(np.dot(profile, np.arange(profile.size)) / profile.sum())


def _midline(lung: np.ndarray, box: Box | None, hu: np.ndarray | None) -> tuple[float, str]:
    """The x index of the patient midline and how it was found (``box``: the lung mask's bounding box)."""
    if hu is not None:
        if np.shape(hu) != lung.shape:
            raise InputError(f"hu shape {np.shape(hu)} differs from the label shape {lung.shape}")
        return body_midline_x(np.asarray(hu) > HU_BODY), "body centre of mass"
    if box is not None:
        labels, n = label_components(lung[box])
        if n >= 2:
            sizes = np.bincount(labels.ravel())[1:]
            first, second = np.argsort(-sizes, kind="stable")[:2] + 1
            if sizes[second - 1] >= 0.1 * sizes[first - 1]:
                centres = [box[2].start + _x_centroid(labels == k) for k in (int(first), int(second))]
                return float(np.mean(centres)), "between the two largest lung components"
    return (lung.shape[2] - 1) / 2.0, "image centre (assumed)"


def _per_slice_counts(mask: np.ndarray) -> np.ndarray:
    """int64 number of True voxels in each axial slice of a ``(Z, Y, X)`` mask."""
    flat = mask.reshape(mask.shape[0], -1)
    return flat.sum(axis=1, dtype=np.int64)


def _side_counts(
    arr: np.ndarray, box: Box | None, midline: float, x_left: bool
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], int]:
    """Per side, lung and opacity voxels in each axial slice; and the number of opacity components.

    Everything is computed on the lungs' bounding box (the lung mask holds every labelled voxel).
    """
    n_z = arr.shape[0]
    lung_z = {side: np.zeros(n_z, dtype=np.int64) for side in SIDES}
    opac_z = {side: np.zeros(n_z, dtype=np.int64) for side in SIDES}
    if box is None:
        return lung_z, opac_z, 0
    crop = arr[box]
    lung = crop > 0
    opacity = crop == LABEL_OPACITY
    low, high = split_sides(lung, midline - box[2].start)
    masks = {"right": low, "left": high} if x_left else {"right": high, "left": low}
    for side in SIDES:
        lung_z[side][box[0]] = _per_slice_counts(masks[side])
        opac_z[side][box[0]] = _per_slice_counts(masks[side] & opacity)
    opacity_box = bounding_box(opacity)
    lesions = label_components(opacity[opacity_box])[1] if opacity_box is not None else 0
    return lung_z, opac_z, lesions


def _zone_masks(lung_z: np.ndarray, z_up: bool) -> dict[str, np.ndarray]:
    """Boolean per-slice selectors of the thirds of a lung's cranio-caudal extent."""
    n_z = lung_z.size
    zone = {name: np.zeros(n_z, dtype=bool) for name in ZONES}
    present = np.flatnonzero(lung_z)
    if present.size == 0:
        return zone
    lo, hi = int(present[0]), int(present[-1])
    position = (np.arange(lo, hi + 1) - lo + 0.5) / (hi - lo + 1)  # 0 at the lowest index, 1 at the highest
    if not z_up:
        position = 1.0 - position
    zone["lower"][lo : hi + 1] = position < 1 / 3
    zone["middle"][lo : hi + 1] = (position >= 1 / 3) & (position < 2 / 3)
    zone["upper"][lo : hi + 1] = position >= 2 / 3
    return zone


def _percent(part: float, whole: float) -> float | None:
    return round(100.0 * float(part) / float(whole), 3) if whole > 0 else None


def scan_report(
    labels: np.ndarray,
    spacing: Sequence[float],
    *,
    affine: np.ndarray | None = None,
    hu: np.ndarray | None = None,
) -> dict[str, Any]:
    """Volumes, involvement, zone grades and lesion count of one scan's final label map.

    Args:
        labels: Canonical ``(Z, Y, X)`` label map, 0 background, 1 lung, 2 opacity (:func:`postprocess` output).
        spacing: Voxel size (z, y, x) in mm.
        affine: The labels' RAS+ affine; when given, its axis directions decide which side is left and which
            end is superior (default: canonical, x toward left and z toward superior).
        hu: The scan in HU; when given, the body midline separates the sides (else the midpoint between the
            two lung components, or the image centre for a single one).

    Returns:
        A JSON-serialisable dict (plain Python numbers). Volumes in mL; lung volume includes its opacity.
        ``lungs_in_view`` is False with a ``message`` (and zero volumes, no percentages) for an empty mask.

    Examples:
        >>> lab = np.zeros((9, 10, 20), np.uint8)
        >>> lab[:, 2:8, 2:8] = 1  # the patient's right lung (small x)
        >>> lab[:, 2:8, 12:18] = 1
        >>> lab[6:, 2:8, 12:18] = 2  # the upper third of the left lung
        >>> r = scan_report(lab, (1.0, 1.0, 1.0))
        >>> r["lung_volume_ml"], r["percent_involved"]["left"], r["zones"]["left"]["upper"]["grade"]
        ({'right': 0.324, 'left': 0.324, 'total': 0.648}, 33.333, 5)
        >>> r["severity_score"]["total"], r["lesion_count"]
        (5, 1)
    """
    arr = np.asarray(labels)
    if arr.ndim != 3:
        raise InputError(f"labels must be a (Z, Y, X) volume, got shape {arr.shape}")
    spacing_t = tuple(float(s) for s in spacing)
    if len(spacing_t) != 3 or not all(np.isfinite(s) and s > 0 for s in spacing_t):
        raise InputError(f"spacing must be three positive sizes in mm (z, y, x), got {tuple(spacing)}")
    x_left, z_up = _orientation(affine)
    voxel_ml = voxel_volume_ml(spacing_t)
    lung = arr > 0
    box = bounding_box(lung)

    report: dict[str, Any] = {
        "report_version": REPORT_VERSION,
        "shape_zyx": [int(s) for s in arr.shape],
        "spacing_mm_zyx": [round(s, 6) for s in spacing_t],
        "lungs_in_view": box is not None,
        "message": "",
        "warnings": [],
    }
    midline, how = _midline(lung, box, hu)
    del lung
    lung_z, opac_z, lesions = _side_counts(arr, box, midline, x_left)
    lung_ml = {side: float(lung_z[side].sum()) * voxel_ml for side in SIDES}
    opac_ml = {side: float(opac_z[side].sum()) * voxel_ml for side in SIDES}
    total_lung, total_opac = sum(lung_ml.values()), sum(opac_ml.values())
    report["lung_volume_ml"] = {**{s: round(v, 3) for s, v in lung_ml.items()}, "total": round(total_lung, 3)}
    report["opacity_volume_ml"] = {**{s: round(v, 3) for s, v in opac_ml.items()}, "total": round(total_opac, 3)}
    report["percent_involved"] = {
        **{s: _percent(opac_ml[s], lung_ml[s]) for s in SIDES},
        "total": _percent(total_opac, total_lung),
    }
    report["midline"] = {"x_index": round(midline, 2), "method": how}

    zones: dict[str, dict[str, dict[str, Any]]] = {}
    for side in SIDES:
        zones[side] = {}
        for name, rows in _zone_masks(lung_z[side] > 0, z_up).items():
            z_lung = float(lung_z[side][rows].sum()) * voxel_ml
            z_opac = float(opac_z[side][rows].sum()) * voxel_ml
            pct = _percent(z_opac, z_lung)
            zones[side][name] = {
                "lung_ml": round(z_lung, 3),
                "opacity_ml": round(z_opac, 3),
                "percent": pct,
                "grade": severity_grade(pct) if pct is not None else 0,
            }
    report["zones"] = zones
    side_scores = {side: sum(z["grade"] for z in zones[side].values()) for side in SIDES}
    report["severity_score"] = {
        **side_scores,
        "total": sum(side_scores.values()),
        "max": 5 * len(ZONES) * len(SIDES),
        "scheme": SEVERITY_SCHEME,
    }
    report["lesion_count"] = lesions

    if box is None:
        report["message"] = "no lungs in view: the lung mask is empty, so there are no volumes or scores to report"
    else:
        report["message"] = (
            f"lungs {total_lung:.1f} mL, opacity {total_opac:.1f} mL ({report['percent_involved']['total']}% "
            f"involved), severity {report['severity_score']['total']}/{report['severity_score']['max']}"
        )
        z_ends = (box[0].start, box[0].stop - 1)
        cut = [end for end, row in (("first", 0), ("last", arr.shape[0] - 1)) if row in z_ends]
        if cut:
            report["warnings"].append(
                f"the lungs reach the {' and '.join(cut)} slice of the scan: they are probably not fully in view, "
                "so volumes and zone grades describe only the part that is"
            )
        for side in SIDES:
            if lung_ml[side] == 0:
                report["warnings"].append(f"no {side} lung found")
    return report


def software_versions() -> dict[str, str]:
    """Installed versions of covidseg and the libraries that shape its results, plus Python's.

    Examples:
        >>> sorted(software_versions())[:3]
        ['SimpleITK', 'covidseg', 'monai']
    """
    versions = {"python": platform.python_version()}
    for name in _SOFTWARE:
        try:
            versions[name] = importlib_metadata.version(name)
        except importlib_metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def _jsonable(value: Any) -> Any:
    """Convert numpy scalars/arrays and paths inside ``value`` to plain JSON types."""
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    return value


def write_report_json(
    report: Mapping[str, Any], path: str | Path, *, metadata: Mapping[str, Any], overwrite: bool = False
) -> Path:
    """Write a scan report with its provenance as JSON, atomically.

    Args:
        report: A :func:`scan_report` result (possibly extended by the caller, e.g. with the scan path).
        path: Destination ``.json`` file.
        metadata: Provenance: the model (checkpoint path/hash, class names), the pre- and post-processing
            configs, anything else the caller records. ``software`` (:func:`software_versions`) and
            ``created_utc`` are added when absent.
        overwrite: Replace an existing file.

    Returns:
        The written path.

    Raises:
        OutputExistsError: If ``path`` exists and ``overwrite`` is false.

    Examples:
        >>> import tempfile, pathlib
        >>> out = pathlib.Path(tempfile.mkdtemp()) / "scan.json"
        >>> rep = scan_report(np.zeros((2, 3, 4), np.uint8), (1.0, 1.0, 1.0))
        >>> p = write_report_json(rep, out, metadata={"model": "fixture"})
        >>> data = json.loads(p.read_text())
        >>> data["lungs_in_view"], data["metadata"]["model"], "numpy" in data["metadata"]["software"]
        (False, 'fixture', True)
    """
    meta = dict(metadata)
    meta.setdefault("software", software_versions())
    meta.setdefault("created_utc", datetime.now(timezone.utc).isoformat(timespec="seconds"))
    payload = _jsonable({**report, "metadata": meta})
    text = json.dumps(payload, indent=2, allow_nan=False) + "\n"
    with atomic_path(path, overwrite=overwrite) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def _flatten(report: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested report -> ``{"lung_volume_ml.right": ...}``; lists joined with ``; ``; the scheme text dropped."""
    flat: dict[str, Any] = {}
    for key, value in report.items():
        name = f"{prefix}{key}"
        if key in ("scheme", "metadata"):
            continue
        if isinstance(value, Mapping):
            flat.update(_flatten(value, f"{name}."))
        elif isinstance(value, list | tuple):
            flat[name] = "; ".join(str(v) for v in value)
        else:
            flat[name] = "" if value is None else value
    return flat


def write_summary_csv(
    reports: Mapping[str, Mapping[str, Any]] | Iterable[tuple[str, Mapping[str, Any]]],
    path: str | Path,
    *,
    overwrite: bool = False,
) -> Path:
    """Write one CSV row per scan (batch mode), atomically; nested fields become dotted columns.

    Args:
        reports: ``scan name -> report`` (or ``(name, report)`` pairs). A failed scan can be passed as
            ``{"error": "what went wrong"}``: its row has the error and empty numbers.
        path: Destination ``.csv`` file.
        overwrite: Replace an existing file.

    Examples:
        >>> import tempfile, pathlib
        >>> out = pathlib.Path(tempfile.mkdtemp()) / "summary.csv"
        >>> rep = scan_report(np.zeros((2, 3, 4), np.uint8), (1.0, 1.0, 1.0))
        >>> p = write_summary_csv({"a.nii.gz": rep, "b.nii.gz": {"error": "unreadable"}}, out)
        >>> rows = list(csv.DictReader(p.open()))
        >>> rows[0]["scan"], rows[0]["lungs_in_view"], rows[1]["error"], rows[1]["lung_volume_ml.total"]
        ('a.nii.gz', 'False', 'unreadable', '')
    """
    items = list(reports.items()) if isinstance(reports, Mapping) else list(reports)
    rows = [{"scan": name, **_flatten(rep)} for name, rep in items]
    columns: list[str] = ["scan"]
    for row in rows:
        columns += [key for key in row if key not in columns]
    if "error" in columns:
        columns.remove("error")
        columns.insert(1, "error")
    with atomic_path(path, overwrite=overwrite) as tmp, tmp.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, restval="")
        writer.writeheader()
        writer.writerows(rows)
    return Path(path)
