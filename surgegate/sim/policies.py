"""Policies under one contract: surgegate's own and the usual answers.

Every policy sees the same things: a sample each simulated second (ready
replicas, utilisation, requests in the system), and each window's
statistics as the pipeline would publish them. It answers with a :class:`Plan`:
replicas to run, a warm pool, and either a throttle decision for the edges or
none (the edges then apply a static limit).

- :class:`SurgegatePolicy` drives the very objects the agents run: a
  ScopeForecaster and the ServiceController the decide agent steps.
- :class:`StaticPolicy`: a fixed fleet and a static limit at its capacity.
- :class:`HpaPolicy`: the Kubernetes HPA algorithm with its documented
  defaults: target 70% utilisation, a 15 s sync period, a tolerance of 0.1, a
  300 s scale-down stabilisation window, scale-up of at most max(4 pods, 100%)
  per period. A static limiter sits at the edges.
- :class:`KpaPolicy`: Knative's KPA, concurrency-based. It has a 60 s stable
  window and a 6 s panic window; it panics when the panic window wants 200% of
  the ready pods, and never scales down while panicking. A 2 s tick, and a
  static limiter at the edges.
"""

from __future__ import annotations

import abc
import collections
import dataclasses
import math
from typing import Any

from surgegate.checks import check
from surgegate.control.config import ServiceConfig
from surgegate.control.controller import ServiceController, ServiceWindow
from surgegate.forecast.scope import ScopeForecaster
from surgegate.schemas.aggregates import PoolStats, TrafficStats
from surgegate.schemas.decisions import ThrottleDecision
from surgegate.schemas.forecasts import Forecast
from surgegate.settings import DEFAULT_WINDOW_S


@dataclasses.dataclass(frozen=True)
class Sample:
    """One simulated second: what a metrics pipeline would report."""

    now_s: float
    ready: int
    utilisation: float
    concurrency: float


@dataclasses.dataclass(frozen=True)
class Observation:
    """One closed window, as the window pipeline publishes it."""

    window_start_ms: int
    window_ms: int
    service: TrafficStats
    tiers: dict[str, TrafficStats]
    pool: PoolStats


@dataclasses.dataclass
class Plan:
    """What a policy wants now."""

    replicas: int
    warm: int = 0
    decision: ThrottleDecision | None = None
    level: int = 0
    reason: str = ""


class Policy(abc.ABC):
    """A fleet policy under simulation: it observes seconds and windows and answers with a :class:`Plan`.

    Observing is optional (a policy acts on what it needs, the rest is a no-op);
    planning is not.
    """

    name: str = "policy"
    #: the edges' static limit (rps, all edges together) when the policy publishes no decisions
    static_limit_rps: float | None = None

    def second(self, sample: Sample) -> None:  # noqa: B027 - a null object: observing is optional
        """One simulated second's metrics."""

    def window(self, obs: Observation) -> None:  # noqa: B027 - as second()
        """One closed window's statistics, as the pipeline publishes them."""

    @abc.abstractmethod
    def plan(self) -> Plan:
        """What the policy wants now."""

    # ------------------------------------------------- for the contract suite (river's habit)

    @classmethod
    def _unit_test_params(cls, fleet: FleetBounds) -> dict[str, Any]:
        """Keyword arguments of a valid instance on ``fleet``."""
        return {"fleet": fleet}

    @classmethod
    def _invalid_params(cls) -> list[dict[str, Any]]:
        """Hyperparameters the constructor must refuse, each with an error naming it."""
        return []


@dataclasses.dataclass(frozen=True)
class FleetBounds:
    """Replica bounds shared by every policy, and what one replica serves."""

    replica_rps: float
    min_replicas: int = 5
    max_replicas: int = 50
    target_utilisation: float = 0.7
    cold_start_s: float = 15.0

    def __post_init__(self) -> None:
        check(self.replica_rps > 0, "replica_rps", self.replica_rps, "must be > 0")
        check(self.max_replicas >= 1, "max_replicas", self.max_replicas, "must be >= 1")
        check(0 <= self.min_replicas <= self.max_replicas, "min_replicas", self.min_replicas,
              f"must be within [0, max_replicas={self.max_replicas}]")
        check(0 < self.target_utilisation <= 1, "target_utilisation", self.target_utilisation,
              "must be within (0, 1]")


