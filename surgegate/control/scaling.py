"""The scaling policy: every window, how many replicas a GPU pool should run.

Throttling buys time; capacity ends the burst. So the target comes from
demand *including* what was throttled and the deferred backlog, and from the
forecast at the pool's lead time: a replica started now is ready only after
the cold start, so it must be started for the load expected then.

- Capacity follows the *expected* load: the forecast's point over the lead
  time (or the demand now, if higher) at the target utilisation. The forecast's
  uncertainty is not paid for twice: the gap up to its upper bound is held as
  a warm pool (loaded, idle replicas that start in about a second).
- Capacity holds for the bursts the service has: a burst rises within less
  than a cold start, so what it needs must be there before it begins. A
  :class:`~surgegate.control.burst.BurstEnvelope` learns, online, how far the
  load rises within the lead time (the load being the demand, or what the
  window's busiest second needs if requests may wait ``queue_allowance_s`` for
  a replica, whichever is higher), and the pool holds capacity for its
  ``burst_coverage`` quantile at ``burst_utilisation``: the stated risk, the
  share of windows whose rise the held capacity covers. 1.0 holds for the
  worst rise seen, as a fleet sized for the peak does; lower holds less and
  pays less. Whatever a burst brings beyond it, throttling absorbs: so a
  second envelope learns the top tier's realtime load alone and the pool
  always holds capacity for its ``protected_coverage`` quantile (by default
  the worst rise seen). The lower tiers are shed first in a burst; the top
  tier's own rise is covered by replicas already serving.
- Scale up at once to the target: the policy knows what it needs, and a
  step limit would only make a burst's first windows short.
- Scale down on the forecast: to the highest need the point forecast shows
  within the lead time (a replica stopped now takes that long to come back),
  held for ``cooldown_s`` against noise, with 5% headroom, at most 20% a window.
  A steady load that wobbles by less than that cannot make the pool flap.
- TTFT is evidence too: a window whose TTFT p99 breached the SLO while
  nothing waited means the replicas' prefill is too busy for the prompts
  (longer prompts, say). Throttling cannot shorten that, more replicas can: the
  capacity held per unit of load rises 10% for each such window (at most 2x)
  and relaxes as windows meet the SLO. The reason says so.
- Within [min_replicas, max_replicas]; zero traffic holds the minimum.
- Capacity mix: reserved replicas for the sustained baseline, spot for the
  deferrable batch work, on-demand for the rest; overflow replicas on the
  secondary pool when the primary is at its maximum.
- The lead time is learned: from each scale-up to the window its replicas were
  all ready, blended into the configured cold-start time.

The reason of every decision names what drove it: the forecast, the demand
now, or the deferred backlog.

>>> cfg = PoolConfig(pool="gpu-a", replica_rps=100.0)
>>> p = ScalingPolicy(cfg)
>>> d = p.decide(ScalingInputs(window_start=0, window_ms=10_000, demand_rps=2000.0, ready_replicas=5))
>>> d.desired_replicas, d.reason
(29, 'scale 5 -> 29: demand 2,000 rps > 5 x 100 x 0.7')
"""

from __future__ import annotations

import collections
import dataclasses
import math
from typing import Any

from surgegate.checks import check
from surgegate.control.base import WindowPolicy
from surgegate.control.burst import BurstEnvelope
from surgegate.control.state import FORMAT, BurstState, ScalingState
from surgegate.control.version import decision_version
from surgegate.schemas.decisions import CapacityMix, Overflow, ScalingDecision

#: Deferred work is planned to drain within this long.
BACKLOG_DRAIN_S = 60.0
#: Scale-down per window: at most this share of the current size (at least one replica).
SCALE_DOWN_SHARE = 0.2
#: Scaling down keeps this headroom over the cooldown's highest need, so a load that
#: wobbles by less than it cannot make the pool flap. HPA's tolerance is 0.1; 0.05
#: lands a scale-down at 67% utilisation (0.7 / 1.05) instead of 64%, inside the
#: 65-75% a steady pool should run at, and aggregate LLM traffic at thousands of
#: rps wobbles by far less than 5% from one window to the next.
TOLERANCE = 0.05
#: Weight of a newly measured lead time in the learned one.
LEAD_LEARNING_RATE = 0.3
#: A window whose TTFT breached its SLO with nothing waiting raises the capacity held per unit of load by
#: this factor (up to TTFT_HEADROOM_MAX); each window within the SLO takes a share of the rise back.
TTFT_STEP, TTFT_HEADROOM_MAX, TTFT_RELAX = 1.1, 2.0, 0.05


