"""Checkpoints written by earlier releases are taken up by this one.

Each file in ``tests/data/`` is a checkpoint written in the format its name
gives, from the series below. A checkpoint in the current format must be
taken up exactly (the restored object goes on as the one that wrote it); one
in an earlier format must be taken up and go on giving valid decisions and
forecasts. When a format changes, the file of the format before stays: run
``python tests/test_state_formats.py`` to write the new format's files beside it.
"""

from __future__ import annotations

import math
import random
import sys
from pathlib import Path

import pytest

from surgegate.control import state as policy_state
from surgegate.control.config import ServiceConfig
from surgegate.control.scaling import ScalingInputs, ScalingPolicy
from surgegate.control.throttle import DecisionInputs, ThrottlePolicy
from surgegate.forecast import state as forecaster_state
from surgegate.forecast.scope import ScopeForecaster
from surgegate.forecast.state import StateMismatch
from surgegate.schemas.aggregates import TrafficAggregate
from surgegate.telemetry.merging import traffic_stats

DATA = Path(__file__).parent / "data"
STEP = 10_000
T0 = 1_767_225_600_000
LEARNED, AFTER = 200, 60
CONFIG = ServiceConfig(service="chat", pool="gpu-a", replica_rps=40.0, replicas=8)


def _series(n: int) -> list[tuple[float, float]]:
    """A daily-ish wave with noise and a burst: (requests/s, tokens/s) per window."""
    rng = random.Random(7)
    out = []
    for i in range(n):
        rate = 200 + 80 * math.sin(i / 40) + rng.gauss(0, 10) + (900 if 150 <= i < 165 else 0)
        out.append((max(0.0, rate), max(0.0, rate * 300 + rng.gauss(0, 500))))
    return out


def _forecaster(n: int) -> ScopeForecaster:
    fc = ScopeForecaster("service=chat", step_ms=STEP)
    for i, (rate, tokens) in enumerate(_series(n)):
        fc.observe(T0 + i * STEP, rate, tokens)
    return fc


def _windows(n: int) -> list[tuple[DecisionInputs, ScalingInputs]]:
    out = []
    for i, (rate, _) in enumerate(_series(n)):
        ok = int(rate * STEP / 1000)
        service = traffic_stats(TrafficAggregate(ok=ok, realtime=ok), STEP)
        tiers = {"enterprise": traffic_stats(TrafficAggregate(ok=ok // 2, realtime=ok // 2), STEP),
                 "free": traffic_stats(TrafficAggregate(ok=ok - ok // 2, realtime=ok - ok // 2), STEP)}
        start = T0 + i * STEP
        out.append((DecisionInputs(window_start=start, window_ms=STEP, service=service, tiers=tiers, tenants={}),
                    ScalingInputs(window_start=start, window_ms=STEP, demand_rps=rate, ready_replicas=8,
                                  upper_rps=(rate * 1.3,) * 6, point_rps=(rate,) * 6)))
    return out


def _policies(n: int) -> tuple[ThrottlePolicy, ScalingPolicy]:
    throttle, scaling = ThrottlePolicy(CONFIG), ScalingPolicy(CONFIG.pool_config())
    for t_in, s_in in _windows(n):
        throttle.decide(t_in)
        scaling.decide(s_in)
    return throttle, scaling


def _kept(prefix: str) -> list[Path]:
    return sorted(DATA.glob(f"{prefix}-v*.*"))


def _format(path: Path) -> int:
    return int(path.stem.rsplit("-v", 1)[1])


def test_the_current_formats_are_kept_so_the_next_change_has_a_previous_one_to_read():
    assert _format(_kept("forecaster")[-1]) == forecaster_state.FORMAT
    assert _format(_kept("throttle")[-1]) == policy_state.FORMAT
    assert _format(_kept("scaling")[-1]) == policy_state.FORMAT


@pytest.mark.parametrize("path", _kept("forecaster"), ids=lambda p: p.name)
def test_a_forecaster_checkpoint_of_every_kept_format_is_taken_up(path):
    restored = ScopeForecaster("service=chat", step_ms=STEP)
    restored.load(forecaster_state.decode(path.read_bytes()))
    reference = _forecaster(LEARNED)
    series = _series(LEARNED + AFTER)
    for i in range(LEARNED, LEARNED + AFTER):
        for fc in (restored, reference):
            fc.observe(T0 + i * STEP, *series[i])
        forecast = restored.forecast()
        assert all(v >= 0 and math.isfinite(v) for v in forecast.rate_rps.upper)
        if _format(path) == forecaster_state.FORMAT:
            assert forecast == reference.forecast()


@pytest.mark.parametrize("kind", ["throttle", "scaling"])
def test_a_policy_checkpoint_of_every_kept_format_is_taken_up(kind):
    paths = _kept(kind)
    assert paths
    windows = _windows(LEARNED + AFTER)
    for path in paths:
        throttle, scaling = ThrottlePolicy(CONFIG), ScalingPolicy(CONFIG.pool_config())
        policy = throttle if kind == "throttle" else scaling
        state_type = policy_state.ThrottleState if kind == "throttle" else policy_state.ScalingState
        policy.load(policy_state.decode(path.read_bytes(), state_type))
        reference = _policies(LEARNED)[0 if kind == "throttle" else 1]
        for t_in, s_in in windows[LEARNED:]:
            inputs = t_in if kind == "throttle" else s_in
            out = policy.decide(inputs)  # type: ignore[arg-type]
            expected = reference.decide(inputs)  # type: ignore[arg-type]
            if _format(path) == policy_state.FORMAT:
                assert out == expected


def test_a_checkpoint_written_for_another_horizon_is_refused_not_half_taken_up():
    state = _forecaster(40).state()
    other = ScopeForecaster("service=chat", step_ms=STEP, horizon=12)
    with pytest.raises(StateMismatch, match="horizon"):
        other.load(state)


def test_bytes_that_are_no_checkpoint_are_refused_with_an_error_not_executed():
    import msgspec

    for junk in (b"", b"\x80\x05\x95", b"garbage", msgspec.msgpack.encode({"format": 99})):
        with pytest.raises((msgspec.DecodeError, msgspec.ValidationError, ValueError)):
            forecaster_state.decode(junk)
    with pytest.raises((msgspec.DecodeError, msgspec.ValidationError, ValueError)):
        policy_state.decode(b'{"format": 1, "schema": "sg.ScalingState"}', policy_state.ScalingState)


def write_current_formats() -> None:
    """Write the current format's checkpoint files into tests/data/."""
    DATA.mkdir(exist_ok=True)
    (DATA / f"forecaster-v{forecaster_state.FORMAT}.msgpack").write_bytes(
        forecaster_state.encode(_forecaster(LEARNED).state()))
    throttle, scaling = _policies(LEARNED)
    (DATA / f"throttle-v{policy_state.FORMAT}.json").write_bytes(policy_state.encode(throttle.state()))
    (DATA / f"scaling-v{policy_state.FORMAT}.json").write_bytes(policy_state.encode(scaling.state()))


if __name__ == "__main__":
    write_current_formats()
    print(f"wrote the current formats into {DATA}", file=sys.stderr)
