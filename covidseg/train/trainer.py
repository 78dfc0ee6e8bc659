"""``covidseg train``: fine-tune the DenseNet121 U-Net with a transfer penalty and a fine-tuning strategy.

Order of a run (every check a user can fail comes before anything is written or trained):

1. checks: dataset classes vs ``model.class_names``, the monitored metric, augmentation keys, the dataset
   folder (files, label values, shapes), the source file (loaded into the model), the run folder (new, or the
   one to resume);
2. case split (``splits.json``; reused on resume), slice cache (built once, shared by runs), datasets;
3. loss (class-ratio weights from the training pixels), Fisher (when the penalty needs one), penalty
   (θ̄ = the loaded source tensors), strategy, optimizer groups, per-step schedule;
4. the run folder: ``config.yaml`` (resolved config), ``splits.json``, then per epoch ``metrics.csv``,
   TensorBoard events, ``last.pt`` and, on improvement of ``train.monitor``, ``best.pt``;
5. epochs: strategy ``on_epoch_start``, training steps (:mod:`covidseg.train.loop`), validation every
   ``train.val_every`` epochs and at the last (:mod:`covidseg.train.validation`), early stopping after
   ``train.early_stopping_patience`` validations without improvement.

``resume`` continues a run from its ``last.pt``: weights, θ̄, strategy, optimizer, schedule, gradient scaler,
counters, metric history and random-generator states come back, and the data order and augmentation of every
epoch are functions of (seed, epoch, rank), so a resumed run repeats exactly what the uninterrupted run would
have done (same weights, same ``metrics.csv`` rows apart from ``time_s``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from monai.data.utils import worker_init_fn
from rich.console import Console
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler

from covidseg.config import RunConfig, save_config
from covidseg.data.splits import save_splits
from covidseg.errors import OutputExistsError
from covidseg.model import encoder_param_layer
from covidseg.train import build as B
from covidseg.train import checkpointing as C
from covidseg.train import distributed as D
from covidseg.train import prepare as P
from covidseg.train.loop import StepContext, train_epoch
from covidseg.train.loss import SegmentationLoss, resolve_class_weights
from covidseg.train.optim import build_optimizer, build_scheduler
from covidseg.train.records import VAL_CASES_NAME, TrainLogger, make_progress, write_case_scores_csv
from covidseg.train.validation import DEFAULT_VAL_BATCH, validate
from covidseg.transfer.fisher import save_fisher

__all__ = ["SPLITS_NAME", "TrainResult", "train"]

SPLITS_NAME = "splits.json"
CONFIG_NAME = "config.yaml"
FISHER_NAME = "fisher.pt"
EpochCallback = Callable[[int, dict[str, Any]], None]


@dataclass
class TrainResult:
    """What a run produced.

    Attributes:
        run_dir: The run folder.
        monitor: The validation metric that selected ``best.pt``.
        best_metric: Its best value (-inf if never validated).
        best_epoch: 1-based epoch of the best value (0 if never validated).
        last_checkpoint: ``run_dir/last.pt``.
        best_checkpoint: ``run_dir/best.pt`` (None if never validated).
        epochs_completed: Epochs trained in total (over all resumptions).
        stopped_early: Whether early stopping ended the run.
        history: The ``metrics.csv`` rows.
        model: The trained model (last weights, unwrapped, on the training device).
    """

    run_dir: Path
    monitor: str
    best_metric: float
    best_epoch: int
    last_checkpoint: Path
    best_checkpoint: Path | None
    epochs_completed: int
    stopped_early: bool
    history: list[dict[str, Any]] = field(default_factory=list)
    model: nn.Module | None = None


def _new_run_dir(config: RunConfig, ctx: D.DistContext) -> Path:
    name = config.output.name or datetime.now(timezone.utc).strftime("run-%Y%m%d-%H%M%S")
    run_dir = Path(config.output.root) / D.broadcast_text(name, ctx)
    if run_dir.exists():
        raise OutputExistsError(
            f"run folder {run_dir} already exists; choose another output.name, or continue it with --resume {run_dir}"
        )
    return run_dir


def _remove_stale_temporaries(run_dir: Path) -> None:
    """Delete temporary files a killed run left behind (atomic writes name them ``.<name>.*.tmp*``)."""
    for stale in run_dir.glob(".*.tmp*"):
        if stale.is_file():
            stale.unlink(missing_ok=True)


def _train_loader(
    config: RunConfig, data: P.RunData, ctx: D.DistContext
) -> tuple[DataLoader[Any], DistributedSampler[Any], int]:
    """Loader over this process's shard, its sampler and the optimizer steps per epoch."""
    tcfg = config.train
    sampler: DistributedSampler[Any] = DistributedSampler(
        data.train, num_replicas=ctx.world_size, rank=ctx.rank, shuffle=True, seed=tcfg.seed
    )
    per_rank = len(sampler)
    drop_last = per_rank >= tcfg.batch_size
    batches = per_rank // tcfg.batch_size if drop_last else 1
    steps = min(batches, tcfg.steps_per_epoch or batches)
    loader = DataLoader(
        data.train,
        batch_size=tcfg.batch_size,
        sampler=sampler,
        num_workers=tcfg.num_workers,
        drop_last=drop_last,
        generator=torch.Generator(),
        worker_init_fn=worker_init_fn if tcfg.num_workers > 0 else None,
        pin_memory=ctx.device.type == "cuda",
    )
    return loader, sampler, steps


