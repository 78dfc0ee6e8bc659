"""One inference definition: everything that decides the mask ``covidseg predict`` writes, in one object.

An :class:`InferenceSpec` holds the preprocessing (:class:`~covidseg.data.preprocess.PreprocessConfig`), the
model's class names and input channels, the numerical precision, the optional fast path that skips slices
without lung tissue (:class:`SliceSkipConfig`) and the post-processing
(:class:`~covidseg.infer.postprocess.PostprocessConfig`). ``covidseg predict`` executes it
(:class:`~covidseg.infer.segmenter.Segmenter`); the MONAI bundle exporter translates the same spec into MONAI
components, so the two cannot drift apart. Options that do not change results (slice batch size, device,
``channels_last``) are not part of it.

The numerical path the spec describes, step by step, with the MONAI component that does the same:

1. canonical orientation (``Orientation``; ``covidseg.io.load_ct``);
2. HU window to [0, 1] (``ScaleIntensityRange(a_min, a_max, 0, 1, clip=True)``);
3. each axial slice resized to ``slice_size`` (``Resize(mode="bilinear")``, no anti-aliasing), the channel
   repeated to ``in_channels`` (``RepeatChannel``);
4. network, softmax over classes (``Activations(softmax=True)``), in ``precision``;
5. probabilities resized back to the native slice size (bilinear), argmax (``AsDiscrete(argmax=True)``);
6. post-processing (:func:`covidseg.infer.postprocess.postprocess`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any

import numpy as np

from covidseg.data.preprocess import PreprocessConfig
from covidseg.errors import ConfigError, InputError
from covidseg.infer.postprocess import PostprocessConfig

__all__ = [
    "PRECISIONS",
    "SPEC_VERSION",
    "InferenceSpec",
    "SliceSkipConfig",
    "check_class_names",
]

SPEC_VERSION = 1
"""Version of the serialised :meth:`InferenceSpec.to_dict` layout."""
PRECISIONS = ("fp32", "bf16", "fp16")
"""Network precisions: float32, bfloat16 autocast (CPU and CUDA), float16 autocast (CUDA only)."""
HU_LUNG_LOW = -950.0
"""Lowest HU counted as lung parenchyma by the fast path (below it: air, trachea, bowel gas)."""
HU_LUNG_HIGH = -500.0
"""Highest HU counted as lung parenchyma by the fast path (above it: soft tissue, dense lesions)."""
HU_BODY = -500.0
"""Voxels above this are body tissue; the body is what lies between them along rows and columns."""
_RESIZE_BACK_MODES = ("bilinear", "nearest")
#: Checkpoint keys that may hold preprocessing (``covidseg train`` writes ``preprocessing``).
_PREPROCESS_KEYS = ("preprocessing", "preprocess")
_POSTPROCESS_KEYS = ("postprocessing", "postprocess")
#: Checkpoint key of a complete stored spec (written by tools that fix the recipe with the weights).
SPEC_KEY = "inference_spec"


@dataclass(frozen=True)
class SliceSkipConfig:
    """The fast path: axial slices without lung tissue are not sent to the network (their labels: background).

    A slice holds lung tissue when the voxels in ``lung_hu`` inside the body make up at least
    ``min_lung_fraction`` of the body's area in that slice (the body: voxels between the first and last voxel
    above ``body_hu`` along both the row and the column). Slices within ``margin_mm`` of such a slice are kept
    too, so lung apices and bases thinner than the threshold are not lost.

    Attributes:
        enabled: Use the fast path.
        lung_hu: ``(low, high)`` HU counted as lung parenchyma.
        body_hu: HU above which a voxel is body tissue.
        min_lung_fraction: Fraction of the body area in ``lung_hu`` from which a slice counts as lung.
        margin_mm: Slices within this distance (mm along z) of a lung slice are kept.

    Examples:
        >>> cfg = SliceSkipConfig(enabled=True, margin_mm=5.0)
        >>> SliceSkipConfig.from_dict(cfg.to_dict()) == cfg
        True
    """

    enabled: bool = False
    lung_hu: tuple[float, float] = (HU_LUNG_LOW, HU_LUNG_HIGH)
    body_hu: float = HU_BODY
    min_lung_fraction: float = 0.005
    margin_mm: float = 15.0

    def __post_init__(self) -> None:
        if not isinstance(self.enabled, bool):
            raise ConfigError(f"skip_empty_slices.enabled must be true or false, got {self.enabled!r}")
        low, high = (float(v) for v in self.lung_hu)
        if not np.isfinite([low, high]).all() or low >= high:
            raise ConfigError(f"lung_hu must be two finite HU values with low < high, got {self.lung_hu!r}")
        object.__setattr__(self, "lung_hu", (low, high))
        for name in ("body_hu", "min_lung_fraction", "margin_mm"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not np.isfinite(value):
                raise ConfigError(f"{name} must be a finite number, got {value!r}")
            object.__setattr__(self, name, float(value))
        if not 0.0 <= self.min_lung_fraction < 1.0:
            raise ConfigError(f"min_lung_fraction must be in [0, 1), got {self.min_lung_fraction}")
        if self.margin_mm < 0:
            raise ConfigError(f"margin_mm must be >= 0, got {self.margin_mm}")

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON/YAML-serialisable form."""
        return {
            "enabled": self.enabled,
            "lung_hu": list(self.lung_hu),
            "body_hu": self.body_hu,
            "min_lung_fraction": self.min_lung_fraction,
            "margin_mm": self.margin_mm,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SliceSkipConfig:
        """Build from :meth:`to_dict` output; unknown keys are a :class:`ConfigError`."""
        return cls(**_known_keys(cls, data, "skip_empty_slices"))


def _known_keys(cls: type, data: Mapping[str, Any], what: str) -> dict[str, Any]:
    if not isinstance(data, Mapping):
        raise ConfigError(f"{what} must be a mapping, got {type(data).__name__}")
    known = {f.name for f in fields(cls)}
    unknown = sorted(str(k) for k in set(data) - known)
    if unknown:
        raise ConfigError(f"unknown {what} keys {unknown}; expected some of {sorted(known)}")
    values = dict(data)
    for key, value in values.items():
        if isinstance(value, list):
            values[key] = tuple(value)
    return values


def check_class_names(class_names: tuple[str, ...] | list[str], source: str = "the model") -> tuple[str, ...]:
    """Check that a model's classes can be turned into lung/opacity labels; return them as a tuple.

    ``covidseg predict`` needs a ``background`` and an ``opacity`` class; ``lung`` is optional (without it the
    lung mask comes from Hounsfield units). Any other class set (another task's model) is refused.

    Raises:
        InputError: Missing background/opacity, unknown or duplicate class names.

    Examples:
        >>> check_class_names(["background", "lung", "opacity"])
        ('background', 'lung', 'opacity')
        >>> check_class_names(("background", "liver"), "m.pt")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        covidseg.errors.InputError: m.pt predicts classes ['background', 'liver'], ...
    """
    names = tuple(str(n).lower() for n in class_names)
    allowed = {"background", "lung", "opacity"}
    if (
        len(set(names)) != len(names)
        or not {"background", "opacity"} <= set(names)
        or not set(names) <= allowed
        or len(names) > len(allowed)
    ):
        raise InputError(
            f"{source} predicts classes {list(class_names)}, but covidseg predict needs a lung-opacity model "
            "with classes background, opacity and optionally lung; pass a checkpoint trained by covidseg train"
        )
    return names


@dataclass(frozen=True)
class InferenceSpec:
    """The complete, serialisable recipe from a CT volume to the final label map (see the module docstring).

    Attributes:
        class_names: The network's output classes, index = class (``background``, ``opacity``, optional
            ``lung``).
        preprocess: HU window, slice size and resize mode of the network input.
        postprocess: Steps from argmax labels to the final lung / opacity label map.
        in_channels: Channels the network takes; the windowed slice is repeated to fill them.
        precision: ``"fp32"``, ``"bf16"`` or ``"fp16"`` (CUDA).
        resize_back_mode: Interpolation of the probabilities back to the native slice size.
        skip_empty_slices: The fast path (off by default).

    The three nested configs may also be given as mappings (their ``to_dict()`` form).
        version: Layout version of the serialised form.

    Examples:
        >>> spec = InferenceSpec(class_names=("background", "lung", "opacity"), precision="bf16")
        >>> InferenceSpec.from_dict(spec.to_dict()) == spec
        True
        >>> spec.with_overrides(precision="fp32").precision
        'fp32'
    """

    class_names: tuple[str, ...] = ("background", "lung", "opacity")
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    postprocess: PostprocessConfig = field(default_factory=PostprocessConfig)
    in_channels: int = 1
    precision: str = "fp32"
    resize_back_mode: str = "bilinear"
    skip_empty_slices: SliceSkipConfig = field(default_factory=SliceSkipConfig)
    version: int = SPEC_VERSION

    def __post_init__(self) -> None:
        for name, kind in (
            ("preprocess", PreprocessConfig),
            ("postprocess", PostprocessConfig),
            ("skip_empty_slices", SliceSkipConfig),
        ):
            value = getattr(self, name)
            if isinstance(value, Mapping):
                object.__setattr__(self, name, kind.from_dict(value))
            elif not isinstance(value, kind):
                raise ConfigError(f"{name} must be a {kind.__name__} or a mapping, got {type(value).__name__}")
        try:
            object.__setattr__(self, "class_names", check_class_names(tuple(self.class_names), "the spec"))
        except InputError as exc:
            raise ConfigError(str(exc)) from None
        if isinstance(self.in_channels, bool) or not isinstance(self.in_channels, int) or self.in_channels < 1:
            raise ConfigError(f"in_channels must be a positive integer, got {self.in_channels!r}")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"precision must be one of {list(PRECISIONS)}, got {self.precision!r}")
        if self.resize_back_mode not in _RESIZE_BACK_MODES:
            raise ConfigError(
                f"resize_back_mode must be one of {list(_RESIZE_BACK_MODES)}, got {self.resize_back_mode!r}"
            )
        if self.version != SPEC_VERSION:
            raise ConfigError(f"inference spec version {self.version!r} is not {SPEC_VERSION}; upgrade covidseg")

    @property
    def has_lung_class(self) -> bool:
        """Whether the model predicts lung (else the lung mask comes from HU)."""
        return "lung" in self.class_names

    @property
    def opacity_index(self) -> int:
        """Index of the opacity class in the network output."""
        return self.class_names.index("opacity")

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON/YAML-serialisable form (stored in reports and bundles)."""
        return {
            "version": self.version,
            "class_names": list(self.class_names),
            "in_channels": self.in_channels,
            "preprocess": self.preprocess.to_dict(),
            "precision": self.precision,
            "resize_back_mode": self.resize_back_mode,
            "skip_empty_slices": self.skip_empty_slices.to_dict(),
            "postprocess": self.postprocess.to_dict(),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> InferenceSpec:
        """Build from :meth:`to_dict` output; unknown keys and bad values are a :class:`ConfigError`.

        Examples:
            >>> InferenceSpec.from_dict({"precision": "fp64"})  # doctest: +ELLIPSIS
            Traceback (most recent call last):
            ...
            covidseg.errors.ConfigError: precision must be one of ['fp32', 'bf16', 'fp16'], got 'fp64'
        """
        values = _known_keys(cls, data, "inference spec")
        for key in ("preprocess", "postprocess", "skip_empty_slices"):
            if key in values and isinstance(values[key], tuple):
                raise ConfigError(f"{key} must be a mapping, got a list")
        return cls(**values)

    def with_overrides(
        self,
        *,
        precision: str | None = None,
        skip_empty_slices: bool | None = None,
        postprocess: PostprocessConfig | Mapping[str, Any] | None = None,
    ) -> InferenceSpec:
        """A copy with command-line choices applied (``None`` keeps the spec's value).

        Examples:
            >>> InferenceSpec().with_overrides(skip_empty_slices=True).skip_empty_slices.enabled
            True
        """
        spec = self
        if precision is not None:
            spec = replace(spec, precision=precision)
        if skip_empty_slices is not None:
            spec = replace(spec, skip_empty_slices=replace(spec.skip_empty_slices, enabled=skip_empty_slices))
        if postprocess is not None:
            post = (
                postprocess if isinstance(postprocess, PostprocessConfig) else PostprocessConfig.from_dict(postprocess)
            )
            spec = replace(spec, postprocess=post)
        return spec

    @classmethod
    def from_checkpoint(cls, checkpoint: Mapping[str, Any], source: str = "checkpoint") -> InferenceSpec:
        """The spec a covidseg checkpoint implies: its classes, input channels, preprocessing, post-processing.

        A stored ``inference_spec`` entry is used as the base when present; otherwise the ``preprocessing``
        entry written by ``covidseg train`` (defaults when absent) and default post-processing. The class names
        always come from the checkpoint's ``model_config`` and must agree with a ``class_names`` entry.

        Raises:
            InputError: Class names the predictor cannot use, disagreeing class lists, or invalid stored
                preprocessing / post-processing / spec entries (the file is damaged or from another tool).

        Examples:
            >>> ckpt = {"model_config": {"class_names": ["background", "opacity"], "in_channels": 1},
            ...         "preprocessing": {"window": [-1000, 0], "slice_size": [256, 256]}}
            >>> spec = InferenceSpec.from_checkpoint(ckpt)
            >>> spec.class_names, spec.preprocess.slice_size, spec.has_lung_class
            (('background', 'opacity'), (256, 256), False)
        """
        model_config = checkpoint.get("model_config")
        if not isinstance(model_config, Mapping):
            raise InputError(f"{source} has no model_config; pass a checkpoint written by covidseg train")
        names = check_class_names(tuple(model_config.get("class_names", ())), source)
        stored_names = checkpoint.get("class_names")
        if stored_names is not None and tuple(str(n).lower() for n in stored_names) != names:
            raise InputError(
                f"{source}: class_names {list(stored_names)} disagree with the model's {list(names)}; the file is "
                "damaged or was edited"
            )
        in_channels = model_config.get("in_channels", 1)
        try:
            if isinstance(checkpoint.get(SPEC_KEY), Mapping):
                base = cls.from_dict(checkpoint[SPEC_KEY])
                if base.class_names != names or base.in_channels != in_channels:
                    raise ConfigError(
                        f"its {SPEC_KEY} names classes {list(base.class_names)} / {base.in_channels} channels, "
                        f"the model {list(names)} / {in_channels}"
                    )
                return base
            pre = next((checkpoint[k] for k in _PREPROCESS_KEYS if k in checkpoint), None)
            post = next((checkpoint[k] for k in _POSTPROCESS_KEYS if k in checkpoint), None)
            return cls(
                class_names=names,
                in_channels=in_channels,
                preprocess=PreprocessConfig.from_dict(pre) if isinstance(pre, Mapping) else PreprocessConfig(),
                postprocess=PostprocessConfig.from_dict(post) if isinstance(post, Mapping) else PostprocessConfig(),
            )
        except (ConfigError, TypeError) as exc:
            raise InputError(f"{source} holds an invalid inference recipe ({exc}); the file is damaged") from exc
