"""Run a workload against a policy on the simulated service, and score the run.

Edges apply decisions with the edge gate's own :class:`~surgegate.admission.gate.Admission`
on simulated time: each admit() call stands for ``k`` requests (the gate's
``share`` is 1/k), so a second at 120,000 rps costs about a hundred calls.
Batch work that is deferred waits in a backlog and is offered again each
second. Deterministic for a seed.
"""

from __future__ import annotations

import dataclasses
import math
import random
from collections.abc import Callable

from surgegate.admission.actions import ADMIT, DEFER
from surgegate.admission.gate import Admission, Fallback, hold_after_s
from surgegate.checks import check
from surgegate.schemas.aggregates import PoolStats, TrafficStats
from surgegate.settings import DEFAULT_WINDOW_S
from surgegate.sim.policies import FleetBounds, Observation, Policy, Sample
from surgegate.sim.service import TIER_ORDER, Fleet, Queues, ServiceModel
from surgegate.sim.workload import Workload

#: admit() calls per simulated second at the workload's peak
CALLS_PER_SECOND = 120
PRICE_RESERVED, PRICE_ON_DEMAND = 2.0, 4.0
#: deferred work goes back to the service over at least this long
BACKLOG_DRAIN_S = 60.0


@dataclasses.dataclass
class WindowRow:
    """One window of a run."""

    t: int
    demand: float
    admitted: float
    served: float
    rejected: dict[str, float]
    deferred: float
    deferred_by_tier: dict[str, float]
    timed_out: float
    p99_ms: dict[str, float | None]
    ready: int
    paid: int
    desired: int
    warm: int
    level: int
    utilisation: float
    capacity_rps: float
    demand_by_tier: dict[str, float]
    all_by_tier: dict[str, float]


@dataclasses.dataclass
class Result:
    workload: str
    policy: str
    rows: list[WindowRow]
    slo_p99_ms: float
    onset_s: int | None
    window_s: int = DEFAULT_WINDOW_S

    # ------------------------------------------------------------ scores

    def slo_attainment(self, tier: str) -> float:
        """Share of windows with realtime demand of ``tier`` whose p99 was within the SLO."""
        seen = [r for r in self.rows if r.demand_by_tier.get(tier, 0) > 0]
        if not seen:
            return 1.0
        ok = sum(1 for r in seen if _within(r.p99_ms.get(tier), self.slo_p99_ms, missing=False))
        return ok / len(seen)

    @property
    def replica_hours(self) -> float:
        return sum(r.paid for r in self.rows) * self.window_s / 3600

    def cost(self, reserved: int = 5) -> float:
        return sum(min(r.paid, reserved) * PRICE_RESERVED + max(0, r.paid - reserved) * PRICE_ON_DEMAND
                   for r in self.rows) * self.window_s / 3600

    @property
    def mean_utilisation(self) -> float:
        return sum(r.utilisation for r in self.rows) / len(self.rows)

    def steady_utilisation(self) -> float:
        """Mean utilisation over windows whose demand is within 5% of the last 30 windows' mean."""
        vals = []
        for i in range(30, len(self.rows)):
            recent = [r.demand for r in self.rows[i - 30:i]]
            mean = sum(recent) / len(recent)
            if mean > 0 and all(abs(d - mean) <= 0.05 * mean for d in recent[-6:]) \
                    and abs(self.rows[i].demand - mean) <= 0.05 * mean:
                vals.append(self.rows[i].utilisation)
        return sum(vals) / len(vals) if vals else float("nan")

    def share(self, what: str) -> float:
        demand = sum(r.demand for r in self.rows) * self.window_s or 1.0
        if what == "rejected":
            return sum(sum(r.rejected.values()) for r in self.rows) / demand
        if what == "deferred":
            return sum(r.deferred for r in self.rows) / demand
        if what == "timed_out":
            return sum(r.timed_out for r in self.rows) / demand
        raise ValueError(what)

    def tier_share(self, what: str, tier: str) -> float:
        """Share of ``tier``'s requests (realtime and batch) that were rejected or deferred."""
        demand = sum(r.all_by_tier.get(tier, 0) for r in self.rows) or 1.0
        by = {"rejected": lambda r: r.rejected.get(tier, 0), "deferred": lambda r: r.deferred_by_tier.get(tier, 0)}
        return sum(by[what](r) for r in self.rows) / demand

    @property
    def goodput_rps(self) -> float:
        """Requests served per second in windows whose top-tier p99 met the SLO."""
        good = sum(r.served for r in self.rows if _within(r.p99_ms.get(TIER_ORDER[0]), self.slo_p99_ms))
        return good / len(self.rows)

    def onset_response(self) -> tuple[float | None, float | None]:
        """Seconds from the burst onset to the first reaction (more replicas or a level) and to SLO recovery.

        Recovery: the first window from which the top tier meets the SLO for six windows running,
        after a violation; 0 when it never broke.
        """
        if self.onset_s is None:
            return None, None
        after = [r for r in self.rows if r.t >= self.onset_s]
        if not after:
            return None, None
        base = next((r.desired for r in reversed(self.rows) if r.t < self.onset_s), after[0].desired)
        first = next((r.t - self.onset_s for r in after if r.desired > base or r.level > 0), None)
        top = TIER_ORDER[0]
        broke = [i for i, r in enumerate(after) if not _within(r.p99_ms.get(top), self.slo_p99_ms)]
        if not broke:
            return first, 0.0
        for i in range(broke[0], len(after) - 5):
            window = after[i:i + 6]
            if all(_within(r.p99_ms.get(top), self.slo_p99_ms) for r in window):
                return first, after[i].t - self.onset_s
        return first, None


