"""The README's main job: covidseg's pipeline on the embedded default, a synthetic chest CT.

Until training and prediction land, the demo generates a phantom scan, reads it back through the same loader a
user's scan goes through, reports what the loader sees and runs the network preprocessing on it. Every output
lands in one folder, which is built under a temporary name and renamed when the demo succeeded.
"""

from __future__ import annotations

import time
from pathlib import Path

from rich.console import Console

from covidseg.data.phantom import generate_phantom, save_montage, save_phantom
from covidseg.data.preprocess import PreprocessConfig
from covidseg.data.preview import write_preprocessed
from covidseg.io import describe, load_ct
from covidseg.io.atomic import atomic_dir

__all__ = ["DEMO_SHAPE", "DEMO_SPACING", "run_demo"]

DEMO_SHAPE = (64, 256, 256)
"""Phantom voxels (z, y, x) of the demo scan."""
DEMO_SPACING = (5.0, 1.4, 1.4)
"""Phantom spacing (z, y, x) in mm: a 358 mm field of view, 320 mm cranio-caudal."""


def run_demo(out_dir: str | Path, *, overwrite: bool = False, console: Console | None = None) -> dict[str, Path]:
    """Run the demo and return the paths it wrote (under their final names in ``out_dir``).

    Args:
        out_dir: Folder to create for the outputs.
        overwrite: Replace an existing ``out_dir``.
        console: Where progress is printed (default: stdout).
    """
    console = console or Console()
    out_dir = Path(out_dir)
    start = time.perf_counter()
    with atomic_dir(out_dir, overwrite=overwrite) as work:
        with console.status("generating a synthetic chest CT (phantom)..."):
            phantom = generate_phantom(DEMO_SHAPE, DEMO_SPACING, seed=0)
            written = save_phantom(phantom, work, name="phantom", formats=("nifti",))
            montage = save_montage(phantom.hu, phantom.labels, work / "phantom_montage.png", spacing=phantom.spacing)
        console.print(f"[green]1/3[/] phantom {DEMO_SHAPE[2]} x {DEMO_SHAPE[1]} x {DEMO_SHAPE[0]} voxels written")

        with console.status("loading it back as a user's scan..."):
            volume = load_ct(written["nifti"])
            facts = describe(volume)
        console.print(
            f"[green]2/3[/] loaded: shape {facts['shape_canonical']} (z, y, x), spacing {facts['spacing_mm']} mm, "
            f"looks like HU: {facts['looks_like_hu']}"
        )

        with console.status("preprocessing (HU window [-1000, 0] -> [0, 1], slices to 384 x 384)..."):
            config = PreprocessConfig()
            write_preprocessed(
                volume, config, work / "phantom_preprocessed.npy", preview=work / "phantom_preprocessed.png"
            )
        console.print("[green]3/3[/] preprocessed slices written")

    outputs = {
        "scan": out_dir / written["nifti"].name,
        "labels": out_dir / written["labels"].name,
        "montage": out_dir / montage.name,
        "preprocessed": out_dir / "phantom_preprocessed.npy",
        "preview": out_dir / "phantom_preprocessed.png",
    }
    console.print(f"\ndemo finished in {time.perf_counter() - start:.1f} s; outputs in {out_dir}/:")
    for kind, path in outputs.items():
        console.print(f"  {kind:<13} {path}")
    console.print(f"\nnext: covidseg info {outputs['scan']}")
    return outputs
