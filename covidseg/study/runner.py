"""Run a study: the folds file, the source model, every (scheme, fold) run, the report and the final model.

Folder layout (every step is resumable: finished parts are found and skipped on a rerun)::

    OUT/
      study.yaml          the preset as run (a rerun with other settings is refused)
      folds.json          the k-fold assignment of cases, written once and reused by every run
      source/             the pretrain run and source.pt (when the study pre-trains its source)
      runs/<scheme>/fold<k>/   covidseg train run folders (config.yaml, last.pt, val_cases.csv, ...)
      cache/              the preprocessed-slice cache shared by all runs
      per_case.csv, per_fold.csv, comparisons.csv, summary.json, results.md   (see covidseg.study.report)
      final/<scheme>/     the final model (``final`` command): last.pt trained on every labelled case

Each run is scored on its held-out fold with the weights of its last epoch (``val_cases.csv`` of the last
validation), so no score comes from a model chosen on the cases it is scored on.
"""

from __future__ import annotations

import csv
import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console

from covidseg.config import RunConfig, load_config
from covidseg.errors import ConfigError, InputError, OutputExistsError
from covidseg.io.atomic import atomic_path
from covidseg.study.spec import StudySpec

__all__ = ["CaseResult", "StudyRuns", "fold_run_config", "run_folds", "study_source", "write_folds"]

FOLDS_NAME = "folds.json"
SPEC_NAME = "study.yaml"
SOURCE_NAME = "source.pt"
TIMING_NAME = "timing.json"


@dataclass(frozen=True)
class CaseResult:
    """The held-out score of one case under one scheme.

    Attributes:
        scheme: The scheme key.
        fold: The fold whose validation set holds the case.
        case_id: The case.
        scores: ``dice_<class>``, ``sensitivity_<class>``, ``precision_<class>`` of the last epoch.
    """

    scheme: str
    fold: int
    case_id: str
    scores: dict[str, float]


@dataclass(frozen=True)
class StudyRuns:
    """Everything the runs produced.

    Attributes:
        cases: Per (scheme, case) held-out scores.
        run_seconds: Training wall time of each (scheme, fold) run, as recorded when it ran.
        source_seconds: Wall time of the source pre-training (0 when the source was given or reused).
    """

    cases: list[CaseResult]
    run_seconds: dict[tuple[str, int], float]
    source_seconds: float


def _base_config(spec: StudySpec, scheme: str, extra: Sequence[str]) -> RunConfig:
    settings = spec.schemes[scheme]
    return load_config([*spec.dataset, *settings.configs], [*spec.overrides, *settings.overrides, *extra])


def check_study_folder(spec: StudySpec, out: Path, *, overwrite: bool) -> None:
    """Create ``out`` (refusing a folder of another study) and record the preset in it.

    Raises:
        OutputExistsError: ``out`` holds a study with other settings and ``overwrite`` is False.
    """
    saved = out / SPEC_NAME
    current = spec.model_dump(mode="json")
    if saved.is_file():
        previous = yaml.safe_load(saved.read_text())
        if previous != current and not overwrite:
            raise OutputExistsError(
                f"{out} holds a study with other settings; use another folder or --overwrite to redo it"
            )
        if previous != current:
            import shutil

            shutil.rmtree(out)
    elif out.exists() and any(out.iterdir()) and not overwrite:
        raise OutputExistsError(f"{out} exists and is not a study folder; use another folder or --overwrite")
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(saved, overwrite=True) as tmp:
        tmp.write_text(yaml.safe_dump(current, sort_keys=False))


def write_folds(spec: StudySpec, out: Path) -> Path:
    """The study's ``folds.json``: made once with :func:`covidseg.data.splits.kfold_cases`, then reused.

    Raises:
        InputError: Fewer cases than folds, or bad dataset files.
    """
    from covidseg.data.splits import kfold_cases, save_splits
    from covidseg.train.prepare import prepare_cases

    path = out / FOLDS_NAME
    if path.is_file():
        return path
    cases = prepare_cases(load_config(spec.dataset, spec.overrides))
    splits = kfold_cases(cases, k=spec.folds, seed=spec.split_seed)
    return save_splits(splits, path)


