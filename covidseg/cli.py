"""The ``covidseg`` command line: a thin layer over the library.

Each command imports its heavy modules (torch, MONAI, SimpleITK) inside its body, so ``covidseg --help`` is
instant. Errors caused by user input (:class:`covidseg.errors.CovidsegError`) are printed as one line on stderr
with exit code 2 and no traceback; anything else is a bug and keeps its traceback. Shared options live in
:mod:`covidseg.cli_common`, the training commands in :mod:`covidseg.cli_train`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from covidseg import cli_eval, cli_train
from covidseg.cli_common import (
    EXIT_USER_ERROR,
    AllowNonCTOption,
    AssumeHUOption,
    ImageWindowOption,
    OverwriteOption,
    SeriesOption,
    load_scan,
    user_errors,
)

app = typer.Typer(
    name="covidseg",
    help=(
        "Segment COVID-19 lung opacities (ground glass, consolidation) in chest CT, and fine-tune the "
        "segmenter on small labelled sets with transfer regularization."
    ),
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

F = TypeVar("F", bound=Callable[..., Any])


def command(*args: Any, **kwargs: Any) -> Callable[[F], F]:
    """Register a CLI command whose user errors become one line on stderr and exit code 2."""

    def decorator(fn: F) -> F:
        app.command(*args, **kwargs)(user_errors(fn))
        return fn

    return decorator


def _version_callback(value: bool) -> None:
    if value:
        from covidseg import __version__

        typer.echo(f"covidseg {__version__}")
        raise typer.Exit()


@app.callback()
def _main_options(
    version: Annotated[
        bool, typer.Option("--version", help="Print the version and exit.", callback=_version_callback, is_eager=True)
    ] = False,
    threads: Annotated[
        int | None,
        typer.Option(
            "--threads",
            min=1,
            envvar="COVIDSEG_THREADS",
            help=(
                "CPU threads for torch (default: one per core). On a machine shared with other jobs, fewer "
                "threads than cores avoid the slowdown of threads waiting for each other."
            ),
        ),
    ] = None,
) -> None:
    """Segment COVID-19 lung opacities in chest CT; fine-tune with transfer regularization."""
    if threads is not None:
        import torch

        torch.set_num_threads(threads)


@command("info")
def info(
    scan: Annotated[Path, typer.Argument(help="A NIfTI/MHA/MHD/NRRD file, a DICOM series folder or a 2-D PNG/JPEG.")],
    image_window: ImageWindowOption = None,
    assume_hu: AssumeHUOption = False,
    allow_non_ct: AllowNonCTOption = False,
    series: SeriesOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print machine-readable JSON instead of a table.")] = False,
) -> None:
    """Show what the loader sees: format, shape, spacing (mm), orientation, HU range, whether it looks like HU.

    Example: covidseg info scan.nii.gz
    """
    from covidseg.io import describe

    volume = load_scan(scan, image_window, assume_hu, allow_non_ct, series)
    facts = describe(volume)
    if as_json:
        typer.echo(json.dumps(facts, indent=2, default=str))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"covidseg info: {scan}", show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value")
    for key, value in facts.items():
        if isinstance(value, list | tuple) and value and all(isinstance(v, float) for v in value):
            value = ", ".join(f"{v:.4g}" for v in value)
        elif isinstance(value, dict):
            value = ", ".join(f"{k}={v:.6g}" if isinstance(v, float) else f"{k}={v}" for k, v in value.items())
        elif isinstance(value, list | tuple):
            value = "; ".join(str(v) for v in value) if value else "-"
        table.add_row(str(key), str(value))
    Console().print(table)


@command("phantom")
def phantom(
    out_dir: Annotated[Path, typer.Argument(help="Folder to write the phantom into.")],
    shape: Annotated[tuple[int, int, int], typer.Option(help="Voxels along z (axial slices), y and x.")] = (
        64,
        256,
        256,
    ),
    spacing: Annotated[tuple[float, float, float], typer.Option(help="Voxel spacing along z, y, x in mm.")] = (
        5.0,
        1.4,
        1.4,
    ),
    seed: Annotated[int, typer.Option(help="Random seed: the same seed gives the same phantom.")] = 0,
    lesions: Annotated[int | None, typer.Option(help="Number of lesions (default: random, 3 to 8).")] = None,
    fmt: Annotated[
        list[str] | None,
        typer.Option("--format", help="Output format(s): nifti, dicom, mha, nrrd. Repeat for several."),
    ] = None,
    name: Annotated[str, typer.Option(help="File name stem.")] = "phantom",
    overwrite: OverwriteOption = False,
) -> None:
    """Write a synthetic chest-CT phantom (HU volume, labels, PNG montage) for trying covidseg without data.

    Example: covidseg phantom demo/ --shape 64 256 256 --format nifti --format dicom
    """
    from covidseg.data.phantom import generate_phantom, save_montage, save_phantom
    from covidseg.errors import InputError

    formats = tuple(fmt or ["nifti"])
    valid = {"nifti", "dicom", "mha", "nrrd"}
    unknown = sorted(set(formats) - valid)
    if unknown:
        raise InputError(f"unknown --format {unknown}; expected some of {sorted(valid)}")
    kwargs: dict[str, Any] = {"seed": seed}
    if lesions is not None:
        kwargs["n_lesions"] = lesions
    from covidseg.io.atomic import check_writable

    montage_path = check_writable(Path(out_dir) / f"{name}_montage.png", overwrite)
    result = generate_phantom(shape, spacing, **kwargs)
    written = save_phantom(result, out_dir, name=name, formats=formats, overwrite=overwrite)
    montage = save_montage(result.hu, result.labels, montage_path, spacing=result.spacing, overwrite=overwrite)
    for kind, path in {**written, "montage": montage}.items():
        typer.echo(f"{kind:>8}: {path}")


@command("preprocess")
def preprocess(
    scan: Annotated[Path, typer.Argument(help="A CT scan in any supported format.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Output .npy file: (Z, H, W) float16 in [0, 1].")],
    window: Annotated[tuple[float, float], typer.Option(help="HU window LOW HIGH mapped to [0, 1].")] = (-1000.0, 0.0),
    size: Annotated[tuple[int, int], typer.Option(help="Slice size HEIGHT WIDTH (multiples of 32).")] = (384, 384),
    preview: Annotated[Path | None, typer.Option(help="Also write a PNG of a few preprocessed slices.")] = None,
    image_window: ImageWindowOption = None,
    assume_hu: AssumeHUOption = False,
    allow_non_ct: AllowNonCTOption = False,
    series: SeriesOption = None,
    overwrite: OverwriteOption = False,
) -> None:
    """Run the network's preprocessing on a scan (HU window, slice resize) and save the slices.

    Example: covidseg preprocess scan.nii.gz -o scan_slices.npy --preview slices.png
    """
    from covidseg.data.preprocess import PreprocessConfig
    from covidseg.data.preview import write_preprocessed

    config = PreprocessConfig(window=window, slice_size=size)
    volume = load_scan(scan, image_window, assume_hu, allow_non_ct, series)
    summary = write_preprocessed(volume, config, output, preview=preview, overwrite=overwrite)
    typer.echo(summary)


command("train")(cli_train.train)


@command("demo")
def demo(
    out_dir: Annotated[Path, typer.Option("--out", help="Folder for everything the demo writes.")] = Path(
        "demo-output"
    ),
    overwrite: OverwriteOption = False,
    quick: Annotated[
        bool, typer.Option("--quick", help="Tiny sizes (configs/demo/quick.yaml): the same steps in about a minute.")
    ] = False,
    config: Annotated[
        list[Path] | None,
        typer.Option("--config", "-c", help="Recipe YAML merged over configs/demo/demo.yaml; repeat for several."),
    ] = None,
    overrides: Annotated[
        list[str] | None,
        typer.Option("--set", "-s", help="Change one recipe key, e.g. --set finetune.train.epochs=3. Repeatable."),
    ] = None,
) -> None:
    """Run the main job on the embedded default, synthetic chest CTs, end to end (about 6-10 min on 2 cores).

    Writes a phantom dataset, pre-trains a source model, fine-tunes it with the paper's layer-wise L2-SP,
    predicts a held-out phantom (mask, report, overview; Dice against its truth) and exports and verifies a
    MONAI bundle, all into one folder. The recipe is configs/demo/demo.yaml.

    Example: covidseg demo --out demo-output --overwrite
    """
    from covidseg.demo import run_demo

    run_demo(out_dir, overwrite=overwrite, quick=quick, config_files=config or (), overrides=overrides or ())


@command("predict")
def predict(
    scans: Annotated[
        list[str],
        typer.Argument(
            help="Scans: NIfTI/MHA/MHD/NRRD files, DICOM series folders, 2-D PNG/JPEG slices, folders of scans "
            'or glob patterns (quote them: "data/*.nii.gz").',
            show_default=False,
        ),
    ],
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="Output folder.")] = Path("covidseg-predictions"),
    model: Annotated[
        Path | None,
        typer.Option(
            "--model",
            "-m",
            help="Checkpoint (best.pt). Default: $COVIDSEG_MODEL, else the newest runs/*/best.pt here.",
            show_default=False,
        ),
    ] = None,
    precision: Annotated[
        str, typer.Option(help="Network precision: fp32, bf16 (faster on CPU, with --channels-last), fp16 (CUDA).")
    ] = "fp32",
    channels_last: Annotated[
        bool | None,
        typer.Option(
            "--channels-last/--no-channels-last",
            help="Channels-last memory format. Default: on for CPU (faster, same masks), off for CUDA.",
            show_default=False,
        ),
    ] = None,
    batch_size: Annotated[
        int | None,
        typer.Option(
            "--batch-size",
            help="Slices per network call. Default: on CPU 2 in fp32 and 4 in bf16 (the fastest measured), 8 on CUDA.",
            min=1,
            show_default=False,
        ),
    ] = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
    prob_map: Annotated[
        str, typer.Option("--prob-map", help="Also write the opacity probability: none, float16 or uint8 (0-255).")
    ] = "none",
    no_overview: Annotated[bool, typer.Option("--no-overview", help="Do not write the PNG overview.")] = False,
    fast: Annotated[
        bool | None,
        typer.Option(
            "--fast/--no-fast",
            help="Skip axial slices without lung tissue (decided from HU). Default: the model's setting (off).",
            show_default=False,
        ),
    ] = None,
    shard: Annotated[
        str | None,
        typer.Option(help="Process only part i of n of the sorted inputs, e.g. 2/4 (1-based).", show_default=False),
    ] = None,
    image_window: ImageWindowOption = None,
    assume_hu: AssumeHUOption = False,
    allow_non_ct: AllowNonCTOption = False,
    overwrite: OverwriteOption = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress display.")] = False,
) -> None:
    """Segment lungs and opacities: label map, report (JSON), overview (PNG), DICOM SEG for DICOM input.

    Writes <name>_labels, <name>_report.json and <name>_overview.png per scan into the output folder, plus
    summary.csv when several scans are given. Exit code 2 when any scan failed.

    Example: covidseg predict scan.nii.gz dicom_folder/ -o results --model runs/l2sp/best.pt
    """
    from covidseg.infer.batch import expand_inputs, parse_shard, resolve_model_path, select_shard, summary_path
    from covidseg.infer.console import run_batch_with_progress
    from covidseg.infer.outputs import OutputOptions, ensure_output_dir
    from covidseg.infer.pipeline import PredictOptions
    from covidseg.infer.segmenter import Segmenter

    shard_ix = parse_shard(shard) if shard is not None else None
    options = PredictOptions(
        outputs=OutputOptions(probability=prob_map, overview=not no_overview, overwrite=overwrite),
        image_window=image_window,
        assume_hu=assume_hu,
        allow_non_ct=allow_non_ct,
    )
    inputs = expand_inputs(scans, exclude=out_dir)
    if shard_ix is not None:
        inputs = select_shard(inputs, *shard_ix)
        if not inputs:
            typer.echo(f"shard {shard}: no scans in this part of the {len(expand_inputs(scans))} inputs")
            return
    folder = ensure_output_dir(out_dir)
    summary = summary_path(folder, shard_ix) if len(inputs) > 1 or shard_ix is not None else None
    checkpoint = resolve_model_path(model)
    segmenter = Segmenter.from_checkpoint(
        checkpoint,
        device=device,
        precision=precision,
        channels_last=channels_last,
        batch_size=batch_size,
        skip_empty_slices=fast,
    )
    result = run_batch_with_progress(inputs, segmenter, folder, options=options, summary=summary, quiet=quiet)
    done, failed = len(result.results), len(result.failures)
    typer.echo(f"{done} of {done + failed} scan(s) segmented into {folder}" + (f", {failed} failed" if failed else ""))
    if result.summary is not None:
        typer.echo(f"summary: {result.summary}")
    if failed:
        raise typer.Exit(EXIT_USER_ERROR)


command("pretrain")(cli_train.pretrain)
command("sweep")(cli_train.sweep)
command("evaluate")(cli_eval.evaluate)
command("compare")(cli_eval.compare)
command("figure-drift")(cli_eval.figure_drift)
command("figure-overlays")(cli_eval.figure_overlays)


@command("export-bundle")
def export_bundle_command(
    model: Annotated[Path, typer.Option("--model", "-m", help="Checkpoint written by covidseg train (best.pt).")],
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="Bundle folder to create.")],
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing bundle folder.")] = False,
    name: Annotated[str, typer.Option(help="Bundle name (metadata 'name').")] = "covidseg_lung_opacity",
    version: Annotated[str, typer.Option(help="Bundle version, major.minor.patch.")] = "0.1.0",
    authors: Annotated[str, typer.Option(help="Metadata 'authors'.")] = "covidseg developers",
    copyright_text: Annotated[
        str, typer.Option("--copyright", help="Metadata 'copyright'.")
    ] = "Copyright (c) the covidseg developers and the model's trainers",
    verify: Annotated[
        bool, typer.Option("--verify/--no-verify", help="Run verify_metadata (offline) and verify_net_in_out.")
    ] = True,
) -> None:
    """Export a checkpoint as a MONAI bundle that gives the masks of covidseg predict without covidseg.

    Writes configs/ (metadata.json, inference.json), models/ (model.pt, model.ts), scripts/ (covidseg's
    post-processing), docs/README.md and LICENSE. Run it with: python -m monai.bundle run --config_file
    configs/inference.json --meta_file configs/metadata.json --dataset_dir SCANS --output_dir MASKS

    Example: covidseg export-bundle --model runs/l2sp/best.pt --out bundles/covidseg_lung_opacity
    """
    from covidseg.bundle.export import export_bundle
    from covidseg.bundle.verify import verify_bundle

    result = export_bundle(
        model,
        out_dir,
        overwrite=overwrite,
        name=name,
        version=version,
        authors=authors,
        copyright_text=copyright_text,
    )
    for note in result.notes:
        typer.echo(f"note: {note}", err=True)
    typer.echo(f"bundle: {result.path} ({len(result.files)} files)")
    if verify:
        typer.echo(f"verified: {', '.join(verify_bundle(result.path))}")


def main() -> None:
    """Entry point of the ``covidseg`` console script and ``python -m covidseg``."""
    app()


if __name__ == "__main__":
    main()
