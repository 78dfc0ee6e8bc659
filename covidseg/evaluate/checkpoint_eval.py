"""Run a checkpoint on a split of a dataset and evaluate it as the paper does (3-D per case on the network grid).

The dataset, preprocessing and split come from a run config: a run folder written by ``covidseg train`` (its
``config.yaml`` and the ``splits.json`` it trained with), a run config YAML (a ``splits.json`` beside it is used;
otherwise the split is made again from ``data.splits`` or the config's fractions and seed, exactly as training
makes it), or a :class:`~covidseg.config.RunConfig`. Each case of the split is preprocessed through the slice cache
(the one preprocessing definition), every slice is predicted by
:func:`covidseg.train.validation.predict_stack` (argmax, no post-processing), and the stacked class map is scored
against the cached labels on the same grid. Volumes use the cached grid's spacing; 2-D slice cases report pixels.

This is the evaluation of model selection and of the paper's tables. To evaluate what ``covidseg predict`` writes
(post-processed, on the native grid), predict the scans and use :func:`covidseg.evaluate.files.evaluate_paths`.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from covidseg.config import RunConfig, load_config
from covidseg.data.cache import SliceCache
from covidseg.data.cases import CaseRecord
from covidseg.data.datasets import CaseStackDataset
from covidseg.data.splits import SUBSETS, Splits, load_splits
from covidseg.errors import InputError
from covidseg.evaluate.labels import role_confusion, scheme_from_class_names
from covidseg.evaluate.scores import UNIT_ML, UNIT_PIXELS, CaseEval
from covidseg.infer.masks import voxel_volume_ml
from covidseg.model import build_model_from_checkpoint, load_checkpoint
from covidseg.train import prepare as P
from covidseg.train.build import resolve_amp
from covidseg.train.metrics import confusion_matrix
from covidseg.train.validation import DEFAULT_VAL_BATCH, predict_stack

__all__ = ["RunSetup", "evaluate_checkpoint", "resolve_run_setup"]

CONFIG_NAME = "config.yaml"
"""Resolved config in a run folder (as ``covidseg train`` writes it)."""
SPLITS_NAME = "splits.json"
"""Case split in a run folder."""
Progress = Callable[[int, int, str], None]


@dataclass(frozen=True)
class RunSetup:
    """The dataset side of an evaluation: the config and, when known, the run's splits file.

    Attributes:
        config: The run config (dataset, preprocessing, classes).
        splits_file: The ``splits.json`` to use, or None to make the split from the config.
    """

    config: RunConfig
    splits_file: Path | None


def resolve_run_setup(config: RunConfig | str | os.PathLike[str]) -> RunSetup:
    """Read a run folder, a run config YAML (with ``splits.json`` beside it when present) or take a RunConfig.

    Raises:
        InputError: A path that is neither a run folder nor a YAML file.
        ConfigError: An invalid config.

    Examples:
        >>> from covidseg.config import load_config
        >>> resolve_run_setup(load_config(overrides=["data.layout=phantom"])).splits_file is None
        True
    """
    if isinstance(config, RunConfig):
        return RunSetup(config, None)
    path = Path(config)
    if path.is_dir():
        yaml_file = path / CONFIG_NAME
        if not yaml_file.is_file():
            raise InputError(f"{path} is not a covidseg run folder (no {CONFIG_NAME}); pass a run folder or a YAML")
    elif path.is_file():
        yaml_file = path
    else:
        raise InputError(f"{path}: no such run folder or config file; check the path")
    splits = yaml_file.parent / SPLITS_NAME
    return RunSetup(load_config([yaml_file]), splits if splits.is_file() else None)


def _split_cases(setup: RunSetup, cases: list[CaseRecord], split: str) -> tuple[str, ...]:
    if split not in SUBSETS:
        raise InputError(f"unknown split {split!r}; expected one of {list(SUBSETS)}")
    splits: Splits
    if setup.splits_file is not None:
        splits = load_splits(setup.splits_file, cases)
    else:
        splits = P.make_splits(setup.config, cases)
    ids = splits.subset(split)
    if not ids:
        where = setup.splits_file or "the config's split"
        raise InputError(
            f"{where} has no {split} cases; train with data.test_fraction > 0 for a test split, or use --split val"
        )
    return ids


def evaluate_checkpoint(
    checkpoint: str | os.PathLike[str],
    config: RunConfig | str | os.PathLike[str],
    split: str = "test",
    *,
    device: str = "auto",
    precision: str = "fp32",
    batch_size: int = DEFAULT_VAL_BATCH,
    cache_dir: str | os.PathLike[str] | None = None,
    progress: Progress | None = None,
) -> list[CaseEval]:
    """Predict every case of a dataset split with a checkpoint and evaluate it per case (3-D, network grid).

    Args:
        checkpoint: A covidseg checkpoint (``best.pt`` of a run).
        config: A run folder (``config.yaml`` + ``splits.json``), a run config YAML, or a RunConfig.
        split: ``"test"``, ``"val"`` or ``"train"``.
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        precision: ``fp32``, ``bf16`` or ``fp16`` (CUDA), as ``train.precision``.
        batch_size: Slices per network call.
        cache_dir: Slice cache folder (default: the config's ``data.cache_dir``, else ``<output.root>/cache``).
        progress: Called as ``progress(done, total, case_id)`` after each case.

    Returns:
        One :class:`CaseEval` per case of the split, in the split's (sorted) order.

    Raises:
        InputError: Unreadable checkpoint, a checkpoint whose classes differ from the dataset's, a missing or empty
            split, bad dataset files.
        ConfigError: An invalid config.

    Examples:
        >>> import tempfile, pathlib
        >>> from covidseg.model import DenseUNet, UNetConfig, save_checkpoint
        >>> tmp = pathlib.Path(tempfile.mkdtemp())
        >>> unet = UNetConfig(decoder_channels=(8, 8, 8, 8, 8))
        >>> ckpt = save_checkpoint(tmp / "best.pt", DenseUNet(unet), model_config=unet)
        >>> cfg = load_config(overrides=["data.options={n_cases: 3, shape: [2, 64, 64]}", "data.test_fraction=0"])
        >>> evaluate_checkpoint(ckpt, cfg, "test", device="cpu")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        covidseg.errors.InputError: the config's split has no test cases; train with data.test_fraction > 0 ...
    """
    from covidseg.infer.segmenter import resolve_device

    setup = resolve_run_setup(config)
    cfg = setup.config
    class_names = P.check_classes(cfg)
    scheme = scheme_from_class_names(class_names)
    if split not in SUBSETS:
        raise InputError(f"unknown split {split!r}; expected one of {list(SUBSETS)}")
    dev = resolve_device(device)
    ckpt = load_checkpoint(checkpoint)
    model_classes = tuple(ckpt["model_config"].get("class_names", ()))
    if model_classes != tuple(class_names):
        raise InputError(
            f"{checkpoint} predicts classes {list(model_classes)} but the dataset labels {list(class_names)}; "
            "evaluate it on a dataset with the classes it was trained for"
        )
    cases = P.prepare_cases(cfg)
    ids = _split_cases(setup, cases, split)
    by_id = {c.case_id: c for c in cases}
    amp = resolve_amp(precision, dev)
    model = build_model_from_checkpoint(ckpt).to(dev).eval()
    cache = SliceCache(cache_dir if cache_dir is not None else P.default_cache_root(cfg))
    preprocess = cfg.preprocess.to_preprocess_config()
    results: list[CaseEval] = []
    for done, case_id in enumerate(ids, start=1):
        record = by_id[case_id]
        stack = CaseStackDataset([cache.get_or_build(record, preprocess)])[0]
        labels = stack.labels
        if labels is None:
            raise InputError(f"case {case_id} has no labels; evaluation needs labelled cases")
        prediction = predict_stack(model, stack, device=dev, amp=amp, batch_size=batch_size)
        matrix = confusion_matrix(prediction, labels, len(class_names))
        joint = {(int(r), int(p)): int(matrix[r, p]) for r, p in zip(*matrix.nonzero(), strict=True)}
        two_d = record.is_2d
        results.append(
            CaseEval(
                case_id=case_id,
                confusion=role_confusion(joint, scheme, scheme),
                has_lung=scheme.has_lung,
                n_slices=stack.n_slices,
                voxel_volume=1.0 if two_d else voxel_volume_ml(stack.spacing),
                volume_unit=UNIT_PIXELS if two_d else UNIT_ML,
                spacing=None if two_d else stack.spacing,
                notes=("scored on the network grid (cached slices), argmax without post-processing",),
            )
        )
        if progress is not None:
            progress(done, len(ids), case_id)
        del prediction, labels
    if dev.type == "cuda":
        torch.cuda.empty_cache()
    return results