@dataclasses.dataclass(frozen=True)
class PoolConfig:
    """What the scaling policy knows about one GPU pool.

    Prices are per replica-hour. ``reserved_replicas`` is what is bought for the
    baseline (default: ``min_replicas``). ``secondary_pool`` takes up to
    ``secondary_max`` overflow replicas when this pool is at ``max_replicas``;
    ``secondary_price`` is their price.
    """

    pool: str
    replica_rps: float
    min_replicas: int = 5
    max_replicas: int = 50
    target_utilisation: float = 0.7
    cooldown_s: float = 60.0
    cold_start_s: float = 15.0
    warm_min: int = 1
    reserved_replicas: int | None = None
    price_reserved: float = 2.0
    price_on_demand: float = 4.0
    price_spot: float = 1.4
    secondary_pool: str = ""
    secondary_max: int = 0
    secondary_price: float = 5.0
    #: the share of windows whose rise within the lead time the held capacity covers (the stated risk)
    burst_coverage: float = 0.9
    #: the same for the top tier's realtime load alone (1: the worst rise seen)
    protected_coverage: float = 1.0
    #: the utilisation of the SLO-measured per-replica rate a burst may run the pool at
    burst_utilisation: float = 0.95
    #: seconds a request may wait for a replica within its SLO: a second's arrivals may be served over
    #: one second plus this
    queue_allowance_s: float = 0.5

    def __post_init__(self) -> None:
        name = f"pools.{self.pool}"
        check(self.replica_rps > 0, f"{name}.replica_rps", self.replica_rps, "must be > 0")
        check(0 <= self.min_replicas <= self.max_replicas, f"{name}.min_replicas", self.min_replicas,
              f"must be within [0, max_replicas={self.max_replicas}]")
        check(self.max_replicas >= 1, f"{name}.max_replicas", self.max_replicas, "must be >= 1")
        check(0 < self.target_utilisation <= 1, f"{name}.target_utilisation", self.target_utilisation,
              "must be within (0, 1]")
        check(self.cooldown_s >= 0, f"{name}.cooldown_s", self.cooldown_s, "must be >= 0")
        check(self.cold_start_s > 0, f"{name}.cold_start_s", self.cold_start_s, "must be > 0")
        check(self.warm_min >= 0, f"{name}.warm_min", self.warm_min, "must be >= 0")
        check(self.secondary_max >= 0, f"{name}.secondary_max", self.secondary_max, "must be >= 0")
        for field in ("burst_coverage", "protected_coverage"):
            value = getattr(self, field)
            check(0.5 <= value <= 1.0, f"{name}.{field}", value, "must be within [0.5, 1]")
        check(0 < self.burst_utilisation <= 1, f"{name}.burst_utilisation", self.burst_utilisation,
              "must be within (0, 1]")
        check(self.queue_allowance_s >= 0, f"{name}.queue_allowance_s", self.queue_allowance_s, "must be >= 0")
        for field in ("price_reserved", "price_on_demand", "price_spot", "secondary_price"):
            check(getattr(self, field) >= 0, f"{name}.{field}", getattr(self, field), "must be >= 0")

    @property
    def reserved(self) -> int:
        return self.min_replicas if self.reserved_replicas is None else self.reserved_replicas


@dataclasses.dataclass(frozen=True)
class ScalingInputs:
    """One window's view of a pool's service.

    ``demand_rps`` counts every request that arrived, throttled ones included;
    ``deferred`` is the batch work put on the async queue in the window.
    ``point_rps`` and ``upper_rps`` are the forecast's point and upper bound
    for the next windows.
    """

    window_start: int
    window_ms: int
    demand_rps: float
    ready_replicas: int
    cold_starting: int = 0
    batch_rps: float = 0.0
    deferred: int = 0
    upper_rps: tuple[float, ...] = ()
    point_rps: tuple[float, ...] = ()
    #: deferred work the deferral lane replayed in the window, per second (not part of ``demand_rps``)
    replayed_rps: float = 0.0
    #: the rate that finishes the deferral lane's backlog by its deadlines (its drainers' reports)
    backlog_required_rps: float = 0.0
    #: the window's TTFT p99 over the service's TTFT SLO while nothing waited: the replicas' prefill is
    #: too busy for the prompts (more replicas shorten it; throttling cannot)
    ttft_over_ms: float | None = None
    #: the per-replica rate the safe-capacity estimate has learned (None: the configured one)
    replica_rps: float | None = None
    #: new demand in the window's busiest second, per second (None: not measured)
    peak_rps: float | None = None
    #: the top tier's realtime demand, and its busiest second's (None: not known)
    protected_rps: float | None = None
    protected_peak_rps: float | None = None


