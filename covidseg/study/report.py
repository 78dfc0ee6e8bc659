"""A study's tables: per case, per fold, per scheme, and paired tests between schemes.

* ``per_case.csv``: ``scheme, fold, case_id`` and every held-out score of the case.
* ``per_fold.csv``: the mean of the metric over each fold's held-out cases, per scheme.
* ``comparisons.csv``: for each compared pair (B against A), the paired comparison over all cases
  (:func:`covidseg.evaluate.stats.paired_comparison`: mean difference, bootstrap interval, Wilcoxon p, wins).
* ``summary.json``: all of the above as numbers, the best scheme, wall times and the machine.
* ``results.md``: the tables in Markdown.

Per scheme: the mean (and standard deviation) of the per-fold means, which is the usual cross-validation
estimate, and the mean, standard deviation and median over cases, which the paired tests use.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from covidseg.errors import InputError
from covidseg.evaluate.stats import PairedComparison, paired_comparison
from covidseg.io.atomic import atomic_path
from covidseg.study.runner import CaseResult
from covidseg.study.spec import StudySpec

__all__ = ["SchemeSummary", "StudyReport", "build_report", "format_results_md", "write_report"]


@dataclass(frozen=True)
class SchemeSummary:
    """One scheme's cross-validated scores of the study metric.

    Attributes:
        scheme: The scheme key.
        label: Its table label.
        fold_means: Mean over each fold's held-out cases, fold 0 first.
        mean_of_folds: Mean of ``fold_means``.
        sd_of_folds: Sample standard deviation of ``fold_means`` (0 for one fold).
        case_mean: Mean over all cases.
        case_sd: Sample standard deviation over cases.
        case_median: Median over cases.
        extra_means: Mean over cases of the other scores (sensitivity, precision ...).
        n_cases: Number of cases scored.
    """

    scheme: str
    label: str
    fold_means: list[float]
    mean_of_folds: float
    sd_of_folds: float
    case_mean: float
    case_sd: float
    case_median: float
    extra_means: dict[str, float]
    n_cases: int


@dataclass(frozen=True)
class StudyReport:
    """The study's results.

    Attributes:
        metric: The compared score (e.g. ``dice_opacity``).
        schemes: Per-scheme summaries in preset order.
        comparisons: ``(a, b, comparison of b against a)`` for every tested pair.
        best: The scheme with the highest mean over cases.
    """

    metric: str
    schemes: list[SchemeSummary]
    comparisons: list[tuple[str, str, PairedComparison]]
    best: str


def _sd(values: Sequence[float]) -> float:
    return float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def _pairs(spec: StudySpec, schemes: Sequence[str]) -> list[tuple[str, str]]:
    pairs: list[tuple[str, str]] = []
    if spec.baseline is not None and spec.baseline in schemes:
        pairs += [(spec.baseline, s) for s in schemes if s != spec.baseline]
    pairs += [(a, b) for a, b in spec.comparisons if a in schemes and b in schemes and (a, b) not in pairs]
    return pairs


def build_report(spec: StudySpec, cases: Sequence[CaseResult]) -> StudyReport:
    """Summaries and paired tests of the held-out scores.

    Raises:
        InputError: No scores, or schemes scored on different cases (a fold is missing).

    Examples:
        >>> from pathlib import Path
        >>> from covidseg.study.spec import SchemeSection
        >>> spec = StudySpec(dataset=[Path("d.yaml")], folds=2, baseline="a", n_bootstrap=100,
        ...                  schemes={"a": SchemeSection(use_source=False), "b": SchemeSection(use_source=False)})
        >>> rows = [CaseResult(s, i % 2, f"c{i}", {"dice_opacity": d + (0.1 if s == "b" else 0.0)})
        ...         for s in ("a", "b") for i, d in enumerate([0.5, 0.6, 0.7, 0.4])]
        >>> report = build_report(spec, rows)
        >>> report.best, round(report.comparisons[0][2].mean_difference, 3), report.schemes[0].fold_means
        ('b', 0.1, [0.6, 0.5])
    """
    if not cases:
        raise InputError("the study has no held-out scores yet; run the folds first")
    metric = spec.metric
    schemes = [s for s in spec.schemes if any(c.scheme == s for c in cases)]
    by_scheme: dict[str, dict[str, CaseResult]] = {s: {} for s in schemes}
    for case in cases:
        by_scheme[case.scheme][case.case_id] = case
    ids = sorted(by_scheme[schemes[0]])
    for scheme in schemes[1:]:
        if sorted(by_scheme[scheme]) != ids:
            raise InputError(f"schemes {schemes[0]!r} and {scheme!r} were scored on different cases; rerun the study")
    summaries = []
    for scheme in schemes:
        rows = by_scheme[scheme]
        values = [rows[i].scores[metric] for i in ids]
        folds = sorted({c.fold for c in rows.values()})
        fold_means = [float(np.mean([c.scores[metric] for c in rows.values() if c.fold == f])) for f in folds]
        keys = sorted({k for c in rows.values() for k in c.scores if k != metric})
        extra = {k: float(np.mean([c.scores[k] for c in rows.values() if k in c.scores])) for k in keys}
        summaries.append(
            SchemeSummary(
                scheme=scheme,
                label=spec.label(scheme),
                fold_means=fold_means,
                mean_of_folds=float(np.mean(fold_means)),
                sd_of_folds=_sd(fold_means),
                case_mean=float(np.mean(values)),
                case_sd=_sd(values),
                case_median=float(np.median(values)),
                extra_means=extra,
                n_cases=len(values),
            )
        )
    comparisons = []
    for a, b in _pairs(spec, schemes):
        first = [by_scheme[a][i].scores[metric] for i in ids]
        second = [by_scheme[b][i].scores[metric] for i in ids]
        comparisons.append((a, b, paired_comparison(first, second, n_bootstrap=spec.n_bootstrap, seed=spec.split_seed)))
    best = max(summaries, key=lambda s: s.case_mean).scheme
    return StudyReport(metric, summaries, comparisons, best)


def _num(value: float, digits: int = 3) -> str:
    return "n/a" if math.isnan(value) else f"{value:.{digits}f}"


def _p(value: float) -> str:
    return f"{value:.2g}" if value < 0.001 else f"{value:.3f}"


def format_results_md(report: StudyReport, spec: StudySpec, timing: Mapping[str, Any] | None = None) -> str:
    """The study's tables in Markdown (per scheme with folds, then the paired tests).

    Examples:
        >>> from pathlib import Path
        >>> from covidseg.study.spec import SchemeSection
        >>> spec = StudySpec(dataset=[Path("d.yaml")], folds=2, n_bootstrap=10,
        ...                  schemes={"a": SchemeSection(use_source=False)})
        >>> rows = [CaseResult("a", i % 2, f"c{i}", {"dice_opacity": d}) for i, d in enumerate([0.5, 0.6])]
        >>> print(format_results_md(build_report(spec, rows), spec).splitlines()[4])
        | a | 0.500 | 0.600 | **0.550** ± 0.071 | 0.550 ± 0.071 | 0.550 | 2 |
    """
    metric = report.metric
    folds = max(len(s.fold_means) for s in report.schemes)
    head = [f"fold {i + 1}" for i in range(folds)]
    lines = [
        f"| scheme | {' | '.join(head)} | mean of folds ± sd | mean over cases ± sd | median | cases |",
        "|---|" + "---|" * (folds + 4),
    ]
    for s in report.schemes:
        fold_cells = " | ".join(_num(v) for v in s.fold_means)
        mean = _num(s.mean_of_folds)
        mean = f"**{mean}**" if s.scheme == report.best else mean
        lines.append(
            f"| {s.label} | {fold_cells} | {mean} ± {_num(s.sd_of_folds)} | {_num(s.case_mean)} ± {_num(s.case_sd)} "
            f"| {_num(s.case_median)} | {s.n_cases} |"
        )
    out = [f"Held-out {metric} per fold (last-epoch weights; best mean over cases in bold):", "", *lines]
    extra_keys = sorted({k for s in report.schemes for k in s.extra_means})
    if extra_keys:
        out += ["", "Other held-out scores (mean over cases):", ""]
        out.append("| scheme | " + " | ".join(extra_keys) + " |")
        out.append("|---|" + "---|" * len(extra_keys))
        for s in report.schemes:
            out.append(f"| {s.label} | " + " | ".join(_num(s.extra_means.get(k, math.nan)) for k in extra_keys) + " |")
    if report.comparisons:
        labels = {s.scheme: s.label for s in report.schemes}
        out += [
            "",
            f"Paired comparisons over cases ({metric} of B minus A; Wilcoxon signed-rank, two-sided; "
            f"{spec.n_bootstrap} bootstrap resamples):",
            "",
            "| A | B | mean A | mean B | mean diff | 95% CI | wins / losses / ties | p |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for a, b, c in report.comparisons:
            out.append(
                f"| {labels[a]} | {labels[b]} | {_num(c.mean_a)} | {_num(c.mean_b)} | {c.mean_difference:+.3f} | "
                f"[{c.ci_low:+.3f}, {c.ci_high:+.3f}] | {c.wins} / {c.losses} / {c.ties} | {_p(c.p_value)} |"
            )
    if timing:
        out += ["", f"Wall time: source {timing['source'] / 60:.1f} min, all runs {timing['total'] / 60:.1f} min."]
    return "\n".join(out) + "\n"


def _csv(rows: Sequence[Mapping[str, Any]]) -> str:
    buffer = io.StringIO()
    columns: list[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def write_report(
    out: Path,
    report: StudyReport,
    spec: StudySpec,
    cases: Sequence[CaseResult],
    *,
    timing: Mapping[str, Any] | None = None,
    environment: Mapping[str, Any] | None = None,
) -> dict[str, Path]:
    """Write the report files into the study folder (atomically, replacing earlier versions)."""
    files = {
        "per_case.csv": _csv([{"scheme": c.scheme, "fold": c.fold, "case_id": c.case_id, **c.scores} for c in cases]),
        "per_fold.csv": _csv(
            [
                {"scheme": s.scheme, "fold": i, report.metric: v}
                for s in report.schemes
                for i, v in enumerate(s.fold_means)
            ]
        ),
        "comparisons.csv": _csv([{"a": a, "b": b, **asdict(c)} for a, b, c in report.comparisons]),
        "summary.json": json.dumps(
            {
                "metric": report.metric,
                "best": report.best,
                "schemes": [asdict(s) for s in report.schemes],
                "comparisons": [{"a": a, "b": b, **asdict(c)} for a, b, c in report.comparisons],
                "timing": dict(timing or {}),
                "environment": dict(environment or {}),
            },
            indent=1,
        )
        + "\n",
        "results.md": format_results_md(report, spec, timing),
    }
    written = {}
    for name, text in files.items():
        with atomic_path(out / name, overwrite=True) as tmp:
            tmp.write_text(text)
        written[name] = out / name
    return written
