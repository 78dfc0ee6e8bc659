"""The README's main job, ``covidseg demo``: covidseg end to end on synthetic chest CTs, on a CPU.

From nothing to a verified MONAI bundle in one folder, with the recipe of ``configs/demo/demo.yaml``
(:mod:`covidseg.demo_config`; ``--quick`` merges ``quick.yaml`` over it) and the steps of
:mod:`covidseg.demo_steps`:

1. a labelled dataset of phantoms written as NIfTI (``data/images``, ``data/labels``) and one held-out phantom;
2. a source model pre-trained on other phantoms (``covidseg pretrain``);
3. fine-tuning from it with the paper's layer-wise L2-SP (``covidseg train``) and the encoder's layer drift;
4. the held-out scan segmented by ``covidseg predict``'s pipeline (mask, report, overview) and scored against
   the phantom's truth;
5. the fine-tuned model exported as a MONAI bundle and verified (``covidseg export-bundle``).

Everything is built in a temporary folder next to ``out_dir`` that is renamed when the demo succeeded
(:func:`covidseg.io.atomic.atomic_dir`); a failed or interrupted demo leaves nothing behind. The demo runs with
that folder as the working directory, so every path recorded in the run folders, checkpoints and reports is
relative to the demo folder and stays valid after the rename.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

from covidseg import demo_steps as S
from covidseg.demo_config import DemoPlan, load_demo_config
from covidseg.io.atomic import atomic_dir, atomic_path, check_writable

__all__ = ["SUMMARY_NAME", "DemoResult", "format_duration", "run_demo", "working_directory"]

SUMMARY_NAME = "demo_summary.json"
"""Machine-readable summary in the demo folder: paths (relative), scores, timings."""
N_STEPS = 5


@dataclass
class DemoResult:
    """What :func:`run_demo` produced.

    Attributes:
        out_dir: The demo folder (as given).
        paths: Output kind -> path (under ``out_dir``), in the order they are printed.
        heldout_dice: Class -> Dice of the held-out prediction against the phantom truth.
        validation_dice: Best validation opacity Dice of the fine-tuning run.
        timings: Seconds per step and in total.
        bundle_checks: The checks the bundle passed.
        summary: The content of ``demo_summary.json``.
    """

    out_dir: Path
    paths: dict[str, Path]
    heldout_dice: dict[str, float]
    validation_dice: float
    timings: dict[str, float]
    bundle_checks: tuple[str, ...]
    summary: dict[str, Any] = field(default_factory=dict)


@contextlib.contextmanager
def working_directory(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Run the block with ``path`` as the working directory, and restore the previous one afterwards.

    Examples:
        >>> import tempfile
        >>> before = os.getcwd()
        >>> with working_directory(tempfile.mkdtemp()) as here:
        ...     Path.cwd() == here.resolve()
        True
        >>> os.getcwd() == before
        True
    """
    previous = os.getcwd()
    target = Path(path)
    os.chdir(target)
    try:
        yield target
    finally:
        os.chdir(previous)


def format_duration(seconds: float) -> str:
    """Seconds as ``"42.0 s"`` or ``"7 min 05 s"``.

    Examples:
        >>> format_duration(42.04), format_duration(425.3)
        ('42.0 s', '7 min 05 s')
    """
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes} min {rest:02d} s"


def _scheme_text(plan: DemoPlan) -> str:
    reg = plan.finetune.regularization
    params = reg.params()
    schedule = params.get("schedule")
    if reg.name == "l2sp_layerwise" and isinstance(schedule, dict) and schedule.get("name") == "log":
        return (
            f"layer-wise L2-SP, λ_i = max(0, {schedule.get('lambda0')} − {schedule.get('alpha')}·ln i) on the "
            f"encoder's 120 conv layers, λ' = {params.get('decoder_lambda')} on the decoder"
        )
    return f"{reg.name} {params}" if params else reg.name