class ScalingPolicy(WindowPolicy):
    """Per-pool scaling state: current target, recommendations, learned lead time."""

    @classmethod
    def _unit_test_params(cls, **config: Any) -> dict[str, Any]:
        return {"config": PoolConfig(**{"pool": "gpu-a", "replica_rps": 100.0, "min_replicas": 2,
                                        "max_replicas": 20, **config})}

    @classmethod
    def _invalid_params(cls) -> list[dict[str, Any]]:
        return [{"replica_rps": 0.0}, {"min_replicas": 30}, {"max_replicas": 0}, {"cold_start_s": 0.0},
                {"target_utilisation": 0.0}, {"burst_coverage": 0.2}, {"burst_utilisation": 0.0}]

    def __init__(self, config: PoolConfig) -> None:
        self.config = config
        self.current: int | None = None
        #: capacity held per unit of load beyond the target utilisation, learned from TTFT breaches
        self.ttft_headroom = 1.0
        self.lead_s = config.cold_start_s
        self.last_version = -1
        # (window_start, recommendation) within the cooldown
        self.recommendations: collections.deque[tuple[int, int]] = collections.deque()
        # a scale-up waiting to be ready: (window_start it was asked, replicas asked)
        self.pending: tuple[int, int] | None = None
        #: how far the load rises within the lead time, everyone's and the top tier's realtime load's (made at
        #: the first window, whose length sets the horizon)
        self.burst: BurstEnvelope | None = None
        self.protected: BurstEnvelope | None = None
        self._burst_state: BurstState | None = None
        self._protected_state: BurstState | None = None

    # ------------------------------------------------------------ state

    def state(self) -> ScalingState:
        """What the policy has learned (its checkpoint)."""
        burst = self.burst.state() if self.burst is not None else self._burst_state
        protected = self.protected.state() if self.protected is not None else self._protected_state
        return ScalingState(format=FORMAT, pool=self.config.pool, current=self.current,
                            ttft_headroom=self.ttft_headroom, lead_s=self.lead_s, last_version=self.last_version,
                            recommendations=list(self.recommendations), pending=self.pending, burst=burst,
                            protected=protected)

    def load(self, state: ScalingState) -> None:
        """Take up ``state`` (from :meth:`state`) under the configuration in force."""
        if state.pool != self.config.pool:
            raise ValueError(f"scaling state of pool {state.pool!r} loaded into {self.config.pool!r}")
        self.current, self.ttft_headroom, self.lead_s = state.current, state.ttft_headroom, state.lead_s
        self.last_version, self.pending = state.last_version, state.pending
        self.recommendations = collections.deque(state.recommendations)
        # taken up at the next window, whose length they need
        self.burst, self._burst_state = None, state.burst
        self.protected, self._protected_state = None, state.protected

    # ------------------------------------------------------------ lead time

    def _learn_lead(self, inputs: ScalingInputs) -> None:
        if self.pending is None:
            return
        asked_at, asked = self.pending
        if inputs.ready_replicas >= asked:
            # ready by the end of this window at the latest
            measured = (inputs.window_start + inputs.window_ms - asked_at) / 1000
            self.lead_s += LEAD_LEARNING_RATE * (measured - self.lead_s)
            self.pending = None

    def lead_windows(self, window_ms: int) -> int:
        """Windows from a scale-up until its replicas serve (the cold start, and this decision's window)."""
        return max(1, math.ceil(self.lead_s * 1000 / window_ms)) + 1

    def starting(self, ready_replicas: int) -> tuple[tuple[int, int], ...]:
        """Replicas asked for and not ready yet, with when they should be: ``((ready_at_ms, n),)``."""
        if self.pending is None or self.current is None or self.current <= ready_replicas:
            return ()
        asked_at, _ = self.pending
        return ((int(asked_at + self.lead_s * 1000), self.current - ready_replicas),)

    def _envelopes(self, window_ms: int) -> tuple[BurstEnvelope, BurstEnvelope]:
        """The burst envelopes, over the configured lead time (the horizon a restored one learned over)."""
        if self.burst is None or self.protected is None:
            made = []
            for restored, coverage in ((self._burst_state, self.config.burst_coverage),
                                       (self._protected_state, self.config.protected_coverage)):
                horizon = restored.horizon if restored is not None else \
                    max(1, math.ceil(self.config.cold_start_s * 1000 / window_ms)) + 1
                envelope = BurstEnvelope(horizon=min(360, horizon), coverage=coverage)
                if restored is not None:
                    envelope.load(restored)
                made.append(envelope)
            self.burst, self.protected = made
            self._burst_state = self._protected_state = None
        return self.burst, self.protected

    # ------------------------------------------------------------ decide

    def decide(self, inputs: ScalingInputs) -> ScalingDecision:
        cfg = self.config
        self._learn_lead(inputs)
        if inputs.ttft_over_ms is not None:
            self.ttft_headroom = min(TTFT_HEADROOM_MAX, self.ttft_headroom * TTFT_STEP)
        else:
            self.ttft_headroom = max(1.0, self.ttft_headroom - TTFT_RELAX * (self.ttft_headroom - 1.0) - 1e-3)
        per = (inputs.replica_rps or cfg.replica_rps) * cfg.target_utilisation / self.ttft_headroom
        current = self.current if self.current is not None else max(cfg.min_replicas, inputs.ready_replicas)
        lead = self.lead_windows(inputs.window_ms)
        # deferred work: what this window put on the deferral lane and what the lane is draining now, or
        # (when more) the rate that finishes the lane's whole backlog by its deadlines
        backlog = max(inputs.deferred / BACKLOG_DRAIN_S + inputs.replayed_rps, inputs.backlog_required_rps)
        # the point forecast, or the upper bound where a forecast gives no point (an older producer)
        point = inputs.point_rps or inputs.upper_rps
        ahead = point[:lead]
        forecast = max(ahead) if ahead else 0.0
        need = max(forecast, inputs.demand_rps) + backlog
        raw = math.ceil(need / per - 1e-9) if need > 0 else 0
        # the bursts: what the load may rise to within the lead time, from the rises of the windows before
        # this one; then this window's load is learned
        everyone, top = self._envelopes(inputs.window_ms)
        load = max(inputs.demand_rps, (inputs.peak_rps or 0.0) / (1 + cfg.queue_allowance_s)) + backlog
        held = everyone.envelope(load) or 0.0
        everyone.learn(load)
        binding: tuple[str, BurstEnvelope, float] = ("load", everyone, cfg.burst_coverage)
        if inputs.protected_rps is not None:
            own = max(inputs.protected_rps, (inputs.protected_peak_rps or 0.0) / (1 + cfg.queue_allowance_s))
            held_top = top.envelope(own) or 0.0
            top.learn(own)
            if held_top > held:
                held, binding = held_top, ("the top tier's realtime load", top, cfg.protected_coverage)
        burst_per = (inputs.replica_rps or cfg.replica_rps) * cfg.burst_utilisation / self.ttft_headroom
        for_bursts = math.ceil(held / burst_per - 1e-9) if held > 0 else 0
        raw = max(raw, for_bursts)
        overflow = min(max(0, raw - cfg.max_replicas), cfg.secondary_max) if cfg.secondary_pool else 0
        recommendation = min(cfg.max_replicas, max(cfg.min_replicas, raw))
        # scale-down holds what the point forecast needs within the lead time, with headroom, and the bursts
        near = max(point[:lead], default=0.0)
        keep_need = max(near, inputs.demand_rps) + backlog
        keep = math.ceil(keep_need * (1 + TOLERANCE) / per - 1e-9) if keep_need > 0 else 0
        keep = max(keep, for_bursts)
        self.recommendations.append((inputs.window_start, min(cfg.max_replicas, max(cfg.min_replicas, keep))))
        horizon = inputs.window_start - cfg.cooldown_s * 1000
        while self.recommendations and self.recommendations[0][0] <= horizon:
            self.recommendations.popleft()

        capped = False
        if recommendation > current:
            target = recommendation
        else:
            stabilised = max(r for _, r in self.recommendations)
            floor = current - max(1, math.floor(current * SCALE_DOWN_SHARE))
            target = min(current, max(stabilised, floor))
            capped = target > stabilised
        target = min(cfg.max_replicas, max(cfg.min_replicas, target))

        # warm replicas: the forecast's upper bound within the lead time beyond the target
        upper = max(inputs.upper_rps[:lead], default=0.0)
        spare = math.ceil(max(upper, need) / per - 1e-9) - target
        warm = max(cfg.warm_min, min(spare, max(0, cfg.max_replicas - target)))

        if target > current:
            self.pending = (inputs.window_start, target)
        mix = self._mix(target, inputs.batch_rps + backlog, per)
        cost = (mix.reserved * cfg.price_reserved + mix.on_demand * cfg.price_on_demand + mix.spot * cfg.price_spot
                + overflow * cfg.secondary_price)
        what, envelope, coverage = binding
        bursts = (f"{what} rose up to {envelope.factor() or 0:.1f}x within {lead * inputs.window_ms / 1000:.0f} s "
                  + ("at worst" if coverage >= 1.0 else f"in {coverage:.1%} of windows")
                  + f", {_n(held)} rps held at {cfg.burst_utilisation:g}") \
            if for_bursts > math.ceil(need / per - 1e-9) else None
        reason = self._reason(current, target, recommendation, inputs, forecast, backlog, lead, capped, overflow,
                              bursts)
        version = decision_version(inputs.window_start)
        self.current = target
        self.last_version = version
        issued = inputs.window_start + inputs.window_ms
        return ScalingDecision(
            pool=cfg.pool, version=version, issued_at=issued, desired_replicas=target, previous_replicas=current,
            ready_replicas=inputs.ready_replicas, cold_starting=inputs.cold_starting, warm_pool=warm,
            min_replicas=cfg.min_replicas, max_replicas=cfg.max_replicas, lead_time_s=round(self.lead_s, 1),
            demand_rps=round(inputs.demand_rps, 3), forecast_upper_rps=round(upper, 3), mix=mix,
            overflow=Overflow(pool=cfg.secondary_pool, replicas=overflow) if overflow else None,
            cost_per_hour=round(cost, 2), reason=reason,
        )

    def _mix(self, target: int, batch_rps: float, per: float) -> CapacityMix:
        cfg = self.config
        reserved = min(target, cfg.reserved)
        above = target - reserved
        spot = min(above, math.ceil(batch_rps / per - 1e-9)) if batch_rps > 0 else 0
        return CapacityMix(reserved=reserved, on_demand=above - spot, spot=spot)

    def _reason(self, current: int, target: int, recommendation: int, inputs: ScalingInputs, forecast: float,
                backlog: float, lead: int, capped: bool, overflow: int, bursts: str | None) -> str:
        cfg = self.config
        lead_s = lead * inputs.window_ms / 1000
        rps = _n(inputs.replica_rps or cfg.replica_rps)
        capacity = f"{current} x {rps} x {cfg.target_utilisation:g}"
        if bursts is not None:
            driver = f"bursts: {bursts}"
            capacity = f"{current} x {rps} x {cfg.burst_utilisation:g}"
        elif forecast >= inputs.demand_rps and forecast > 0:
            driver = f"forecast {_n(forecast)} rps within {lead_s:.0f} s"
        else:
            driver = f"demand {_n(inputs.demand_rps)} rps"
        if backlog > 0:
            by_deadline = inputs.backlog_required_rps >= backlog
            driver += f" + deferred backlog {_n(backlog)} rps{' to meet its deadlines' if by_deadline else ''}"
        if self.ttft_headroom > 1.0:
            why_ttft = f"TTFT p99 over its SLO by {inputs.ttft_over_ms:,.0f} ms with nothing waiting" \
                if inputs.ttft_over_ms is not None else "TTFT was over its SLO"
            driver += f" ({why_ttft}: {self.ttft_headroom - 1:.0%} more capacity held)"
        if target > current:
            why = f"scale {current} -> {target}: {driver} > {capacity}"
        elif target < current:
            util = cfg.burst_utilisation if bursts is not None else cfg.target_utilisation
            why = f"scale {current} -> {target}: {driver} fits {target} x {rps} x " \
                  f"{util:g}; no higher need forecast or seen for {cfg.cooldown_s:.0f} s"
            if capped:
                why += f"; -{current - target} a window at most ({SCALE_DOWN_SHARE:.0%})"
        elif recommendation < current:
            why = f"hold {current}: {driver} needs {recommendation}, but within the {cfg.cooldown_s:.0f} s " \
                  f"cooldown a recommendation asked for {target}"
        else:
            why = f"hold {current}: {driver} fits {capacity}"
        if target == cfg.max_replicas and recommendation >= cfg.max_replicas:
            why += f"; at max {cfg.max_replicas}"
        if overflow:
            why += f"; overflow {overflow} on {cfg.secondary_pool}"
        return why


def _n(value: float) -> str:
    """1234 -> '1,234'; 48000 -> '48k'."""
    if value >= 10_000:
        return f"{value / 1000:,.0f}k"
    return f"{value:,.0f}" if value >= 10 else f"{value:.3g}"