def train(
    config: RunConfig,
    *,
    resume: str | Path | None = None,
    console: Console | None = None,
    on_epoch_end: EpochCallback | None = None,
) -> TrainResult:
    """Train a segmenter as ``config`` describes; see the module docstring for the order of events.

    Args:
        config: The resolved run config.
        resume: A run folder (or its ``last.pt``) to continue.
        console: Where rank 0 prints progress (None: silent).
        on_epoch_end: Called on every process as ``on_epoch_end(epoch_index, row)`` after an epoch's checkpoint
            is written (for tools and tests).

    Returns:
        The :class:`TrainResult`.

    Raises:
        ConfigError, InputError, NotHUError: Bad config, dataset, source file or resume folder (before training).
        OutputExistsError: The run folder exists and ``resume`` was not given.
    """
    ctx = D.init_distributed(config.train.device)
    try:
        return _train(config, resume, console if ctx.is_main else None, on_epoch_end, ctx)
    finally:
        D.cleanup_distributed(ctx)


def _train(
    cfg: RunConfig,
    resume: str | Path | None,
    console: Console | None,
    on_epoch_end: EpochCallback | None,
    ctx: D.DistContext,
) -> TrainResult:
    say = console.print if console is not None else (lambda *_: None)
    tcfg = cfg.train
    device = ctx.device
    P.seed_everything(tcfg.seed, tcfg.deterministic)
    amp = B.resolve_amp(tcfg.precision, device)
    # 1. checks before anything is written
    class_names = P.check_classes(cfg)
    P.parse_augment(cfg.augment)
    ckpt: dict[str, Any] | None = None
    if resume is not None:
        ckpt_path = C.find_resume_checkpoint(resume)
        ckpt = C.load_training_checkpoint(ckpt_path)
        C.check_resume_compatible(cfg, ckpt, ckpt_path)
        run_dir = ckpt_path.parent
    else:
        run_dir = _new_run_dir(cfg, ctx)
    cases = P.prepare_cases(cfg)
    reuse = run_dir / SPLITS_NAME if ckpt is not None and (run_dir / SPLITS_NAME).is_file() else None
    splits = P.make_splits(cfg, cases, reuse=reuse)
    torch.manual_seed(tcfg.seed)
    unet, source_state, report = B.build_model(cfg, load_source_weights=ckpt is None)
    if report is not None:
        say(f"source {cfg.source.path}: {report.summary()}")
    # 2. cache and datasets (rank 0 builds missing entries, the others open them afterwards)
    prepared = P.PreparedData(cases, splits, class_names)
    cache_root = P.default_cache_root(cfg)
    if not ctx.is_main:
        D.barrier(ctx)
    data = P.build_datasets(cfg, prepared, cache_root=cache_root)
    if ctx.is_main:
        D.barrier(ctx)
    validation = f"{len(splits.val)} validation" if splits.val else "no validation (data.val_fraction is 0)"
    say(f"cases: {len(splits.train)} train ({len(data.train)} slices), {validation}")
    # 3. loss, model on device, Fisher, penalty, strategy, optimizer, schedule
    weights = resolve_class_weights(cfg.loss.class_weights, data.class_counts, len(class_names))
    criterion = SegmentationLoss(weights, cfg.loss.dice_weight).to(device)
    model: nn.Module = D.convert_sync_batchnorm(unet, ctx).to(device)
    if tcfg.channels_last:
        model = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    fisher = None
    if ckpt is not None and ckpt.get("penalty") is not None:
        source_state, fisher = B.penalty_inputs_from_state(ckpt["penalty"])
    elif cfg.regularization.needs_fisher and source_state is not None:
        names = [n for n in encoder_param_layer(unet) if n in source_state]
        say(f"estimating the diagonal Fisher on {cfg.regularization.fisher_batches} training batch(es)")
        fisher = B.estimate_fisher(cfg, model, data.train_plain, device, names)
    penalty = B.build_penalty(cfg, unet, source_state, fisher)
    strategy = B.build_strategy(cfg, model)
    if ckpt is not None:
        strategy.load_state_dict(ckpt["strategy"])
    optimizer = build_optimizer(model, strategy, penalty, cfg.optim)
    loader, sampler, steps = _train_loader(cfg, data, ctx)
    scheduler = build_scheduler(optimizer, cfg.optim, steps_per_epoch=steps, epochs=tcfg.epochs)
    scaler = torch.amp.GradScaler(device.type, enabled=amp.scale_grads)
    state = C.TrainingState(monitor=tcfg.monitor)
    history: list[dict[str, Any]] = []
    if ckpt is not None:
        model.load_state_dict(ckpt["state_dict"])
        if penalty is not None and ckpt.get("penalty") is not None:
            penalty.load_state_dict(ckpt["penalty"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        if ckpt.get("grad_scaler"):
            scaler.load_state_dict(ckpt["grad_scaler"])
        state = C.TrainingState.from_dict(ckpt["training"])
        history = [dict(row) for row in ckpt.get("history", [])]
        C.restore_rng_state(ckpt["rng"])
        say(f"resuming {run_dir} at epoch {state.epoch + 1} (step {state.global_step})")
    # 4. the run folder
    logger = None
    if ctx.is_main:
        run_dir.mkdir(parents=True, exist_ok=ckpt is not None)
        _remove_stale_temporaries(run_dir)
        save_config(cfg, run_dir / CONFIG_NAME, overwrite=True)
        save_splits(splits, run_dir / SPLITS_NAME, overwrite=True)
        if fisher is not None and cfg.regularization.fisher_path is None and ckpt is None:
            save_fisher(fisher, run_dir / FISHER_NAME, overwrite=True)
        purge = state.global_step if ckpt is not None else None
        logger = TrainLogger(run_dir, class_names, tensorboard=cfg.output.tensorboard, purge_step=purge)
    say(f"run folder: {run_dir}")
    parts = {"penalty": penalty, "strategy": strategy, "optimizer": optimizer, "scheduler": scheduler, "scaler": scaler}
    sc = StepContext(
        model=D.wrap_model(model, ctx),
        inner=model,
        criterion=criterion,
        penalty=penalty,
        strategy=strategy,
        optimizer=optimizer,
        scheduler=scheduler,
        scaler=scaler,
        amp=amp,
        ctx=ctx,
        grad_clip=cfg.optim.grad_clip,
        channels_last=tcfg.channels_last,
        extra_params=B.extra_parameters(strategy, optimizer, model),
    )
    val_batch = max(DEFAULT_VAL_BATCH, tcfg.batch_size)
    progress = make_progress(console) if console is not None else None
    task = None
    if progress is not None:
        progress.start()
        task = progress.add_task("training", total=tcfg.epochs * steps, completed=state.epoch * steps, loss="-")
    try:
        # 5. epochs
        for epoch in range(state.epoch, tcfg.epochs):
            if state.stopped_early:
                break
            start = time.perf_counter()
            if strategy.on_epoch_start(epoch, model) and ctx.distributed:
                sc.model = D.wrap_model(model, ctx)  # DDP tracks the parameters trainable when it is built
            sampler.set_epoch(epoch)
            seed = P.epoch_seed(tcfg.seed, epoch, ctx.rank)
            loader.generator.manual_seed(seed)
            data.train.set_random_state(seed)

            def on_step(done: int, loss: float, _epoch: int = epoch) -> None:
                if progress is not None and task is not None:
                    progress.update(
                        task,
                        completed=_epoch * steps + done,
                        loss=f"{loss:.4f}",
                        description=f"epoch {_epoch + 1}/{tcfg.epochs}",
                    )

            stats = train_epoch(sc, loader, steps, on_step)
            metrics: dict[str, float] = {}
            improved = False
            if data.val is not None and ((epoch + 1) % tcfg.val_every == 0 or epoch + 1 == tcfg.epochs):
                value = float("nan")
                if ctx.is_main:
                    result = validate(
                        model, data.val, device=device, amp=amp, batch_size=val_batch, channels_last=tcfg.channels_last
                    )
                    metrics = result.metrics
                    value = metrics[tcfg.monitor]
                    write_case_scores_csv(run_dir / VAL_CASES_NAME, epoch + 1, result.cases, class_names)
                value = D.broadcast_float(value, ctx)
                improved = value > state.best_metric
                if improved:
                    state.best_metric, state.best_epoch, state.bad_validations = value, epoch, 0
                else:
                    state.bad_validations += 1
                patience = tcfg.early_stopping_patience
                state.stopped_early = bool(patience) and state.bad_validations >= patience
            state.epoch = epoch + 1
            state.global_step += stats.steps
            row: dict[str, Any] = {
                "epoch": epoch + 1,
                "step": state.global_step,
                "train_loss": stats.loss,
                "task_loss": stats.task_loss,
                "penalty": stats.penalty,
                "extra_loss": stats.extra_loss,
                "lr": float(optimizer.param_groups[0]["lr"]),
                **{f"val_{k}": v for k, v in metrics.items() if k.startswith("dice_") and k != "dice_background"},
                "time_s": round(time.perf_counter() - start, 3),
            }
            history.append(row)
            if ctx.is_main:
                C.save_training_checkpoint(
                    run_dir / C.LAST_NAME,
                    model,
                    model_config=cfg.model.to_unet_config(),
                    extra=C.checkpoint_entries(cfg, parts, state, history, full=True),
                )
                if improved:
                    C.save_training_checkpoint(
                        run_dir / C.BEST_NAME,
                        model,
                        model_config=cfg.model.to_unet_config(),
                        extra=C.checkpoint_entries(cfg, parts, state, history, full=False),
                    )
                if logger is not None:
                    logger.log_epoch(history)
                shown = f", val {tcfg.monitor} {metrics[tcfg.monitor]:.4f}" if metrics else ""
                say(f"epoch {epoch + 1}/{tcfg.epochs}: loss {stats.loss:.4f}{shown}{' (best)' if improved else ''}")
            D.barrier(ctx)
            if on_epoch_end is not None:
                on_epoch_end(epoch, row)
        if state.stopped_early:
            say(f"early stopping: no improvement of {tcfg.monitor} in {tcfg.early_stopping_patience} validation(s)")
    finally:
        if progress is not None:
            progress.stop()
        if logger is not None:
            logger.close()
    best = run_dir / C.BEST_NAME
    return TrainResult(
        run_dir=run_dir,
        monitor=tcfg.monitor,
        best_metric=state.best_metric,
        best_epoch=state.best_epoch + 1,
        last_checkpoint=run_dir / C.LAST_NAME,
        best_checkpoint=best if state.best_epoch >= 0 else None,
        epochs_completed=state.epoch,
        stopped_early=state.stopped_early,
        history=history,
        model=model,
    )
