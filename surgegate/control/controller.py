"""The service controller: one window of a service in, its three control outputs out.

The decide agent and the simulator both drive this one object, so the
simulator runs exactly what the agents run. Given a service's closed window
(its traffic, tier and tenant breakdowns, GPU pool statistics), the newest
forecast at hand and the operator overrides in force, :meth:`ServiceController.step`
returns the safe-capacity :class:`Threshold`, the :class:`ThrottleDecision`
for the edges and the :class:`ScalingDecision` for the service's pool.

Two rules live here and nowhere else:

- which replicas are ready: the pool's own reports when workers report, else
  the last scaling decision is assumed carried out, else the configured fleet;
- the scaling policy sees demand *including* throttled requests (throttling
  never hides a burst from capacity) and the per-replica rate the throttle
  policy's safe capacity has just learned;
- with a replica's capacity given in tokens (``replica_prompt_tps`` and
  ``replica_output_tps``), the per-replica rate is what those serve at the
  window's mean request lengths, and the pool's utilisation is the served rate
  over it. An inference server's own gauges (batch occupancy, KV cache) are not
  linear in load, so they stay saturation evidence, not utilisation.

>>> from surgegate.schemas.aggregates import TrafficAggregate
>>> from surgegate.telemetry.merging import traffic_stats
>>> c = ServiceController(ServiceConfig(service="chat", pool="gpu-a", replica_rps=100.0, replicas=5))
>>> quiet = traffic_stats(TrafficAggregate(ok=1_000, realtime=1_000), 10_000)
>>> out = c.step(ServiceWindow(window_start=0, window_ms=10_000, service=quiet))
>>> out.throttle.level, out.scaling.desired_replicas, c.decided(0)
(0, 5, True)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import msgspec

from surgegate.control.config import ServiceConfig
from surgegate.control.scaling import ScalingInputs, ScalingPolicy
from surgegate.control.throttle import DecisionInputs, ThrottlePolicy
from surgegate.control.version import decision_version
from surgegate.schemas.aggregates import PoolStats, TrafficStats
from surgegate.schemas.decisions import Override, ScalingDecision, Threshold, ThrottleDecision
from surgegate.schemas.forecasts import Forecast


@dataclasses.dataclass(frozen=True)
class ServiceWindow:
    """What is known about one service when its window closes."""

    window_start: int
    window_ms: int
    service: TrafficStats
    tiers: Mapping[str, TrafficStats] = dataclasses.field(default_factory=dict)
    tenants: Mapping[str, TrafficStats] = dataclasses.field(default_factory=dict)
    #: the newest forecast at hand (usually issued after the previous window)
    forecast: Forecast | None = None
    pool: PoolStats | None = None
    overrides: tuple[Override, ...] = ()


@dataclasses.dataclass(frozen=True)
class ControlOutput:
    """One window's three outputs for a service and its pool."""

    threshold: Threshold
    throttle: ThrottleDecision
    scaling: ScalingDecision


class ServiceController:
    """A service's throttle policy and its pool's scaling policy, stepped together each window.

    Both policies are plain attributes so a driver can checkpoint and restore
    each one (the decide agent keeps them in its Faust table).
    """

    def __init__(self, config: ServiceConfig, *, throttle: ThrottlePolicy | None = None,
                 scaling: ScalingPolicy | None = None) -> None:
        self.config = config
        self.throttle = throttle if throttle is not None else ThrottlePolicy(config)
        self.scaling = scaling if scaling is not None else ScalingPolicy(config.pool_config())
        self._rate: float | None = None

    def decided(self, window_start: int) -> bool:
        """True when the window starting at ``window_start`` was decided already (a replay)."""
        return decision_version(window_start) <= self.throttle.last_version

    def ready_replicas(self, pool: PoolStats | None) -> int:
        """Ready replicas by the pool's reports; without any, the last scaling decision is assumed carried out."""
        if pool is not None and pool.workers:
            return pool.ready_replicas
        return self.scaling.current or self.config.replicas

    def token_rate(self, traffic: TrafficStats) -> float | None:
        """The per-replica rate by the configured token capacity, at the window's mean lengths (None: not known)."""
        served = traffic.served - traffic.cache_hits  # the replicas' (hits: none)
        if served <= 0 or not traffic.input_tokens:
            return self._rate
        rate = self.config.replica_rps_for(traffic.input_tokens / served, traffic.output_tokens / served)
        self._rate = rate if rate is not None else self._rate
        return self._rate

    def _ttft_over(self, traffic: TrafficStats, pool: PoolStats | None) -> float | None:
        """How far the window's TTFT p99 is over the SLO while the pool reports nothing waiting (else None)."""
        slo, ttft = self.config.ttft_slo_ms, traffic.ttft_p99_ms
        if slo is None or ttft is None or ttft <= slo or pool is None or not pool.workers or pool.queue_depth_max:
            return None
        return ttft - slo

    def _protected(self, window: ServiceWindow) -> dict[str, float]:
        """The top tier's realtime demand and its busiest second's (its realtime share of them), if it was seen."""
        top = window.tiers.get(self.config.tiers[0])
        if top is None:
            return {}
        share = top.realtime / max(1, top.realtime + top.batch)
        return {"protected_rps": top.demand * share,
                "protected_peak_rps": top.peak_rps * share if top.peak_rps is not None else top.demand * share}

    def step(self, window: ServiceWindow) -> ControlOutput:
        """The threshold and both decisions for the window after ``window``."""
        ready = self.ready_replicas(window.pool)
        pool = window.pool
        rate = self.token_rate(window.service)
        if rate is not None:
            self.throttle.capacity.replica_rps = rate
            if pool is not None and pool.workers:
                s = window.service
                served = (s.served - s.cache_hits) / (window.window_ms / 1000)
                pool = msgspec.structs.replace(pool, utilisation_mean=round(min(1.0, served / (ready * rate)), 6)
                                               if ready else 0.0)
        inputs = DecisionInputs(window_start=window.window_start, window_ms=window.window_ms,
                                service=window.service, tiers=dict(window.tiers), tenants=dict(window.tenants),
                                forecast=window.forecast, pool=pool, overrides=window.overrides,
                                starting=self.scaling.starting(ready))
        threshold, throttle = self.throttle.decide(inputs)
        traffic, forecast = window.service, window.forecast
        scaling = self.scaling.decide(ScalingInputs(
            window_start=window.window_start, window_ms=window.window_ms,
            demand_rps=traffic.demand,  # throttled requests included: throttling never hides a burst
            batch_rps=traffic.batch / (window.window_ms / 1000), deferred=traffic.deferred,
            replayed_rps=traffic.replayed / (window.window_ms / 1000),
            ready_replicas=ready,
            cold_starting=pool.cold_starting_replicas if pool is not None and pool.workers else 0,
            upper_rps=tuple(forecast.upper_after(window.window_start)) if forecast is not None else (),
            point_rps=tuple(forecast.point_after(window.window_start)) if forecast is not None else (),
            replica_rps=threshold.replica_rps, ttft_over_ms=self._ttft_over(traffic, window.pool),
            peak_rps=traffic.peak_rps, **self._protected(window),
            backlog_required_rps=window.pool.backlog_required_rps if window.pool is not None else 0.0))
        return ControlOutput(threshold=threshold, throttle=throttle, scaling=scaling)