def study_source(spec: StudySpec, out: Path, console: Console | None = None) -> tuple[Path | None, float]:
    """The source checkpoint: the given path, or a pretrain run made once under ``out/source``.

    Returns:
        The checkpoint (None when no scheme uses a source) and the seconds spent pre-training now.
    """
    source = spec.source
    if source is None:
        return None, 0.0
    if source.path is not None:
        if not source.path.is_file():
            raise InputError(f"source checkpoint {source.path} does not exist; fix source.path in the preset")
        return source.path, 0.0
    from covidseg.config.pretrain import load_pretrain_config
    from covidseg.train.pretrain import pretrain

    target = out / "source" / SOURCE_NAME
    if target.is_file():
        return target, 0.0
    overrides = [*source.overrides, f"output.root={out}", "output.name=source"]
    config = load_pretrain_config(source.pretrain_configs, overrides)
    run_dir = out / "source"
    resume = run_dir if (run_dir / "last.pt").is_file() else None
    start = time.perf_counter()
    pretrain(config, output=target, resume=resume, overwrite=True, console=console)
    return target, time.perf_counter() - start


def fold_run_config(spec: StudySpec, scheme: str, fold: int, out: Path, source: Path | None) -> RunConfig:
    """The run config of ``scheme`` on fold ``fold`` (validation = that fold, training = the others).

    Examples:
        >>> from covidseg.study.spec import SchemeSection
        >>> spec = StudySpec(dataset=[Path("configs/datasets/phantom.yaml")], folds=3,
        ...                  schemes={"scratch": SchemeSection(use_source=False)})
        >>> cfg = fold_run_config(spec, "scratch", 2, Path("/tmp/study"), None)
        >>> cfg.data.fold, cfg.data.folds, str(cfg.data.splits), cfg.output.name
        (2, 3, '/tmp/study/folds.json', 'fold2')
    """
    settings = spec.schemes[scheme]
    extra = [
        f"data.splits={out / FOLDS_NAME}",
        f"data.folds={spec.folds}",
        f"data.fold={fold}",
        f"data.cache_dir={out / 'cache'}",
        f"output.root={out / 'runs' / scheme}",
        f"output.name=fold{fold}",  # run_folds reads the runs back from this folder
        "train.early_stopping_patience=0",
    ]
    if settings.use_source:
        if source is None:
            raise ConfigError(f"scheme {scheme!r} needs the study's source model")
        extra.append(f"source.path={source}")
    return _base_config(spec, scheme, extra)


def _read_val_cases(run_dir: Path, scheme: str, fold: int, epochs: int) -> list[CaseResult]:
    path = run_dir / "val_cases.csv"
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows or any(int(r["epoch"]) != epochs for r in rows):
        raise InputError(f"{path} is not from the last epoch ({epochs}); delete {run_dir} and rerun the study")
    results = []
    for row in rows:
        scores = {k: float(v) for k, v in row.items() if k not in ("epoch", "case_id") and v != ""}
        results.append(CaseResult(scheme, fold, row["case_id"], scores))
    return results


def _run_one(config: RunConfig, console: Console | None) -> float:
    """Train (or resume, or skip) one run folder; returns the training seconds recorded for it."""
    from covidseg.train.trainer import train

    run_dir = config.output.root / str(config.output.name)
    timing = run_dir / TIMING_NAME
    if timing.is_file():
        return float(json.loads(timing.read_text())["seconds"])
    resume = run_dir if (run_dir / "last.pt").is_file() else None
    if run_dir.exists() and resume is None:
        import shutil

        shutil.rmtree(run_dir)  # killed before its first checkpoint: nothing to keep
    start = time.perf_counter()
    train(config, resume=resume, console=console)
    seconds = time.perf_counter() - start
    with atomic_path(timing, overwrite=True) as tmp:
        tmp.write_text(json.dumps({"seconds": round(seconds, 1), "resumed": resume is not None}) + "\n")
    return seconds


