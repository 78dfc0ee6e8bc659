"""Pieces every ``covidseg`` command shares: one-line user errors, common options, loading a scan."""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from covidseg.errors import CovidsegError

EXIT_USER_ERROR = 2
"""Exit code of every error caused by user input (bad arguments, bad files, existing outputs)."""

F = TypeVar("F", bound=Callable[..., Any])


def fail(message: str) -> typer.Exit:
    """Print ``error: message`` on one line to stderr and return the exit to raise."""
    typer.echo(f"error: {' '.join(str(message).split())}", err=True)
    return typer.Exit(EXIT_USER_ERROR)


def user_errors(fn: F) -> F:
    """Wrap a command so user errors become one line on stderr and exit code 2 (no traceback)."""

    @functools.wraps(fn)
    def wrapper(*a: Any, **k: Any) -> Any:
        try:
            return fn(*a, **k)
        except CovidsegError as err:
            raise fail(str(err)) from None
        except KeyboardInterrupt:
            typer.echo("interrupted", err=True)
            raise typer.Exit(130) from None

    return wrapper  # type: ignore[return-value]


# Options shared by every command that reads a scan.
ImageWindowOption = Annotated[
    tuple[float, float] | None,
    typer.Option(
        "--image-window",
        help=(
            "For 2-D PNG/JPEG slices only: the display window (LOW HIGH, in HU) the 8-bit image was saved with, "
            "used to map 0..255 back to approximate HU. Default: a lung window, -1350 150."
        ),
        show_default=False,
    ),
]
AssumeHUOption = Annotated[
    bool, typer.Option("--assume-hu", help="Proceed even when the intensities do not look like Hounsfield units.")
]
AllowNonCTOption = Annotated[
    bool, typer.Option("--allow-non-ct", help="Proceed even when the DICOM Modality is not CT.")
]
SeriesOption = Annotated[
    str | None,
    typer.Option(
        "--series",
        help="For a DICOM folder with several series: the SeriesInstanceUID to read (default: most slices).",
        show_default=False,
    ),
]
OverwriteOption = Annotated[bool, typer.Option("--overwrite", help="Replace existing outputs.")]


def load_scan(
    scan: Path,
    image_window: tuple[float, float] | None,
    assume_hu: bool,
    allow_non_ct: bool,
    series: str | None = None,
) -> Any:
    """Load a scan as the library does and print the loader's warnings (one line each) on stderr."""
    from covidseg.io import load_ct

    volume = load_ct(scan, image_window=image_window, assume_hu=assume_hu, allow_non_ct=allow_non_ct, series_uid=series)
    for warning in volume.source.warnings if volume.source is not None else []:
        typer.echo(f"warning: {' '.join(str(warning).split())}", err=True)
    return volume
