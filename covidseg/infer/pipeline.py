"""One scan end to end: load -> predict -> post-process -> report -> outputs.

:func:`predict_scan` is what ``covidseg predict`` runs per scan. A scan without lungs in view is not an error:
it gets an empty label map and a report that says so.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from covidseg.infer.outputs import (
    OUTPUT_WRITERS,
    OutputOptions,
    check_outputs,
    describe_input,
    ensure_output_dir,
    finish_file_writes,
    plan_outputs,
    start_file_writes,
    write_probability_map,
    write_report_file,
)
from covidseg.infer.postprocess import PostprocessConfig, postprocess
from covidseg.infer.report import scan_report
from covidseg.infer.segmenter import ProgressFn, Segmenter
from covidseg.io.load import load_ct
from covidseg.io.volume import CTVolume

__all__ = ["PredictOptions", "ScanResult", "StageFn", "postprocess_config_for", "predict_scan"]

StageFn = Callable[[str], None]
"""Called with the name of each stage as it starts (``loading``, ``predicting``, ...)."""


@dataclass(frozen=True)
class PredictOptions:
    """How scans are read and which outputs are written.

    Attributes:
        outputs: Optional outputs and ``overwrite``.
        image_window: Display window of 2-D slice images (see :func:`covidseg.io.load_ct`).
        assume_hu: Skip the Hounsfield-unit check.
        allow_non_ct: Accept a modality other than CT.
        series_uid: DICOM series to read from a folder holding several.
    """

    outputs: OutputOptions = field(default_factory=OutputOptions)
    image_window: tuple[float, float] | None = None
    assume_hu: bool = False
    allow_non_ct: bool = False
    series_uid: str | None = None


@dataclass
class ScanResult:
    """What :func:`predict_scan` did for one scan.

    Attributes:
        scan: The input path.
        name: The output stem.
        outputs: Output kind -> written path.
        report: The report written (without its metadata).
        skipped_slices: Slices the fast path did not run through the network.
        timings: Seconds per stage (``load``, ``network`` and its neighbours, ``postprocess``, ``report``,
            one entry per output written, ``total``). The report is computed while the files are written, so
            ``report`` and the ``write_*`` entries overlap.
    """

    scan: Path
    name: str
    outputs: dict[str, Path]
    report: dict[str, Any]
    skipped_slices: int
    timings: dict[str, float]


def postprocess_config_for(volume: CTVolume, config: PostprocessConfig) -> tuple[PostprocessConfig, list[str]]:
    """The post-processing for this volume: a single slice (2-D image) cannot reach a lung volume in mL.

    Lung components are kept by size in mL; one 1 mm slice of both lungs holds about 20 mL, so for single-slice
    inputs the minimum lung component volume is dropped (the largest-components rule still applies).

    Examples:
        >>> import numpy as np
        >>> from covidseg.io import canonical_affine
        >>> vol = CTVolume.from_canonical(np.zeros((1, 32, 32)), canonical_affine())
        >>> postprocess_config_for(vol, PostprocessConfig())[0].min_lung_component_ml
        0.0
    """
    if volume.shape[0] == 1 and config.min_lung_component_ml > 0:
        note = (
            "single-slice input: the minimum lung component volume "
            f"({config.min_lung_component_ml:g} mL) does not apply; volumes in mL assume the slice spacing"
        )
        return replace(config, min_lung_component_ml=0.0), [note]
    return config, []


def _report(labels: np.ndarray, volume: CTVolume, scan: Path, skipped_slices: int, notes: list[str]) -> dict[str, Any]:
    """The scan's report with its input path, the fast path's skipped slices and every warning."""
    report = scan_report(labels, volume.spacing, affine=volume.affine, hu=volume.hu)
    report["scan"] = str(scan)
    report["skipped_slices"] = skipped_slices
    report["warnings"] = [*notes, *report["warnings"]]
    if skipped_slices:
        report["warnings"].append(
            f"fast path: {skipped_slices} of {volume.shape[0]} axial slices had no lung tissue by HU "
            "and were not run through the network"
        )
    return report


def predict_scan(
    path: str | os.PathLike[str],
    segmenter: Segmenter,
    out_dir: str | os.PathLike[str],
    *,
    options: PredictOptions | None = None,
    name: str | None = None,
    progress: ProgressFn | None = None,
    on_stage: StageFn | None = None,
) -> ScanResult:
    """Segment one scan and write its outputs (label map, report, and the optional ones).

    Args:
        path: A NIfTI/MHA/MHD/NRRD file, a DICOM series folder (or one of its files) or a 2-D slice image.
        segmenter: The loaded model and its inference spec.
        out_dir: Output folder (created when missing).
        options: Reading options and outputs; defaults to :class:`PredictOptions()`.
        name: Output file stem (default: the scan's name).
        progress: Slice progress callback, ``(done, total)``.
        on_stage: Called with each stage's name as it starts.

    Returns:
        The written paths, the report and the timings.

    Raises:
        OutputExistsError: Any output exists and overwrite is off (checked before the scan is read).
        InputError: Unreadable input, an output folder that cannot be written, ...
        NotHUError: Intensities that do not look like HU (unless ``assume_hu``).

    Examples:
        >>> import tempfile, numpy as np, torch
        >>> from covidseg.data.preprocess import PreprocessConfig
        >>> from covidseg.infer.spec import InferenceSpec
        >>> from covidseg.io import CTVolume, canonical_affine, save_volume
        >>> class Background(torch.nn.Module):
        ...     def forward(self, x):
        ...         return torch.cat([x * 0 + 1, x * 0, x * 0], dim=1)
        >>> seg = Segmenter(Background(), InferenceSpec(preprocess=PreprocessConfig(slice_size=(32, 32))))
        >>> tmp = Path(tempfile.mkdtemp())
        >>> hu = np.full((4, 40, 40), -1000, np.int16); hu[:, 5:35, 5:35] = 40
        >>> scan = save_volume(hu, CTVolume.from_canonical(hu, canonical_affine()), tmp / "abdomen.nii.gz")
        >>> result = predict_scan(scan, seg, tmp / "out", options=PredictOptions(OutputOptions(overview=False)))
        >>> result.report["lungs_in_view"], sorted(result.outputs)
        (False, ['labels', 'report'])
    """
    opts = options or PredictOptions()
    scan = Path(path)
    stage = on_stage or (lambda _name: None)
    start = time.perf_counter()
    folder = ensure_output_dir(out_dir)
    planned = plan_outputs(scan, folder, opts.outputs, name=name)
    check_outputs(planned, opts.outputs.overwrite)
    timings: dict[str, float] = {}

    stage("loading")
    t0 = time.perf_counter()
    volume = load_ct(
        scan,
        image_window=opts.image_window,
        assume_hu=opts.assume_hu,
        allow_non_ct=opts.allow_non_ct,
        series_uid=opts.series_uid,
    )
    timings["load"] = time.perf_counter() - t0

    stage("predicting")
    prediction = segmenter.predict(volume, probability=opts.outputs.probability, progress=progress)
    timings.update({k: v for k, v in prediction.timings.items() if k != "total"})

    if planned.probability is not None and prediction.opacity_probability is not None:
        stage("writing the probability map")
        t0 = time.perf_counter()  # written now, so its memory is free before post-processing
        overwrite = opts.outputs.overwrite
        write_probability_map(prediction.opacity_probability, volume, planned.probability, overwrite=overwrite)
        prediction.opacity_probability = None
        timings["write_probability"] = time.perf_counter() - t0

    stage("post-processing")
    t0 = time.perf_counter()
    spec = segmenter.spec
    post_config, notes = postprocess_config_for(volume, spec.postprocess)
    labels = postprocess(prediction.labels, volume.spacing, post_config, class_names=spec.class_names, hu=volume.hu)
    timings["postprocess"] = time.perf_counter() - t0

    stage("writing")
    # The label map, overview (and DICOM SEG) are written by two threads while this one computes the report;
    # the report is written last, once every other file is in place.
    with ThreadPoolExecutor(max_workers=OUTPUT_WRITERS) as pool:
        pending = start_file_writes(pool, planned, volume, labels, overwrite=opts.outputs.overwrite)
        t0 = time.perf_counter()
        report = _report(labels, volume, scan, prediction.skipped_slices, notes)
        timings["report"] = time.perf_counter() - t0
        written = finish_file_writes(pending)
    timings.update({f"write_{kind}": seconds for kind, seconds in written.items()})
    metadata = {
        "model": {**segmenter.info.to_dict(), "class_names": list(spec.class_names)},
        "inference_spec": spec.to_dict(),
        "postprocess_applied": post_config.to_dict(),
        "runtime": {
            "device": str(segmenter.device),
            "channels_last": segmenter.channels_last,
            "batch_size": segmenter.batch_size,
        },
        "input": describe_input(volume, scan),
        "timings_s": {k: round(v, 3) for k, v in timings.items()},
    }
    timings["write_report"] = write_report_file(planned, report, metadata, overwrite=opts.outputs.overwrite)
    timings["total"] = time.perf_counter() - start
    return ScanResult(
        scan=scan,
        name=planned.name,
        outputs=planned.paths(),
        report=report,
        skipped_slices=prediction.skipped_slices,
        timings=timings,
    )
