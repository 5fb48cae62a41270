"""The throttle policy: every window, how much each class of a service may send.

Inputs are one window of the service (and of its tiers and tenants), its load
forecast, its GPU pool and the operator overrides in force; the output is a
:class:`ThrottleDecision`. The same inputs in the same state give the same
decision, and the version is the window start (:func:`~surgegate.control.version.decision_version`),
so a replay is recognisable.

Levels (DESIGN.md): 0 normal; 1 defer batch work; 2 throttle the lowest
classes; 3 degrade low tiers (token caps); 4 protect only the top realtime
class. The target level comes from the forecast upper bound over the next
``lookahead_windows`` against safe capacity, and from a reactive guard: a
window that already breaches the latency SLO or the error budget escalates one
level more. Escalation is immediate, de-escalation one level per
``hysteresis_windows`` calm windows.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from surgegate.control.allocation import ClassDemand, allocate, share_by_tokens
from surgegate.control.base import WindowPolicy
from surgegate.control.capacity import SafeCapacity
from surgegate.control.config import ServiceConfig
from surgegate.control.degradation import CircuitBreaker, LevelMachine
from surgegate.control.saturation import saturation
from surgegate.control.state import FORMAT, CapacityState, TenantState, ThrottleState
from surgegate.control.tenants import TenantHistory
from surgegate.control.version import decision_version
from surgegate.schemas.aggregates import PoolStats, TrafficStats
from surgegate.schemas.decisions import BreakerState, Override, TenantLimit, Threshold, ThrottleDecision, TierLimit
from surgegate.schemas.forecasts import Forecast

#: A token bucket may hold this many seconds of its rate.
BURST_SECONDS = 2.0
#: At level 4 only the top tier's realtime traffic is admitted, if it fits in this share.
TOP_TIER_SHARE = 0.7
#: Stepping down needs demand to fit within this share of safe capacity.
CALM_BAND = 0.9
#: A tenant gets its own limit once its demand passes this multiple of an equal share.
NOISY_TENANT = 2.0
REQUEST_TYPE_VALUE = {"realtime": 1.0, "batch": 0.3}


@dataclasses.dataclass(frozen=True)
class DecisionInputs:
    """One window's view of a service."""

    window_start: int
    window_ms: int
    service: TrafficStats
    tiers: dict[str, TrafficStats]
    tenants: dict[str, TrafficStats]
    forecast: Forecast | None = None
    pool: PoolStats | None = None
    overrides: tuple[Override, ...] = ()
    #: replicas the scaling policy has started: (epoch ms they should be ready, how many)
    starting: tuple[tuple[int, int], ...] = ()