class SurgegatePolicy(Policy):
    """The forecaster, throttle policy and scaling policy the agents run, on simulated windows."""

    name = "surgegate"
    static_limit_rps = None

    def __init__(self, fleet: FleetBounds, *, slo_p99_ms: float = 10_000.0, service: str = "chat",
                 window_s: int = DEFAULT_WINDOW_S) -> None:
        self.config = ServiceConfig(service=service, pool="gpu", replica_rps=fleet.replica_rps,
                                    replicas=fleet.min_replicas, slo_p99_ms=slo_p99_ms, scaling={
                                        "min_replicas": fleet.min_replicas, "max_replicas": fleet.max_replicas,
                                        "target_utilisation": fleet.target_utilisation,
                                        "cold_start_s": fleet.cold_start_s})
        self.forecaster = ScopeForecaster(f"service={service}", step_ms=window_s * 1000)
        self.controller = ServiceController(self.config)
        self.forecast: Forecast | None = None
        self._plan = Plan(replicas=fleet.min_replicas)

    @classmethod
    def _invalid_params(cls) -> list[dict[str, Any]]:
        return [{"slo_p99_ms": 0.0}]

    def window(self, obs: Observation) -> None:
        # as the decide agent: the newest forecast at hand is the one issued after the previous window
        out = self.controller.step(ServiceWindow(
            window_start=obs.window_start_ms, window_ms=obs.window_ms, service=obs.service, tiers=obs.tiers,
            forecast=self.forecast, pool=obs.pool))
        # as the forecast agent: learn this window, forecast the next ones
        self.forecaster.observe(obs.window_start_ms, obs.service.demand, obs.service.tokens_per_s)
        self.forecast = self.forecaster.forecast()
        self._plan = Plan(replicas=out.scaling.desired_replicas, warm=out.scaling.warm_pool, decision=out.throttle,
                          level=out.throttle.level, reason=f"{out.throttle.reason} | {out.scaling.reason}")

    def plan(self) -> Plan:
        return self._plan


class StaticPolicy(Policy):
    """A fixed fleet and a static limit at its capacity."""

    name = "static"

    def __init__(self, fleet: FleetBounds, replicas: int, limit_share: float = 0.9) -> None:
        check(replicas >= 1, "replicas", replicas, "must be >= 1")
        _check_share(limit_share)
        self.replicas = replicas
        self.static_limit_rps = replicas * fleet.replica_rps * limit_share

    @classmethod
    def _unit_test_params(cls, fleet: FleetBounds) -> dict[str, Any]:
        return {"fleet": fleet, "replicas": fleet.min_replicas + 1}

    @classmethod
    def _invalid_params(cls) -> list[dict[str, Any]]:
        return [{"replicas": 0}, {"limit_share": 0.0}]

    def plan(self) -> Plan:
        return Plan(replicas=self.replicas, reason=f"fixed fleet of {self.replicas}")


