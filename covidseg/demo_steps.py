"""The steps of ``covidseg demo``, each one call into the library a user would make.

Every function works with paths relative to the current working directory (the demo folder, see
:func:`covidseg.demo.run_demo`) and takes its settings from a :class:`~covidseg.demo_config.DemoPlan`:

1. :func:`write_dataset`: the labelled phantoms as a ``volumes`` dataset and the held-out phantom as files;
2. :func:`train_source`: ``covidseg pretrain`` (the source model);
3. :func:`fine_tune`: ``covidseg train`` with the paper's layer-wise L2-SP, then :func:`write_drift` (how far
   each encoder layer moved from the source);
4. :func:`predict_heldout` (``covidseg predict``'s pipeline) and :func:`score_against_truth`;
5. :func:`export_and_verify_bundle` (``covidseg export-bundle`` with its checks).
"""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from covidseg.data.phantom import generate_phantom, save_montage
from covidseg.demo_config import DemoPlan
from covidseg.errors import InputError
from covidseg.io import CTVolume, save_mask, save_volume

__all__ = [
    "BUNDLE_DIR",
    "CLASS_NAMES",
    "DRIFT_NAME",
    "HELDOUT_DIR",
    "PREDICTION_DIR",
    "BundleCheck",
    "DatasetFiles",
    "HeldoutScores",
    "export_and_verify_bundle",
    "fine_tune",
    "path_size_mb",
    "predict_heldout",
    "relative_files",
    "score_against_truth",
    "train_source",
    "write_dataset",
    "write_drift",
]

HELDOUT_DIR = Path("heldout")
"""The held-out scan (``<name>.nii.gz``) and, in ``truth/``, its phantom labels."""
PREDICTION_DIR = Path("prediction")
"""``covidseg predict``'s outputs for the held-out scan."""
BUNDLE_DIR = Path("bundle")
"""The exported MONAI bundle."""
DRIFT_NAME = "drift"
"""Stem of the layer-drift CSV and plot in the fine-tuning run folder."""
MONAI_BUNDLE_LOGGERS = ("monai.bundle.scripts", "monai.apps")
"""MONAI's bundle checks log their inputs (and the schema lookup) at INFO; the demo shows only their warnings."""
CLASS_NAMES = ("background", "lung", "opacity")
"""Label values of phantoms and of ``covidseg predict``'s masks (0, 1, 2)."""


@dataclass(frozen=True)
class DatasetFiles:
    """What :func:`write_dataset` wrote.

    Attributes:
        root: The dataset folder (``images/`` and ``labels/``).
        cases: Case ids of the labelled cases.
        heldout_scan: The held-out scan.
        heldout_truth: Its phantom labels (0 background, 1 lung, 2 opacity).
        heldout_montage: A PNG of the held-out scan with its true labels outlined.
    """

    root: Path
    cases: tuple[str, ...]
    heldout_scan: Path
    heldout_truth: Path
    heldout_montage: Path


@dataclass(frozen=True)
class HeldoutScores:
    """The held-out prediction against the phantom's truth (3-D, over the whole scan).

    Attributes:
        dice: Class -> Dice (``lung``, ``opacity``).
        true_opacity_ml: Opacity volume of the truth in mL.
        predicted_opacity_ml: Opacity volume of the prediction in mL.
    """

    dice: dict[str, float]
    true_opacity_ml: float
    predicted_opacity_ml: float


@dataclass(frozen=True)
class BundleCheck:
    """The exported bundle and the checks it passed.

    Attributes:
        path: The bundle folder.
        files: Its files (relative to ``path``).
        checks: Names of the passed checks (``verify_metadata``, ``verify_net_in_out``).
        notes: Differences between the bundle and the checkpoint's own settings.
    """

    path: Path
    files: tuple[str, ...]
    checks: tuple[str, ...]
    notes: tuple[str, ...]


@contextlib.contextmanager
def _quiet_loggers(names: tuple[str, ...], level: int = logging.WARNING) -> Iterator[None]:
    """Raise some loggers' levels for the block (MONAI's INFO chatter), then restore them."""
    loggers = [logging.getLogger(name) for name in names]
    previous = [logger.level for logger in loggers]
    for logger, old in zip(loggers, previous, strict=True):
        logger.setLevel(max(level, old))
    try:
        yield
    finally:
        for logger, old in zip(loggers, previous, strict=True):
            logger.setLevel(old)


