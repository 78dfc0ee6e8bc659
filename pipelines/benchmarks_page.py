"""The BENCHMARKS.md page from the parsed results of the benchmark scripts, with the issue targets checked.

Pure functions of the JSON the scripts write (``bench_matmul.py``, ``bench_predict.py``, ``bench_train.py``)
plus the machine description and the commands: nothing is measured here, every number on the page comes from
a subprocess's JSON. :func:`target_rows` checks the speed and memory targets of issue 5 (and the penalty cost
target of issue 3) against them; :func:`render_page` writes the Markdown.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

FULL_SCAN_ZYX = (300, 512, 512)
"""The scan the issue-5 targets are stated for (slices, rows, columns)."""
FP32_E2E_MAX_S = 80.0
BF16_E2E_MAX_S = 40.0
NON_NETWORK_MAX_SHARE = 0.15
PEAK_RSS_MAX_BYTES = 2e9
"""2 GB, read strictly as 2 x 10⁹ bytes (1907 MiB)."""
BF16_MIN_SPEEDUP = 1.8
BF16_MIN_AGREEMENT_PERCENT = 99.5
FAST_MAX_OPACITY_CHANGE_PERCENT = 0.1
PENALTY_TARGET = "l2sp_layerwise"
PENALTY_MAX_OVERHEAD_PERCENT = 2.0
TRAIN_TARGET_SIZE, TRAIN_TARGET_BATCH = 384, 2
MIB = 2**20
PRECISION_OF = {"fp32": "fp32", "bf16": "bf16"}
MET, NOT_MET = "met", "not met"


@dataclass(frozen=True)
class TargetRow:
    """One target: the issue it comes from, what it asks, the measured value and whether it is met.

    Attributes:
        issue: The issue number as text (``"#5"``).
        target: What the issue asks for.
        measured: The measured value, formatted.
        status: ``"met"``, ``"not met"`` or ``"n/a: <why>"``, possibly with a caveat in parentheses.
    """

    issue: str
    target: str
    measured: str
    status: str


def fmt(value: float | None, spec: str = ".1f") -> str:
    """Format a number, or ``-`` for a missing one.

    Examples:
        >>> fmt(3.14159, ".2f"), fmt(None)
        ('3.14', '-')
    """
    return "-" if value is None else format(value, spec)


def _verdict(ok: bool, caveat: str = "") -> str:
    status = MET if ok else NOT_MET
    return f"{status} ({caveat})" if caveat else status


def _fp32_name(results: Mapping[str, Any]) -> str | None:
    return next((n for n in ("fp32", "fp32_nchw") if n in results), None)


def target_rows(predict: Mapping[str, Any] | None, train: Mapping[str, Any] | None) -> list[TargetRow]:
    """Check the issue-5 targets (and issue 3's penalty cost) against parsed benchmark results.

    Time and memory targets are stated for a 512 x 512 x 300 scan, the penalty target for a 384² batch-2 fp32
    step: on other sizes (``--quick``) their status is ``n/a``. Label agreement and the fast path's effect
    measured with random weights are marked as such (they are not a trained model's figures).

    Args:
        predict: The JSON of ``bench_predict.py --json``, or None when it was not run.
        train: The JSON of ``bench_train.py --json``, or None.

    Examples:
        >>> res = {"fp32": {"shape_zyx": [300, 512, 512], "peak_rss_mb": 1500.0,
        ...                 "derived": {"total_s": 70.0, "network_s": 64.0, "non_network_share": 0.09}}}
        >>> rows = target_rows({"results": res, "comparison": {}, "random_model": False}, None)
        >>> [(r.target.split(" (")[0], r.status) for r in rows[:3]]
        [('end to end fp32 < 80 s', 'met'), ('non-network time <= 15 % of network time', 'met'), \
('peak memory < 2 GB', 'met')]
    """
    rows: list[TargetRow] = []
    if predict is not None:
        rows += _predict_rows(predict)
    if train is not None:
        rows += _train_rows(train)
    return rows


def _predict_rows(predict: Mapping[str, Any]) -> list[TargetRow]:
    results: Mapping[str, Any] = predict["results"]
    comparison: Mapping[str, Any] = predict.get("comparison", {})
    first = next(iter(results.values()))
    shape = tuple(int(v) for v in first["shape_zyx"])
    sized = "" if shape == FULL_SCAN_ZYX else f"n/a: scan is {shape[2]} x {shape[1]} x {shape[0]}, not 512 x 512 x 300"
    random = "random weights, not a trained model's figure" if predict.get("random_model") else ""
    rows: list[TargetRow] = []

    def add(target: str, measured: str, ok: bool, caveat: str = "") -> None:
        rows.append(TargetRow("#5", target, measured, sized or _verdict(ok, caveat)))

    fp32, bf16 = _fp32_name(results), ("bf16_cl" if "bf16_cl" in results else None)
    if fp32:
        total = results[fp32]["derived"]["total_s"]
        add(f"end to end fp32 < {FP32_E2E_MAX_S:.0f} s ({fp32})", f"{total:.1f} s", total < FP32_E2E_MAX_S)
    if bf16:
        total = results[bf16]["derived"]["total_s"]
        add(f"end to end bf16 + channels-last < {BF16_E2E_MAX_S:.0f} s", f"{total:.1f} s", total < BF16_E2E_MAX_S)
    for name, res in results.items():
        share = res["derived"]["non_network_share"]
        add(
            f"non-network time <= {100 * NON_NETWORK_MAX_SHARE:.0f} % of network time ({name})",
            f"{fmt(None if share is None else 100 * share)} %",
            share is not None and share <= NON_NETWORK_MAX_SHARE,
        )
    for name, res in results.items():
        peak = res["peak_rss_mb"] * MIB
        add(
            f"peak memory < {PEAK_RSS_MAX_BYTES / 1e9:.0f} GB ({name})",
            f"{peak / 1e9:.2f} GB ({res['peak_rss_mb']:.0f} MiB)",
            peak < PEAK_RSS_MAX_BYTES,
        )
    versus = comparison.get("bf16_vs_fp32")
    if versus:
        speedup = versus["speedup_end_to_end"]
        add(
            f"bf16 + channels-last >= {BF16_MIN_SPEEDUP}x faster than fp32",
            f"{speedup:.2f}x",
            speedup >= BF16_MIN_SPEEDUP,
        )
        agree = versus["label_agreement_percent"]
        add(
            f"bf16 label agreement with fp32 >= {BF16_MIN_AGREEMENT_PERCENT} %",
            f"{agree:.3f} %",
            agree >= BF16_MIN_AGREEMENT_PERCENT,
            random,
        )
    fast = comparison.get("fast_path")
    if fast:
        change = fast["opacity_changed_percent"]
        add(
            f"fast path changes <= {FAST_MAX_OPACITY_CHANGE_PERCENT} % of opacity voxels",
            f"{change:.4f} % ({fast['skipped_slices']} slices skipped)",
            change <= FAST_MAX_OPACITY_CHANGE_PERCENT,
            random,
        )
    else:
        rows.append(
            TargetRow(
                "#5",
                f"fast path changes <= {FAST_MAX_OPACITY_CHANGE_PERCENT} % of opacity voxels",
                "-",
                "n/a: not run (add fast_bf16_cl to --configs)",
            )
        )
    return rows


def _train_rows(train: Mapping[str, Any]) -> list[TargetRow]:
    target = f"penalty {PENALTY_TARGET} <= {PENALTY_MAX_OVERHEAD_PERCENT:.0f} % of a 384² batch-2 fp32 step"
    res = train["results"].get("fp32")
    if res is None or PENALTY_TARGET not in res["penalties"]:
        return [TargetRow("#3", target, "-", "n/a: not run (fp32 and l2sp_layerwise are needed)")]
    pen = res["penalties"][PENALTY_TARGET]
    overhead = pen["overhead_percent"]
    cost = pen.get("own_percent", overhead)  # older results have only the paired-step difference
    measured = f"{cost:.2f} %" + (f" (paired-step difference {overhead:.2f} %)" if "own_percent" in pen else "")
    full = train["size"] == TRAIN_TARGET_SIZE and train["batch"] == TRAIN_TARGET_BATCH
    status = _verdict(cost <= PENALTY_MAX_OVERHEAD_PERCENT) if full else f"n/a: step is {train['size']}²"
    return [TargetRow("#3", target, measured, status)]


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def _load(res: Mapping[str, Any]) -> str:
    return f"{res['load_avg_before'][0]:.1f} / {res['load_avg_after'][0]:.1f}"


def _machine_lines(machine: Mapping[str, Any], steps: Sequence[Mapping[str, Any]], threads: int | None) -> list[str]:
    """The machine section: hardware, software, and the load average around every benchmark."""
    rows = [
        ("CPU", f"{machine['cpu_model']} ({', '.join(machine['cpu_flags']) or 'no AVX-512/AMX flags'})"),
        ("cores", f"{machine['cores']} ({machine['usable_cores']} usable by this process)"),
        ("torch threads", fmt(threads, "d") if threads is not None else "-"),
        ("RAM", f"{machine['ram_gib']:.1f} GiB"),
        ("software", f"Python {machine['python']}, torch {machine['torch']}, covidseg {machine['covidseg']}"),
        ("commit", machine["commit"]),
        ("date", machine["date"]),
    ]
    lines = ["## Machine", "", *_table(["item", "value"], rows), ""]
    lines += [
        "The machine may be shared: a 1-minute load average above the number of cores means other processes",
        "competed for the CPU and the times below are too slow. Load average (1 min) around each benchmark:",
        "",
    ]
    table = [
        (s["name"], f"{s['load_before'][0]:.2f}", f"{s['load_after'][0]:.2f}", f"{s['wall_s']:.0f}") for s in steps
    ]
    return [*lines, *_table(["benchmark", "before", "after", "wall s"], table), ""]


def _matmul_lines(matmul: Mapping[str, Any], command: str) -> list[str]:
    """The matmul-peak section."""
    n = matmul["size"]
    rows = [
        (name, f"{n} x {n}", fmt(1e3 * r["best_s"], ".2f"), fmt(r["gflops_best"]), fmt(r["gflops_median"]))
        for name, r in matmul["matmul"].items()
    ]
    net = matmul["network"]
    h, w = net["slice_size"]
    return [
        "## Matrix-multiply peak",
        "",
        f"`{command}`",
        "",
        f"Best of {matmul['repeats']} `torch.mm` products (2 n³ FLOP each), {matmul['threads']} threads.",
        "",
        *_table(["precision", "size", "best ms", "GFLOP/s (best)", "GFLOP/s (median)"], rows),
        "",
        f"Network cost (counted with `FlopCounterMode`): {net['gflop_per_slice']:.2f} GFLOP per {h} x {w} slice "
        f"({net['source']}).",
        "",
    ]


def _spread_lines(results: Mapping[str, Any]) -> list[str]:
    """With repeated runs: which run the table shows, and every run's total and non-network share."""
    counts = {len(res.get("runs", [])) for res in results.values()}
    if max(counts, default=0) < 2:
        return []
    lines = [
        "",
        f"Each configuration ran {max(counts)} times in interleaved rounds; the tables show the run with the median "
        "total time (peak RSS: the largest of the runs). Every run:",
        "",
    ]
    for name, res in results.items():
        runs = res.get("runs", [])
        totals = ", ".join(f"{r['total_s']:.1f} s" for r in runs)
        shares = ", ".join(f"{100 * r['non_network_share']:.1f} %" for r in runs if r["non_network_share"] is not None)
        lines.append(f"- {name}: total {totals}; non-network share {shares}")
    return lines


def _predict_lines(predict: Mapping[str, Any], matmul: Mapping[str, Any] | None, command: str) -> list[str]:
    """The predict section: per configuration totals and rates, then seconds per stage, then comparisons."""
    results: Mapping[str, Any] = predict["results"]
    gflop = matmul["network"]["gflop_per_slice"] if matmul else None
    peaks = {k: v["gflops_best"] for k, v in matmul["matmul"].items()} if matmul else {}
    model = "random weights (seed 0, BatchNorm calibrated on the scan)" if predict["random_model"] else predict["model"]
    rows = []
    for name, res in results.items():
        d = res["derived"]
        rate = d["network_slices_per_s"]
        achieved = gflop * rate if gflop is not None and rate is not None else None
        peak = peaks.get(PRECISION_OF.get(res["precision"], ""))
        share = 100 * d["non_network_share"] if d["non_network_share"] is not None else None
        rows.append(
            (
                name,
                str(res["precision"]),
                str(res["channels_last"]),
                str(res["batch_size"]),
                fmt(d["total_s"]),
                fmt(d["network_s"]),
                fmt(d["network_ms_per_slice"], ".0f"),
                fmt(rate, ".2f"),
                fmt(achieved),
                fmt(100 * achieved / peak if achieved is not None and peak else None, ".0f"),
                f"{fmt(d['non_network_s'])} ({fmt(share)} %)",
                fmt(res["model_load_s"]),
                fmt(res["peak_rss_mb"], ".0f"),
                _load(res),
            )
        )
    header = [
        "config",
        "precision",
        "channels-last",
        "batch",
        "total s",
        "network s",
        "network ms/slice",
        "slices/s",
        "network GFLOP/s",
        "% of matmul peak",
        "non-network s (% of network)",
        "model load s",
        "peak RSS MiB",
        "load before/after",
    ]
    lines = ["## Predict", "", f"`{command}`", "", f"Scan: {predict['scan_description']}. Model: {model}.", ""]
    lines += _table(header, rows)
    lines += [
        "",
        "`total` is `predict_scan` from reading the file to the written outputs (model loading apart); "
        "`slices/s` is network slices per network second; `% of matmul peak` compares the network's achieved "
        "GFLOP/s with the matmul peak of the same precision.",
        *_spread_lines(results),
        "",
        "Seconds per stage:",
        "",
    ]
    stages: list[str] = []
    for res in results.values():
        stages += [k for k in res["timings"] if k not in stages]
    stage_rows = [(s, *(fmt(r["timings"].get(s), ".2f") for r in results.values())) for s in stages]
    lines += _table(["stage", *results], stage_rows)
    lines += ["", *_comparison_lines(predict.get("comparison", {})), ""]
    return lines


def _comparison_lines(comparison: Mapping[str, Any]) -> list[str]:
    lines: list[str] = []
    if "bf16_vs_fp32" in comparison:
        c = comparison["bf16_vs_fp32"]
        lines.append(
            f"- bf16 + channels-last vs {c['fp32_config']}: {c['speedup_end_to_end']:.2f}x end to end, "
            f"{c['speedup_network']:.2f}x network; final labels agree on {c['label_agreement_percent']:.3f} % "
            f"of voxels (opacity voxels {c['opacity_voxels_fp32']} fp32, {c['opacity_voxels_bf16']} bf16)."
        )
    if "fp32_channels_last_vs_nchw" in comparison:
        c = comparison["fp32_channels_last_vs_nchw"]
        lines.append(
            f"- fp32 channels-last vs NCHW: {c['speedup_network']:.2f}x network; labels agree on "
            f"{c['label_agreement_percent']:.4f} %."
        )
    if "fast_path" in comparison:
        c = comparison["fast_path"]
        lines.append(
            f"- fast path ({c['config']} vs {c['versus']}): {c['skipped_slices']} slices skipped; the opacity "
            f"mask changed in {c['opacity_voxels_changed']} voxels = {c['opacity_changed_percent']:.4f} % of "
            f"opacity; all labels agree on {c['label_agreement_percent']:.4f} %."
        )
    return lines


def _train_lines(train: Mapping[str, Any], command: str) -> list[str]:
    """The training-step section: one table per configuration, no penalty first, then every penalty."""
    lines = [
        "## Training step",
        "",
        f"`{command}`",
        "",
        f"`covidseg.train.loop.train_step` at {train['size']}² batch {train['batch']} (Adam, `full` strategy), "
        f"median and minimum of {train['repeats']} timed steps after {train['warmup']} warm-up step(s). The "
        "overhead of a penalty is the median ratio of paired steps with and without it, minus 1; its own cost "
        "is the median time of the penalty alone (value + backward) over the median step without it. Peak RSS "
        "is the worker's peak resident memory during the variant's steps.",
        "",
    ]
    for name, res in train["results"].items():
        base = res["baseline"]
        rows = [
            (
                "no penalty",
                fmt(1e3 * base["median_s"]),
                fmt(1e3 * base["min_s"]),
                "-",
                "-",
                fmt(base["peak_rss_mb"], ".0f"),
                "-",
            )
        ]
        for pname, pen in res["penalties"].items():
            rows.append(
                (
                    pname,
                    fmt(1e3 * pen["median_s"]),
                    fmt(1e3 * pen["min_s"]),
                    fmt(pen["overhead_percent"], ".2f"),
                    fmt(pen["own_percent"], ".2f") if "own_percent" in pen else "-",
                    fmt(pen["peak_rss_mb"], ".0f"),
                    fmt(pen["peak_rss_mb"] - base["peak_rss_mb"], "+.0f"),
                )
            )
        cl = "channels-last" if res["channels_last"] else "NCHW"
        lines += [f"### {name}: {res['precision']}, {cl}, {res['threads']} threads, load {_load(res)}", ""]
        header = ["variant", "median ms", "min ms", "overhead %", "own cost %", "peak RSS MiB", "RSS vs no penalty MiB"]
        lines += _table(header, rows)
        lines.append("")
    return lines


def render_page(
    *,
    command: str,
    quick: bool,
    machine: Mapping[str, Any],
    steps: Sequence[Mapping[str, Any]],
    matmul: Mapping[str, Any] | None,
    predict: Mapping[str, Any] | None,
    train: Mapping[str, Any] | None,
) -> str:
    """The whole BENCHMARKS.md page.

    Args:
        command: The command that generated the page.
        quick: Whether it was a ``--quick`` run (a banner says the numbers mean nothing).
        machine: The machine description (see ``benchmarks.machine_info``).
        steps: Per benchmark run: ``name``, ``command``, ``load_before``, ``load_after``, ``wall_s``.
        matmul: Parsed ``bench_matmul.py`` JSON, or None.
        predict: Parsed ``bench_predict.py`` JSON, or None.
        train: Parsed ``bench_train.py`` JSON, or None.

    Examples:
        >>> machine = dict(cpu_model="CPU", cpu_flags=[], cores=2, usable_cores=2, ram_gib=8.0, python="3.11",
        ...                torch="2.13", covidseg="0.1", commit="abc1234", date="2026-01-01 00:00 UTC")
        >>> text = render_page(command="python pipelines/benchmarks.py", quick=True, machine=machine, steps=[],
        ...                    matmul=None, predict=None, train=None)
        >>> [line for line in text.splitlines() if line.startswith("#")]
        ['# Benchmarks', '## Machine', '## Targets']
    """
    commands = {s["name"]: s["command"] for s in steps}
    threads = matmul["threads"] if matmul else None
    lines = [
        "# Benchmarks",
        "",
        f"Generated by `{command}` on {machine['date']}; do not edit by hand, run the command again.",
        "Each table gives the command that produced it; `$WORK` there is the generator's scratch folder.",
        "",
    ]
    if quick:
        lines += [
            "> **Quick run** (`--quick`): tiny sizes that check the generator; the numbers say nothing about speed.",
            "",
        ]
    lines += _machine_lines(machine, steps, threads)
    rows = target_rows(predict, train)
    lines += [
        "## Targets",
        "",
        *_table(["issue", "target", "measured", "status"], [(r.issue, r.target, r.measured, r.status) for r in rows]),
        "",
    ]
    if matmul:
        lines += _matmul_lines(matmul, commands["matmul"])
    if predict:
        lines += _predict_lines(predict, matmul, commands["predict"])
    if train:
        lines += _train_lines(train, commands["train"])
    return "\n".join(lines).rstrip() + "\n"