class HpaPolicy(Policy):
    """Kubernetes HPA v2 with its default behaviour, on the utilisation metric."""

    name = "hpa"
    SYNC_S = 15
    TOLERANCE = 0.1
    STABILISATION_S = 300

    def __init__(self, fleet: FleetBounds, limit_share: float = 0.9) -> None:
        _check_share(limit_share)
        self.fleet = fleet
        self.static_limit_rps = fleet.max_replicas * fleet.replica_rps * limit_share
        self.replicas = fleet.min_replicas
        self.utilisation: collections.deque[float] = collections.deque(maxlen=self.SYNC_S)
        self.recommendations: collections.deque[tuple[float, int]] = collections.deque()
        self.reason = ""

    def second(self, sample: Sample) -> None:
        self.utilisation.append(sample.utilisation)
        if int(sample.now_s) % self.SYNC_S or not self.utilisation:
            return
        f = self.fleet
        current = max(1, sample.ready)
        util = sum(self.utilisation) / len(self.utilisation)
        ratio = util / f.target_utilisation
        if abs(ratio - 1) <= self.TOLERANCE:
            recommendation = self.replicas
        else:
            recommendation = min(f.max_replicas, max(f.min_replicas, math.ceil(current * ratio)))
        self.recommendations.append((sample.now_s, recommendation))
        while self.recommendations[0][0] <= sample.now_s - self.STABILISATION_S:
            self.recommendations.popleft()
        if recommendation > self.replicas:  # scale-up policy: max(4 pods, 100%) per period
            target = min(recommendation, self.replicas + max(4, self.replicas))
        else:  # scale-down: the highest recommendation of the stabilisation window
            target = min(self.replicas, max(r for _, r in self.recommendations))
        self.reason = f"utilisation {util:.0%} vs target {f.target_utilisation:.0%}: {self.replicas} -> {target}"
        self.replicas = target

    @classmethod
    def _invalid_params(cls) -> list[dict[str, Any]]:
        return [{"limit_share": 0.0}]

    def plan(self) -> Plan:
        return Plan(replicas=self.replicas, reason=self.reason)


class KpaPolicy(Policy):
    """Knative's KPA: concurrency per pod, stable and panic windows."""

    name = "kpa"
    TICK_S = 2
    STABLE_S = 60
    PANIC_S = 6
    PANIC_THRESHOLD = 2.0
    MAX_SCALE_DOWN_RATE = 2.0

    def __init__(self, fleet: FleetBounds, concurrency: int, limit_share: float = 0.9) -> None:
        check(concurrency >= 1, "concurrency", concurrency, "must be >= 1")
        _check_share(limit_share)
        self.fleet = fleet
        self.static_limit_rps = fleet.max_replicas * fleet.replica_rps * limit_share
        # container-concurrency-target-percentage 70% of the pod's concurrency
        self.target = concurrency * fleet.target_utilisation
        self.replicas = fleet.min_replicas
        self.samples: collections.deque[float] = collections.deque(maxlen=self.STABLE_S)
        self.panic_until = -math.inf
        self.reason = ""

    def second(self, sample: Sample) -> None:
        self.samples.append(sample.concurrency)
        if int(sample.now_s) % self.TICK_S:
            return
        f = self.fleet
        stable = sum(self.samples) / len(self.samples)
        recent = list(self.samples)[-self.PANIC_S:]
        panic = sum(recent) / len(recent)
        want_stable = math.ceil(stable / self.target)
        want_panic = math.ceil(panic / self.target)
        ready = max(1, sample.ready)
        if want_panic / ready >= self.PANIC_THRESHOLD:
            self.panic_until = sample.now_s + self.STABLE_S
        if sample.now_s < self.panic_until:
            target = max(self.replicas, want_panic)  # never scale down while panicking
            mode = "panic"
        else:
            target = max(want_stable, math.ceil(self.replicas / self.MAX_SCALE_DOWN_RATE))
            mode = "stable"
        target = min(f.max_replicas, max(f.min_replicas, target))
        self.reason = f"{mode}: concurrency {stable:,.0f} (60 s) / {panic:,.0f} (6 s) -> {target}"
        self.replicas = target

    @classmethod
    def _unit_test_params(cls, fleet: FleetBounds) -> dict[str, Any]:
        return {"fleet": fleet, "concurrency": 64}

    @classmethod
    def _invalid_params(cls) -> list[dict[str, Any]]:
        return [{"concurrency": 0}, {"limit_share": -1.0}]

    def plan(self) -> Plan:
        return Plan(replicas=self.replicas, reason=self.reason)


def _check_share(limit_share: float) -> None:
    check(limit_share > 0, "limit_share", limit_share, "must be > 0 (above 1: a limit over the fleet's capacity)")
