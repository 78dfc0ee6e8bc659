"""Training checkpoints: everything a run needs to continue exactly, in the covidseg checkpoint format.

A training checkpoint is a :func:`covidseg.model.checkpoint.save_checkpoint` file (plain dict, readable with
``torch.load(weights_only=True)``; ``covidseg predict`` and ``build_model_from_checkpoint`` read it as a model)
with these extra entries:

===================  ==========================================================================================
``kind``             ``"training"`` (``last.pt``) or ``"best"`` (``best.pt``: no optimizer, scheduler, scaler or
                     RNG state; a model for prediction and evaluation, not a point to resume from)
``class_names``      the model's classes (index = label value)
``preprocessing``    :meth:`PreprocessConfig.to_dict` (HU window, slice size, resize mode)
``config``           the resolved run config (:meth:`RunConfig.to_yaml_dict`)
``penalty``          the penalty module's ``state_dict()`` (θ̄ buffers, Fisher buffers) or None
``penalty_name``     registry name of the penalty (``"none"`` without one)
``strategy``         the strategy's ``state_dict()`` (name, hyper-parameters, epoch, PtR head, ...)
``optimizer``        ``optimizer.state_dict()``
``scheduler``        ``scheduler.state_dict()``
``grad_scaler``      ``GradScaler.state_dict()`` (empty when fp16 scaling is off)
``training``         :class:`TrainingState` as a dict: next epoch, global step, best metric and epoch, early-
                     stopping counter, the metric monitored
``history``          the ``metrics.csv`` rows so far
``rng``              Python, NumPy, torch CPU and CUDA generator states at the end of the epoch
===================  ==========================================================================================

Files are written atomically *and durably*: the checkpoint goes to a temporary file in the run folder, the file
is flushed and ``fsync``-ed, renamed over the final name, and the folder entry is ``fsync``-ed. A run killed at
any moment (SIGKILL included) leaves either the previous complete file or the new complete file, never a
truncated one.
"""

from __future__ import annotations

import contextlib
import os
import random
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from covidseg.config import RunConfig
from covidseg.errors import ConfigError, InputError
from covidseg.io.atomic import atomic_path
from covidseg.model.checkpoint import load_checkpoint, save_checkpoint
from covidseg.model.unet import UNetConfig

__all__ = [
    "BEST_NAME",
    "CHECKPOINT_KIND",
    "LAST_NAME",
    "TrainingState",
    "capture_rng_state",
    "check_resume_compatible",
    "checkpoint_entries",
    "find_resume_checkpoint",
    "load_training_checkpoint",
    "restore_rng_state",
    "save_training_checkpoint",
]

LAST_NAME = "last.pt"
"""Checkpoint written at the end of every epoch."""
BEST_NAME = "best.pt"
"""Checkpoint of the epoch with the best validation metric so far."""
CHECKPOINT_KIND = "training"
_REQUIRED = ("optimizer", "scheduler", "strategy", "training", "rng", "config", "class_names", "preprocessing")


@dataclass
class TrainingState:
    """Counters of the training loop that a resumed run continues from.

    Attributes:
        epoch: The next epoch to run (0-based); equals the number of completed epochs.
        global_step: Optimizer steps taken so far.
        best_metric: Best value of the monitored validation metric (-inf before any validation).
        best_epoch: Epoch (0-based) of the best metric (-1 before any validation).
        bad_validations: Validations in a row without improvement (the early-stopping counter).
        monitor: Name of the monitored metric.
        stopped_early: Whether early stopping ended the run.

    Examples:
        >>> TrainingState.from_dict(TrainingState(epoch=3).to_dict()).epoch
        3
    """

    epoch: int = 0
    global_step: int = 0
    best_metric: float = float("-inf")
    best_epoch: int = -1
    bad_validations: int = 0
    monitor: str = "dice_opacity"
    stopped_early: bool = False

    def to_dict(self) -> dict[str, Any]:
        """Plain dict for the checkpoint."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrainingState:
        """Rebuild from :meth:`to_dict` output."""
        return cls(
            epoch=int(data["epoch"]),
            global_step=int(data["global_step"]),
            best_metric=float(data["best_metric"]),
            best_epoch=int(data["best_epoch"]),
            bad_validations=int(data["bad_validations"]),
            monitor=str(data["monitor"]),
            stopped_early=bool(data.get("stopped_early", False)),
        )


def capture_rng_state() -> dict[str, Any]:
    """Python, NumPy, torch CPU (and CUDA when present) generator states, as checkpoint-safe values.

    Examples:
        >>> state = capture_rng_state()
        >>> a = torch.rand(1); restore_rng_state(state); b = torch.rand(1)
        >>> torch.equal(a, b)
        True
    """
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": [version, list(internal), gauss],
        "numpy": [
            str(kind),
            torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            int(pos),
            int(has_gauss),
            float(cached),
        ],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }
    return state


def restore_rng_state(state: Mapping[str, Any]) -> None:
    """Put back generator states from :func:`capture_rng_state` (CUDA states only when CUDA is present)."""
    version, internal, gauss = state["python"]
    random.setstate((int(version), tuple(int(v) for v in internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((str(kind), np.asarray(keys, dtype=np.uint32), int(pos), int(has_gauss), float(cached)))
    torch.set_rng_state(state["torch"])
    cuda_states = list(state.get("cuda") or [])
    if cuda_states and torch.cuda.is_available() and len(cuda_states) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda_states)


def _fsync_path(path: Path) -> None:
    """Flush a file (or a folder entry) to stable storage."""
    flags = os.O_RDONLY
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_training_checkpoint(
    path: str | os.PathLike[str],
    model: nn.Module,
    *,
    model_config: UNetConfig,
    extra: Mapping[str, Any],
) -> Path:
    """Write a training checkpoint atomically and durably (see the module docstring), replacing ``path``.

    Args:
        path: Destination (``last.pt`` / ``best.pt`` in the run folder).
        model: The model (DDP wrappers are unwrapped).
        model_config: Its architecture.
        extra: The training entries (``optimizer``, ``training``, ...); ``kind`` defaults to ``"training"``.

    Returns:
        The path written.

    Examples:
        >>> import tempfile, pathlib
        >>> from covidseg.model import DenseUNet
        >>> cfg = UNetConfig(class_names=("background", "opacity"))
        >>> out = pathlib.Path(tempfile.mkdtemp()) / "last.pt"
        >>> _ = save_training_checkpoint(out, DenseUNet(cfg), model_config=cfg, extra={"training": {"epoch": 1}})
        >>> torch.load(out, weights_only=True)["kind"]
        'training'
    """
    target = Path(path)
    payload = {"kind": CHECKPOINT_KIND, **extra}
    with atomic_path(target, overwrite=True) as tmp:
        save_checkpoint(tmp, model, model_config=model_config, extra=payload, overwrite=True)
        _fsync_path(tmp)
    with contextlib.suppress(OSError):  # some file systems cannot fsync a folder; the rename is still atomic
        _fsync_path(target.parent)
    return target


def load_training_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a training checkpoint (``weights_only=True``) and check it holds the resume entries.

    Raises:
        InputError: Missing or unreadable file, not a covidseg checkpoint, or a model-only checkpoint that cannot
            resume training.
    """
    ckpt = load_checkpoint(path)
    missing = [key for key in _REQUIRED if key not in ckpt]
    if ckpt.get("kind") != CHECKPOINT_KIND or missing:
        raise InputError(
            f"{path} is a model checkpoint without training state (missing {missing}); resume from a run folder "
            f"written by covidseg train, or pass the file as source.path to start a new run from it"
        )
    return ckpt