def _stats(window_s: int, served: float, lost: float, rejected: float, deferred: float, replayed: float,
           realtime: float,
           batch: float, p99: float | None, wait_ms: float) -> TrafficStats:
    n = served + lost + rejected
    p99v = p99 if p99 is not None else 0.0
    return TrafficStats(
        requests=int(n), rate_rps=round(n / window_s, 3), ok=int(served), error=0, timeout=int(lost),
        throttled=int(rejected), realtime=int(realtime), batch=int(batch), latency_p50_ms=60.0,
        latency_p90_ms=min(p99v, 200.0), latency_p99_ms=p99v, latency_max_ms=p99v, queue_wait_p99_ms=round(wait_ms, 3),
        input_tokens=0, output_tokens=0, tokens_per_s=0.0, over_2s_share=0.1, cache_hits=0, deferred=int(deferred),
        replayed=int(replayed), demand_rps=round(max(0.0, n - replayed + deferred) / window_s, 3))


def simulate(workload: Workload, policy: Policy, *, model: ServiceModel | None = None,
             bounds: FleetBounds | None = None, seed: int = 0, window_s: int = DEFAULT_WINDOW_S,
             progress: Callable[[int, int], None] | None = None) -> Result:
    """Step ``workload`` second by second through the edges, the fleet and ``policy``.

    ``window_s`` is the pipeline's window length: ``policy`` sees one Observation per window.
    """
    check(isinstance(window_s, int) and window_s >= 1, "window_s", window_s, "must be a whole number of seconds >= 1")
    model = model or ServiceModel()
    bounds = bounds or FleetBounds(replica_rps=model.replica_rps())
    rng = random.Random(seed)
    k = max(1.0, max(workload.rate) / CALLS_PER_SECOND)
    tiers = tuple(TIER_ORDER)
    clock = [0.0]
    # a static limit is for all edges together; each admit() call stands for k requests
    limit = policy.static_limit_rps
    fallback = Fallback(total_rps=limit / k) if limit is not None else Fallback()
    gate = Admission("chat", tiers, share=1.0 / k, fallback=fallback, clock=lambda: clock[0],
                     wall=lambda: clock[0], hold_after_s=hold_after_s(window_s))
    fleet = Fleet(ready=policy.plan().replicas)
    queues = Queues()
    backlog = {t: 0.0 for t in tiers}
    slow = 1.0
    classes = list(workload.mix.items())
    rows: list[WindowRow] = []
    acc = _Window(tiers, window_s)
    applied_version = None
    for t in range(workload.seconds):
        now = float(t)
        clock[0] = now
        slow = workload.slow_factor.get(t, slow)
        if t in workload.failures:
            fleet.fail(workload.failures[t])
        fleet.advance(now)
        plan = policy.plan()
        fleet.reconcile(plan.replicas, plan.warm, now, model)
        if plan.decision is not None and plan.decision.version != applied_version:
            gate.apply(plan.decision)
            applied_version = plan.decision.version
        # arrivals at the edges
        for (tier, rtype), share in classes:
            calls = _round(workload.rate[t] * share / k, rng)
            for _ in range(calls):
                v = gate.admit("sim", tier, rtype)
                acc.count(tier, rtype, v.action, k)
                if v.action == ADMIT:
                    queues.add((tier, rtype), k)
                elif v.action == DEFER:
                    backlog[tier] += k
        # the deferred backlog is offered again, drained over a minute at the most (as an edge's
        # async queue with bounded concurrency would), so it does not return as one spike
        for tier in tiers:
            for _ in range(min(_round(backlog[tier] / k / BACKLOG_DRAIN_S, rng) or int(backlog[tier] >= k),
                               CALLS_PER_SECOND)):
                if gate.admit("sim", tier, "batch", requeued=True).action != ADMIT:
                    break
                backlog[tier] -= k
                queues.add((tier, "batch"), k)
                acc.replayed[tier] += k
        # the fleet serves
        throughput = fleet.ready * model.replica_rps(slow)
        served = queues.serve(throughput)
        waits = queues.waits(throughput)
        lost = queues.expire(waits, model.timeout_s, throughput)
        waits = queues.waits(throughput)
        p99_service = model.p99_service_ms(slow)
        total_served = sum(served.values())
        util = total_served / throughput if throughput > 0 else 0.0
        in_system = total_served * model.mean_service_s(slow) + queues.total
        acc.second(served, lost, waits, p99_service, util, throughput)
        policy.second(Sample(now_s=now, ready=fleet.ready, utilisation=util, concurrency=in_system))
        if t % window_s == window_s - 1:
            start = t - window_s + 1
            obs = acc.observation(start, fleet, queues)
            policy.window(obs)
            plan = policy.plan()
            rows.append(acc.row(start, fleet, plan))
            acc = _Window(tiers, window_s)
            if progress is not None and len(rows) % 60 == 0:
                progress(t + 1, workload.seconds)
    return Result(workload.name, policy.name, rows, model.slo_p99_ms, workload.onset_s, window_s)