def run_folds(
    spec: StudySpec,
    out: Path,
    *,
    source: Path | None,
    schemes: Sequence[str] | None = None,
    console: Console | None = None,
    train_missing: bool = True,
) -> StudyRuns:
    """Train every (scheme, fold) run that is not finished yet and collect the held-out scores.

    Args:
        spec: The study.
        out: The study folder (with ``folds.json``).
        source: The source checkpoint.
        schemes: Only these schemes (default: all, in preset order).
        console: Where progress is printed.
        train_missing: Train unfinished runs (False: collect the finished ones; a scheme missing a fold is left
            out of the results).
    """
    say = console.print if console is not None else (lambda *_: None)
    chosen = list(schemes) if schemes is not None else list(spec.schemes)
    cases: list[CaseResult] = []
    seconds: dict[tuple[str, int], float] = {}
    total = len(chosen) * spec.folds
    done = 0
    for scheme in chosen:
        scheme_cases: list[CaseResult] = []
        for fold in range(spec.folds):
            done += 1
            run_dir = out / "runs" / scheme / f"fold{fold}"
            if train_missing:
                config = fold_run_config(spec, scheme, fold, out, source)
                say(f"[bold]run {done}/{total}[/]: {spec.label(scheme)}, fold {fold + 1}/{spec.folds}")
                seconds[(scheme, fold)] = _run_one(config, console)
            elif not (run_dir / TIMING_NAME).is_file():
                scheme_cases = []
                break
            epochs = int(yaml.safe_load((run_dir / "config.yaml").read_text())["train"]["epochs"])
            scheme_cases += _read_val_cases(run_dir, scheme, fold, epochs)
        cases += scheme_cases
    return StudyRuns(cases, seconds, 0.0)


def final_run_config(spec: StudySpec, scheme: str, out: Path, source: Path | None) -> RunConfig:
    """The final model's run: ``scheme`` on every labelled case (``data.val_fraction=0``), under ``out/final``."""
    settings = spec.schemes[scheme]
    extra = [
        "data.val_fraction=0",
        f"data.cache_dir={out / 'cache'}",
        f"output.root={out / 'final'}",
        f"output.name={scheme}",
        *spec.final.overrides,
    ]
    if settings.use_source:
        if source is None:
            raise ConfigError(f"scheme {scheme!r} needs the study's source model")
        extra.append(f"source.path={source}")
    return _base_config(spec, scheme, extra)


def train_final(spec: StudySpec, out: Path, scheme: str, source: Path | None, console: Console | None) -> Path:
    """Train the final model (resuming a killed run) and return its checkpoint (``last.pt``)."""
    config = final_run_config(spec, scheme, out, source)
    _run_one(config, console)
    return config.output.root / str(config.output.name) / "last.pt"


def study_seconds(out: Path) -> dict[str, Any]:
    """Wall times recorded in the study folder (source pre-training and every run)."""
    runs = {
        str(path.parent.relative_to(out / "runs")): float(json.loads(path.read_text())["seconds"])
        for path in sorted((out / "runs").glob(f"*/*/{TIMING_NAME}"))
    }
    source_timing = out / "source" / TIMING_NAME
    source = float(json.loads(source_timing.read_text())["seconds"]) if source_timing.is_file() else 0.0
    return {"runs": runs, "source": source, "total": round(source + sum(runs.values()), 1)}


def record_source_seconds(out: Path, seconds: float) -> None:
    """Remember how long the source pre-training took (kept across reruns)."""
    path = out / "source" / TIMING_NAME
    if seconds <= 0 or path.is_file():
        return
    with atomic_path(path, overwrite=True) as tmp:
        tmp.write_text(json.dumps({"seconds": round(seconds, 1)}) + "\n")


def environment_summary() -> dict[str, Any]:
    """Machine facts stored with the results (threads, device, versions)."""
    import platform

    import torch

    import covidseg

    return {
        "machine": platform.machine(),
        "processor": platform.processor() or "unknown",
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "torch": torch.__version__,
        "covidseg": covidseg.__version__,
    }