def _case_id(seed: int, width: int) -> str:
    return f"phantom_{seed:0{width}d}"


def write_dataset(plan: DemoPlan, on_case: Callable[[int, int], None] | None = None) -> DatasetFiles:
    """Write the labelled phantoms as a ``volumes`` dataset and the held-out phantom with its truth.

    Layout: ``<data root>/images/<case>.nii.gz`` (int16 HU) and ``<data root>/labels/<case>.nii.gz`` (uint8,
    0 background, 1 lung, 2 opacity); ``heldout/<name>.nii.gz``, ``heldout/truth/<name>_labels.nii.gz`` and
    ``heldout/<name>_montage.png``.

    Args:
        plan: The demo recipe.
        on_case: Called as ``on_case(done, total)`` after each phantom.

    Examples:
        >>> import tempfile
        >>> from covidseg.demo_config import load_demo_config
        >>> from covidseg.demo import working_directory
        >>> plan = load_demo_config(quick=True, overrides=["dataset.n_cases=3", "dataset.shape=[4, 32, 32]"])
        >>> with working_directory(tempfile.mkdtemp()):
        ...     files = write_dataset(plan)
        ...     sorted(p.name for p in (files.root / "labels").iterdir()), files.heldout_scan.is_file()
        (['phantom_000.nii.gz', 'phantom_001.nii.gz', 'phantom_002.nii.gz'], True)
    """
    spec = plan.dataset
    root = plan.data_root
    width = max(3, len(str(max(spec.seeds))))
    total = spec.n_cases + 1
    cases = []
    for done, seed in enumerate(spec.seeds, start=1):
        phantom = generate_phantom(spec.shape, spec.spacing, seed=seed, n_lesions=spec.n_lesions)
        volume = CTVolume.from_canonical(phantom.hu, phantom.affine)
        case = _case_id(seed, width)
        save_volume(phantom.hu, volume, root / "images" / f"{case}.nii.gz", dtype=np.int16)
        save_mask(phantom.labels, volume, root / "labels" / f"{case}.nii.gz")
        cases.append(case)
        if on_case is not None:
            on_case(done, total)
    name = plan.heldout.name
    phantom = generate_phantom(spec.shape, spec.spacing, seed=plan.heldout.seed, n_lesions=spec.n_lesions)
    volume = CTVolume.from_canonical(phantom.hu, phantom.affine)
    scan = save_volume(phantom.hu, volume, HELDOUT_DIR / f"{name}.nii.gz", dtype=np.int16)
    truth = save_mask(phantom.labels, volume, HELDOUT_DIR / "truth" / f"{name}_labels.nii.gz")
    montage = save_montage(phantom.hu, phantom.labels, HELDOUT_DIR / f"{name}_montage.png", spacing=phantom.spacing)
    if on_case is not None:
        on_case(total, total)
    return DatasetFiles(root, tuple(cases), scan, truth, montage)


def train_source(plan: DemoPlan, console: Console | None) -> Any:
    """Pre-train the source model (``covidseg pretrain``) and write it to ``finetune.source.path``.

    Returns:
        The :class:`~covidseg.train.pretrain.PretrainResult`.

    Examples:
        >>> from covidseg.demo_config import load_demo_config
        >>> train_source(load_demo_config(quick=True), None).source  # doctest: +SKIP
        PosixPath('runs/pretrain/source.pt')
    """
    from covidseg.train.pretrain import pretrain

    return pretrain(plan.pretrain, output=plan.source_path, console=console)


def fine_tune(plan: DemoPlan, console: Console | None) -> Any:
    """Fine-tune from the source model with the recipe's scheme (``covidseg train``).

    Returns:
        The :class:`~covidseg.train.trainer.TrainResult`.

    Examples:
        >>> from covidseg.demo_config import load_demo_config
        >>> fine_tune(load_demo_config(quick=True), None).best_checkpoint  # doctest: +SKIP
        PosixPath('runs/finetune/best.pt')
    """
    from covidseg.train.trainer import train

    return train(plan.finetune, console=console)


