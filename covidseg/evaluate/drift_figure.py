"""Figure 1 of the paper: per-layer drift of several fine-tuned runs from their common source model.

Each run is a checkpoint (or a run folder: its ``best.pt``, else ``last.pt``). The source θ̄ is whatever the runs
started from (a torchvision ImageNet DenseNet121 file, a covidseg checkpoint, a ``covidseg pretrain`` output): it
is loaded into a model of the run's architecture with :func:`covidseg.model.load_source`, the same way training
loaded it, so names and conv0 channel adaptation match. Drift is computed over the encoder tensors the source
provided (:func:`covidseg.transfer.drift.layer_drift`, layers of :func:`covidseg.model.encoder_param_layer`) and
drawn with :func:`covidseg.transfer.drift.plot_drift`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import yaml

from covidseg.errors import InputError
from covidseg.model import DenseUNet, UNetConfig, encoder_param_layer, load_source
from covidseg.model.checkpoint import load_checkpoint
from covidseg.transfer.drift import LayerDrift, layer_drift, plot_drift
from covidseg.transfer.penalties_base import batchnorm_param_names

__all__ = ["drift_figure", "resolve_run_checkpoint", "run_drift", "run_labels"]

CHECKPOINT_NAMES = ("best.pt", "last.pt")
"""Checkpoints looked for in a run folder, in order."""
CONFIG_NAME = "config.yaml"
DEFAULT_CHANNEL_ADAPTATION = "sum"


def resolve_run_checkpoint(path: str | os.PathLike[str]) -> Path:
    """A checkpoint file, or the ``best.pt`` (else ``last.pt``) of a run folder.

    Examples:
        >>> import tempfile
        >>> d = Path(tempfile.mkdtemp())
        >>> _ = (d / "last.pt").write_bytes(b"")
        >>> resolve_run_checkpoint(d).name
        'last.pt'
    """
    p = Path(path)
    if p.is_file():
        return p
    if p.is_dir():
        for name in CHECKPOINT_NAMES:
            if (p / name).is_file():
                return p / name
        raise InputError(f"run folder {p} has no {' or '.join(CHECKPOINT_NAMES)}; pass a checkpoint or a run folder")
    raise InputError(f"{p}: no such checkpoint or run folder; check the path")


def _channel_adaptation(checkpoint: Path) -> str:
    """``source.channel_adaptation`` of the run that wrote ``checkpoint`` (its config.yaml), else the default."""
    config = checkpoint.parent / CONFIG_NAME
    if config.is_file():
        try:
            data = yaml.safe_load(config.read_text()) or {}
            value = (data.get("source") or {}).get("channel_adaptation")
        except (OSError, yaml.YAMLError, AttributeError):
            value = None
        if isinstance(value, str):
            return value
    return DEFAULT_CHANNEL_ADAPTATION


def run_drift(
    checkpoint: str | os.PathLike[str],
    source: str | os.PathLike[str],
    *,
    exclude_batchnorm: bool = False,
    channel_adaptation: str | None = None,
) -> list[LayerDrift]:
    """Per-layer drift of a fine-tuned checkpoint's encoder from the source weights.

    Args:
        checkpoint: A covidseg checkpoint, or a run folder (``best.pt``, else ``last.pt``).
        source: The source weights the run started from (any file :func:`covidseg.model.load_source` reads).
        exclude_batchnorm: Leave the BatchNorm weights and biases out (conv weights only).
        channel_adaptation: conv0 channel adaptation of the source (default: the run's config, else ``sum``).

    Raises:
        InputError: Unreadable files, or a source with no encoder tensor for this architecture.

    Examples:
        >>> import tempfile, torch
        >>> from covidseg.model import save_checkpoint
        >>> d = Path(tempfile.mkdtemp())
        >>> cfg = UNetConfig(decoder_channels=(8, 8, 8, 8, 8))
        >>> _ = save_checkpoint(d / "src.pt", DenseUNet(cfg), model_config=cfg)
        >>> rows = run_drift(d / "src.pt", d / "src.pt")  # a model against itself: no drift
        >>> len(rows), max(r.relative_drift for r in rows)
        (120, 0.0)
    """
    ckpt_path = resolve_run_checkpoint(checkpoint)
    ckpt = load_checkpoint(ckpt_path)
    state = ckpt["state_dict"]
    # The source, loaded into the run's architecture as training loaded it (names, conv0 channel adaptation).
    reference = DenseUNet(UNetConfig.from_dict(ckpt["model_config"]))
    adaptation = channel_adaptation or _channel_adaptation(ckpt_path)
    report = load_source(reference, source, channel_adaptation=adaptation)
    source_state = reference.state_dict()
    loaded = set(report.loaded)
    layer_of = {name: index for name, index in encoder_param_layer(reference).items() if name in loaded}
    if not layer_of:
        raise InputError(f"{source} provides no encoder tensor of {ckpt_path}'s model; pass the run's source file")
    exclude = batchnorm_param_names(reference) if exclude_batchnorm else set()
    return layer_drift(state, {n: source_state[n] for n in loaded}, layer_of, exclude=exclude)


def run_labels(runs: Sequence[str | os.PathLike[str]], labels: Sequence[str] | None = None) -> list[str]:
    """Legend labels: the given ones, else each run folder's name (a checkpoint's folder and file name).

    Raises:
        InputError: A number of labels other than the number of runs, or two equal labels.

    Examples:
        >>> run_labels(["runs/l2sp", "runs/layerwise/best.pt"])
        ['l2sp', 'layerwise']
        >>> run_labels(["a/best.pt", "a/last.pt"])
        ['a/best', 'a/last']
    """
    if labels:
        if len(labels) != len(runs):
            raise InputError(f"{len(labels)} --label value(s) for {len(runs)} run(s); give one label per run")
        chosen = [str(label) for label in labels]
    else:
        paths = [Path(r) for r in runs]
        chosen = [p.name if p.suffix != ".pt" else p.parent.name for p in paths]
        if len(set(chosen)) < len(chosen):
            chosen = [f"{p.parent.name}/{p.stem}" if p.suffix == ".pt" else p.name for p in paths]
    if len(set(chosen)) < len(chosen):
        raise InputError(f"run labels {chosen} are not unique; pass one --label per run")
    return chosen


def drift_figure(
    source: str | os.PathLike[str],
    runs: Sequence[str | os.PathLike[str]],
    path: str | os.PathLike[str],
    *,
    labels: Sequence[str] | None = None,
    exclude_batchnorm: bool = False,
    title: str = "Relative change of encoder weights per layer",
    overwrite: bool = False,
) -> dict[str, list[LayerDrift]]:
    """Draw the per-layer drift of several runs from one source on one plot (Figure 1); return the rows.

    Args:
        source: The source weights all runs started from.
        runs: Checkpoints or run folders.
        path: Output image (.png, .pdf, .svg).
        labels: Legend label per run (default: run folder names).
        exclude_batchnorm: Conv weights only.
        title: Plot title.
        overwrite: Replace an existing image.

    Raises:
        InputError: No runs, unreadable files, labels that do not fit.
        OutputExistsError: ``path`` exists and ``overwrite`` is false (checked before any work).
    """
    from covidseg.io.atomic import check_writable

    check_writable(path, overwrite)
    if not runs:
        raise InputError("figure-drift needs at least one run (a checkpoint or run folder)")
    names = run_labels(runs, labels)
    drift = {
        name: run_drift(run, source, exclude_batchnorm=exclude_batchnorm) for name, run in zip(names, runs, strict=True)
    }
    plot_drift(drift, path, title=title, overwrite=overwrite)
    return drift
