"""Inference: from a CT scan to a lung / opacity label map, a clinical report, pictures and DICOM SEG.

The pieces, in the order a scan meets them:

* :class:`InferenceSpec` (``spec``): the one, serialisable inference definition (preprocessing, classes,
  precision, fast path, post-processing) that ``covidseg predict`` executes and the MONAI bundle is built from;
* :class:`Segmenter` (``segmenter``): loads a checkpoint once and predicts many volumes, streaming slices;
  :func:`slices_to_run` (``fastpath``) decides from HU which slices need the network;
* ``postprocess.postprocess`` (configured by :class:`PostprocessConfig`): lung mask from lung + opacity,
  components, holes, morphology in mm (not re-exported: the name is its submodule's);
  :func:`classical_lung_mask` (``lungmask``) when the model has no lung class;
* :func:`scan_report` (``report``), :func:`save_overview` (``overview``), :func:`write_dicom_seg`
  (``dicomseg``) and the per-scan output plan (``outputs``);
* :func:`predict_scan` (``pipeline``): one scan end to end; :func:`run_batch` and :func:`expand_inputs`
  (``batch``): many scans, shards, summary CSV.

Names are imported lazily (on first access), so ``import covidseg.infer`` does not load torch, highdicom or
matplotlib until they are needed.

Examples:
    >>> from covidseg.infer import InferenceSpec
    >>> InferenceSpec().to_dict()["class_names"]
    ['background', 'lung', 'opacity']
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from covidseg.infer.batch import (
        BatchResult,
        expand_inputs,
        parse_shard,
        resolve_model_path,
        run_batch,
        select_shard,
    )
    from covidseg.infer.dicomseg import read_dicom_seg_labels, write_dicom_seg
    from covidseg.infer.fastpath import lung_slice_fractions, slices_to_run
    from covidseg.infer.lungmask import classical_lung_mask
    from covidseg.infer.outputs import OutputOptions, ScanOutputs, plan_outputs, write_outputs
    from covidseg.infer.overview import save_overview
    from covidseg.infer.pipeline import PredictOptions, ScanResult, predict_scan
    from covidseg.infer.postprocess import (
        LABEL_BACKGROUND,
        LABEL_LUNG,
        LABEL_OPACITY,
        OUTPUT_CLASSES,
        PostprocessConfig,
        probabilities_to_labels,
    )
    from covidseg.infer.report import scan_report, write_report_json, write_summary_csv
    from covidseg.infer.segmenter import ModelInfo, Prediction, Segmenter
    from covidseg.infer.spec import InferenceSpec, SliceSkipConfig

_EXPORTS: dict[str, str] = {
    "BatchResult": "batch",
    "expand_inputs": "batch",
    "parse_shard": "batch",
    "resolve_model_path": "batch",
    "run_batch": "batch",
    "select_shard": "batch",
    "read_dicom_seg_labels": "dicomseg",
    "write_dicom_seg": "dicomseg",
    "lung_slice_fractions": "fastpath",
    "slices_to_run": "fastpath",
    "classical_lung_mask": "lungmask",
    "OutputOptions": "outputs",
    "ScanOutputs": "outputs",
    "plan_outputs": "outputs",
    "write_outputs": "outputs",
    "save_overview": "overview",
    "PredictOptions": "pipeline",
    "ScanResult": "pipeline",
    "predict_scan": "pipeline",
    "LABEL_BACKGROUND": "postprocess",
    "LABEL_LUNG": "postprocess",
    "LABEL_OPACITY": "postprocess",
    "OUTPUT_CLASSES": "postprocess",
    "PostprocessConfig": "postprocess",
    "probabilities_to_labels": "postprocess",
    "scan_report": "report",
    "write_report_json": "report",
    "write_summary_csv": "report",
    "ModelInfo": "segmenter",
    "Prediction": "segmenter",
    "Segmenter": "segmenter",
    "InferenceSpec": "spec",
    "SliceSkipConfig": "spec",
}

__all__ = [
    "LABEL_BACKGROUND",
    "LABEL_LUNG",
    "LABEL_OPACITY",
    "OUTPUT_CLASSES",
    "BatchResult",
    "InferenceSpec",
    "ModelInfo",
    "OutputOptions",
    "PostprocessConfig",
    "PredictOptions",
    "Prediction",
    "ScanOutputs",
    "ScanResult",
    "Segmenter",
    "SliceSkipConfig",
    "classical_lung_mask",
    "expand_inputs",
    "lung_slice_fractions",
    "parse_shard",
    "plan_outputs",
    "predict_scan",
    "probabilities_to_labels",
    "read_dicom_seg_labels",
    "resolve_model_path",
    "run_batch",
    "save_overview",
    "scan_report",
    "select_shard",
    "slices_to_run",
    "write_dicom_seg",
    "write_outputs",
    "write_report_json",
    "write_summary_csv",
]


def __getattr__(name: str) -> Any:
    """Import an exported name from its submodule on first access (PEP 562)."""
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'covidseg.infer' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"covidseg.infer.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
