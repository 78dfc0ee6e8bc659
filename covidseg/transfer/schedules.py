"""Coefficient schedules λ_i over the encoder layer index i = 1..N.

A schedule turns a few numbers from a config into one regularization strength per encoder layer, in forward
order (layer 1 is DenseNet121's ``conv0``, layer 120 its last transition/dense conv). The paper's schedule is
``λ_i = max(0, λ0 − α·log i)`` with the natural logarithm: strong near the input, where source features are
generic, weaker deep in the encoder, where the target task may need to move the weights.

``float("inf")`` is a legal value and means *frozen*: penalties skip such layers (and report them through
``frozen_layers()``) and the fine-tuning strategies freeze them. Every schedule validates its values when they
are computed: NaN or negative values are a :class:`~covidseg.errors.ConfigError`, and the schedules that the
method defines as non-increasing (``log``, ``linear``, ``exponential``) name the first layer where λ grows.

Examples:
    >>> sched = make_schedule("log", lambda0=20.0, alpha=1.5)
    >>> [round(v, 2) for v in sched.values(120)[:2]], round(sched.values(120)[-1], 2)
    ([20.0, 18.96], 12.82)
"""

from __future__ import annotations

import dataclasses
import inspect
import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from covidseg.errors import ConfigError

__all__ = [
    "SCHEDULES",
    "ConstantSchedule",
    "ExplicitSchedule",
    "ExponentialSchedule",
    "LinearSchedule",
    "LogSchedule",
    "Schedule",
    "make_schedule",
    "resolve_schedule",
]

FROZEN = math.inf
"""The λ value that means "frozen layer"."""


class Schedule(ABC):
    """Base class: one non-negative λ per layer, ``values(n)[i - 1]`` is λ_i.

    Subclasses implement :meth:`_raw_values`; :meth:`values` validates them (no NaN, no negative value, and,
    where :attr:`monotone` is true, non-increasing in i).
    """

    #: Whether the method defines this schedule as non-increasing over the layer index.
    monotone: bool = False

    @abstractmethod
    def _raw_values(self, n_layers: int) -> list[float]:
        """Return λ_1..λ_n before validation."""

    def values(self, n_layers: int) -> tuple[float, ...]:
        """Return the validated λ_1..λ_n for a model with ``n_layers`` encoder layers.

        Args:
            n_layers: Number of layers N (120 for DenseNet121), at least 1.

        Raises:
            ConfigError: ``n_layers`` < 1, or a value is NaN or negative, or a monotone schedule grows.

        Examples:
            >>> ConstantSchedule(0.5).values(3)
            (0.5, 0.5, 0.5)
        """
        if isinstance(n_layers, bool) or not isinstance(n_layers, int) or n_layers < 1:
            raise ConfigError(f"a schedule needs a positive whole number of layers, got {n_layers!r}")
        vals = [float(v) for v in self._raw_values(n_layers)]
        name = type(self).__name__
        for i, v in enumerate(vals, start=1):
            if math.isnan(v):
                raise ConfigError(f"{name}: λ_{i} is NaN; give finite non-negative values (inf = frozen)")
            if v < 0:
                raise ConfigError(f"{name}: λ_{i} = {v} is negative; regularization strengths must be >= 0")
        if self.monotone:
            for i in range(2, n_layers + 1):
                if vals[i - 1] > vals[i - 2]:
                    raise ConfigError(
                        f"{name} must be non-increasing over the layer index, but λ_{i} = {vals[i - 1]:g} > "
                        f"λ_{i - 1} = {vals[i - 2]:g}; use a non-negative decay (alpha/slope >= 0, rate <= 1)"
                    )
        return tuple(vals)

    def value(self, i: int, n_layers: int) -> float:
        """Return λ_i (1-based) of a model with ``n_layers`` layers.

        Examples:
            >>> round(LogSchedule(lambda0=15.0, alpha=2.0).value(120, 120), 2)
            5.43
        """
        if not 1 <= i <= n_layers:
            raise ConfigError(f"layer index {i} is outside 1..{n_layers}")
        return self.values(n_layers)[i - 1]

    def frozen_layers(self, n_layers: int) -> list[int]:
        """Return the 1-based layer indices whose λ is infinite (frozen).

        Examples:
            >>> ExplicitSchedule([float("inf"), 1.0, 0.0]).frozen_layers(3)
            [1]
        """
        return [i for i, v in enumerate(self.values(n_layers), start=1) if math.isinf(v)]


