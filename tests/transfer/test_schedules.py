import doctest
import math

import pytest

from covidseg.errors import ConfigError
from covidseg.transfer import schedules
from covidseg.transfer.schedules import (
    SCHEDULES,
    ConstantSchedule,
    ExplicitSchedule,
    ExponentialSchedule,
    LinearSchedule,
    LogSchedule,
    make_schedule,
    resolve_schedule,
)

N = 120


@pytest.mark.parametrize(
    ("lambda0", "alpha", "last"),
    [(20.0, 1.5, 12.8188), (15.0, 2.0, 5.4251)],
)
def test_paper_values(lambda0: float, alpha: float, last: float) -> None:
    vals = LogSchedule(lambda0=lambda0, alpha=alpha).values(N)
    assert len(vals) == N
    assert vals[0] == lambda0
    assert vals[-1] == pytest.approx(last, abs=1e-4)
    for i, v in enumerate(vals, start=1):
        assert v == pytest.approx(max(0.0, lambda0 - alpha * math.log(i)))


def test_log_clips_at_zero() -> None:
    vals = LogSchedule(lambda0=1.0, alpha=1.0).values(5)
    assert vals[:3] == pytest.approx((1.0, 1.0 - math.log(2), 0.0))  # ln 3 > 1 -> clipped
    assert vals[3:] == (0.0, 0.0)


def test_linear_and_exponential_values() -> None:
    assert LinearSchedule(start=10.0, end=1.0).values(10) == pytest.approx(tuple(float(v) for v in range(10, 0, -1)))
    assert LinearSchedule(start=2.0, end=0.0).values(1) == (2.0,)
    assert ExponentialSchedule(lambda0=4.0, rate=0.5).values(4) == pytest.approx((4.0, 2.0, 1.0, 0.5))
    assert ConstantSchedule(0.3).values(3) == (0.3, 0.3, 0.3)


@pytest.mark.parametrize(
    ("schedule", "first_bad"),
    [
        (LogSchedule(lambda0=5.0, alpha=-1.0), 2),
        (LinearSchedule(start=1.0, end=2.0), 2),
        (ExponentialSchedule(lambda0=1.0, rate=1.5), 2),
    ],
)
def test_monotone_violation_names_first_layer(schedule: schedules.Schedule, first_bad: int) -> None:
    with pytest.raises(ConfigError, match=rf"λ_{first_bad} = .* > λ_{first_bad - 1}"):
        schedule.values(N)


def test_explicit_may_grow_and_freeze() -> None:
    sched = ExplicitSchedule([math.inf, math.inf, 0.0, 1.0])
    assert sched.values(4) == (math.inf, math.inf, 0.0, 1.0)
    assert sched.frozen_layers(4) == [1, 2]
    assert ConstantSchedule(math.inf).frozen_layers(3) == [1, 2, 3]
    assert LogSchedule(lambda0=math.inf, alpha=1.0).frozen_layers(2) == [1, 2]


@pytest.mark.parametrize(
    "build",
    [
        lambda: ExplicitSchedule([1.0, -0.5]).values(2),
        lambda: ExplicitSchedule([1.0, math.nan]).values(2),
        lambda: ExplicitSchedule([1.0, 2.0]).values(3),
        lambda: ExplicitSchedule(["a"]),  # type: ignore[list-item]
        lambda: ConstantSchedule(-1.0),
        lambda: ConstantSchedule(math.nan),
        lambda: LogSchedule(lambda0=-1.0, alpha=1.0),
        lambda: LinearSchedule(start=math.inf, end=0.0),
        lambda: ExponentialSchedule(lambda0=1.0, rate=-0.1),
        lambda: ConstantSchedule(1.0).values(0),
        lambda: ConstantSchedule(1.0).value(5, 4),
    ],
)
def test_invalid_values_raise(build) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ConfigError):
        build()


def test_wrong_length_message() -> None:
    with pytest.raises(ConfigError, match="has 2 values but the model has 120"):
        ExplicitSchedule([1.0, 2.0]).values(N)


def test_registry_and_factory() -> None:
    assert sorted(SCHEDULES) == ["constant", "explicit", "exponential", "linear", "log"]
    assert make_schedule("constant", value=2.0).values(2) == (2.0, 2.0)
    assert make_schedule("explicit", lambdas=[3.0, 1.0]).values(2) == (3.0, 1.0)
    assert make_schedule("log", lambda0=20.0, alpha=1.5) == LogSchedule(lambda0=20.0, alpha=1.5)
    with pytest.raises(ConfigError, match=r"unknown schedule 'cos'; expected one of \['constant', 'explicit'"):
        make_schedule("cos")
    with pytest.raises(ConfigError, match="takes"):
        make_schedule("log", lambda0=1.0)
    with pytest.raises(ConfigError, match="takes"):
        make_schedule("linear", start=1.0, end=0.0, gamma=2.0)


def test_resolve_schedule() -> None:
    assert resolve_schedule(0.5) == ConstantSchedule(0.5)
    assert resolve_schedule([1.0, 0.5]).values(2) == (1.0, 0.5)
    assert resolve_schedule({"name": "exponential", "lambda0": 2.0, "rate": 0.5}).values(2) == (2.0, 1.0)
    sched = LogSchedule(lambda0=1.0, alpha=0.0)
    assert resolve_schedule(sched) is sched
    for bad in (True, "log", {"lambda0": 1.0}):
        with pytest.raises(ConfigError):
            resolve_schedule(bad)  # type: ignore[arg-type]


def test_doctests() -> None:
    result = doctest.testmod(schedules)
    assert result.attempted > 0
    assert result.failed == 0
