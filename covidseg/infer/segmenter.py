"""The predictor: load a model once, then segment many CT volumes by executing an :class:`InferenceSpec`.

Slices are streamed (:func:`covidseg.data.preprocess.iter_slice_batches`): each batch is windowed, resized to
the network size, run through the network, its softmax probabilities resized back to the native slice size and
reduced to labels (argmax) before the next batch starts. Without a probability map, only a window around each
slice's foreground is resized (:func:`covidseg.infer.resize_back.labels_to_native`: the same labels, a third of
the work on a chest CT). No full-resolution multi-class float volume ever exists; what is kept per scan is the
uint8 label volume and, when asked for, one opacity-probability volume in float16 or uint8.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import hashlib
import os
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from covidseg.data.preprocess import iter_slice_batches, resize_to_native
from covidseg.errors import ConfigError, InputError
from covidseg.infer.fastpath import slices_to_run
from covidseg.infer.postprocess import postprocess
from covidseg.infer.resize_back import WINDOWED_MODES, argmax_classes, labels_to_native
from covidseg.infer.spec import InferenceSpec
from covidseg.io.volume import CTVolume
from covidseg.model.fusion import fold_batchnorm as fold_conv_batchnorm

__all__ = [
    "PROBABILITY_DTYPES",
    "ModelInfo",
    "Prediction",
    "Segmenter",
    "default_batch_size",
    "release_freed_memory",
    "resolve_device",
]

PROBABILITY_DTYPES = ("none", "float16", "uint8")
"""How the opacity probability is kept: not at all, as float16, or scaled to 0..255 as uint8."""
UINT8_SCALE = 255.0
"""A probability p is stored as ``round(p * 255)`` in uint8 probability maps."""
DEFAULT_BATCH_SIZES: dict[tuple[str, str], int] = {("cpu", "fp32"): 2, ("cpu", "bf16"): 4}
"""Axial slices per network call by (device type, precision) when none is given. Measured on the 2-core
development CPU (AVX-512 + AMX, 384 x 384, channels-last, 300-slice scan, ``pipelines/bench_predict.py
--batch-size N``): bf16 network 137 ms per slice at batch 1, 134 at 2, 97-109 at 4, 111 at 8 (AMX tiles fill
better); fp32 265 at 1, 248 at 2, 262 at 4. Peak memory stays near 1.1 GB at batch 4."""
CUDA_DEFAULT_BATCH_SIZE = 8
"""Slices per call on CUDA when none is given (not measured here: no GPU on the development machine)."""
_HASH_CHUNK = 1 << 20

ProgressFn = Callable[[int, int], None]
"""Called as ``progress(slices_done, slices_total)`` after each batch."""


@dataclass(frozen=True)
class ModelInfo:
    """Where the weights came from (recorded in reports).

    Attributes:
        path: The checkpoint file, or None for a model built in memory.
        sha256: Hex SHA-256 of the checkpoint file.
        description: Free text (e.g. the architecture name).
    """

    path: Path | None = None
    sha256: str | None = None
    description: str = ""

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form."""
        return {"path": str(self.path) if self.path else None, "sha256": self.sha256, "description": self.description}


@dataclass
class Prediction:
    """Network output of one volume on its canonical native grid, before post-processing.

    Attributes:
        labels: uint8 ``(Z, Y, X)`` argmax class indices of ``class_names``.
        class_names: The model's classes.
        opacity_probability: ``(Z, Y, X)`` opacity probability (float16, or uint8 = ``round(p * 255)``), or None.
        skipped_slices: Axial slices the fast path did not send to the network (their labels are background).
        slices_run: bool ``(Z,)``, True where the network ran.
        timings: Seconds per stage: ``skip_decision``, ``preprocess``, ``network``, ``resize_back``,
            ``argmax`` (0 when only foreground windows were resized: ``resize_back`` holds their argmax),
            ``total``.
    """

    labels: np.ndarray
    class_names: tuple[str, ...]
    opacity_probability: np.ndarray | None
    skipped_slices: int
    slices_run: np.ndarray
    timings: dict[str, float] = field(default_factory=dict)


