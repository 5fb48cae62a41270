"""Contract suites over every forecaster and every policy, found by subclass discovery (as river's checks are).

A new Forecaster, WindowPolicy or simulated Policy is checked here without being listed: deterministic
for the same inputs, a checkpoint (its typed state, encoded and decoded) that a fresh instance takes up and
goes on from exactly as the original (the agents checkpoint them in Faust tables; simulated policies are
copied with pickle, as a process pool does), bad hyperparameters refused with an error naming them, and
outputs within bounds.
"""

from __future__ import annotations

import importlib
import inspect
import math
import pickle
import pkgutil
import random

import msgspec
import pytest
from test_throttle import even, stats

import surgegate.control
import surgegate.forecast
import surgegate.sim
from surgegate.control import state as policy_state
from surgegate.control.base import WindowPolicy
from surgegate.control.scaling import ScalingInputs, ScalingPolicy
from surgegate.control.throttle import DecisionInputs, ThrottlePolicy
from surgegate.forecast.base import Forecaster
from surgegate.schemas.decisions import ScalingDecision, ThrottleDecision
from surgegate.sim.policies import FleetBounds, Observation, Policy, Sample
from surgegate.sim.run import simulate
from surgegate.sim.service import ServiceModel
from surgegate.sim.workload import Workload

STEP = 10_000
T0 = 1_767_225_600_000


def _concrete_subclasses(base: type, *packages) -> list[type]:
    for package in packages:  # every module loaded, so every subclass is known
        for module in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
            importlib.import_module(module.name)
    found, todo = [], [base]
    while todo:
        for sub in todo.pop().__subclasses__():
            todo.append(sub)
            if not inspect.isabstract(sub) and sub.__module__.startswith("surgegate."):
                found.append(sub)
    return sorted(set(found), key=lambda c: c.__name__)


FORECASTERS = _concrete_subclasses(Forecaster, surgegate.forecast)
WINDOW_POLICIES = _concrete_subclasses(WindowPolicy, surgegate.control)
SIM_POLICIES = _concrete_subclasses(Policy, surgegate.sim)


def test_discovery_finds_every_kind_of_subject():
    names = {c.__name__ for c in FORECASTERS + WINDOW_POLICIES + SIM_POLICIES}
    assert {"LastValue", "OnlineSelector", "LagRegressor", "ThrottlePolicy", "ScalingPolicy",
            "SurgegatePolicy", "HpaPolicy", "KpaPolicy", "StaticPolicy", "WithAdmission"} <= names