def _check_finite_non_negative(name: str, **values: float) -> None:
    for key, v in values.items():
        if not isinstance(v, (int, float)) or isinstance(v, bool):
            raise ConfigError(f"{name}: {key} must be a number, got {v!r}")
        if math.isnan(v) or v < 0:
            raise ConfigError(f"{name}: {key} = {v} must be a non-negative number")


@dataclasses.dataclass(frozen=True)
class ConstantSchedule(Schedule):
    """The same λ for every layer (L2-SP of Li et al. 2018); ``inf`` freezes the whole encoder.

    Examples:
        >>> ConstantSchedule(0.01).values(2)
        (0.01, 0.01)
    """

    strength: float

    monotone = True

    def __post_init__(self) -> None:
        _check_finite_non_negative("ConstantSchedule", strength=self.strength)

    def _raw_values(self, n_layers: int) -> list[float]:
        return [float(self.strength)] * n_layers


@dataclasses.dataclass(frozen=True)
class LogSchedule(Schedule):
    """The paper's schedule ``λ_i = max(0, λ0 − α·ln i)`` (natural logarithm), non-increasing for α >= 0.

    Examples:
        >>> s = LogSchedule(lambda0=20.0, alpha=1.5)
        >>> round(s.value(1, 120), 2), round(s.value(120, 120), 2)
        (20.0, 12.82)
    """

    lambda0: float
    alpha: float

    monotone = True

    def __post_init__(self) -> None:
        _check_finite_non_negative("LogSchedule", lambda0=self.lambda0)
        if not isinstance(self.alpha, (int, float)) or math.isnan(self.alpha):
            raise ConfigError(f"LogSchedule: alpha must be a number, got {self.alpha!r}")

    def _raw_values(self, n_layers: int) -> list[float]:
        return [max(0.0, self.lambda0 - self.alpha * math.log(i)) for i in range(1, n_layers + 1)]


@dataclasses.dataclass(frozen=True)
class LinearSchedule(Schedule):
    """Linear interpolation from ``start`` (layer 1) to ``end`` (layer N); non-increasing, so ``end <= start``.

    A single-layer model gets ``start``.

    Examples:
        >>> LinearSchedule(start=3.0, end=1.0).values(3)
        (3.0, 2.0, 1.0)
    """

    start: float
    end: float

    monotone = True

    def __post_init__(self) -> None:
        _check_finite_non_negative("LinearSchedule", start=self.start, end=self.end)
        if math.isinf(self.start) or math.isinf(self.end):
            raise ConfigError("LinearSchedule: start and end must be finite; use an explicit list to freeze")

    def _raw_values(self, n_layers: int) -> list[float]:
        if n_layers == 1:
            return [float(self.start)]
        step = (self.end - self.start) / (n_layers - 1)
        return [self.start + step * (i - 1) for i in range(1, n_layers + 1)]


@dataclasses.dataclass(frozen=True)
class ExponentialSchedule(Schedule):
    """Exponential decay ``λ_i = λ0 · rate^(i − 1)``; non-increasing, so ``0 <= rate <= 1``.

    Examples:
        >>> ExponentialSchedule(lambda0=8.0, rate=0.5).values(3)
        (8.0, 4.0, 2.0)
    """

    lambda0: float
    rate: float

    monotone = True

    def __post_init__(self) -> None:
        _check_finite_non_negative("ExponentialSchedule", lambda0=self.lambda0, rate=self.rate)
        if math.isinf(self.lambda0) or math.isinf(self.rate):
            raise ConfigError("ExponentialSchedule: lambda0 and rate must be finite")

    def _raw_values(self, n_layers: int) -> list[float]:
        return [self.lambda0 * self.rate ** (i - 1) for i in range(1, n_layers + 1)]