class ThrottlePolicy(WindowPolicy):
    """Per-service throttle state: safe capacity, level, breaker, tenant histories."""

    @classmethod
    def _unit_test_params(cls, **config: Any) -> dict[str, Any]:
        return {"config": ServiceConfig(**{"service": "chat", "replica_rps": 100.0, "replicas": 5, **config})}

    @classmethod
    def _invalid_params(cls) -> list[dict[str, Any]]:
        return [{"replicas": 0}, {"slo_p99_ms": 0.0}, {"hysteresis_windows": 0}, {"lookahead_windows": 31},
                {"target_utilisation": 1.5}]

    def __init__(self, config: ServiceConfig) -> None:
        self.config = config
        self.capacity = SafeCapacity(slo_p99_ms=config.slo_p99_ms, replica_rps=config.replica_rps,
                                     target_utilisation=config.target_utilisation, service=config.service)
        self.levels = LevelMachine(config.hysteresis_windows)
        self.breaker = CircuitBreaker()
        self.tenants: dict[str, TenantHistory] = {}
        self.previous: dict[str, float] = {}
        self.mix: dict[str, float] = {}
        self.last_version = -1
        #: the pool statistics of the window before, to tell a growing queue
        self.previous_pool: PoolStats | None = None

    # ----------------------------------------------------------------- state

    def state(self) -> ThrottleState:
        """What the policy has learned (its checkpoint)."""
        c = self.capacity
        return ThrottleState(
            format=FORMAT, service=self.config.service,
            capacity=CapacityState(replica_rps=c.replica_rps, baseline=c.baseline,
                                   tokens_per_request=c.tokens_per_request, last_service_bound=c.last_service_bound),
            level=self.levels.level, calm=self.levels.calm, breaker=self.breaker.state,
            breaker_opened=self.breaker.opened,
            tenants={t: TenantState(mean=h.mean, var=h.var, overuse=h.overuse, cost_ratio=h.cost_ratio, seen=h.seen)
                     for t, h in self.tenants.items()},
            previous=dict(self.previous), mix=dict(self.mix), last_version=self.last_version,
            previous_pool=self.previous_pool)

    def load(self, state: ThrottleState) -> None:
        """Take up ``state`` (from :meth:`state`) under the configuration in force."""
        if state.service != self.config.service:
            raise ValueError(f"throttle state of service {state.service!r} loaded into {self.config.service!r}")
        c, saved = self.capacity, state.capacity
        c.replica_rps, c.baseline = saved.replica_rps, saved.baseline
        c.tokens_per_request, c.last_service_bound = saved.tokens_per_request, saved.last_service_bound
        self.levels.level, self.levels.calm = state.level, state.calm
        self.breaker.restore(state.breaker, state.breaker_opened)
        self.tenants = {t: TenantHistory.of(s.mean, s.var, s.overuse, s.cost_ratio, s.seen)
                        for t, s in state.tenants.items()}
        self.previous, self.mix = dict(state.previous), dict(state.mix)
        self.last_version, self.previous_pool = state.last_version, state.previous_pool

    # ----------------------------------------------------------------- decide

    def decide(self, inputs: DecisionInputs) -> tuple[Threshold, ThrottleDecision]:
        """The safe capacity and the decision for the window after ``inputs``."""
        cfg = self.config
        s = inputs.service
        seconds = inputs.window_ms / 1000
        ready = inputs.pool.ready_replicas if inputs.pool and inputs.pool.workers else cfg.replicas
        util = inputs.pool.utilisation_mean if inputs.pool and inputs.pool.workers else None
        # what the servers answered: cache hits never reached them (cache-aware capacity)
        served_rps = max(0, s.served - s.cache_hits) / seconds
        # the latency load shows in: a streamed answer's time to first token where it was measured (its whole
        # length is the output's, whatever the load), else the requests' latency
        p99, slo = (s.ttft_p99_ms, cfg.ttft_slo_ms) if s.ttft_p99_ms is not None and cfg.ttft_slo_ms is not None \
            else (s.latency_p99_ms, cfg.slo_p99_ms)
        threshold = self.capacity.update(window_start=inputs.window_start, served_rps=served_rps,
                                         p99_ms=p99, ready_replicas=ready, utilisation=util,
                                         tokens_per_s=s.tokens_per_s, queue_wait_ms=s.queue_wait_p99_ms, slo_ms=slo)
        capacity = threshold.safe_rps
        override = self._override(inputs)
        if override is not None and override.limit_rps is not None:
            capacity = min(capacity, override.limit_rps)

        observed = s.demand
        upper = observed
        if inputs.forecast is not None:
            # the next windows after this one, in the newest forecast at hand (it may
            # have been issued a window or more ago)
            ahead = inputs.forecast.upper_after(inputs.window_start)[:cfg.lookahead_windows]
            upper = max([observed, *ahead])
            # load expected ahead meets the capacity ready by then: replicas that are
            # starting count in proportion, so a scale-up in flight is not throttled for
            upper_ahead = max(ahead, default=0.0)
            incoming = self._incoming(inputs, ready)
            if incoming and upper_ahead > observed:
                upper = max(observed, upper_ahead * ready / (ready + incoming))
        demands = self._class_demands(inputs, upper, seconds, capacity)
        failures = s.failure_share  # a client that left (cancelled) is no failure: stop buttons cannot open the breaker
        # a breach that queueing does not explain is not cured by admitting less
        slow = p99 > slo and not self.capacity.last_service_bound
        # what the inference servers report: a full KV cache with a queue, or TTFT over its SLO
        saturated = saturation(inputs.pool, self.previous_pool, ttft_p99_ms=s.ttft_p99_ms,
                               ttft_slo_ms=cfg.ttft_slo_ms)
        self.previous_pool = inputs.pool
        if saturated is not None:
            capacity = min(capacity, served_rps)  # saturated at this rate: no more than was served
        breached = slow or failures > cfg.error_budget or saturated is not None
        breaker = self.breaker.step(failures, s.requests)

        target, why = self._target(demands, capacity, upper)
        if inputs.starting:
            n = sum(count for _, count in inputs.starting)
            eta = max(0, max(at for at, _ in inputs.starting) - (inputs.window_start + inputs.window_ms)) / 1000
            why += f"; {n} replicas starting, ready in {eta:.0f} s"
        calm_target, _ = self._target(demands, capacity * CALM_BAND, upper)
        if breached:
            target = calm_target = max(target, self.levels.level + 1, 1)
            if saturated is not None:
                why = f"servers saturated ({saturated}); " + why
            else:
                what = "TTFT p99" if slo == cfg.ttft_slo_ms and s.ttft_p99_ms is not None else "p99"
                why = (f"window breaches the SLO ({what} {p99:,.0f} ms vs {slo:,.0f} ms, "
                       f"failures {100 * failures:.1f}% vs {100 * cfg.error_budget:.0f}%); " + why)
        level = self.levels.step(target, calm_target)
        # the level steps down slowly (its label, and degraded answers), but admission follows the
        # capacity at once: a tier is not shed, nor batch deferred, once the capacity has room
        ration = min(level, target)
        if override is not None and override.level is not None:
            level = ration = override.level
        rates = self._rates(ration, demands, capacity)
        # the top tier's realtime requests are refused only when the ready replicas are full: they may use the
        # whole of the fleet's measured rate, not only the safe share of it the other classes are held to, and
        # an SLO breach (which refusing them would not cure) does not hold them to last window's rate
        protected = f"{cfg.tiers[0]}/realtime"
        if protected in rates and saturated is None and breaker == "closed":
            rates[protected] = max(rates[protected], threshold.replica_rps * ready)
        if breached:  # never admit more than last window while the SLO is breached
            rates = {k: v if k == protected else min(v, self.previous.get(k, v)) for k, v in rates.items()}
        if breaker != "closed":
            rates = {k: v * self.breaker.probe_share for k, v in rates.items()}
        self.previous = rates
        decision = self._decision(inputs, level, rates, demands, capacity, upper, breaker, why, override,
                                  defer_batch=ration >= 1, ration=ration)
        return threshold, decision

    # ---------------------------------------------------------------- helpers

    def _incoming(self, inputs: DecisionInputs, ready: int) -> int:
        """Replicas that will be ready within the lookahead."""
        horizon = inputs.window_start + inputs.window_ms * (1 + self.config.lookahead_windows)
        return sum(count for at, count in inputs.starting if at <= horizon) if ready > 0 else 0

    def _override(self, inputs: DecisionInputs) -> Override | None:
        now = inputs.window_start + inputs.window_ms
        live = [o for o in inputs.overrides if o.created_at <= now < o.expires_at and not o.cancel]
        return max(live, key=lambda o: (o.created_at, o.id)) if live else None

    def _class_demands(self, inputs: DecisionInputs, upper: float, seconds: float,
                       capacity: float) -> list[ClassDemand]:
        """Each class's share of the observed mix times the forecast upper bound.

        With no traffic in the window, the last mix seen carries the forecast,
        so a forecast rise from zero is still a demand.
        """
        cfg = self.config
        w1, w2 = cfg.weights[0], cfg.weights[1]
        # Without tier windows (they can lag the service window while catching up),
        # the last mix seen stands in; with none seen yet, all traffic counts as top tier.
        tiers = inputs.tiers or ({} if self.mix else {cfg.tiers[0]: inputs.service})
        observed = {f"{tier}/{rtype}": count / seconds
                    for tier, t in tiers.items() for rtype, count in (("realtime", t.realtime), ("batch", t.batch))}
        total = sum(observed.values())
        if total > 0:
            self.mix = {k: v / total for k, v in observed.items()}
        mix = self.mix or {f"{cfg.tiers[0]}/realtime": 1.0}
        out = []
        for name in sorted(set(observed) | set(mix)):
            tier, rtype = name.split("/")
            out.append(ClassDemand(
                name=name, demand=mix.get(name, 0.0) * upper,
                # batch ranks below every realtime class: it is deferred first
                priority=w1 * cfg.tier_value.get(tier, 0.0) + w2 * REQUEST_TYPE_VALUE[rtype]
                - (0 if rtype == "realtime" else 10),
                floor=cfg.floor_share.get(tier, 0.0) * capacity if rtype == "realtime" else 0.0,
            ))
        return out

    def _target(self, demands: list[ClassDemand], capacity: float, upper: float) -> tuple[int, str]:
        cfg = self.config
        realtime = {d.name.split("/")[0]: d.demand for d in demands if d.name.endswith("/realtime")}
        total = sum(d.demand for d in demands)
        rt_total = sum(realtime.values())
        ranked = sorted(realtime, key=cfg.tier_rank)
        # level 4 protects the configured top tier: an idle top tier never makes another tier the protected one
        top = realtime.get(cfg.tiers[0], 0.0)
        without_lowest = sum(realtime[t] for t in ranked[:-1]) if len(ranked) > 1 else rt_total
        head = f"forecast {upper:,.0f} rps vs safe {capacity:,.0f} rps"
        if total <= capacity:
            return 0, f"{head}: demand fits"
        if rt_total <= capacity:
            return 1, f"{head}: realtime {rt_total:,.0f} rps fits, batch deferred"
        if without_lowest <= capacity:
            return 2, f"{head}: lowest tier throttled"
        if top <= capacity * TOP_TIER_SHARE:
            return 3, f"{head}: low tiers degraded"
        return 4, f"{head}: only {cfg.tiers[0]} realtime protected"

    def _rates(self, level: int, demands: list[ClassDemand], capacity: float) -> dict[str, float]:
        """Admitted rate per class, each within [0, capacity].

        Level 0 rations nothing the forecast asks for: the top tier's realtime
        class may use all of the capacity, another realtime class what the
        other realtime forecasts leave, batch what all of them leave. Levels
        1-3 allocate by priority, and a tier's realtime class never gets less
        than its reserved floor, so its traffic is admitted at once even when
        it was idle and others borrowed the reservation; the top tier may take
        all of it. Level 4 gives all of the capacity to
        the configured top tier's realtime class and nothing to the rest, whatever
        tiers the window saw (an operator's level-4 pin means exactly that).
        """
        top_tier = min((d.name.split("/")[0] for d in demands), key=self.config.tier_rank)
        protected = f"{top_tier}/realtime"
        if level == 0:
            # a realtime class may grow into all the capacity the others' forecasts leave (the top
            # tier into all of it); batch (fresh or replayed from the deferral lane) shares what
            # realtime leaves, by demand
            realtime = sum(d.demand for d in demands if d.name.endswith("/realtime"))
            spare = max(0.0, capacity - realtime)
            batch = [b for b in demands if b.name.endswith("/batch")]
            return {d.name: _share(spare, d, batch) if d.name.endswith("/batch")
                    else capacity if d.name == protected else max(d.demand, capacity - (realtime - d.demand))
                    for d in demands}
        if level >= 4:
            top = f"{self.config.tiers[0]}/realtime"
            return {d.name: (capacity if d.name == top else 0.0) for d in demands}
        granted = allocate(capacity, demands, protected=protected)
        # what the forecast leaves over is shared by demand, so a class that grows within the window
        # takes it before it is refused; the top tier's realtime class may take all of the capacity
        # (the edges hold every class together to the safe capacity, refusing the others first)
        left = max(0.0, capacity - sum(granted.values()))
        others = [d for d in demands if d.name != protected]
        rates = {d.name: min(capacity, max(granted[d.name] + _share(left, d, others), d.floor)) for d in others}
        rates[protected] = capacity
        return rates

    def _decision(self, inputs: DecisionInputs, level: int, rates: dict[str, float], demands: list[ClassDemand],
                  capacity: float, upper: float, breaker: BreakerState, why: str,
                  override: Override | None, *, defer_batch: bool, ration: int) -> ThrottleDecision:
        cfg = self.config
        tiers: dict[str, TierLimit] = {}
        seen = {d.name.split("/")[0] for d in demands}
        for tier in sorted(seen | set(cfg.tiers)):
            if tier in seen:
                rt, batch = rates.get(f"{tier}/realtime", 0.0), rates.get(f"{tier}/batch", 0.0)
            else:
                # admitted as the tiers the window saw are: at the level admission follows (``ration``), not the
                # label the hysteresis holds, or a tier missing from one window would be shut out below the others
                rt, batch = self._idle_tier(tier, ration, capacity, defer_batch)
                if breaker != "closed":
                    rt, batch = rt * self.breaker.probe_share, batch * self.breaker.probe_share
            degraded = level >= 3 and cfg.tier_rank(tier) > 0
            tiers[tier] = TierLimit(realtime_rps=round(rt, 3), batch_rps=round(batch, 3),
                                    burst=round(max(1.0, (rt + batch) * BURST_SECONDS), 3),
                                    max_tokens=cfg.degraded_max_tokens if degraded else None)
        tenants = self._tenant_limits(inputs, level, min(capacity, sum(rates.values())))
        version = decision_version(inputs.window_start)
        issued = inputs.window_start + inputs.window_ms
        limited = [f"{t} realtime {lim.realtime_rps:,.0f} rps" for t, lim in tiers.items()
                   if level >= 2 and cfg.tier_rank(t) > 0]
        reason = f"level {level}: {why}"
        if limited:
            reason += "; " + ", ".join(limited)
        if breaker != "closed":
            reason += f"; circuit breaker {breaker}: admitting {100 * self.breaker.probe_share:.0f}% as probes"
        if override is not None:
            reason += (f"; operator override {override.id} by {override.author}"
                       f"{f' pins level {override.level}' if override.level is not None else ''}"
                       f"{f' limits to {override.limit_rps:,.0f} rps' if override.limit_rps is not None else ''}"
                       f" until {override.expires_at} ({override.reason})")
        self.last_version = version
        return ThrottleDecision(
            service=cfg.service, version=version, issued_at=issued,
            valid_until=issued + cfg.lease_windows * inputs.window_ms, level=level, mode=cfg.mode,
            tiers=tiers, tenants=tenants, defer_batch=defer_batch, breaker=breaker,
            forecast_upper_rps=round(upper, 3), safe_rps=round(capacity, 3), reason=reason,
            override=override.id if override is not None else None,
        )

    def _idle_tier(self, tier: str, level: int, capacity: float, defer_batch: bool) -> tuple[float, float]:
        """(realtime, batch) rates of a configured tier the window did not see: at level 0 it may use all of the
        capacity, at levels 1-3 its reserved floor, at level 4 nothing unless it is the top tier."""
        if level >= 4:
            return (capacity if tier == self.config.tiers[0] else 0.0), 0.0
        rate = capacity if level == 0 else capacity * self.config.floor_share.get(tier, 0.0)
        return rate, 0.0 if defer_batch else rate

    def _tenant_limits(self, inputs: DecisionInputs, level: int, admitted: float) -> dict[str, TenantLimit]:
        seconds = inputs.window_ms / 1000
        service_tpr = _tokens_per_request(inputs.service)
        demands = {t: (s.requests / seconds, _tokens_per_request(s) or service_tpr)
                   for t, s in inputs.tenants.items()}
        fair = admitted / len(demands) if demands else 0.0
        for tenant, (rate, tpr) in demands.items():
            self.tenants.setdefault(tenant, TenantHistory()).learn(
                rate, tokens_per_request=tpr, fair_share=fair, service_tokens_per_request=service_tpr)
        if level < 2 or not demands:
            return {}
        # the tenant part of the priority score: w3 * history_behaviour + w4 * (1 - current load share)
        w3, w4 = self.config.weights[2], self.config.weights[3]
        total = sum(rate for rate, _ in demands.values()) or 1.0
        weights = {t: 0.1 + w3 * self.tenants[t].behaviour + w4 * (1.0 - rate / total)
                   for t, (rate, _) in demands.items()}
        shares = share_by_tokens(admitted, demands, weights)
        # only tenants far above an equal share get a limit of their own; the rest
        # are governed by their tier's buckets
        return {t: TenantLimit(rate_rps=round(shares[t], 3), burst=round(max(1.0, shares[t] * BURST_SECONDS), 3))
                for t, (rate, _) in demands.items() if rate > NOISY_TENANT * fair}


def _share(amount: float, d: ClassDemand, among: list[ClassDemand]) -> float:
    """``d``'s part of ``amount``, in proportion to demand among ``among`` (evenly when none has any)."""
    total = sum(max(0.0, c.demand) for c in among)
    if total <= 0:
        return amount / len(among) if among else amount
    return amount * max(0.0, d.demand) / total


def _tokens_per_request(s: TrafficStats) -> float:
    return (s.input_tokens + s.output_tokens) / s.requests if s.requests else 0.0