def default_batch_size(device: torch.device, precision: str) -> int:
    """Slices per network call when none is given: :data:`DEFAULT_BATCH_SIZES`, or CUDA's default.

    Examples:
        >>> default_batch_size(torch.device("cpu"), "bf16"), default_batch_size(torch.device("cpu"), "fp32")
        (4, 2)
    """
    if device.type == "cuda":
        return CUDA_DEFAULT_BATCH_SIZE
    return DEFAULT_BATCH_SIZES.get((device.type, precision), 1)


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU; any other value is checked.

    Raises:
        InputError: An unknown device string, or CUDA asked for where there is none.

    Examples:
        >>> resolve_device("cpu")
        device(type='cpu')
    """
    if isinstance(device, str) and device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise InputError(f"unknown device {device!r}; use auto, cpu, cuda or cuda:N") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"device {device!r} asked for, but CUDA is not available here; use --device cpu or auto")
    if dev.type not in ("cpu", "cuda"):
        raise InputError(f"device {device!r} is not supported; use auto, cpu, cuda or cuda:N")
    return dev


def file_sha256(path: str | os.PathLike[str]) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks.

    Examples:
        >>> import tempfile, pathlib
        >>> f = pathlib.Path(tempfile.mkdtemp()) / "x"
        >>> _ = f.write_bytes(b"abc")
        >>> file_sha256(f)[:12]
        'ba7816bf8f01'
    """
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(_HASH_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def release_freed_memory() -> bool:
    """Return freed heap memory to the operating system (glibc ``malloc_trim``); a no-op elsewhere.

    The network's activations are freed after every batch, but glibc keeps most of the freed heap mapped, so
    the process would enter post-processing (whose temporaries peak at about 1 GB on a 512 x 512 x 300 scan)
    still holding a few hundred MB it no longer uses. Returns whether memory could be trimmed.

    Examples:
        >>> isinstance(release_freed_memory(), bool)
        True
    """
    if not sys.platform.startswith("linux"):
        return False
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        return bool(ctypes.CDLL(name).malloc_trim(0))
    except (OSError, AttributeError):  # not glibc (e.g. musl has no malloc_trim)
        return False


def _runs(mask: np.ndarray) -> Iterator[tuple[int, int]]:
    """``(start, stop)`` of each run of True in a 1-D bool array."""
    edges = np.flatnonzero(np.diff(np.concatenate([[0], mask.astype(np.int8), [0]])))
    for start, stop in zip(edges[::2], edges[1::2], strict=True):
        yield int(start), int(stop)


class Segmenter:
    """A model and the :class:`InferenceSpec` it is run with; load once, :meth:`predict` many volumes.

    Args:
        model: Any module mapping ``(N, spec.in_channels, H, W)`` in [0, 1] to class logits
            ``(N, len(spec.class_names), H, W)`` (a :class:`~covidseg.model.DenseUNet`, or a test fixture).
        spec: The inference recipe.
        device: ``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:N"``.
        channels_last: Run the network in channels-last memory format; None (default): on CPU, where it is faster
            in fp32 and bf16 alike (oneDNN's convolutions run natively in it), not on CUDA.
        batch_size: Slices per network call (does not change results); None: :func:`default_batch_size`.
        info: Provenance of the weights.
        fold_batchnorm: Run a copy of the model with each BatchNorm that follows a conv folded into the conv
            (:func:`covidseg.model.fusion.fold_batchnorm`): the same outputs to float rounding, a few percent
            faster. The caller's ``model`` is left as it is.

    Examples:
        >>> from covidseg.io import CTVolume, canonical_affine
        >>> from covidseg.data.preprocess import PreprocessConfig
        >>> class Dark(torch.nn.Module):  # "opacity" where the windowed intensity is above 0.5
        ...     def forward(self, x):
        ...         return torch.cat([0.5 - x, x - 0.5], dim=1) * 20
        >>> pre = PreprocessConfig(slice_size=(32, 32))
        >>> spec = InferenceSpec(class_names=("background", "opacity"), preprocess=pre)
        >>> hu = np.full((2, 40, 40), -1000, np.int16); hu[:, 10:30, 10:30] = -100
        >>> pred = Segmenter(Dark(), spec).predict(CTVolume.from_canonical(hu, canonical_affine()))
        >>> int((pred.labels == 1).sum()) == 2 * 20 * 20
        True
    """

    def __init__(
        self,
        model: nn.Module,
        spec: InferenceSpec,
        *,
        device: str | torch.device = "auto",
        channels_last: bool | None = None,
        batch_size: int | None = None,
        info: ModelInfo | None = None,
        fold_batchnorm: bool = True,
    ) -> None:
        self.device = resolve_device(device)
        if batch_size is None:
            batch_size = default_batch_size(self.device, spec.precision)
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}")
        if spec.precision == "fp16" and self.device.type != "cuda":
            raise ConfigError("precision fp16 needs a CUDA device; on CPU use bf16 (or fp32)")
        self.spec = spec
        self.batch_size = batch_size
        self.channels_last = self.device.type == "cpu" if channels_last is None else bool(channels_last)
        self.info = info or ModelInfo(description=type(model).__name__)
        memory_format = torch.channels_last if self.channels_last else torch.contiguous_format
        if fold_batchnorm:
            model = fold_conv_batchnorm(model)
        self.model = model.to(device=self.device, memory_format=memory_format).eval()  # type: ignore[call-overload]

    @classmethod
    def from_checkpoint(
        cls,
        path: str | os.PathLike[str],
        *,
        device: str | torch.device = "auto",
        precision: str | None = None,
        channels_last: bool | None = None,
        batch_size: int | None = None,
        skip_empty_slices: bool | None = None,
        fold_batchnorm: bool = True,
    ) -> Segmenter:
        """Load a covidseg checkpoint (``weights_only``), check it, and build its spec with the overrides.

        Args:
            path: A checkpoint written by ``covidseg train`` (``best.pt``) or ``save_checkpoint``.
            device: See :class:`Segmenter`.
            precision: ``"fp32"``, ``"bf16"``, ``"fp16"`` (CUDA); None keeps the checkpoint's (fp32).
            channels_last: See :class:`Segmenter`.
            batch_size: See :class:`Segmenter`.
            skip_empty_slices: Turn the fast path on/off; None keeps the checkpoint's (off).
            fold_batchnorm: See :class:`Segmenter`.

        Raises:
            InputError: Missing, non-checkpoint, tampered or unreadable file; another architecture (weights that
                do not fit the model config); a class set other than background/[lung]/opacity.
            ConfigError: A bad precision or batch size.

        Examples:
            >>> import tempfile, pathlib
            >>> from covidseg.model import DenseUNet, UNetConfig, save_checkpoint
            >>> cfg = UNetConfig(class_names=("background", "lung", "opacity"), decoder_channels=(16, 16, 8, 8, 8))
            >>> f = save_checkpoint(pathlib.Path(tempfile.mkdtemp()) / "m.pt", DenseUNet(cfg), model_config=cfg)
            >>> seg = Segmenter.from_checkpoint(f, device="cpu", precision="bf16")
            >>> seg.spec.precision, seg.spec.class_names, len(seg.info.sha256)
            ('bf16', ('background', 'lung', 'opacity'), 64)
        """
        from covidseg.model.checkpoint import build_model_from_checkpoint, load_checkpoint

        checkpoint = load_checkpoint(path)
        spec = InferenceSpec.from_checkpoint(checkpoint, str(path))
        spec = spec.with_overrides(precision=precision, skip_empty_slices=skip_empty_slices)
        model: nn.Module = build_model_from_checkpoint(checkpoint)
        if fold_batchnorm:  # built here: folded in place, without the copy the constructor would make
            model = fold_conv_batchnorm(model, inplace=True)
        del checkpoint
        release_freed_memory()  # the loaded state dict was copied into the model
        info = ModelInfo(path=Path(path).resolve(), sha256=file_sha256(path), description=type(model).__name__)
        return cls(
            model,
            spec,
            device=device,
            channels_last=channels_last,
            batch_size=batch_size,
            info=info,
            fold_batchnorm=False,
        )

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.spec.precision == "fp32":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.spec.precision == "bf16" else torch.float16
        return torch.autocast(device_type=self.device.type, dtype=dtype)

    def _no_grad(self) -> contextlib.AbstractContextManager[Any]:
        # Autocast keeps its low-precision copies of the weights for the whole context only outside inference
        # mode (in it, every conv weight is cast again on every call: about 5 % of a bf16 forward on CPU).
        return torch.inference_mode() if self.spec.precision == "fp32" else torch.no_grad()

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def predict(self, volume: CTVolume, *, probability: str = "none", progress: ProgressFn | None = None) -> Prediction:
        """Run the network over every axial slice (or the lung slices, on the fast path) of a volume.

        Args:
            volume: The scan, canonical ``(Z, Y, X)`` HU.
            probability: Also keep the opacity probability: ``"none"``, ``"float16"`` or ``"uint8"``.
            progress: Called after each batch with ``(slices_done, slices_to_run)``.

        Returns:
            The argmax labels on the native grid (model class indices) and what else was asked for.

        Raises:
            ConfigError: An unknown ``probability`` kind.
            InputError: The model's output does not have one channel per class of the spec.
        """
        if probability not in PROBABILITY_DTYPES:
            raise ConfigError(f"probability must be one of {list(PROBABILITY_DTYPES)}, got {probability!r}")
        spec = self.spec
        start = time.perf_counter()
        timings = dict.fromkeys(("skip_decision", "preprocess", "network", "resize_back", "argmax"), 0.0)
        hu = volume.hu
        n_slices = volume.shape[0]
        run = slices_to_run(hu, volume.spacing, spec.skip_empty_slices)
        timings["skip_decision"] = time.perf_counter() - start
        labels = np.zeros(volume.shape, dtype=np.uint8)
        prob: np.ndarray | None = None
        if probability != "none":
            prob = np.zeros(volume.shape, dtype=np.float16 if probability == "float16" else np.uint8)
        total, done = int(run.sum()), 0
        memory_format = torch.channels_last if self.channels_last else torch.contiguous_format
        with self._no_grad(), self._autocast():
            for first, stop in _runs(run):
                batches = iter_slice_batches(hu[first:stop], spec.preprocess, self.batch_size)
                while True:
                    t0 = time.perf_counter()
                    item = next(batches, None)
                    if item is None:
                        break
                    rows, batch = item
                    x = batch.to(self.device)
                    if spec.in_channels > 1:
                        x = x.expand(-1, spec.in_channels, -1, -1)
                    x = x.contiguous(memory_format=memory_format)
                    t1 = time.perf_counter()
                    logits = self.model(x)
                    self._sync()
                    t2 = time.perf_counter()
                    self._check_output(logits, x)
                    out_rows = slice(first + rows.start, first + rows.stop)
                    if prob is None and spec.resize_back_mode in WINDOWED_MODES:
                        # Only around each slice's foreground; the same labels as the full resize.
                        labels_to_native(logits, labels[out_rows], spec.resize_back_mode, softmax=True)
                        t3 = t4 = time.perf_counter()
                    else:
                        probs = torch.softmax(logits.float(), dim=1)
                        t3, t4 = self._full_to_native(probs, labels, prob, out_rows)
                    timings["preprocess"] += t1 - t0
                    timings["network"] += t2 - t1
                    timings["resize_back"] += t3 - t2
                    timings["argmax"] += t4 - t3
                    done += rows.stop - rows.start
                    if progress is not None:
                        progress(done, total)
        release_freed_memory()
        timings["total"] = time.perf_counter() - start
        return Prediction(
            labels=labels,
            class_names=spec.class_names,
            opacity_probability=prob,
            skipped_slices=int(n_slices - total),
            slices_run=run,
            timings=timings,
        )

    def _full_to_native(
        self, probs: torch.Tensor, labels: np.ndarray, prob: np.ndarray | None, out_rows: slice
    ) -> tuple[float, float]:
        """Resize every class to the native grid, write labels (and the opacity probability); stage end times."""
        spec = self.spec
        # Channels-last: the bilinear resize interpolates all classes of a pixel together, about twice as fast on
        # CPU as plane by plane, and gives the same values.
        probs = probs.contiguous(memory_format=torch.channels_last)
        probs = resize_to_native(probs, (labels.shape[1], labels.shape[2]), spec.resize_back_mode)
        self._sync()
        resized = time.perf_counter()
        labels[out_rows] = argmax_classes(probs).cpu().numpy()
        if prob is not None:
            opacity = probs[:, spec.opacity_index]
            if prob.dtype == np.uint8:
                opacity = opacity.mul(UINT8_SCALE).round_().to(torch.uint8)
            else:
                opacity = opacity.to(torch.float16)
            prob[out_rows] = opacity.cpu().numpy()
        return resized, time.perf_counter()

    def _check_output(self, logits: torch.Tensor, x: torch.Tensor) -> None:
        n_classes = len(self.spec.class_names)
        if logits.ndim != 4 or logits.shape[1] != n_classes or logits.shape[2:] != x.shape[2:]:
            raise InputError(
                f"the model returned shape {list(logits.shape)} for input {list(x.shape)}; expected "
                f"({x.shape[0]}, {n_classes}, {x.shape[2]}, {x.shape[3]}) logits for classes "
                f"{list(self.spec.class_names)}"
            )

    def segment(self, volume: CTVolume, prediction: Prediction | None = None) -> np.ndarray:
        """The final label map (0 background, 1 lung, 2 opacity) of a volume: predict, then post-process.

        Args:
            volume: The scan.
            prediction: A :meth:`predict` result of this volume to reuse (else the network runs).

        Examples:
            >>> from covidseg.io import CTVolume, canonical_affine
            >>> from covidseg.data.preprocess import PreprocessConfig
            >>> class Zero(torch.nn.Module):
            ...     def forward(self, x):
            ...         return torch.zeros(x.shape[0], 3, *x.shape[2:])
            >>> seg = Segmenter(Zero(), InferenceSpec(preprocess=PreprocessConfig(slice_size=(32, 32))))
            >>> vol = CTVolume.from_canonical(np.zeros((2, 32, 32)), canonical_affine())
            >>> int(seg.segment(vol).max())
            0
        """
        pred = prediction if prediction is not None else self.predict(volume)
        return postprocess(
            pred.labels, volume.spacing, self.spec.postprocess, class_names=self.spec.class_names, hu=volume.hu
        )
