"""Policies under one contract: surgegate's own and the usual answers, each with its real signal path.

Every policy sees the same things: a sample each simulated second (what the
inference servers and the GPUs report), and each window's statistics as the
pipeline would publish them. What a baseline *acts on* is what its metrics
pipeline would have shown it: a value scraped every ``scrape_s`` and read at
its own sync period, so its lag is the operator's. It answers with a
:class:`Plan`: replicas to run, a warm pool, and either a throttle decision for
the edges or none (the edges then apply a static limit).

- :class:`SurgegatePolicy` drives the very objects the agents run: a
  ScopeForecaster and the ServiceController the decide agent steps.
- :class:`StaticPolicy`: a fixed fleet.
- :class:`HpaPolicy`: the Kubernetes HPA algorithm with its documented
  defaults (a 15 s sync, a tolerance of 0.1, a 300 s scale-down stabilisation
  window, scale-up of at most max(4 pods, 100%) a period) on one of two
  metrics: GPU utilisation as the DCGM exporter reports it (collected every
  30 s), or the inference server's ``vllm:num_requests_waiting`` per replica
  scraped every 15 s (KEDA's Prometheus scaler feeds HPA the same way).
- :class:`KpaPolicy`: Knative's KPA on requests in flight per replica, as the
  queue-proxy reports them each second: a 60 s stable window, a 6 s panic
  window, panic at 200%, no scale-down while panicking.
- :class:`WithAdmission` puts surgegate's tier-aware admission (its throttle
  decisions, without its scaling) in front of any of them, so a report can
  tell what prediction adds over admission alone.
- :class:`OraclePolicy` knows the demand ahead: the limit any causal policy is
  measured against.
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
from surgegate.control.scaling import PoolConfig
from surgegate.forecast.scope import ScopeForecaster
from surgegate.schemas.aggregates import PoolStats, TrafficStats
from surgegate.schemas.decisions import ThrottleDecision
from surgegate.schemas.forecasts import Forecast
from surgegate.settings import DEFAULT_WINDOW_S


@dataclasses.dataclass(frozen=True)
class Sample:
    """One simulated second: what the servers and the GPUs report."""

    now_s: float
    ready: int
    #: share of ready replicas whose GPU is busy (DCGM's GPU utilisation)
    gpu_busy: float
    #: sequences in the batch and requests waiting, all replicas (vLLM's running / waiting gauges)
    running: float
    waiting: float
    #: KV-cache use, 0..1, averaged over the replicas
    kv_cache: float

    @property
    def concurrency(self) -> float:
        """Requests in flight: running and waiting."""
        return self.running + self.waiting


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
    #: what its operator tunes, and its value
    knob: str = ""
    knob_value: float = 0.0
    #: the value as the report shows it ("" : knob_value)
    knob_text: str = ""

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
    #: requests in flight one replica holds at ``replica_rps`` (a serving benchmark's figure)
    replica_concurrency: float = 32.0
    #: time-to-first-token SLO of the top tier, ms
    ttft_slo_ms: float = 2_000.0
    #: prompt and output tokens a second one replica serves within the SLO (None: count requests only)
    replica_tps: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        check(self.replica_rps > 0, "replica_rps", self.replica_rps, "must be > 0")
        check(self.max_replicas >= 1, "max_replicas", self.max_replicas, "must be >= 1")
        check(0 <= self.min_replicas <= self.max_replicas, "min_replicas", self.min_replicas,
              f"must be within [0, max_replicas={self.max_replicas}]")
        check(0 < self.target_utilisation <= 1, "target_utilisation", self.target_utilisation,
              "must be within (0, 1]")
        check(self.replica_concurrency > 0, "replica_concurrency", self.replica_concurrency, "must be > 0")
        check(self.ttft_slo_ms > 0, "ttft_slo_ms", self.ttft_slo_ms, "must be > 0")


class SurgegatePolicy(Policy):
    """The forecaster, throttle policy and scaling policy the agents run, on simulated windows.

    Its knob is the risk it takes: the scaling policy's target utilisation of the learned per-replica
    capacity, and with it the burst coverage along :data:`RISK` (a lower utilisation holds for rarer
    bursts), from the cheapest (0.9: the median rise) to a fleet sized for the worst rise seen (0.5).
    """

    name = "surgegate"
    static_limit_rps = None
    knob = "target utilisation / burst coverage"

    def __init__(self, fleet: FleetBounds, *, service: str = "chat", window_s: int = DEFAULT_WINDOW_S,
                 target_utilisation: float | None = None, burst_coverage: float | None = None) -> None:
        self.knob_value = target_utilisation if target_utilisation is not None else DEFAULT_RISK
        if burst_coverage is None:
            burst_coverage = RISK.get(self.knob_value, PoolConfig.burst_coverage)
        self.knob_text = f"{self.knob_value:g} / {burst_coverage:g}"
        self.config = surgegate_config(fleet, service, self.knob_value, burst_coverage)
        self.forecaster = ScopeForecaster(f"service={service}", step_ms=window_s * 1000)
        self.controller = ServiceController(self.config)
        self.forecast: Forecast | None = None
        self._plan = Plan(replicas=fleet.min_replicas)

    @classmethod
    def _invalid_params(cls) -> list[dict[str, Any]]:
        return [{"target_utilisation": 0.0}]

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


#: the share of the SLO-measured capacity admission lets in
ADMISSION_UTILISATION = 0.95
#: surgegate's risk line: target utilisation -> the burst coverage that goes with it
RISK = {0.9: 0.5, 0.85: 0.8, 0.8: 0.9, 0.7: 0.99, 0.5: 1.0}
DEFAULT_RISK = 0.8


def surgegate_config(fleet: FleetBounds, service: str = "chat", target_utilisation: float | None = None,
                     burst_coverage: float | None = None) -> ServiceConfig:
    """The service configuration an operator would write for this fleet: its SLO, its benchmarked replica."""
    prompt_tps, output_tps = fleet.replica_tps if fleet.replica_tps is not None else (None, None)
    # a replica's rate is measured at the SLO (TPOT within target), so admission keeps a 5% margin on it
    return ServiceConfig(service=service, pool="gpu", replica_rps=fleet.replica_rps, replicas=fleet.min_replicas,
                         target_utilisation=ADMISSION_UTILISATION,
                         slo_p99_ms=fleet.ttft_slo_ms, ttft_slo_ms=fleet.ttft_slo_ms,
                         replica_prompt_tps=prompt_tps, replica_output_tps=output_tps, scaling={
                             "min_replicas": fleet.min_replicas, "max_replicas": fleet.max_replicas,
                             "target_utilisation": fleet.target_utilisation if target_utilisation is None
                             else target_utilisation,
                             "cold_start_s": fleet.cold_start_s,
                             **({"burst_coverage": burst_coverage} if burst_coverage is not None else {})})


class StaticPolicy(Policy):
    """A fixed fleet (within the same replica bounds as every policy)."""

    name = "static"
    knob = "replicas"

    def __init__(self, fleet: FleetBounds, replicas: int, limit_share: float | None = None) -> None:
        check(replicas >= 1, "replicas", replicas, "must be >= 1")
        if limit_share is not None:
            _check_share(limit_share)
        self.replicas = min(fleet.max_replicas, max(fleet.min_replicas, replicas))
        self.knob_value = self.replicas
        if limit_share is not None:
            self.static_limit_rps = self.replicas * fleet.replica_rps * limit_share

    @classmethod
    def _unit_test_params(cls, fleet: FleetBounds) -> dict[str, Any]:
        return {"fleet": fleet, "replicas": fleet.min_replicas + 1}

    @classmethod
    def _invalid_params(cls) -> list[dict[str, Any]]:
        return [{"replicas": 0}, {"limit_share": 0.0}]

    def plan(self) -> Plan:
        return Plan(replicas=self.replicas, reason=f"fixed fleet of {self.replicas}")


class OraclePolicy(Policy):
    """Clairvoyant: it knows every second's demand (and request lengths) ahead, and starts each replica exactly
    one cold start before it is needed and stops it as soon as it is not; it never throttles.

    No causal policy can run the service for less at the same SLO (it could only match it by foreseeing every
    burst), so every report gives each policy's cost as a ratio to the oracle's. Its knob is the utilisation it
    runs replicas at: the SLO-measured rate times it is what one replica takes.
    """

    name = "oracle"
    knob = "target utilisation"
    static_limit_rps = None

    def __init__(self, fleet: FleetBounds, demand: list[float], per_replica: list[float], *,
                 cold_start_s: float | None = None, target_utilisation: float | None = None) -> None:
        check(len(demand) == len(per_replica) and len(demand) > 0, "demand", len(demand),
              "needs one rate (and one per-replica rate) per second")
        check(min(per_replica) > 0, "per_replica", min(per_replica), "must be > 0 every second")
        self.knob_value = target_utilisation if target_utilisation is not None else fleet.target_utilisation
        check(0 < self.knob_value <= 1, "target_utilisation", self.knob_value, "must be within (0, 1]")
        lead = max(1, math.ceil(cold_start_s if cold_start_s is not None else fleet.cold_start_s))
        need = [min(fleet.max_replicas, max(fleet.min_replicas, math.ceil(d / (r * self.knob_value) - 1e-9)))
                for d, r in zip(demand, per_replica)]
        # what must run at second t: every replica needed from t until one cold start later (a replica stopped
        # now could not be back in time), a sliding maximum
        self._plan = _sliding_max(need, lead + 1)
        self._now = 0

    @classmethod
    def _unit_test_params(cls, fleet: FleetBounds) -> dict[str, Any]:
        demand = [fleet.replica_rps * fleet.max_replicas * (0.2 if t < 200 else 0.9) for t in range(600)]
        return {"fleet": fleet, "demand": demand, "per_replica": [fleet.replica_rps] * 600}

    @classmethod
    def _invalid_params(cls) -> list[dict[str, Any]]:
        return [{"target_utilisation": 0.0}, {"per_replica": [0.0] * 600}]

    def second(self, sample: Sample) -> None:
        self._now = int(sample.now_s) + 1  # plan() answers for the second about to begin

    def plan(self) -> Plan:
        t = min(self._now, len(self._plan) - 1)
        return Plan(replicas=self._plan[t], reason=f"foreseen: {self._plan[t]} replicas from here")


def _sliding_max(values: list[int], width: int) -> list[int]:
    """``out[t] = max(values[t:t + width])`` in one pass (a monotonic deque)."""
    out = [0] * len(values)
    window: collections.deque[int] = collections.deque()
    for t in range(len(values) - 1, -1, -1):
        while window and values[window[-1]] <= values[t]:
            window.pop()
        window.append(t)
        while window[0] >= t + width:
            window.popleft()
        out[t] = values[window[0]]
    return out


class Scraped:
    """A gauge as a metrics pipeline holds it: sampled every ``period_s``; a reader sees the last sample."""

    def __init__(self, period_s: int) -> None:
        self.period_s = period_s
        self.value: float | None = None

    def observe(self, now_s: float, value: float) -> None:
        if int(now_s) % self.period_s == 0:
            self.value = value


#: HPA's metrics: what each reads from a sample, per replica, and how often it is collected
HPA_METRICS: dict[str, tuple[str, int]] = {
    "gpu": ("GPU utilisation (DCGM, collected every 30 s)", 30),
    "queue": ("vllm:num_requests_waiting per replica (scraped every 15 s)", 15),
}


class HpaPolicy(Policy):
    """Kubernetes HPA v2 with its default behaviour, on GPU utilisation or the waiting queue.

    The knob: the utilisation target (``gpu``), or the average waiting requests
    per replica (``queue``, as a KEDA Prometheus scaler's threshold).
    """

    SYNC_S = 15
    TOLERANCE = 0.1
    STABILISATION_S = 300

    def __init__(self, fleet: FleetBounds, metric: str = "gpu", target: float | None = None,
                 limit_share: float | None = None) -> None:
        check(metric in HPA_METRICS, "metric", metric, f"must be one of {', '.join(HPA_METRICS)}")
        if limit_share is not None:
            _check_share(limit_share)
            self.static_limit_rps = fleet.max_replicas * fleet.replica_rps * limit_share
        default = fleet.target_utilisation if metric == "gpu" else 5.0
        self.target = target if target is not None else default
        check(self.target > 0 and (metric != "gpu" or self.target <= 1), "target", self.target,
              "must be > 0 (a utilisation: within (0, 1])")
        self.metric = metric
        self.name = "hpa-gpu" if metric == "gpu" else "keda-queue"
        self.knob = "target utilisation" if metric == "gpu" else "waiting per replica"
        self.knob_value = self.target
        self.fleet = fleet
        self.scraped = Scraped(HPA_METRICS[metric][1])
        self.replicas = fleet.min_replicas
        self.recommendations: collections.deque[tuple[float, int]] = collections.deque()
        self.reason = ""

    def second(self, sample: Sample) -> None:
        ready = max(1, sample.ready)
        self.scraped.observe(sample.now_s, sample.gpu_busy if self.metric == "gpu" else sample.waiting / ready)
        value = self.scraped.value
        if int(sample.now_s) % self.SYNC_S or value is None:
            return
        f = self.fleet
        ratio = value / self.target
        if abs(ratio - 1) <= self.TOLERANCE:
            recommendation = self.replicas
        else:
            recommendation = min(f.max_replicas, max(f.min_replicas, math.ceil(ready * ratio)))
        self.recommendations.append((sample.now_s, recommendation))
        while self.recommendations[0][0] <= sample.now_s - self.STABILISATION_S:
            self.recommendations.popleft()
        if recommendation > self.replicas:  # scale-up policy: max(4 pods, 100%) per period
            target = min(recommendation, self.replicas + max(4, self.replicas))
        else:  # scale-down: the highest recommendation of the stabilisation window
            target = min(self.replicas, max(r for _, r in self.recommendations))
        self.reason = f"{self.metric} {value:.3g} vs target {self.target:g}: {self.replicas} -> {target}"
        self.replicas = target

    @classmethod
    def _invalid_params(cls) -> list[dict[str, Any]]:
        return [{"limit_share": 0.0}, {"metric": "cpu"}, {"target": 0.0}]

    def plan(self) -> Plan:
        return Plan(replicas=self.replicas, reason=self.reason)


class KpaPolicy(Policy):
    """Knative's KPA: requests in flight per replica, stable and panic windows.

    The knob: target requests in flight per replica (Knative's target
    concurrency times its target utilisation).
    """

    name = "kpa"
    knob = "requests in flight per replica"
    TICK_S = 2
    STABLE_S = 60
    PANIC_S = 6
    PANIC_THRESHOLD = 2.0
    MAX_SCALE_DOWN_RATE = 2.0

    def __init__(self, fleet: FleetBounds, concurrency: float | None = None, limit_share: float | None = None
                 ) -> None:
        self.target = concurrency if concurrency is not None else fleet.replica_concurrency * fleet.target_utilisation
        check(self.target > 0, "concurrency", self.target, "must be > 0")
        if limit_share is not None:
            _check_share(limit_share)
            self.static_limit_rps = fleet.max_replicas * fleet.replica_rps * limit_share
        self.knob_value = self.target
        self.fleet = fleet
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
        self.reason = f"{mode}: in flight {stable:,.0f} (60 s) / {panic:,.0f} (6 s) -> {target}"
        self.replicas = target

    @classmethod
    def _invalid_params(cls) -> list[dict[str, Any]]:
        return [{"concurrency": 0.0}, {"limit_share": -1.0}]

    def plan(self) -> Plan:
        return Plan(replicas=self.replicas, reason=self.reason)


class WithAdmission(Policy):
    """Any fleet policy with surgegate's tier-aware admission at the edges (its throttle, not its scaling)."""

    def __init__(self, fleet: FleetBounds, inner: Policy | None = None, service: str = "chat") -> None:
        check(inner is None or isinstance(inner, Policy), "inner", inner, "must be a simulated Policy")
        self.inner = inner if inner is not None else HpaPolicy(fleet, "gpu")
        self.name = f"{self.inner.name}+admission"
        self.knob, self.knob_value, self.knob_text = self.inner.knob, self.inner.knob_value, self.inner.knob_text
        self.controller = ServiceController(surgegate_config(fleet, service))
        self.decision: ThrottleDecision | None = None

    @classmethod
    def _invalid_params(cls) -> list[dict[str, Any]]:
        return [{"inner": "hpa"}]

    def second(self, sample: Sample) -> None:
        self.inner.second(sample)

    def window(self, obs: Observation) -> None:
        self.inner.window(obs)
        out = self.controller.step(ServiceWindow(window_start=obs.window_start_ms, window_ms=obs.window_ms,
                                                 service=obs.service, tiers=obs.tiers, pool=obs.pool))
        self.decision = out.throttle

    def plan(self) -> Plan:
        inner = self.inner.plan()
        level = self.decision.level if self.decision is not None else 0
        return Plan(replicas=inner.replicas, warm=inner.warm, decision=self.decision, level=level,
                    reason=inner.reason)


def _check_share(limit_share: float) -> None:
    check(limit_share > 0, "limit_share", limit_share, "must be > 0 (above 1: a limit over the fleet's capacity)")