def write_drift(checkpoint: Path, source: Path, out_stem: Path, *, label: str) -> tuple[Path, Path, float]:
    """Per-layer relative drift of the encoder from the source weights: a CSV, a plot and the mean drift.

    Args:
        checkpoint: The fine-tuned checkpoint.
        source: The source checkpoint it started from.
        out_stem: Output path without suffix (``.csv`` and ``.png`` are added).
        label: Legend label of the run.

    Returns:
        The CSV, the plot and the mean relative drift over the encoder layers.

    Examples:
        >>> import tempfile, pathlib
        >>> from covidseg.model import DenseUNet, UNetConfig, save_checkpoint
        >>> cfg = UNetConfig(decoder_channels=(16, 16, 8, 8, 8))
        >>> tmp = pathlib.Path(tempfile.mkdtemp())
        >>> src = save_checkpoint(tmp / "src.pt", DenseUNet(cfg), model_config=cfg)
        >>> csv, png, mean = write_drift(src, src, tmp / "drift", label="no change")
        >>> csv.name, png.name, mean
        ('drift.csv', 'drift.png', 0.0)
    """
    from covidseg.model import build_model_from_checkpoint, encoder_param_layer, load_checkpoint
    from covidseg.transfer.drift import layer_drift, plot_drift, write_drift_csv

    tuned = build_model_from_checkpoint(load_checkpoint(checkpoint))
    source_state = load_checkpoint(source)["state_dict"]
    rows = layer_drift(tuned.state_dict(), source_state, encoder_param_layer(tuned))
    csv_path, png_path = out_stem.with_suffix(".csv"), out_stem.with_suffix(".png")
    write_drift_csv(rows, csv_path, overwrite=True)
    plot_drift({label: rows}, png_path, overwrite=True)
    values = [r.relative_drift for r in rows if not np.isnan(r.relative_drift)]
    return csv_path, png_path, float(np.mean(values)) if values else float("nan")


def predict_heldout(plan: DemoPlan, checkpoint: Path, scan: Path, console: Console) -> Any:
    """Segment the held-out scan with ``covidseg predict``'s pipeline into ``prediction/``.

    Writes ``<name>_labels.nii.gz``, ``<name>_report.json`` and ``<name>_overview.png``; the report names the
    checkpoint by its path relative to the demo folder.

    Returns:
        The :class:`~covidseg.infer.pipeline.ScanResult`.

    Examples:
        >>> from covidseg.demo_config import load_demo_config
        >>> plan = load_demo_config(quick=True)
        >>> model, scan = Path("runs/finetune/best.pt"), Path("heldout/heldout_phantom.nii.gz")
        >>> result = predict_heldout(plan, model, scan, Console())  # doctest: +SKIP
        >>> sorted(result.outputs)  # doctest: +SKIP
        ['labels', 'overview', 'report']
    """
    from covidseg.infer.outputs import OutputOptions
    from covidseg.infer.pipeline import PredictOptions, predict_scan
    from covidseg.infer.segmenter import Segmenter

    settings = plan.predict
    segmenter = Segmenter.from_checkpoint(
        checkpoint, device=settings.device, precision=settings.precision, batch_size=settings.batch_size
    )
    segmenter.info = replace(segmenter.info, path=checkpoint)  # relative to the demo folder, not the temp name
    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("slices"),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    )
    with progress:
        task = progress.add_task(f"{scan.name}: starting", total=None)
        result = predict_scan(
            scan,
            segmenter,
            PREDICTION_DIR,
            options=PredictOptions(outputs=OutputOptions(overwrite=True)),
            progress=lambda done, total: progress.update(task, completed=done, total=total),
            on_stage=lambda stage: progress.update(task, description=f"{scan.name}: {stage}"),
        )
    return result