@dataclasses.dataclass(frozen=True)
class ExplicitSchedule(Schedule):
    """One λ per layer given as a list of exactly N values (any order; ``inf`` freezes a layer).

    Examples:
        >>> ExplicitSchedule([1.0, 2.0]).values(2)
        (1.0, 2.0)
    """

    lambdas: tuple[float, ...]

    def __init__(self, lambdas: Sequence[float]) -> None:
        if isinstance(lambdas, (str, bytes)) or not isinstance(lambdas, Sequence):
            raise ConfigError(f"ExplicitSchedule: lambdas must be a list of numbers, got {lambdas!r}")
        vals = []
        for i, v in enumerate(lambdas, start=1):
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise ConfigError(f"ExplicitSchedule: λ_{i} must be a number, got {v!r}")
            vals.append(float(v))
        object.__setattr__(self, "lambdas", tuple(vals))

    def _raw_values(self, n_layers: int) -> list[float]:
        if len(self.lambdas) != n_layers:
            raise ConfigError(
                f"ExplicitSchedule has {len(self.lambdas)} values but the model has {n_layers} encoder layers; "
                f"give exactly one λ per layer"
            )
        return list(self.lambdas)


def _constant(value: float) -> ConstantSchedule:
    return ConstantSchedule(value)


SCHEDULES: dict[str, Callable[..., Schedule]] = {
    "constant": _constant,
    "log": LogSchedule,
    "linear": LinearSchedule,
    "exponential": ExponentialSchedule,
    "explicit": ExplicitSchedule,
}
"""Schedule name -> factory. Keyword arguments: constant(value), log(lambda0, alpha), linear(start, end),
exponential(lambda0, rate), explicit(lambdas)."""


def make_schedule(name: str, **kwargs: Any) -> Schedule:
    """Build a schedule by registry name.

    Args:
        name: One of :data:`SCHEDULES`.
        **kwargs: The factory's keyword arguments.

    Raises:
        ConfigError: Unknown name (the message lists the valid ones) or wrong/missing keyword arguments.

    Examples:
        >>> make_schedule("exponential", lambda0=1.0, rate=0.5).values(2)
        (1.0, 0.5)
        >>> make_schedule("cosine")
        Traceback (most recent call last):
        ...
        covidseg.errors.ConfigError: unknown schedule 'cosine'; expected one of ['constant', 'explicit', \
'exponential', 'linear', 'log']
    """
    if name not in SCHEDULES:
        raise ConfigError(f"unknown schedule {name!r}; expected one of {sorted(SCHEDULES)}")
    factory = SCHEDULES[name]
    signature = inspect.signature(factory)
    try:
        signature.bind(**kwargs)
    except TypeError as exc:
        raise ConfigError(
            f"schedule {name!r} takes {list(signature.parameters)}, got {sorted(kwargs)} ({exc})"
        ) from None
    return factory(**kwargs)


def resolve_schedule(spec: Schedule | float | Sequence[float] | Mapping[str, Any]) -> Schedule:
    """Turn a config value into a :class:`Schedule`.

    A number is a constant schedule, a list an explicit one, a mapping ``{"name": ..., **kwargs}`` goes through
    :func:`make_schedule`, and a :class:`Schedule` is returned as is.

    Examples:
        >>> resolve_schedule({"name": "log", "lambda0": 15.0, "alpha": 2.0})
        LogSchedule(lambda0=15.0, alpha=2.0)
        >>> resolve_schedule(0.1)
        ConstantSchedule(strength=0.1)
    """
    if isinstance(spec, Schedule):
        return spec
    if isinstance(spec, bool):
        raise ConfigError(f"a schedule cannot be a boolean, got {spec!r}")
    if isinstance(spec, (int, float)):
        return ConstantSchedule(float(spec))
    if isinstance(spec, Mapping):
        kwargs = dict(spec)
        name = kwargs.pop("name", None)
        if not isinstance(name, str):
            raise ConfigError(f"a schedule mapping needs a 'name' key naming one of {sorted(SCHEDULES)}")
        return make_schedule(name, **kwargs)
    if isinstance(spec, Sequence) and not isinstance(spec, (str, bytes)):
        return ExplicitSchedule(spec)
    raise ConfigError(f"cannot read a schedule from {spec!r}; give a number, a list or {{'name': ...}}")