def find_resume_checkpoint(run_dir: str | os.PathLike[str]) -> Path:
    """The checkpoint to resume a run folder from (its ``last.pt``), or a checkpoint file given directly.

    Raises:
        InputError: Neither a run folder with ``last.pt`` nor a file.

    Examples:
        >>> import tempfile
        >>> find_resume_checkpoint(tempfile.mkdtemp())  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        covidseg.errors.InputError: ... has no last.pt; ...
    """
    path = Path(run_dir)
    if path.is_file():
        return path
    if not path.is_dir():
        raise InputError(f"{path} does not exist; pass the run folder printed by covidseg train")
    last = path / LAST_NAME
    if not last.is_file():
        raise InputError(
            f"{path} has no {LAST_NAME}; the run stopped before its first epoch ended, start it again instead"
        )
    return last


def check_resume_compatible(config: RunConfig, ckpt: dict[str, Any], path: Path) -> None:
    """Refuse to resume with another architecture, preprocessing, penalty or optimizer."""
    saved = ckpt["config"]
    problems = []
    if UNetConfig.from_dict(ckpt["model_config"]) != config.model.to_unet_config():
        problems.append("model")
    if ckpt["preprocessing"] != config.preprocess.to_preprocess_config().to_dict():
        problems.append("preprocess")
    if saved.get("regularization", {}).get("name") != config.regularization.name:
        problems.append("regularization.name")
    if saved.get("optim", {}).get("name") != config.optim.name:
        problems.append("optim.name")
    if problems:
        raise ConfigError(
            f"{path} was trained with other settings ({', '.join(problems)}); resume with the run's own "
            "config.yaml (covidseg train --resume RUN_DIR) and change only train.* keys"
        )


def checkpoint_entries(
    config: RunConfig,
    parts: dict[str, Any],
    state: TrainingState,
    history: list[dict[str, Any]],
    *,
    full: bool,
) -> dict[str, Any]:
    """The extra entries of ``last.pt`` (``full``) or ``best.pt`` (model, θ̄, config, counters; no optimizer).

    Args:
        config: The run config.
        parts: ``penalty``, ``strategy``, ``optimizer``, ``scheduler`` and ``scaler`` of the run.
        state: The loop counters.
        history: The ``metrics.csv`` rows so far.
        full: Include what resuming needs (optimizer, scheduler, gradient scaler, RNG states).
    """
    penalty = parts["penalty"]
    extra: dict[str, Any] = {
        "class_names": list(config.model.class_names),
        "preprocessing": config.preprocess.to_preprocess_config().to_dict(),
        "config": config.to_yaml_dict(),
        "penalty_name": config.regularization.name,
        "penalty": None if penalty is None else {k: v.detach().cpu() for k, v in penalty.state_dict().items()},
        "strategy": parts["strategy"].state_dict(),
        "training": state.to_dict(),
        "history": [dict(row) for row in history],
    }
    if full:
        extra.update(
            optimizer=parts["optimizer"].state_dict(),
            scheduler=parts["scheduler"].state_dict(),
            grad_scaler=parts["scaler"].state_dict(),
            rng=capture_rng_state(),
        )
    else:
        extra["kind"] = "best"
    return extra