class _Steps:
    """Numbered step headers and per-step timings on the demo's console."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.timings: dict[str, float] = {}
        self._index = 0

    @contextlib.contextmanager
    def step(self, key: str, title: str) -> Iterator[None]:
        self._index += 1
        self.console.rule(f"[bold cyan]Step {self._index}/{N_STEPS}[/] {escape(title)}", align="left")
        start = time.perf_counter()
        yield
        self.timings[key] = time.perf_counter() - start
        self.console.print(f"[green]✓[/] step {self._index} done in {format_duration(self.timings[key])}")

    def say(self, text: str) -> None:
        self.console.print(f"  {escape(text)}", soft_wrap=True)


def _dataset_step(plan: DemoPlan, steps: _Steps) -> S.DatasetFiles:
    spec = plan.dataset
    steps.say(
        f"{spec.n_cases} labelled phantoms of {spec.shape[2]} x {spec.shape[1]} x {spec.shape[0]} voxels "
        f"({spec.spacing[2]} x {spec.spacing[1]} x {spec.spacing[0]} mm), {spec.n_lesions[0]}-{spec.n_lesions[1]} "
        "lesions each (ground glass and consolidation), and one held-out phantom"
    )
    progress = Progress(
        TextColumn("  writing NIfTI"), BarColumn(), MofNCompleteColumn(), console=steps.console, transient=True
    )
    with progress:
        task = progress.add_task("phantoms", total=spec.n_cases + 1)
        files = S.write_dataset(plan, on_case=lambda done, _total: progress.update(task, completed=done))
    steps.say(f"dataset: {files.root}/images + labels/ ({len(files.cases)} cases, label 1 lung, 2 opacity)")
    steps.say(f"held-out scan: {files.heldout_scan} (seed {plan.heldout.seed}, not in the dataset)")
    return files


def _validation_dice(result: Any) -> float:
    return float(result.best_metric) if result.best_checkpoint is not None else float("nan")


def run_demo(
    out_dir: str | os.PathLike[str],
    *,
    overwrite: bool = False,
    quick: bool = False,
    config_files: Sequence[str | os.PathLike[str]] = (),
    overrides: Iterable[str] = (),
    console: Console | None = None,
) -> DemoResult:
    """Run the demo (see the module docstring) and print where everything is.

    Args:
        out_dir: Folder to create for everything the demo writes.
        overwrite: Replace an existing ``out_dir``.
        quick: Tiny sizes (``configs/demo/quick.yaml``): the same steps in about a minute, for tests.
        config_files: More recipe files merged over the default recipe.
        overrides: ``section.key=value`` changes of the recipe, e.g. ``finetune.train.epochs=3``.
        console: Where progress and the summary are printed (default: stdout).

    Returns:
        The :class:`DemoResult`.

    Raises:
        OutputExistsError: ``out_dir`` exists and ``overwrite`` is false (before anything runs).
        ConfigError: An invalid recipe (before anything runs).

    Examples:
        >>> result = run_demo("demo-output", quick=True)  # doctest: +SKIP
        >>> sorted(result.heldout_dice), result.bundle_checks  # doctest: +SKIP
        (['lung', 'opacity'], ('verify_metadata', 'verify_net_in_out'))
    """
    start = time.perf_counter()
    console = console or Console()
    shown = Path(out_dir)
    check_writable(shown, overwrite)
    plan = load_demo_config(quick, config_files, overrides)
    steps = _Steps(console)
    console.print(
        f"[bold]covidseg demo[/]{' (quick)' if quick else ''}: synthetic chest CTs -> source model -> "
        f"fine-tuning -> prediction -> MONAI bundle, into {escape(str(shown))}/",
        soft_wrap=True,
    )
    with atomic_dir(shown, overwrite=overwrite) as work, working_directory(work):
        with steps.step("dataset", "Dataset: synthetic chest CTs with lung and opacity labels"):
            files = _dataset_step(plan, steps)

        tasks = ", ".join(t.name for t in plan.pretrain.tasks)
        with steps.step("pretrain", f"Source model: pre-training on {tasks}"):
            source = S.train_source(plan, console)
            steps.say(f"source model: {source.source} (validation mean Dice {source.best_score:.3f})")

        with steps.step("finetune", "Fine-tuning on the dataset from the source model"):
            steps.say(f"regularization: {_scheme_text(plan)}")
            tuned = S.fine_tune(plan, console)
            if tuned.best_checkpoint is None:
                raise RuntimeError("fine-tuning never validated; the demo recipe needs train.val_every <= epochs")
            checkpoint = Path(tuned.best_checkpoint)
            drift_csv, drift_png, mean_drift = S.write_drift(
                checkpoint, plan.source_path, checkpoint.parent / S.DRIFT_NAME, label=plan.finetune.regularization.name
            )
            steps.say(
                f"best validation opacity Dice {_validation_dice(tuned):.3f} (epoch {tuned.best_epoch}); "
                f"mean relative drift of the encoder layers from the source {mean_drift:.2e}"
            )

        with steps.step("predict", "Prediction of the held-out scan (covidseg predict's pipeline)"):
            scan_result = S.predict_heldout(plan, checkpoint, files.heldout_scan, console)
            scores = S.score_against_truth(scan_result.outputs["labels"], files.heldout_truth, files.heldout_scan)
            steps.say(f"report: {scan_result.report.get('message', '')}")
            steps.say(
                f"against the phantom's truth: opacity Dice {scores.dice['opacity']:.3f}, lung Dice "
                f"{scores.dice['lung']:.3f} (opacity {scores.predicted_opacity_ml:.1f} mL predicted, "
                f"{scores.true_opacity_ml:.1f} mL true)"
            )

        with steps.step("bundle", "MONAI bundle: export and verify (covidseg export-bundle)"):
            with console.status("  exporting the model (TorchScript) and running MONAI's bundle checks..."):
                bundle = S.export_and_verify_bundle(plan, checkpoint)
            steps.say(f"{bundle.path}/: {len(bundle.files)} files; passed {', '.join(bundle.checks)}")

        steps.timings["total"] = time.perf_counter() - start
        relative: dict[str, Path] = {
            "dataset": files.root,
            "held-out scan": files.heldout_scan,
            "held-out truth": files.heldout_truth,
            "source model": Path(source.source),
            "pre-training run": Path(source.run_dir),
            "fine-tuning run": Path(tuned.run_dir),
            "fine-tuned model": checkpoint,
            "layer drift": drift_png,
            "predicted mask": scan_result.outputs["labels"],
            "report": scan_result.outputs["report"],
            "overview": scan_result.outputs["overview"],
            "MONAI bundle": bundle.path,
            "summary": Path(SUMMARY_NAME),
        }
        summary = {
            "quick": quick,
            "recipe": [str(p) for p in plan.files],
            "paths": {k: str(v) for k, v in relative.items()},
            "heldout": {
                "scan": str(files.heldout_scan),
                "seed": plan.heldout.seed,
                "dice": scores.dice,
                "opacity_ml": {"predicted": scores.predicted_opacity_ml, "true": scores.true_opacity_ml},
            },
            "finetune": {
                "regularization": plan.finetune.regularization.name,
                "best_validation_dice_opacity": _validation_dice(tuned),
                "best_epoch": tuned.best_epoch,
                "epochs": tuned.epochs_completed,
                "mean_relative_drift": mean_drift,
                "drift_csv": str(drift_csv),
            },
            "pretrain": {"best_score": source.best_score, "epochs": source.epochs_completed},
            "bundle": {"checks": list(bundle.checks), "files": len(bundle.files), "notes": list(bundle.notes)},
            "timings_s": {k: round(v, 1) for k, v in steps.timings.items()},
            "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        }
        with atomic_path(SUMMARY_NAME, overwrite=True) as tmp:
            tmp.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")

    paths = {kind: shown / rel for kind, rel in relative.items()}
    _print_summary(console, shown, paths, scores, steps.timings)
    return DemoResult(
        out_dir=shown,
        paths=paths,
        heldout_dice=dict(scores.dice),
        validation_dice=_validation_dice(tuned),
        timings=dict(steps.timings),
        bundle_checks=bundle.checks,
        summary=summary,
    )


def _print_summary(
    console: Console,
    out_dir: Path,
    paths: dict[str, Path],
    scores: S.HeldoutScores,
    timings: dict[str, float],
) -> None:
    console.rule(f"[bold green]covidseg demo finished in {format_duration(timings['total'])}", align="left")
    console.print(
        f"Held-out scan (never seen in training): opacity Dice [bold]{scores.dice['opacity']:.3f}[/], lung Dice "
        f"{scores.dice['lung']:.3f} against the phantom's truth.",
        soft_wrap=True,
    )
    console.print(f"Everything is in {escape(str(out_dir))}/:", soft_wrap=True)
    width = max(len(kind) for kind in paths)
    for kind, path in paths.items():
        suffix = "/" if kind in ("dataset", "pre-training run", "fine-tuning run", "MONAI bundle") else ""
        console.print(f"  {kind:<{width}}  {escape(str(path))}{suffix}", soft_wrap=True, highlight=False)
    step_times = ", ".join(f"{k} {format_duration(v)}" for k, v in timings.items() if k != "total")
    console.print(f"Time per step: {step_times}.", soft_wrap=True)
    model, bundle = paths["fine-tuned model"], paths["MONAI bundle"]
    console.print("Next:", soft_wrap=True)
    console.print(f"  covidseg predict YOUR_SCAN.nii.gz -o results --model {escape(str(model))}", soft_wrap=True)
    console.print(
        f"  cd {escape(str(bundle))} && python -m monai.bundle run --config_file configs/inference.json "
        "--meta_file configs/metadata.json --dataset_dir ../heldout --output_dir ../bundle-prediction",
        soft_wrap=True,
        highlight=False,
    )
    console.print(
        "  covidseg train -c configs/datasets/volumes.yaml -c configs/schemes/l2sp_layerwise_20_1.5.yaml "
        f"--set data.root=YOUR_DATA --source {escape(str(paths['source model']))}",
        soft_wrap=True,
        highlight=False,
    )