def score_against_truth(mask: Path, truth: Path, scan: Path) -> HeldoutScores:
    """3-D Dice of a predicted label map against the phantom truth, after checking both lie on the scan's grid.

    Raises:
        InputError: The mask's shape or affine differs from the scan's.

    Examples:
        >>> import tempfile, pathlib
        >>> from covidseg.io import canonical_affine
        >>> tmp = pathlib.Path(tempfile.mkdtemp())
        >>> hu = np.full((2, 8, 8), -800, np.int16); hu[:, :, :2] = 40; hu[:, :, -2:] = -1000
        >>> vol = CTVolume.from_canonical(hu, canonical_affine((5.0, 1.0, 1.0)))
        >>> labels = np.ones((2, 8, 8), np.uint8); labels[:, :4] = 2
        >>> scan = save_volume(hu, vol, tmp / "s.nii.gz")
        >>> truth = save_mask(labels, vol, tmp / "t.nii.gz")
        >>> score_against_truth(truth, truth, scan).dice
        {'lung': 1.0, 'opacity': 1.0}
    """
    from covidseg.io import load_ct
    from covidseg.train.metrics import case_scores

    image = load_ct(scan)
    predicted = load_ct(mask, assume_hu=True)
    reference = load_ct(truth, assume_hu=True)
    for what, volume in (("mask", predicted), ("truth", reference)):
        same = volume.shape == image.shape and np.allclose(volume.affine, image.affine, atol=1e-4)
        if not same:
            raise InputError(f"the {what} {volume.shape} does not lie on the grid of the scan {image.shape}")
    scores = case_scores(predicted.hu.astype(np.int64), reference.hu.astype(np.int64), CLASS_NAMES)
    voxel_ml = float(np.prod(image.spacing)) / 1000.0
    return HeldoutScores(
        dice={name: scores.dice[name] for name in CLASS_NAMES[1:]},
        true_opacity_ml=float((reference.hu == 2).sum()) * voxel_ml,
        predicted_opacity_ml=float((predicted.hu == 2).sum()) * voxel_ml,
    )


def export_and_verify_bundle(plan: DemoPlan, checkpoint: Path) -> BundleCheck:
    """Export the checkpoint as a MONAI bundle (``bundle/``) and run MONAI's offline checks on it.

    Raises:
        InputError: The bundle fails ``verify_metadata`` or ``verify_net_in_out``.

    Examples:
        >>> from covidseg.demo_config import load_demo_config
        >>> check = export_and_verify_bundle(load_demo_config(), Path("runs/finetune/best.pt"))  # doctest: +SKIP
        >>> check.checks  # doctest: +SKIP
        ('verify_metadata', 'verify_net_in_out')
    """
    from covidseg.bundle.export import export_bundle
    from covidseg.bundle.verify import verify_bundle

    exported = export_bundle(checkpoint, BUNDLE_DIR, overwrite=True, name=plan.bundle.name, version=plan.bundle.version)
    with _quiet_loggers(MONAI_BUNDLE_LOGGERS), warnings.catch_warnings():
        # verify_metadata warns that the schema shipped in the bundle has no hash: it is the local copy on purpose
        warnings.filterwarnings("ignore", message="No hash value provided", category=UserWarning)
        checks = verify_bundle(exported.path)
    return BundleCheck(exported.path, tuple(exported.files), tuple(checks), tuple(exported.notes))


def relative_files(folder: Path) -> list[str]:
    """Files under ``folder`` (relative, sorted); hidden temporaries excluded.

    Examples:
        >>> import tempfile, pathlib
        >>> tmp = pathlib.Path(tempfile.mkdtemp()); _ = (tmp / "a.txt").write_text("1")
        >>> relative_files(tmp)
        ['a.txt']
    """
    return sorted(
        str(p.relative_to(folder))
        for p in folder.rglob("*")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )


def path_size_mb(path: str | os.PathLike[str]) -> float:
    """Size of a file or folder in MB.

    Examples:
        >>> import tempfile, pathlib
        >>> tmp = pathlib.Path(tempfile.mkdtemp()); _ = (tmp / "a.bin").write_bytes(b"0" * 500_000)
        >>> path_size_mb(tmp)
        0.5
    """
    p = Path(path)
    files = [p] if p.is_file() else [f for f in p.rglob("*") if f.is_file()]
    return round(sum(f.stat().st_size for f in files) / 1e6, 3)
