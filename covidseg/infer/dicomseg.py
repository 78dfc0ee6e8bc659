"""DICOM SEG output for DICOM input: the final label map as a binary Segmentation object (highdicom).

Two segments, both coded so PACS and viewers (3D Slicer, OHIF) name them without guessing:

===  ========  ======================================  ============================
#    label     SegmentedPropertyCategory               SegmentedPropertyType
===  ========  ======================================  ============================
1    Lung      SCT 91723000 Anatomical Structure      SCT 39607008 Lung
2    Opacity   SCT 49755003 Morphologically Abnormal  DCM 112001 Opacity
                Structure
===  ========  ======================================  ============================

Segment 1 is the whole lung field (labels 1 and 2 of the label map: opacity lies inside the lung), segment 2
the opacity (label 2); so ``label = lung + opacity`` reconstructs the label map. Each frame references the
source CT instance it was derived from (same position, orientation and pixel grid), and the SEG shares the
source's study, patient and frame of reference.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
from nibabel.orientations import apply_orientation
from pydicom.sr.codedict import codes

from covidseg import __version__
from covidseg.errors import InputError
from covidseg.io.atomic import atomic_path
from covidseg.io.volume import CTVolume, SourceInfo

__all__ = ["SEGMENTS", "read_dicom_seg_labels", "write_dicom_seg"]

SEG_SERIES_NUMBER = 901
"""SeriesNumber of the SEG series (high, so viewers list it after the source series)."""
SEGMENTS: tuple[tuple[str, str], ...] = (("Lung", "lung field incl. opacity"), ("Opacity", "opacity"))
"""(SegmentLabel, what it covers) of segments 1 and 2."""
LUNG_RGB = (51, 195, 255)
"""Recommended display colour of the lung segment (the overview's lung outline colour)."""
OPACITY_RGB = (255, 115, 0)
"""Recommended display colour of the opacity segment (the overview's opacity colour)."""


def _segment_descriptions() -> list[hd.seg.SegmentDescription]:
    algorithm = hd.AlgorithmIdentificationSequence(
        name="covidseg", family=codes.cid7162.ArtificialIntelligence, version=__version__
    )
    automatic = hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC
    return [
        hd.seg.SegmentDescription(
            segment_number=1,
            segment_label=SEGMENTS[0][0],
            segmented_property_category=codes.SCT.AnatomicalStructure,
            segmented_property_type=codes.SCT.Lung,
            display_color=hd.color.CIELabColor.from_rgb(*LUNG_RGB),
            algorithm_type=automatic,
            algorithm_identification=algorithm,
        ),
        hd.seg.SegmentDescription(
            segment_number=2,
            segment_label=SEGMENTS[1][0],
            segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
            segmented_property_type=codes.DCM.Opacity,
            anatomic_regions=[codes.SCT.Lung],
            display_color=hd.color.CIELabColor.from_rgb(*OPACITY_RGB),
            algorithm_type=automatic,
            algorithm_identification=algorithm,
        ),
    ]


def _dicom_source(volume: CTVolume) -> SourceInfo:
    source = volume.source
    if source is None or source.format != "dicom" or not source.dicom_files or source.dicom_slice_axis is None:
        raise InputError("a DICOM SEG can only be written for a scan read from a DICOM series")
    return source


def _native_file_order(source: SourceInfo) -> list[Path]:
    """The source files in the order of the native array's first (slice) axis."""
    _, flip = source.to_canonical_ornt[0]
    files = list(source.dicom_files)
    return files if flip > 0 else files[::-1]


def write_dicom_seg(
    labels: np.ndarray,
    volume: CTVolume,
    path: str | os.PathLike[str],
    *,
    series_description: str = "covidseg lung and opacity",
    overwrite: bool = False,
) -> Path:
    """Write a final label map as a binary DICOM SEG referencing the source series of ``volume``.

    Args:
        labels: Canonical ``(Z, Y, X)`` uint8 label map (0 background, 1 lung, 2 opacity) of ``volume``.
        volume: The scan as read from a DICOM series (its source files are read again, headers only).
        path: Destination file (``.dcm``), written atomically.
        series_description: SeriesDescription of the SEG.
        overwrite: Replace an existing file.

    Returns:
        The written path.

    Raises:
        InputError: ``volume`` was not read from DICOM, or its source files can no longer be read.
        OutputExistsError: ``path`` exists and ``overwrite`` is false.

    Examples:
        >>> import tempfile, pathlib
        >>> from covidseg.io import CTVolume, canonical_affine, load_ct, write_dicom_series
        >>> tmp = pathlib.Path(tempfile.mkdtemp())
        >>> hu = np.full((3, 8, 8), -800, np.int16)
        >>> _ = write_dicom_series(CTVolume.from_canonical(hu, canonical_affine((2.0, 1.0, 1.0))), tmp / "ct")
        >>> vol = load_ct(tmp / "ct", assume_hu=True)
        >>> lab = np.zeros(vol.shape, np.uint8); lab[1, 2:6, 2:6] = 1; lab[1, 3:5, 3:5] = 2
        >>> out = write_dicom_seg(lab, vol, tmp / "seg.dcm")
        >>> np.array_equal(read_dicom_seg_labels(out, vol), lab)
        True
    """
    source = _dicom_source(volume)
    lab = np.asarray(labels)
    if lab.shape != volume.shape:
        raise ValueError(f"labels shape {lab.shape} differs from the volume shape {volume.shape}")
    native = volume.to_native(lab)
    files = _native_file_order(source)
    try:
        datasets = [pydicom.dcmread(f, stop_before_pixels=True) for f in files]
    except (OSError, pydicom.errors.InvalidDicomError) as exc:
        raise InputError(f"cannot re-read the source DICOM files of {source.path} ({exc}); keep them in place") from exc
    # Frames follow the source files (native slice axis first); the segment axis last.
    pixels = np.stack([native > 0, native == 2], axis=-1)
    seg = hd.seg.Segmentation(
        source_images=datasets,
        pixel_array=np.ascontiguousarray(pixels),
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=_segment_descriptions(),
        series_instance_uid=hd.UID(),
        series_number=SEG_SERIES_NUMBER,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="covidseg",
        manufacturer_model_name="covidseg lung opacity segmenter",
        software_versions=__version__,
        device_serial_number="none",
        series_description=series_description,
        content_label="COVIDSEG",
        content_description="Lung and lung opacity segmentation",
        omit_empty_frames=bool(pixels.any()),  # an all-empty SEG keeps its frames (it must have some)
    )
    with atomic_path(path, overwrite=overwrite) as tmp:
        seg.save_as(tmp)
    return Path(path)


def read_dicom_seg_labels(
    path: str | os.PathLike[str], volume: CTVolume, segment_numbers: Sequence[int] = (1, 2)
) -> np.ndarray:
    """Read a SEG written by :func:`write_dicom_seg` back into a canonical label map of ``volume``.

    Args:
        path: The SEG file.
        volume: The source scan (read from the series the SEG references).
        segment_numbers: The lung and opacity segment numbers.

    Returns:
        uint8 ``(Z, Y, X)`` labels: lung + opacity (0 background, 1 lung, 2 opacity).
    """
    source = _dicom_source(volume)
    seg = hd.seg.segread(path)
    uids = [str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in _native_file_order(source)]
    pixels = seg.get_pixels_by_source_instance(uids, segment_numbers=list(segment_numbers), dtype=np.uint8)
    native = pixels.sum(axis=-1, dtype=np.uint8)
    return np.ascontiguousarray(apply_orientation(native, source.to_canonical_ornt)).astype(np.uint8)