def _noisy_with_burst(n: int, seed: int) -> list[float]:
    rng = random.Random(seed)
    return [max(0.0, rng.gauss(400.0 if n // 2 <= i < n // 2 + 20 else 40.0, 6.0)) for i in range(n)]


# ------------------------------------------------------------------ forecasters

def _forecaster(cls: type[Forecaster], **changes) -> Forecaster:
    return cls(**{**cls._unit_test_params(STEP), **changes})


@pytest.mark.parametrize("cls", FORECASTERS, ids=lambda c: c.__name__)
def test_a_forecaster_is_deterministic(cls):
    a, b = _forecaster(cls), _forecaster(cls)
    for i, y in enumerate(_noisy_with_burst(120, seed=1)):
        a.learn_one(y, T0 + i * STEP)
        b.learn_one(y, T0 + i * STEP)
        assert a.forecast(12) == b.forecast(12)


@pytest.mark.parametrize("cls", FORECASTERS, ids=lambda c: c.__name__)
def test_a_forecaster_restored_from_its_checkpoint_goes_on_exactly_as_the_original(cls):
    model = _forecaster(cls)
    series = _noisy_with_burst(160, seed=2)
    for i, y in enumerate(series[:100]):
        model.learn_one(y, T0 + i * STEP)
    state = model.state()
    copy = _forecaster(cls)
    copy.load(msgspec.msgpack.decode(msgspec.msgpack.encode(state), type=type(state)))
    for i, y in enumerate(series[100:], start=100):
        model.learn_one(y, T0 + i * STEP)
        copy.learn_one(y, T0 + i * STEP)
    assert copy.forecast(30) == model.forecast(30)


@pytest.mark.parametrize("cls", FORECASTERS, ids=lambda c: c.__name__)
def test_forecasts_have_the_horizon_asked_and_are_finite_and_never_negative(cls):
    model = _forecaster(cls)
    assert len(model.forecast(30)) == 30
    for i, y in enumerate([0.0, 1.0, 0.0, 50.0, 0.0, 5_000.0] * 15):
        model.learn_one(y, T0 + i * STEP)
        out = model.forecast(12)
        assert len(out) == 12 and all(v >= 0.0 and math.isfinite(v) for v in out), out


@pytest.mark.parametrize("cls", FORECASTERS, ids=lambda c: c.__name__)
def test_a_steady_series_is_forecast_near_its_level(cls):
    model = _forecaster(cls)
    rng = random.Random(0)
    for i in range(400):
        model.learn_one(max(0.0, rng.gauss(100.0, 10.0)), T0 + i * STEP)
    assert model.forecast(6)[5] == pytest.approx(100.0, rel=0.2)


# ------------------------------------------------------------ window policies

def _window_inputs(cls: type[WindowPolicy], n: int) -> list:
    """A calm start, a 30x burst and a return, in the input type ``cls.decide`` takes."""
    loads = [200.0] * (n // 3) + [6_000.0] * (n // 3) + [200.0] * (n - 2 * (n // 3))
    if issubclass(cls, ThrottlePolicy):
        out = []
        for i, load in enumerate(loads):
            tiers = {t: stats(rt, b) for t, (rt, b) in even(load).items()}
            out.append(DecisionInputs(window_start=T0 + i * STEP, window_ms=STEP,
                                      service=stats(load * 0.8, load * 0.2), tiers=tiers, tenants={}))
        return out
    if issubclass(cls, ScalingPolicy):
        return [ScalingInputs(window_start=T0 + i * STEP, window_ms=STEP, demand_rps=load,
                              ready_replicas=max(2, int(load / 70)), upper_rps=(load * 1.2,) * 6)
                for i, load in enumerate(loads)]
    raise AssertionError(f"no input sequence for {cls.__name__}: add one here")


def _output_problems(output) -> list[str]:
    """What in a decision breaks the bounds every window policy must keep."""
    problems = []
    if isinstance(output, tuple):  # the throttle policy: (threshold, decision)
        threshold, output = output
        if not (threshold.safe_rps >= 0 and math.isfinite(threshold.safe_rps)):
            problems.append(f"safe_rps={threshold.safe_rps}")
    if isinstance(output, ThrottleDecision):
        if not 0 <= output.level <= 4:
            problems.append(f"level={output.level}")
        rates = [v for t in output.tiers.values() for v in (t.realtime_rps, t.batch_rps, t.burst)]
        problems += [f"rate {r}" for r in rates if not (r >= 0 and math.isfinite(r))]
        if output.valid_until <= output.issued_at:
            problems.append("valid_until before issued_at")
    elif isinstance(output, ScalingDecision):
        if not output.min_replicas <= output.desired_replicas <= output.max_replicas:
            problems.append(f"desired {output.desired_replicas} outside [{output.min_replicas}, "
                            f"{output.max_replicas}]")
        if output.warm_pool < 0:
            problems.append(f"warm_pool={output.warm_pool}")
    else:
        problems.append(f"no bounds known for {type(output).__name__}: add them here")
    return problems


def _version(output) -> int:
    return (output[1] if isinstance(output, tuple) else output).version


@pytest.mark.parametrize("cls", WINDOW_POLICIES, ids=lambda c: c.__name__)
def test_a_window_policy_is_deterministic_and_its_versions_only_grow(cls):
    a, b = cls(**cls._unit_test_params()), cls(**cls._unit_test_params())
    outs = [a.decide(x) for x in _window_inputs(cls, 30)]
    assert outs == [b.decide(x) for x in _window_inputs(cls, 30)]
    versions = [_version(o) for o in outs]
    assert versions == sorted(set(versions)) and a.last_version == versions[-1]


@pytest.mark.parametrize("cls", WINDOW_POLICIES, ids=lambda c: c.__name__)
def test_a_window_policy_restored_from_its_checkpoint_goes_on_exactly_as_the_original(cls):
    policy = cls(**cls._unit_test_params())
    inputs = _window_inputs(cls, 30)
    for x in inputs[:15]:
        policy.decide(x)
    state = policy.state()
    copy = cls(**cls._unit_test_params())
    copy.load(policy_state.decode(policy_state.encode(state), type(state)))
    assert [copy.decide(x) for x in inputs[15:]] == [policy.decide(x) for x in inputs[15:]]


@pytest.mark.parametrize("cls", WINDOW_POLICIES, ids=lambda c: c.__name__)
def test_a_window_policy_keeps_its_outputs_within_bounds(cls):
    policy = cls(**cls._unit_test_params())
    for x in _window_inputs(cls, 30):
        out = policy.decide(x)
        assert _output_problems(out) == [], x.window_start


# --------------------------------------------------------- simulated policies

MODEL = ServiceModel()
FLEET = FleetBounds(replica_rps=MODEL.replica_rps(1155, 211), min_replicas=2, max_replicas=12)


def _sim_policy(cls: type[Policy], **changes) -> Policy:
    return cls(**{**cls._unit_test_params(FLEET), **changes})


def _workload() -> Workload:
    """Eight minutes: calm, a burst past the fleet's maximum, calm again."""
    peak = FLEET.max_replicas * FLEET.replica_rps * 1.3
    rate = [0.1 * peak] * 120 + [peak] * 180 + [0.1 * peak] * 180
    return Workload(name="contract", rate=rate, synthetic=True, onset_s=120)


@pytest.mark.parametrize("cls", SIM_POLICIES, ids=lambda c: c.__name__)
def test_a_simulated_policy_is_deterministic_for_a_seed(cls):
    runs = [simulate(_workload(), _sim_policy(cls), model=MODEL, bounds=FLEET, seed=3) for _ in range(2)]
    assert runs[0].rows == runs[1].rows


@pytest.mark.parametrize("cls", SIM_POLICIES, ids=lambda c: c.__name__)
def test_a_pickled_simulated_policy_goes_on_exactly_as_the_original(cls):
    policy = _sim_policy(cls)
    recorder = _Recorder(policy)
    simulate(_workload(), recorder, model=MODEL, bounds=FLEET, seed=4)
    half = len(recorder.events) // 2
    fresh = _sim_policy(cls)
    for kind, value in recorder.events[:half]:
        getattr(fresh, kind)(value)
    copy = pickle.loads(pickle.dumps(fresh))
    for kind, value in recorder.events[half:]:
        getattr(fresh, kind)(value)
        getattr(copy, kind)(value)
        assert _comparable(copy.plan()) == _comparable(fresh.plan())


@pytest.mark.parametrize("cls", SIM_POLICIES, ids=lambda c: c.__name__)
def test_a_simulated_policy_plans_within_the_fleet_bounds(cls):
    recorder = _Recorder(_sim_policy(cls))
    result = simulate(_workload(), recorder, model=MODEL, bounds=FLEET, seed=5)
    assert result.rows
    for plan in recorder.plans:
        assert FLEET.min_replicas <= plan.replicas <= FLEET.max_replicas, plan
        assert plan.warm >= 0 and 0 <= plan.level <= 4, plan


class _Recorder(Policy):
    """Passes everything to a policy and keeps what it saw and planned."""

    def __init__(self, inner: Policy) -> None:
        self.inner = inner
        self.name = inner.name
        self.static_limit_rps = inner.static_limit_rps
        self.events: list[tuple[str, Sample | Observation]] = []
        self.plans: list = []

    def second(self, sample: Sample) -> None:
        self.events.append(("second", sample))
        self.inner.second(sample)

    def window(self, obs: Observation) -> None:
        self.events.append(("window", obs))
        self.inner.window(obs)

    def plan(self):
        plan = self.inner.plan()
        self.plans.append(plan)
        return plan


def _comparable(plan) -> tuple:
    return (plan.replicas, plan.warm, plan.level, plan.reason, plan.decision)


# ------------------------------------------------------------------ every subject

def _build(cls: type, bad: dict) -> object:
    """An instance of ``cls`` from its unit-test parameters with ``bad`` changed in."""
    if issubclass(cls, Forecaster):
        return _forecaster(cls, **bad)
    if issubclass(cls, WindowPolicy):
        return cls(**cls._unit_test_params(**bad))
    return _sim_policy(cls, **bad)


@pytest.mark.parametrize("cls", FORECASTERS + WINDOW_POLICIES + SIM_POLICIES, ids=lambda c: c.__name__)
def test_bad_hyperparameters_are_refused_naming_them(cls):
    assert cls._invalid_params(), f"{cls.__name__} declares no invalid hyperparameters to check"
    for bad in cls._invalid_params():
        with pytest.raises(ValueError, match="|".join(bad)):
            _build(cls, bad)
