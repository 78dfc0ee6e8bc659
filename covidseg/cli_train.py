"""The training commands of the ``covidseg`` CLI: ``train``, ``pretrain`` and ``sweep``.

cli.py registers these functions on the app explicitly; heavy modules are imported inside each command.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from covidseg.cli_common import OverwriteOption


def train(
    config: Annotated[
        list[Path] | None,
        typer.Option("--config", "-c", help="YAML config; repeat to combine (later files override earlier ones)."),
    ] = None,
    overrides: Annotated[
        list[str] | None,
        typer.Option("--set", "-s", help="Override one key, e.g. --set train.epochs=5. Repeat for several."),
    ] = None,
    source: Annotated[
        Path | None,
        typer.Option(
            "--source", help="Source weights: ImageNet DenseNet121 file or covidseg checkpoint (source.path)."
        ),
    ] = None,
    resume: Annotated[
        Path | None,
        typer.Option(
            "--resume", help="Continue the run in this folder from its last.pt (its config.yaml is the base)."
        ),
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar or epoch lines.")] = False,
) -> None:
    """Fine-tune the segmenter with a transfer penalty and strategy; writes checkpoints, metrics and logs.

    Example: covidseg train -c configs/datasets/phantom.yaml -c configs/schemes/l2.yaml --set train.epochs=3
    """
    from rich.console import Console

    from covidseg.config import load_config
    from covidseg.train.trainer import CONFIG_NAME
    from covidseg.train.trainer import train as run_training

    sets = list(overrides or [])
    if source is not None:
        sets.append(f"source.path={source}")
    files: list[Path] = list(config or [])
    if resume is not None:
        base = (resume if resume.is_dir() else resume.parent) / CONFIG_NAME
        if not base.is_file():
            from covidseg.errors import InputError

            raise InputError(f"{resume} is not a covidseg run folder (no {CONFIG_NAME}); pass the folder train printed")
        files = [base, *files]
    run_config = load_config(files, sets)
    result = run_training(run_config, resume=resume, console=None if quiet else Console(stderr=True))
    typer.echo(f"run: {result.run_dir}")
    if result.best_checkpoint is not None:
        typer.echo(f"best validation {result.monitor}: {result.best_metric:.4f} (epoch {result.best_epoch})")
    typer.echo(
        f"checkpoints: {result.last_checkpoint}" + (f", {result.best_checkpoint}" if result.best_checkpoint else "")
    )


def pretrain(
    config: Annotated[
        list[Path] | None,
        typer.Option("--config", "-c", help="Pretrain YAML (tasks, ...); repeat to combine. See configs/pretrain/."),
    ] = None,
    overrides: Annotated[
        list[str] | None,
        typer.Option("--set", "-s", help="Override one key, e.g. --set train.epochs=5 or tasks.0.data.root=DIR."),
    ] = None,
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="Output source checkpoint (default: <run folder>/source.pt)."),
    ] = None,
    resume: Annotated[
        Path | None, typer.Option("--resume", help="Continue the pretrain run in this folder from its last.pt.")
    ] = None,
    overwrite: OverwriteOption = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar or epoch lines.")] = False,
) -> None:
    """Pre-train a source model: one shared encoder, one decoder per task, trained jointly on several datasets.

    Example: covidseg pretrain -c configs/pretrain/phantom.yaml -o runs/source.pt
    """
    from rich.console import Console

    from covidseg.config.pretrain import load_pretrain_config
    from covidseg.train.pretrain import CONFIG_NAME
    from covidseg.train.pretrain import pretrain as run_pretrain

    files: list[Path] = list(config or [])
    if resume is not None:
        base = (resume if resume.is_dir() else resume.parent) / CONFIG_NAME
        if not base.is_file():
            from covidseg.errors import InputError

            raise InputError(f"{resume} is not a pretrain run folder (no {CONFIG_NAME}); pass the folder it printed")
        files = [base, *files]
    if not files:
        from covidseg.errors import ConfigError

        raise ConfigError("covidseg pretrain needs --config FILE (see configs/pretrain/) or --resume RUN_DIR")
    cfg = load_pretrain_config(files, list(overrides or []))
    result = run_pretrain(
        cfg, output=output, overwrite=overwrite, resume=resume, console=None if quiet else Console(stderr=True)
    )
    typer.echo(f"run: {result.run_dir}")
    typer.echo(f"best validation score (mean task dice_mean): {result.best_score:.4f} (epoch {result.best_epoch})")
    typer.echo(f"source checkpoint: {result.source}")


def sweep(
    config: Annotated[Path, typer.Option("--config", "-c", help="Sweep YAML (base configs + grid); configs/sweep/.")],
    overrides: Annotated[
        list[str] | None,
        typer.Option("--set", "-s", help="Override a run-config key for every point, e.g. source.path=src.pt."),
    ] = None,
    out_dir: Annotated[Path | None, typer.Option("--output", "-o", help="Sweep folder (re-run to continue).")] = None,
    retrain_epochs: Annotated[
        int | None, typer.Option("--retrain-epochs", min=1, help="Retrain the best point with N epochs.")
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar or epoch lines.")] = False,
) -> None:
    """Grid-search the penalty strengths (λ0, α; fixed λ; λ'): short train runs ranked by validation score.

    Example: covidseg sweep -c configs/sweep/l2sp_phantom.yaml --set source.path=runs/source.pt -o runs/sweep
    """
    from rich.console import Console

    from covidseg.train.sweep import run_sweep

    result = run_sweep(
        config,
        overrides=list(overrides or []),
        out_dir=out_dir,
        retrain_epochs=retrain_epochs,
        console=None if quiet else Console(stderr=True),
    )
    best = result.best
    typer.echo(f"table: {result.table_md} ({len(result.rows)} points)")
    typer.echo(f"best: {best['point']} {best['metric']} {best['score']:.4f} in {best['run_dir']}")
    if result.retrained is not None:
        again = result.retrained
        typer.echo(f"retrained: {again['metric']} {again['score']:.4f} in {again['run_dir']}")
