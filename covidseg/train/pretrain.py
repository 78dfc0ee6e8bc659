"""``covidseg pretrain``: train a source model on several segmentation tasks with one shared encoder.

The paper's "MedicalNet" source task: a DenseNet121 encoder shared by all tasks and one decoder + head per
task (:class:`~covidseg.train.pretrain_model.MultiTaskUNet`), trained jointly; the YAML format is in
:mod:`covidseg.config.pretrain`. Optionally the encoder starts from a local ImageNet file (``init.imagenet``:
"ImageNet+MedicalNet"), else from random weights.

Order of a run (every check a user can fail comes first):

1. checks: the output checkpoint (``-o``) and run folder (new, or the one to resume), every task's data
   (classes, folders, files, labels; as ``covidseg train`` checks them), the ImageNet file;
2. per task: case split (``splits/<task>.json``, reused on resume), slice cache (generated labels cached beside
   the slices), datasets, class-ratio loss;
3. one optimizer and per-step schedule over all parameters (strategy ``full``, no transfer penalty);
4. epochs: ``train.steps_per_epoch`` optimizer steps (default: one pass over every task's training slices,
   i.e. the sum of their batch counts); each step takes one batch of one task, the task chosen by
   ``sampling``: ``round_robin`` (tasks in turn), ``proportional`` (at random, in proportion to the tasks'
   training slices) or ``weighted`` (at random, in proportion to ``tasks[].weight``); the step is
   :func:`covidseg.train.loop.train_step` with that task's model and loss. A task whose slices run out starts
   a new shuffled pass. The order of tasks and batches is a function of (seed, epoch), so a resumed run
   repeats what the uninterrupted run would have done;
5. validation every ``train.val_every`` epochs and at the last: per task, 3-D Dice per validation case as in
   training; the score is the mean over tasks of their ``dice_mean``; ``best.pt`` on improvement, early
   stopping after ``train.early_stopping_patience`` validations without improvement;
6. the output: the best checkpoint (``last.pt`` if no validation improved) without optimizer state, written
   atomically to ``-o`` (default ``<run folder>/source.pt``).

Run folder ``<output.root>/<output.name>/``: ``config.yaml`` (resolved pretrain config), ``splits/<task>.json``,
``metrics.csv`` (``epoch, step, train_loss, loss_<task>..., lr, val_<task>_dice_<class>...,
val_<task>_dice_mean..., val_score, time_s``), TensorBoard events, ``last.pt``, ``best.pt``.

Checkpoints are covidseg checkpoints of the export task's :class:`~covidseg.model.DenseUNet` (the shared
encoder + the ``export_task``'s decoder and head), so ``covidseg train --source OUT.pt`` loads the encoder (and
the decoder, and the head when the classes match) with :func:`covidseg.model.load_source`. Extra entries:
``kind`` (``"pretrain"``: resumable ``last.pt``; ``"pretrain-best"``; ``"pretrain-source"``: the output),
``class_names``, ``preprocessing``, ``pretrain_config``, ``pretrain`` (``export_task`` and, per task, its
``class_names`` and decoder/head tensors), ``training``, ``history``; ``last.pt`` also ``optimizer``,
``scheduler``, ``grad_scaler``, ``rng``. They are written atomically and durably (a killed run leaves the
previous or the new file, never a truncated one) and ``--resume RUN_DIR`` continues from ``last.pt``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console

from covidseg.config.pretrain import PretrainConfig, save_pretrain_config
from covidseg.data.splits import save_splits
from covidseg.errors import ConfigError, InputError, OutputExistsError
from covidseg.io.atomic import atomic_path, check_writable
from covidseg.model import load_checkpoint, load_torchvision_densenet121
from covidseg.train import build as B
from covidseg.train import checkpointing as C
from covidseg.train import distributed as D
from covidseg.train import prepare as P
from covidseg.train import pretrain_data as PD
from covidseg.train.loop import StepContext, train_step
from covidseg.train.optim import build_optimizer, build_scheduler
from covidseg.train.pretrain_model import MultiTaskUNet
from covidseg.train.records import TrainLogger, make_progress
from covidseg.train.validation import DEFAULT_VAL_BATCH, validate
from covidseg.transfer.strategies import make_strategy

__all__ = ["KIND_BEST", "KIND_LAST", "KIND_SOURCE", "PretrainResult", "pretrain", "task_sequence"]

KIND_LAST = "pretrain"
KIND_BEST = "pretrain-best"
KIND_SOURCE = "pretrain-source"
CONFIG_NAME = "config.yaml"
SPLITS_DIR = "splits"
SOURCE_NAME = "source.pt"
SCORE = "val_score"
_RESUME_ONLY = ("optimizer", "scheduler", "grad_scaler", "rng")
EpochCallback = Callable[[int, dict[str, Any]], None]


@dataclass
class PretrainResult:
    """What a pre-training run produced.

    Attributes:
        run_dir: The run folder.
        source: The output checkpoint (a source for ``covidseg train --source``).
        best_score: Best mean over tasks of the validation ``dice_mean`` (-inf if never validated).
        best_epoch: 1-based epoch of the best score (0 if never validated).
        epochs_completed: Epochs trained in total.
        stopped_early: Whether early stopping ended the run.
        history: The ``metrics.csv`` rows.
        model: The trained multi-task model (last weights).
    """

    run_dir: Path
    source: Path
    best_score: float
    best_epoch: int
    epochs_completed: int
    stopped_early: bool
    history: list[dict[str, Any]] = field(default_factory=list)
    model: MultiTaskUNet | None = None


def task_sequence(mode: str, sizes: list[int], weights: list[float], steps: int, seed: int) -> list[int]:
    """Which task (index) each optimizer step of an epoch trains; see the module docstring for the modes.

    Examples:
        >>> task_sequence("round_robin", [5, 9], [1, 1], 5, seed=0)
        [0, 1, 0, 1, 0]
        >>> seq = task_sequence("weighted", [5, 9], [3.0, 1.0], 4000, seed=1)
        >>> abs(seq.count(0) / len(seq) - 0.75) < 0.03
        True
    """
    if mode == "round_robin":
        return [i % len(sizes) for i in range(steps)]
    if mode == "proportional":
        p = np.asarray(sizes, np.float64)
    elif mode == "weighted":
        p = np.asarray(weights, np.float64)
    else:
        raise ConfigError(f"unknown sampling {mode!r}; expected round_robin, proportional or weighted")
    rng = np.random.default_rng(seed)
    return [int(i) for i in rng.choice(len(sizes), size=steps, p=p / p.sum())]


def _run_dir(config: PretrainConfig) -> Path:
    name = config.output.name or datetime.now(timezone.utc).strftime("pretrain-%Y%m%d-%H%M%S")
    run_dir = Path(config.output.root) / name
    if run_dir.exists():
        raise OutputExistsError(
            f"run folder {run_dir} already exists; choose another output.name, or continue it with --resume {run_dir}"
        )
    return run_dir


def _load_resume(config: PretrainConfig, resume: str | os.PathLike[str]) -> tuple[Path, dict[str, Any]]:
    path = C.find_resume_checkpoint(resume)
    ckpt = load_checkpoint(path)
    if ckpt.get("kind") != KIND_LAST or "pretrain" not in ckpt:
        raise InputError(f"{path} is not a covidseg pretrain last.pt; pass the run folder covidseg pretrain printed")
    saved = ckpt["pretrain"]
    tasks = {t.name: list(t.classes) for t in config.tasks}
    if {k: list(v["class_names"]) for k, v in saved["tasks"].items()} != tasks:
        raise ConfigError(f"{path} was pre-trained on other tasks or classes; resume with the run's own config.yaml")
    export = config.export_task_name
    if (
        saved.get("export_task") != export
        or ckpt["preprocessing"] != config.preprocess.to_preprocess_config().to_dict()
    ):
        raise ConfigError(f"{path} has another export_task or preprocessing; resume with the run's own config.yaml")
    if ckpt["model_config"] != config.model.unet_config(config.task(export).classes).to_dict():
        raise ConfigError(f"{path} has another model architecture; resume with the run's own config.yaml")
    return path.parent, ckpt


def _init_encoder(config: PretrainConfig, model: MultiTaskUNet, say: Callable[[str], None]) -> None:
    if config.init.imagenet is None:
        return
    first = model.task_names[0]
    report = load_torchvision_densenet121(
        model.task_model(first), config.init.imagenet, channel_adaptation=config.init.channel_adaptation
    )
    say(f"ImageNet init {config.init.imagenet}: {report.summary()}")


def _payload(
    config: PretrainConfig, model: MultiTaskUNet, parts: dict[str, Any], state: C.TrainingState, history: list[Any]
) -> dict[str, Any]:
    export = config.export_task_name
    return {
        "kind": KIND_LAST,
        "class_names": list(config.task(export).classes),
        "preprocessing": config.preprocess.to_preprocess_config().to_dict(),
        "pretrain_config": config.to_yaml_dict(),
        "pretrain": {
            "export_task": export,
            "tasks": {
                t.name: {"class_names": list(t.classes), "state": model.head_state(t.name)} for t in config.tasks
            },
        },
        "training": state.to_dict(),
        "history": [dict(row) for row in history],
        "optimizer": parts["optimizer"].state_dict(),
        "scheduler": parts["scheduler"].state_dict(),
        "grad_scaler": parts["scaler"].state_dict(),
        "rng": C.capture_rng_state(),
    }


def _slim(payload: dict[str, Any], kind: str) -> dict[str, Any]:
    return {**{k: v for k, v in payload.items() if k not in _RESUME_ONLY}, "kind": kind}


def export_source(checkpoint: Path, out: Path, *, overwrite: bool) -> Path:
    """Write ``checkpoint`` without its resume state as a ``pretrain-source`` checkpoint at ``out`` (atomic)."""
    ckpt = load_checkpoint(checkpoint)
    with atomic_path(out, overwrite=overwrite) as tmp:
        torch.save(_slim(ckpt, KIND_SOURCE), tmp)
    return out


def _columns(config: PretrainConfig) -> list[str]:
    columns = ["epoch", "step", "train_loss", *(f"loss_{t.name}" for t in config.tasks), "lr"]
    for task in config.tasks:
        columns += [f"val_{task.name}_dice_{c}" for c in task.classes[1:]] + [f"val_{task.name}_dice_mean"]
    return [*columns, SCORE, "time_s"]


def pretrain(
    config: PretrainConfig,
    *,
    output: str | os.PathLike[str] | None = None,
    overwrite: bool = False,
    resume: str | os.PathLike[str] | None = None,
    console: Console | None = None,
    on_epoch_end: EpochCallback | None = None,
) -> PretrainResult:
    """Pre-train a multi-task source model as ``config`` describes (see the module docstring).

    Args:
        config: The resolved pretrain config.
        output: The output checkpoint (default ``<run folder>/source.pt``).
        overwrite: Replace an existing ``output``.
        resume: A run folder (or its ``last.pt``) to continue.
        console: Where to print progress (None: silent).
        on_epoch_end: Called as ``on_epoch_end(epoch_index, row)`` after each epoch's checkpoint is written.

    Raises:
        ConfigError, InputError, NotHUError: Bad config, data, ImageNet file or resume folder (before training).
        OutputExistsError: The output or the run folder exists.
    """
    if int(os.environ.get("WORLD_SIZE", "1") or 1) > 1:
        raise ConfigError("covidseg pretrain runs in one process (one GPU or the CPU); start it without torchrun")
    say: Callable[[str], None] = console.print if console is not None else (lambda *_: None)
    tcfg = config.train
    device = D.resolve_device(tcfg.device)
    P.seed_everything(tcfg.seed, tcfg.deterministic)
    amp = B.resolve_amp(tcfg.precision, device)
    P.parse_augment(config.augment)
    ckpt: dict[str, Any] | None = None
    if resume is not None:
        run_dir, ckpt = _load_resume(config, resume)
    else:
        run_dir = _run_dir(config)
    out = Path(output) if output is not None else run_dir / SOURCE_NAME
    check_writable(out, overwrite or (output is None and ckpt is not None))
    tasks: list[PD.TaskData] = []
    for task in config.tasks:
        reuse = run_dir / SPLITS_DIR / f"{task.name}.json"
        data = PD.prepare_task(
            config, task, cache_root=PD.default_cache_root(config, task), reuse_splits=reuse if ckpt else None
        )
        n_train, n_val = len(data.splits.train), len(data.splits.val)
        say(f"task {task.name}: {n_train} train cases ({len(data.train)} slices), {n_val} validation")
        tasks.append(data)
    torch.manual_seed(tcfg.seed)
    model = MultiTaskUNet({t.name: config.model.unet_config(t.classes) for t in config.tasks})
    if ckpt is None:
        _init_encoder(config, model, say)
    model = model.to(device)
    if tcfg.channels_last:
        model = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    strategy = make_strategy("full")
    strategy.setup(model)
    optimizer = build_optimizer(model, strategy, None, config.optim)
    sizes = [PD.batches_per_pass(t, tcfg.batch_size) for t in tasks]
    steps = tcfg.steps_per_epoch or sum(sizes)
    scheduler = build_scheduler(optimizer, config.optim, steps_per_epoch=steps, epochs=tcfg.epochs)
    scaler = torch.amp.GradScaler(device.type, enabled=amp.scale_grads)
    state = C.TrainingState(monitor=SCORE)
    history: list[dict[str, Any]] = []
    export = config.export_task_name
    if ckpt is not None:
        model.task_model(export).load_state_dict(ckpt["state_dict"])
        for name, saved in ckpt["pretrain"]["tasks"].items():
            model.load_head_state(name, saved["state"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        if ckpt.get("grad_scaler"):
            scaler.load_state_dict(ckpt["grad_scaler"])
        state = C.TrainingState.from_dict(ckpt["training"])
        history = [dict(row) for row in ckpt.get("history", [])]
        C.restore_rng_state(ckpt["rng"])
        say(f"resuming {run_dir} at epoch {state.epoch + 1}")
    run_dir.mkdir(parents=True, exist_ok=ckpt is not None)
    for stale in run_dir.glob(".*.tmp*"):  # temporaries of a killed atomic write
        if stale.is_file():
            stale.unlink(missing_ok=True)
    save_pretrain_config(config, run_dir / CONFIG_NAME, overwrite=True)
    for data in tasks:
        save_splits(data.splits, run_dir / SPLITS_DIR / f"{data.name}.json", overwrite=True)
    say(f"run folder: {run_dir}")
    ctx = D.DistContext(0, 1, 0, device, "")
    contexts = [
        StepContext(
            model=model.task_model(t.name),
            inner=model,
            criterion=t.criterion.to(device),
            penalty=None,
            strategy=strategy,
            optimizer=optimizer,
            scheduler=scheduler,
            scaler=scaler,
            amp=amp,
            ctx=ctx,
            grad_clip=config.optim.grad_clip,
            channels_last=tcfg.channels_last,
        )
        for t in tasks
    ]
    loaders = [PD.task_loader(t, config, device) for t in tasks]
    parts = {"optimizer": optimizer, "scheduler": scheduler, "scaler": scaler}
    columns = _columns(config)
    logger = TrainLogger(run_dir, ["background"], tensorboard=config.output.tensorboard, purge_step=state.global_step)
    logger.columns = columns
    progress = make_progress(console) if console is not None else None
    bar = None
    if progress is not None:
        progress.start()
        bar = progress.add_task("pretraining", total=tcfg.epochs * steps, completed=state.epoch * steps, loss="-")
    try:
        for epoch in range(state.epoch, tcfg.epochs):
            if state.stopped_early:
                break
            start = time.perf_counter()
            model.train()
            strategy.on_epoch_start(epoch, model)
            iterators = []
            for k, (loader, data) in enumerate(zip(loaders, tasks, strict=True)):
                PD.reseed_loader(loader, data.train, P.epoch_seed(tcfg.seed, epoch, k + 1))
                iterators.append(PD.cycle_batches(loader))
            weights = [t.weight for t in config.tasks]
            slices = [len(t.train) for t in tasks]
            order = task_sequence(config.sampling, slices, weights, steps, P.epoch_seed(tcfg.seed, epoch, 0))
            sums = torch.zeros(len(tasks), dtype=torch.float64)
            counts = [0] * len(tasks)
            for done, k in enumerate(order, start=1):
                values = train_step(contexts[k], next(iterators[k]))
                sums[k] += float(values[1])
                counts[k] += 1
                if progress is not None and bar is not None:
                    progress.update(
                        bar,
                        completed=epoch * steps + done,
                        loss=f"{float(values[0]):.4f}",
                        description=f"epoch {epoch + 1}/{tcfg.epochs}",
                    )
            metrics: dict[str, float] = {}
            improved = False
            if (epoch + 1) % tcfg.val_every == 0 or epoch + 1 == tcfg.epochs:
                means = []
                for data in tasks:
                    result = validate(
                        model.task_model(data.name),
                        data.val,
                        device=device,
                        amp=amp,
                        batch_size=max(DEFAULT_VAL_BATCH, tcfg.batch_size),
                        channels_last=tcfg.channels_last,
                    )
                    for key, value in result.metrics.items():
                        if key.startswith("dice_") and key != "dice_background":
                            metrics[f"val_{data.name}_{key}"] = value
                    means.append(result.metrics.get("dice_mean", float("nan")))
                score = float(np.mean(means))
                metrics[SCORE] = score
                improved = score > state.best_metric
                if improved:
                    state.best_metric, state.best_epoch, state.bad_validations = score, epoch, 0
                else:
                    state.bad_validations += 1
                patience = tcfg.early_stopping_patience
                state.stopped_early = bool(patience) and state.bad_validations >= patience
            state.epoch = epoch + 1
            state.global_step += len(order)
            row: dict[str, Any] = {
                "epoch": epoch + 1,
                "step": state.global_step,
                "train_loss": float(sums.sum()) / max(1, len(order)),
                **{
                    f"loss_{t.name}": float(sums[k]) / counts[k] if counts[k] else float("nan")
                    for k, t in enumerate(tasks)
                },
                "lr": float(optimizer.param_groups[0]["lr"]),
                **metrics,
                "time_s": round(time.perf_counter() - start, 3),
            }
            history.append(row)
            payload = _payload(config, model, parts, state, history)
            export_model = model.task_model(export)
            export_cfg = export_model.config
            C.save_training_checkpoint(run_dir / C.LAST_NAME, export_model, model_config=export_cfg, extra=payload)
            if improved:
                C.save_training_checkpoint(
                    run_dir / C.BEST_NAME, export_model, model_config=export_cfg, extra=_slim(payload, KIND_BEST)
                )
            logger.log_epoch(history)
            shown = f", val score {metrics[SCORE]:.4f}" if metrics else ""
            say(f"epoch {epoch + 1}/{tcfg.epochs}: loss {row['train_loss']:.4f}{shown}{' (best)' if improved else ''}")
            if on_epoch_end is not None:
                on_epoch_end(epoch, row)
        if state.stopped_early:
            say(f"early stopping: no improvement in {tcfg.early_stopping_patience} validation(s)")
    finally:
        if progress is not None:
            progress.stop()
        logger.close()
    best = run_dir / C.BEST_NAME
    export_source(best if best.is_file() else run_dir / C.LAST_NAME, out, overwrite=True)
    say(f"source checkpoint: {out}")
    return PretrainResult(
        run_dir=run_dir,
        source=out,
        best_score=state.best_metric,
        best_epoch=state.best_epoch + 1,
        epochs_completed=state.epoch,
        stopped_early=state.stopped_early,
        history=history,
        model=model,
    )