def _within(p99_ms: float | None, slo_p99_ms: float, *, missing: bool = True) -> bool:
    """A window's p99 within the SLO; a window that served nothing counts as ``missing``."""
    return missing if p99_ms is None else p99_ms <= slo_p99_ms


def _round(x: float, rng: random.Random) -> int:
    """Stochastic rounding: unbiased, deterministic for the seed."""
    whole = math.floor(x)
    return whole + (rng.random() < x - whole)


class _Window:
    """What one window accumulates."""

    def __init__(self, tiers: tuple[str, ...], window_s: int) -> None:
        self.window_s = window_s
        self.tiers = tiers
        self.demand = {(t, r): 0.0 for t in tiers for r in ("realtime", "batch")}
        self.rejected = {(t, r): 0.0 for t in tiers for r in ("realtime", "batch")}
        self.deferred = {t: 0.0 for t in tiers}
        self.replayed = {t: 0.0 for t in tiers}
        self.served = {(t, r): 0.0 for t in tiers for r in ("realtime", "batch")}
        self.lost = {(t, r): 0.0 for t in tiers for r in ("realtime", "batch")}
        self.p99: dict[str, float | None] = {t: None for t in tiers}
        self.wait_ms = {t: 0.0 for t in tiers}
        self.util: list[float] = []
        self.capacity = 0.0

    def count(self, tier: str, rtype: str, action: str, k: float) -> None:
        self.demand[(tier, rtype)] += k
        if action == DEFER:
            self.deferred[tier] += k
        elif action != ADMIT:
            self.rejected[(tier, rtype)] += k

    def second(self, served, lost, waits, p99_service: float, util: float, throughput: float) -> None:
        for c, n in served.items():
            self.served[c] += n
        for c, n in lost.items():
            self.lost[c] += n
        for tier in self.tiers:
            c = (tier, "realtime")
            if served[c] > 0:
                p = waits[c] * 1000 + p99_service
                self.wait_ms[tier] = max(self.wait_ms[tier], waits[c] * 1000)
                self.p99[tier] = p if self.p99[tier] is None else max(self.p99[tier], p)
        self.util.append(util)
        self.capacity = throughput

    def observation(self, start: int, fleet: Fleet, queues: Queues) -> Observation:
        util = sum(self.util) / len(self.util)
        tiers = {}
        for tier in self.tiers:
            rt, b = (tier, "realtime"), (tier, "batch")
            tiers[tier] = _stats(self.window_s, self.served[rt] + self.served[b], self.lost[rt] + self.lost[b],
                                 self.rejected[rt] + self.rejected[b], self.deferred[tier], self.replayed[tier],
                                 self.served[rt] + self.lost[rt] + self.rejected[rt],
                                 self.served[b] + self.lost[b] + self.rejected[b], self.p99[tier],
                                 self.wait_ms[tier])
        p99s = [p for p in self.p99.values() if p is not None]
        service = _stats(self.window_s, sum(self.served.values()), sum(self.lost.values()), sum(self.rejected.values()),
                         sum(self.deferred.values()), sum(self.replayed.values()),
                         sum(s.realtime for s in tiers.values()),
                         sum(s.batch for s in tiers.values()), max(p99s) if p99s else None,
                         max(self.wait_ms.values()))
        pool = PoolStats(samples=len(self.util), utilisation_mean=round(min(1.0, util), 6),
                         utilisation_max=round(min(1.0, max(self.util)), 6), kv_cache_mean=0.0, kv_cache_max=0.0,
                         queue_depth=int(queues.total), queue_depth_max=int(queues.total), running_requests=0,
                         tokens_per_s=0.0, workers=fleet.ready + fleet.pending, ready_replicas=fleet.ready,
                         cold_starting_replicas=fleet.pending)
        return Observation(window_start_ms=start * 1000, window_ms=self.window_s * 1000, service=service, tiers=tiers,
                           pool=pool)

    def row(self, start: int, fleet: Fleet, plan) -> WindowRow:
        return WindowRow(
            t=start, demand=sum(self.demand.values()) / self.window_s,
            admitted=sum(self.demand[c] - self.rejected[c] for c in self.demand) / self.window_s,
            served=sum(self.served.values()) / self.window_s,
            rejected={t: (self.rejected[(t, "realtime")] + self.rejected[(t, "batch")]) for t in self.tiers},
            deferred=sum(self.deferred.values()), deferred_by_tier=dict(self.deferred),
            timed_out=sum(self.lost.values()), p99_ms=dict(self.p99),
            ready=fleet.ready, paid=fleet.paid, desired=plan.replicas, warm=fleet.warm, level=plan.level,
            utilisation=sum(self.util) / len(self.util), capacity_rps=self.capacity,
            demand_by_tier={t: self.demand[(t, "realtime")] for t in self.tiers},
            all_by_tier={t: self.demand[(t, "realtime")] + self.demand[(t, "batch")] for t in self.tiers},
        )
