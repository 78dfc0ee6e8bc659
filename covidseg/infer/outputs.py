"""What ``covidseg predict`` writes for one scan, and where.

For a scan named ``<name>`` in the output folder:

==============================  =====================================================================
``<name>_labels<ext>``          uint8 label map (0 background, 1 lung, 2 opacity) in exactly the input's
                                geometry; ``<ext>`` keeps the input's format family: ``.nii.gz`` for
                                NIfTI, ``.mha`` for MHA/MHD, ``.nrrd`` for NRRD, ``.nii.gz`` for DICOM
                                series, ``.png`` for slice images (a palette PNG: pixel values are the
                                labels, shown in colour, in the input image's pixel layout)
``<name>_opacity_prob<ext>``    optional opacity probability: float32 (from float16) in [0, 1], or uint8
                                ``round(255 p)``; for slice images a grayscale PNG when uint8 (float16
                                maps go to ``.nii.gz``)
``<name>_report.json``          volumes, involvement, zone grades, lesion count + provenance (model and
                                its SHA-256, the inference spec, software versions)
``<name>_overview.png``         axial montage and coronal view with lungs outlined and opacity filled
``<name>_seg.dcm``              DICOM SEG (DICOM input only)
==============================  =====================================================================

Every file is written atomically, and all of a scan's outputs are checked before any work on the scan starts:
one that exists is refused (:class:`~covidseg.errors.OutputExistsError`) unless ``overwrite`` is set.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Executor, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from covidseg.errors import InputError, OutputExistsError
from covidseg.io.atomic import full_suffix
from covidseg.io.dicom_read import is_dicom_file
from covidseg.io.load import ITK_FORMATS, NIFTI_SUFFIXES
from covidseg.io.volume import CTVolume

__all__ = [
    "LABEL_SUFFIX",
    "OutputOptions",
    "ScanOutputs",
    "check_outputs",
    "ensure_output_dir",
    "finish_file_writes",
    "input_family",
    "plan_outputs",
    "scan_name",
    "start_file_writes",
    "write_outputs",
    "write_probability_map",
    "write_report_file",
]

OUTPUT_WRITERS = 2
"""Threads writing a scan's files at the same time (the development machine's two cores)."""
LABEL_SUFFIX = {
    "nifti": ".nii.gz",
    "mha": ".mha",
    "mhd": ".mha",
    "nrrd": ".nrrd",
    "dicom": ".nii.gz",
    "image": ".png",
}
"""Suffix of the label map (and probability map) per input format family."""
PROBABILITY_KINDS = ("none", "float16", "uint8")
"""Choices for the opacity probability map."""
_STRIP_SUFFIXES = (".nii.gz", ".nii", ".mha", ".mhd", ".nrrd", ".nhdr", ".png", ".jpg", ".jpeg", ".dcm")


@dataclass(frozen=True)
class OutputOptions:
    """Which optional outputs to write.

    Attributes:
        probability: Opacity probability map: ``"none"``, ``"float16"`` (stored as float32) or ``"uint8"``.
        overview: Write the PNG overview.
        dicom_seg: Write a DICOM SEG for DICOM input.
        overwrite: Replace existing outputs.
    """

    probability: str = "none"
    overview: bool = True
    dicom_seg: bool = True
    overwrite: bool = False

    def __post_init__(self) -> None:
        if self.probability not in PROBABILITY_KINDS:
            raise InputError(f"probability map must be one of {list(PROBABILITY_KINDS)}, got {self.probability!r}")


@dataclass(frozen=True)
class ScanOutputs:
    """The output paths of one scan (None for outputs not written).

    Examples:
        >>> out = plan_outputs(Path("scan.nii.gz"), Path("out"), OutputOptions(probability="uint8"))
        >>> sorted(out.paths())
        ['labels', 'overview', 'probability', 'report']
        >>> out.labels.name
        'scan_labels.nii.gz'
    """

    name: str
    labels: Path
    report: Path
    probability: Path | None = None
    overview: Path | None = None
    dicom_seg: Path | None = None

    def paths(self) -> dict[str, Path]:
        """Output kind -> path, for the outputs that will be written."""
        kinds = ("labels", "probability", "overview", "dicom_seg", "report")
        return {kind: path for kind in kinds if (path := getattr(self, kind)) is not None}


def scan_name(path: str | os.PathLike[str]) -> str:
    """The stem outputs are named after: the file name without its format suffix, or the folder's name.

    Examples:
        >>> scan_name("data/case_01.nii.gz"), scan_name("dicom/patient7/"), scan_name("slice.PNG")
        ('case_01', 'patient7', 'slice')
    """
    p = Path(path)
    name = p.name
    lowered = name.lower()
    for suffix in _STRIP_SUFFIXES:
        if lowered.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return name


def input_family(path: str | os.PathLike[str]) -> str:
    """The format family of an input path, decided before reading it (by suffix, or DICOM content).

    Examples:
        >>> input_family("a.nii"), input_family("b.NRRD"), input_family("c.mhd"), input_family("d.jpg")
        ('nifti', 'nrrd', 'mhd', 'image')
    """
    p = Path(path)
    suffix = full_suffix(p)
    if p.is_dir():
        return "dicom"
    if suffix in NIFTI_SUFFIXES:
        return "nifti"
    if suffix in ITK_FORMATS:
        return ITK_FORMATS[suffix]
    if suffix in (".png", ".jpg", ".jpeg"):
        return "image"
    if p.is_file() and is_dicom_file(p):
        return "dicom"
    return "nifti"


def plan_outputs(
    scan: str | os.PathLike[str], out_dir: str | os.PathLike[str], options: OutputOptions, *, name: str | None = None
) -> ScanOutputs:
    """The paths :func:`covidseg.infer.pipeline.predict_scan` will write for ``scan``.

    Args:
        scan: The input path.
        out_dir: The output folder.
        options: Which optional outputs are wanted.
        name: Output stem (default :func:`scan_name`; batch mode disambiguates equal names).
    """
    stem = name or scan_name(scan)
    folder = Path(out_dir)
    family = input_family(scan)
    ext = LABEL_SUFFIX[family]
    # A PNG holds 8 bits: float probability maps of slice images go to NIfTI.
    probability_ext = ".nii.gz" if ext == ".png" and options.probability == "float16" else ext
    return ScanOutputs(
        name=stem,
        labels=folder / f"{stem}_labels{ext}",
        report=folder / f"{stem}_report.json",
        probability=folder / f"{stem}_opacity_prob{probability_ext}" if options.probability != "none" else None,
        overview=folder / f"{stem}_overview.png" if options.overview else None,
        dicom_seg=folder / f"{stem}_seg.dcm" if options.dicom_seg and family == "dicom" else None,
    )


def check_outputs(outputs: ScanOutputs, overwrite: bool) -> None:
    """Refuse, before any work, when any output of a scan exists and ``overwrite`` is false.

    Raises:
        OutputExistsError: Naming every existing output.

    Examples:
        >>> import tempfile
        >>> folder = Path(tempfile.mkdtemp())
        >>> out = plan_outputs(Path("s.nii.gz"), folder, OutputOptions())
        >>> _ = out.report.write_text("{}")
        >>> check_outputs(out, overwrite=False)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        covidseg.errors.OutputExistsError: outputs of s exist already (s_report.json in ...); pass --overwrite ...
    """
    if overwrite:
        return
    existing = [p for p in outputs.paths().values() if p.exists()]
    if existing:
        names = ", ".join(p.name for p in existing)
        raise OutputExistsError(
            f"outputs of {outputs.name} exist already ({names} in {existing[0].parent}); pass --overwrite to "
            "replace them or choose another output folder with -o"
        )


def ensure_output_dir(out_dir: str | os.PathLike[str]) -> Path:
    """Create the output folder if needed and check that files can be written into it.

    Raises:
        InputError: The folder cannot be created or is not writable.

    Examples:
        >>> import tempfile
        >>> ensure_output_dir(Path(tempfile.mkdtemp()) / "new" / "folder").is_dir()
        True
    """
    folder = Path(out_dir)
    if folder.exists() and not folder.is_dir():
        raise InputError(f"output folder {folder} is a file; pass a folder with -o")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"cannot create the output folder {folder} ({exc.strerror}); choose another with -o") from exc
    if not os.access(folder, os.W_OK | os.X_OK):
        raise InputError(f"output folder {folder} is not writable; choose another with -o or fix its permissions")
    return folder


def write_probability_map(
    probability: np.ndarray, volume: CTVolume, path: str | os.PathLike[str], *, overwrite: bool = False
) -> Path:
    """Write a canonical opacity probability map (float16 -> float32 file, or uint8 ``round(255 p)``).

    Examples:
        >>> import tempfile, nibabel as nib
        >>> from covidseg.io import canonical_affine
        >>> vol = CTVolume.from_canonical(np.zeros((2, 3, 4)), canonical_affine())
        >>> p = write_probability_map(np.full((2, 3, 4), 0.5, np.float16), vol, Path(tempfile.mkdtemp()) / "p.nii.gz")
        >>> nib.load(p).get_data_dtype().name, float(nib.load(p).get_fdata().max())
        ('float32', 0.5)
    """
    from covidseg.io.save import save_volume

    arr = np.asarray(probability)
    if arr.dtype not in (np.float16, np.float32, np.uint8):
        raise ValueError(f"probability maps are float16/float32 or uint8, got {arr.dtype}")
    return save_volume(arr, volume, path, dtype=np.uint8 if arr.dtype == np.uint8 else np.float32, overwrite=overwrite)


def describe_input(volume: CTVolume, scan: Path) -> dict[str, Any]:
    """The input facts recorded in a report: path, format, shape, spacing, orientation, loader warnings."""
    from covidseg.io.volume import axcodes_of

    source = volume.source
    info: dict[str, Any] = {
        "path": str(scan),
        "format": source.format if source else "array",
        "shape_zyx": list(volume.shape),
        "spacing_mm_zyx": [round(s, 6) for s in volume.spacing],
        "native_axcodes": axcodes_of(source.native_affine) if source else None,
        "loader_warnings": list(source.warnings) if source else [],
    }
    if source is not None and source.format == "dicom":
        info["series_instance_uid"] = source.series_uid
        info["study_instance_uid"] = source.study_uid
    return info


def start_file_writes(
    pool: Executor,
    outputs: ScanOutputs,
    volume: CTVolume,
    labels: np.ndarray,
    *,
    probability: np.ndarray | None = None,
    overwrite: bool = False,
) -> dict[str, Future[float]]:
    """Submit every planned output except the report to ``pool``; each future gives the seconds it took.

    The label map, probability map, overview and DICOM SEG read the same arrays and write different files, so
    they run side by side (compression and PNG encoding release the GIL); the caller can compute the report
    meanwhile and writes it once every future has succeeded (:func:`write_outputs` does all of this).

    Args:
        pool: Where to run the writes (threads: the arrays are shared, not copied).
        outputs: The planned paths (:func:`plan_outputs`); kinds whose path is None are skipped.
        volume: The scan (geometry, HU for the overview, source files for the DICOM SEG).
        labels: Final canonical ``(Z, Y, X)`` uint8 label map.
        probability: The opacity probability (float16 or uint8), written when given and planned.
        overwrite: Replace existing files.

    Returns:
        Output kind -> future of its seconds.
    """
    from covidseg.io.save import save_mask

    tasks: dict[str, Callable[[], object]] = {
        "labels": lambda: save_mask(labels, volume, outputs.labels, overwrite=overwrite),
    }
    if outputs.probability is not None and probability is not None:
        prob_path = outputs.probability
        tasks["probability"] = lambda: write_probability_map(probability, volume, prob_path, overwrite=overwrite)
    if outputs.overview is not None:
        from covidseg.infer.overview import save_overview

        overview_path = outputs.overview
        tasks["overview"] = lambda: save_overview(
            volume.hu, labels, volume.spacing, overview_path, title=outputs.name, overwrite=overwrite
        )
    if outputs.dicom_seg is not None:
        from covidseg.infer.dicomseg import write_dicom_seg

        seg_path = outputs.dicom_seg
        tasks["dicom_seg"] = lambda: write_dicom_seg(labels, volume, seg_path, overwrite=overwrite)
    return {kind: pool.submit(_timed, task) for kind, task in tasks.items()}


def _timed(task: Callable[[], object]) -> float:
    start = time.perf_counter()
    task()
    return time.perf_counter() - start


def finish_file_writes(futures: Mapping[str, Future[float]]) -> dict[str, float]:
    """Wait for every write of :func:`start_file_writes`; the first failure is raised after all have ended.

    Returns:
        Seconds per output kind.
    """
    wait(list(futures.values()))
    return {kind: future.result() for kind, future in futures.items()}


def write_outputs(
    outputs: ScanOutputs,
    volume: CTVolume,
    labels: np.ndarray,
    report: Mapping[str, Any],
    metadata: Mapping[str, Any],
    *,
    probability: np.ndarray | None = None,
    overwrite: bool = False,
) -> dict[str, float]:
    """Write every planned output of one scan, side by side; the report last, so a report means the scan is complete.

    Args:
        outputs: The planned paths (:func:`plan_outputs`); kinds whose path is None are skipped.
        volume: The scan (geometry, HU for the overview, source files for the DICOM SEG).
        labels: Final canonical ``(Z, Y, X)`` uint8 label map.
        report: The scan's report (:func:`covidseg.infer.report.scan_report`, extended by the caller).
        metadata: Provenance stored under ``metadata`` in the report JSON.
        probability: The opacity probability (float16 or uint8). It is written when given and
            ``outputs.probability`` is set; :func:`~covidseg.infer.pipeline.predict_scan` writes it right after
            prediction instead (:func:`write_probability_map`), to free its memory before post-processing.
        overwrite: Replace existing files.

    Returns:
        Seconds spent per output kind (the files are written at the same time; their seconds overlap).

    Examples:
        >>> import tempfile, json
        >>> from covidseg.io import canonical_affine
        >>> from covidseg.infer.report import scan_report
        >>> vol = CTVolume.from_canonical(np.full((4, 32, 32), -1000, np.int16), canonical_affine())
        >>> lab = np.zeros(vol.shape, np.uint8)
        >>> plan = plan_outputs(Path("x.nii.gz"), Path(tempfile.mkdtemp()), OutputOptions(overview=False))
        >>> _ = write_outputs(plan, vol, lab, scan_report(lab, vol.spacing), {"model": "none"})
        >>> json.loads(plan.report.read_text())["lungs_in_view"], plan.labels.is_file()
        (False, True)
    """
    with ThreadPoolExecutor(max_workers=OUTPUT_WRITERS) as pool:
        futures = start_file_writes(pool, outputs, volume, labels, probability=probability, overwrite=overwrite)
        seconds = finish_file_writes(futures)
    seconds["report"] = write_report_file(outputs, report, metadata, overwrite=overwrite)
    return seconds


def write_report_file(
    outputs: ScanOutputs, report: Mapping[str, Any], metadata: Mapping[str, Any], *, overwrite: bool = False
) -> float:
    """Write the report JSON (with the names of the scan's output files); returns the seconds it took."""
    from covidseg.infer.report import write_report_json

    start = time.perf_counter()
    files = {kind: path.name for kind, path in outputs.paths().items()}
    write_report_json({**report, "outputs": files}, outputs.report, metadata=metadata, overwrite=overwrite)
    return time.perf_counter() - start
