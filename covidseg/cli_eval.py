"""The evaluation commands of the ``covidseg`` CLI: ``evaluate``, ``compare``, ``figure-drift``, ``figure-overlays``.

cli.py registers these functions on the app explicitly; heavy modules are imported inside each command.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from covidseg.cli_common import ImageWindowOption, OverwriteOption

QuietOption = Annotated[bool, typer.Option("--quiet", "-q", help="No progress display or table.")]
RefLabelsOption = Annotated[
    str,
    typer.Option(
        "--ref-labels",
        help="Reference values: auto (255 -> binary, 2 -> multiclass, only 0/1 -> binary), binary (0 and 1 or "
        "255 = opacity), multiclass (0 background, 1 lung, 2 opacity) or nonzero (any non-zero value = opacity, "
        "e.g. 1 ground glass, 2 consolidation).",
    ),
]
PredLabelsOption = Annotated[
    str,
    typer.Option("--pred-labels", help="Prediction values (choices as --ref-labels); multiclass as covidseg predict."),
]


def _check_choice(value: str, choices: tuple[str, ...], option: str) -> None:
    if value not in choices:
        from covidseg.errors import InputError

        raise InputError(f"{option} {value!r} is not one of {list(choices)}")


def _print_summary(summary: dict[str, Any], title: str) -> None:
    from rich.console import Console
    from rich.table import Table

    unit = summary["volume_unit"]
    table = Table(title=f"{title} ({summary['n_cases']} cases)")
    for column in ("structure", "metric", "mean", "std", "median", "pooled"):
        table.add_column(column, justify="left" if column in ("structure", "metric") else "right")
    for structure, metrics in summary["structures"].items():
        pooled = summary["pooled"].get(structure, {})
        for metric, stats in metrics.items():
            label = f"{metric} ({unit})" if metric.startswith("volume") else metric
            cells = [f"{stats[k]:.4f}" if stats[k] is not None else "-" for k in ("mean", "std", "median")]
            pool = pooled.get(metric) if metric in ("dice", "sensitivity", "precision") else None
            table.add_row(structure, label, *cells, f"{pool:.4f}" if pool is not None else "")
    Console().print(table)


def evaluate(
    pred: Annotated[
        Path | None,
        typer.Argument(help="Predicted label map, or a folder of them (e.g. a covidseg predict output folder)."),
    ] = None,
    ref: Annotated[
        Path | None, typer.Argument(help="Reference mask, or a folder of them (NIfTI/MHA/NRRD or 2-D PNG).")
    ] = None,
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="Folder for per_case.csv and summary.json.")] = Path(
        "covidseg-evaluation"
    ),
    ref_labels: RefLabelsOption = "auto",
    pred_labels: PredLabelsOption = "multiclass",
    strip_suffix: Annotated[
        list[str] | None,
        typer.Option(
            "--strip-suffix", help="Name ending removed to match cases; repeat for several. Default: _labels, _mask."
        ),
    ] = None,
    allow_missing: Annotated[
        bool, typer.Option("--allow-missing", help="Evaluate the matched cases and report unmatched names.")
    ] = False,
    tolerance: Annotated[
        float, typer.Option("--tolerance", help="Largest affine difference (mm) between two grids taken as equal.")
    ] = 0.01,
    checkpoint: Annotated[
        Path | None, typer.Option("--checkpoint", help="Instead of PRED REF: run this checkpoint on a dataset split.")
    ] = None,
    config: Annotated[
        Path | None,
        typer.Option("--config", "-c", help="With --checkpoint: a run folder (config.yaml, splits.json) or run YAML."),
    ] = None,
    split: Annotated[str, typer.Option(help="With --checkpoint: test, val or train.")] = "test",
    device: Annotated[str, typer.Option(help="With --checkpoint: auto, cpu, cuda or cuda:N.")] = "auto",
    precision: Annotated[str, typer.Option(help="With --checkpoint: fp32, bf16 or fp16 (CUDA).")] = "fp32",
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="With --checkpoint: slices per call.")] = 8,
    cache_dir: Annotated[
        Path | None, typer.Option("--cache-dir", help="With --checkpoint: slice cache (default: the config's).")
    ] = None,
    overwrite: OverwriteOption = False,
    quiet: QuietOption = False,
) -> None:
    """Score predicted label maps against references: 3-D Dice, sensitivity, precision, volumes; CSV and JSON.

    Cases are matched by file name (format suffix and --strip-suffix removed); grids must match. Opacity is
    always scored, lungs (lung + opacity) when both sides label them. With --checkpoint and --config, the
    checkpoint is run on a dataset split and scored on the network grid instead.

    Example: covidseg evaluate predictions/ data/labels/ -o eval/ --ref-labels multiclass
    """
    from covidseg.errors import InputError
    from covidseg.evaluate.labels import SCHEME_CHOICES
    from covidseg.evaluate.writers import PER_CASE_NAME, SUMMARY_NAME, write_evaluation
    from covidseg.io.atomic import check_writable

    if checkpoint is not None and (pred is not None or ref is not None):
        raise InputError("pass either PRED REF or --checkpoint with --config, not both")
    if checkpoint is not None and config is None:
        raise InputError("--checkpoint needs --config: the run folder (config.yaml, splits.json) or the run YAML")
    files = (pred, ref) if pred is not None and ref is not None else None
    if checkpoint is None and files is None:
        raise InputError("pass PRED and REF (label maps or folders), or --checkpoint CKPT --config RUN_DIR")
    _check_choice(ref_labels, SCHEME_CHOICES, "--ref-labels")
    _check_choice(pred_labels, SCHEME_CHOICES, "--pred-labels")
    for name in (PER_CASE_NAME, SUMMARY_NAME):
        check_writable(out_dir / name, overwrite)
    progress = None
    if not quiet:

        def progress(done: int, total: int, case_id: str) -> None:
            typer.echo(f"[{done}/{total}] {case_id}", err=True)

    info: dict[str, Any]
    if checkpoint is not None and config is not None:
        from covidseg.evaluate.checkpoint_eval import evaluate_checkpoint

        cases = evaluate_checkpoint(
            checkpoint,
            config,
            split,
            device=device,
            precision=precision,
            batch_size=batch_size,
            cache_dir=cache_dir,
            progress=progress,
        )
        info = {
            "checkpoint": str(checkpoint),
            "config": str(config),
            "split": split,
            "notes": ["scored on the network grid (cached slices), argmax without post-processing"],
        }
    elif files is not None:
        from covidseg.evaluate.files import evaluate_paths
        from covidseg.evaluate.matching import DEFAULT_STRIP_SUFFIXES

        result = evaluate_paths(
            files[0],
            files[1],
            ref_labels=ref_labels,
            pred_labels=pred_labels,
            strip_suffixes=tuple(strip_suffix) if strip_suffix else DEFAULT_STRIP_SUFFIXES,
            allow_missing=allow_missing,
            tolerance_mm=tolerance,
            progress=progress,
        )
        cases = result.cases
        info = {"prediction": str(pred), "reference": str(ref), **result.info()}
        for note in result.notes:
            typer.echo(f"note: {note}", err=True)
        missing = len(result.prediction_only) + len(result.reference_only)
        if missing:
            typer.echo(
                f"note: {len(result.prediction_only)} prediction(s) and {len(result.reference_only)} reference(s) "
                "without a match were left out (listed in summary.json)",
                err=True,
            )
    paths = write_evaluation(out_dir, cases, info, overwrite=overwrite)
    if not quiet:
        summary = json.loads(paths.summary.read_text())
        _print_summary(summary, "covidseg evaluate")
    typer.echo(f"per case: {paths.per_case}")
    typer.echo(f"summary: {paths.summary}")


def compare(
    run_a: Annotated[Path, typer.Argument(help="per_case.csv of run A (or the evaluate folder holding it).")],
    run_b: Annotated[Path, typer.Argument(help="per_case.csv of run B, same cases.")],
    metric: Annotated[str, typer.Option(help="Column to compare, e.g. opacity_dice, lung_dice.")] = "opacity_dice",
    allow_missing: Annotated[
        bool, typer.Option("--allow-missing", help="Compare the common cases when the case sets differ.")
    ] = False,
    n_bootstrap: Annotated[int, typer.Option("--n-bootstrap", min=1, help="Bootstrap resamples.")] = 10_000,
    seed: Annotated[int, typer.Option(help="Bootstrap seed.")] = 0,
    confidence: Annotated[float, typer.Option(help="Confidence level of the interval.", min=0.5, max=0.999999)] = 0.95,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Also write the JSON to this file.", show_default=False)
    ] = None,
    overwrite: OverwriteOption = False,
) -> None:
    """Paired per-case comparison of two evaluations: Wilcoxon signed-rank p-value, bootstrap CI of B - A.

    Prints JSON: mean difference (B minus A), its percentile bootstrap interval, the p-value, wins/losses/ties.

    Example: covidseg compare eval_l2sp/ eval_layerwise/ --metric opacity_dice -o l2sp_vs_layerwise.json
    """
    from covidseg.evaluate.compare import compare_evaluations
    from covidseg.io.atomic import atomic_path, check_writable

    if output is not None:
        check_writable(output, overwrite)
    report = compare_evaluations(
        run_a,
        run_b,
        metric=metric,
        allow_missing=allow_missing,
        n_bootstrap=n_bootstrap,
        seed=seed,
        confidence=confidence,
    )
    if report.n_dropped:
        typer.echo(f"note: {report.n_dropped} case(s) scored by one run only were dropped", err=True)
    text = json.dumps(report.to_dict(), indent=2, allow_nan=False)
    if output is not None:
        with atomic_path(output, overwrite=overwrite) as tmp:
            tmp.write_text(text + "\n", encoding="utf-8")
    typer.echo(text)


def figure_drift(
    runs: Annotated[list[Path], typer.Argument(help="Run folders (best.pt, else last.pt) or checkpoints.")],
    source: Annotated[Path, typer.Option("--source", help="The source weights the runs started from.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Figure file (.png, .pdf, .svg).")],
    label: Annotated[
        list[str] | None, typer.Option("--label", help="Legend label per run, in order (default: folder names).")
    ] = None,
    exclude_batchnorm: Annotated[
        bool, typer.Option("--exclude-batchnorm", help="Conv weights only (leave BatchNorm weights out).")
    ] = False,
    title: Annotated[str, typer.Option(help="Plot title.")] = "Relative change of encoder weights per layer",
    overwrite: OverwriteOption = False,
) -> None:
    """Figure 1: per-layer relative drift of several fine-tuned runs from their source model, on one plot.

    Example: covidseg figure-drift --source imagenet.pt runs/l2sp runs/layerwise -o figure1.png
    """
    from covidseg.evaluate.drift_figure import drift_figure

    drift = drift_figure(
        source, runs, output, labels=label, exclude_batchnorm=exclude_batchnorm, title=title, overwrite=overwrite
    )
    for name, rows in drift.items():
        finite = [r.relative_drift for r in rows if r.relative_drift == r.relative_drift]
        mean = sum(finite) / len(finite) if finite else float("nan")
        typer.echo(f"{name}: {len(rows)} layers, mean relative drift {mean:.4g}")
    typer.echo(f"figure: {output}")


def figure_overlays(
    predictions: Annotated[list[Path], typer.Argument(help="Predicted label maps of the same scan, one per run.")],
    ref: Annotated[Path, typer.Option("--ref", help="Reference mask of the scan.")],
    image: Annotated[Path, typer.Option("--image", help="The CT scan (or 2-D slice image) the masks belong to.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Figure file (.png, .pdf, .svg).")],
    label: Annotated[list[str] | None, typer.Option("--label", help="Column label per prediction, in order.")] = None,
    slices: Annotated[
        str, typer.Option(help="auto (most reference opacity), disagreement (most FP + FN) or indices 10,20,30.")
    ] = "auto",
    n_slices: Annotated[int, typer.Option("--n-slices", min=1, help="Rows for auto / disagreement.")] = 3,
    ref_labels: RefLabelsOption = "auto",
    pred_labels: PredLabelsOption = "multiclass",
    image_window: ImageWindowOption = None,
    title: Annotated[str | None, typer.Option(help="Figure title.", show_default=False)] = None,
    overwrite: OverwriteOption = False,
) -> None:
    """Figure 2: TP (green), FP (red), FN (yellow) opacity overlays of the same slices under several runs.

    Rows are slices, columns are runs; each panel's title gives the run and that slice's Dice.

    Example: covidseg figure-overlays --image ct.nii.gz --ref ct_ref.nii.gz a/ct_labels.nii.gz b/ct_labels.nii.gz
    --label L2-SP --label layer-wise -o figure2.png
    """
    from covidseg.evaluate.labels import SCHEME_CHOICES
    from covidseg.evaluate.overlays import overlay_figure_from_files, parse_slices

    _check_choice(ref_labels, SCHEME_CHOICES, "--ref-labels")
    _check_choice(pred_labels, SCHEME_CHOICES, "--pred-labels")
    shown = overlay_figure_from_files(
        image,
        ref,
        predictions,
        parse_slices(slices),
        output,
        labels=label,
        ref_labels=ref_labels,
        pred_labels=pred_labels,
        image_window=image_window,
        n_slices=n_slices,
        title=title,
        overwrite=overwrite,
    )
    typer.echo(f"slices: {', '.join(str(k) for k in shown)}")
    typer.echo(f"figure: {output}")
