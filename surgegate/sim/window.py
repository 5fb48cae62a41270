"""What a simulated window accumulates and how it is scored: the SLO targets per tier, realtime requests
judged on their decode when they complete, and the window's observation (what the pipeline would publish)
and row (what the report reads)."""

from __future__ import annotations

import collections
import math
from typing import cast

from surgegate.admission.actions import ADMIT, DEFER
from surgegate.llm.fluid import Second, prefill_s, prompt_quantile, ttft_miss_share, weighted_quantile
from surgegate.schemas.aggregates import PoolStats, TrafficStats
from surgegate.schemas.telemetry import RequestType
from surgegate.sim.policies import Observation
from surgegate.sim.result import WindowRow
from surgegate.sim.service import TIER_ORDER, Fleet, ServiceModel

RT: RequestType = "realtime"
BATCH: RequestType = "batch"


class Targets:
    """The SLO targets of a run, per tier."""

    def __init__(self, model: ServiceModel, prompt_mean: float) -> None:
        self.model = model
        self.ttft = {t: model.ttft_target_s(t, prompt_mean) for t in TIER_ORDER}
        self.tpot = {t: model.tpot_target_s(t) for t in TIER_ORDER}


class Decoding:
    """Realtime requests decoding, judged on their time per output token when they complete.

    A request that starts decoding in second ``t`` with ``output`` tokens
    decodes for ``D`` seconds (``output`` times the TPOT it started at, at least
    one, at most a minute); its TPOT is those seconds over the tokens a sequence
    got in them (the harmonic mean of the per-second TPOTs), so a one-second
    stall does not fail a request that decodes for ten.
    """

    def __init__(self) -> None:
        self.t = 0
        #: per second: 1 / TPOT, tokens a running sequence got
        self.rates: list[float] = []
        self.pending: collections.deque[tuple[int, int, str, float]] = collections.deque()

    def admit(self, sec: Second, tier: str, n: float, output: float) -> None:
        if n <= 0:
            return
        tpot = sec.tpot_s if sec.tpot_s is not None and math.isfinite(sec.tpot_s) else sec.decode_step_s
        d = max(1, min(60, math.ceil(output * tpot)))
        self.pending.append((self.t + d, self.t, tier, n))

    def complete(self, tpot_s: float | None) -> list[tuple[str, float, float]]:
        """Close this second (its TPOT); the requests done by its end: (tier, how many, their TPOT)."""
        rate = 0.0 if tpot_s is None or not math.isfinite(tpot_s) or tpot_s <= 0 else 1 / tpot_s
        self.rates.append(rate)
        self.t += 1
        done = []
        keep: collections.deque[tuple[int, int, str, float]] = collections.deque()
        for due, start, tier, n in self.pending:
            if due <= self.t:
                tokens = sum(self.rates[start:due])
                done.append((tier, n, (due - start) / tokens if tokens > 0 else math.inf))
            else:
                keep.append((due, start, tier, n))
        self.pending = keep
        return done


class WindowScores:
    """What one window accumulates."""

    def __init__(self, tiers: tuple[str, ...], window_s: int) -> None:
        self.window_s = window_s
        self.tiers = tiers
        classes: list[tuple[str, str]] = [(t, r) for t in tiers for r in (RT, BATCH)]
        self.demand: dict[tuple[str, str], float] = dict.fromkeys(classes, 0.0)
        self.rejected: dict[tuple[str, str], float] = dict.fromkeys(classes, 0.0)
        self.served: dict[tuple[str, str], float] = dict.fromkeys(classes, 0.0)
        self.lost: dict[tuple[str, str], float] = dict.fromkeys(classes, 0.0)
        self.missed = dict.fromkeys(tiers, 0.0)
        self.deferred = dict.fromkeys(tiers, 0.0)
        self.hits: dict[tuple[str, str], float] = dict.fromkeys(classes, 0.0)
        self.expired = 0.0  # deferred tasks whose deadline passed before they ran (the lane)
        self.replayed = dict.fromkeys(tiers, 0.0)
        self.late = dict.fromkeys(tiers, 0.0)
        #: arrivals sent to another region (served, and scored, there)
        self.spilled = dict.fromkeys(tiers, 0.0)
        self.good = 0.0
        self.ttft: dict[str, list[tuple[float, float]]] = {t: [] for t in tiers}
        self.tpot: list[tuple[float, float]] = []
        self.busy: list[float] = []
        self.kv: list[float] = []
        self.util: list[float] = []
        self.tokens = [0.0, 0.0]
        self.generated = 0.0
        self.waiting = 0.0
        self.running = 0.0
        self.capacity = 0.0
        #: new demand (cache hits aside) of each second, per tier
        self.arrivals: dict[str, list[float]] = {t: [] for t in tiers}

    def new_second(self) -> None:
        for seconds in self.arrivals.values():
            seconds.append(0.0)

    def hit(self, tier: str, rtype: str, n: float) -> None:
        """``n`` requests answered from the response cache: served at once, within their SLO."""
        self.demand[(tier, rtype)] += n
        self.hits[(tier, rtype)] += n
        self.good += n

    def count(self, tier: str, rtype: str, action: str, k: float) -> None:
        self.demand[(tier, rtype)] += k
        if action == DEFER:
            self.deferred[tier] += k
        elif action != ADMIT:
            self.rejected[(tier, rtype)] += k
            if rtype == RT:
                self.missed[tier] += k

    def second(self, sec: Second, targets: Targets, capacity: float, decoding: Decoding) -> None:
        profile = targets.model.profile
        for a in sec.admitted:
            tier, rtype = cast(tuple[str, str], a.cls)
            self.served[(tier, rtype)] += a.n
            self.tokens[0] += a.n * a.prompt
            self.tokens[1] += a.n * a.output  # what usage reports for them
            if rtype == RT:
                # first token within target: then judged on its decode's TPOT when it completes
                late = ttft_miss_share(profile, a.wait_s, a.prompt, sec.decode_step_s, targets.ttft[tier])
                self.missed[tier] += a.n * late
                decoding.admit(sec, tier, a.n * (1 - late), a.output)
                longest = prompt_quantile(a.prompt, 0.99)
                self.ttft[tier].append((a.wait_s + prefill_s(profile, longest, sec.decode_step_s), a.n))
            else:
                self.good += a.n if a.wait_s <= targets.model.batch_deadline_s else 0.0
        for tier, good, tpot in decoding.complete(sec.tpot_s):
            if tpot <= targets.tpot[tier]:
                self.good += good
            else:
                self.missed[tier] += good
        for cls, n in sec.timed_out.items():
            tier, rtype = cast(tuple[str, str], cls)
            self.lost[(tier, rtype)] += n
            if rtype == RT:
                self.missed[tier] += n
        if sec.tpot_s is not None:
            self.tpot.append((sec.tpot_s, sec.running))
        self.generated += sec.output_tokens
        self.busy.append(sec.gpu_busy)
        self.kv.append(sec.kv_cache_usage)
        served = sum(a.n for a in sec.admitted)
        self.util.append(min(1.0, served / capacity) if capacity > 0 else 0.0)
        self.waiting, self.running, self.capacity = sec.waiting, sec.running, capacity

    def _stats(self, classes: list[tuple[str, str]], ttft: list[tuple[float, float]], deferred: float,
               replayed: float) -> TrafficStats:
        w = self.window_s
        tiers = {tier for tier, _ in classes}
        peak = max(map(sum, zip(*(self.arrivals[t] for t in tiers))), default=0.0)
        hits = sum(self.hits[c] for c in classes)
        served = sum(self.served[c] for c in classes) + hits
        lost = sum(self.lost[c] for c in classes)
        rejected = sum(self.rejected[c] for c in classes)
        n = served + lost + rejected
        ttft_p99 = weighted_quantile(ttft, 0.99)
        ttft_p50 = weighted_quantile(ttft, 0.5)
        tpot = weighted_quantile(self.tpot, 0.99)
        share = (served - hits) / (sum(self.served.values()) or 1.0)  # tokens: what the replicas served
        tokens_in, tokens_out = self.tokens[0] * share, self.tokens[1] * share
        p99 = ttft_p99 * 1000 if ttft_p99 is not None else 0.0
        return TrafficStats(
            requests=int(n), rate_rps=round(n / w, 3), ok=int(served), error=0, timeout=int(lost),
            throttled=int(rejected), realtime=int(sum(self.served[c] + self.hits[c] + self.lost[c] + self.rejected[c]
                                                      for c in classes if c[1] == RT)),
            batch=int(sum(self.served[c] + self.hits[c] + self.lost[c] + self.rejected[c]
                          for c in classes if c[1] == BATCH)),
            # the simulated service's latency is its time to first token
            latency_p50_ms=round(ttft_p50 * 1000, 3) if ttft_p50 is not None else 0.0, latency_p90_ms=round(p99, 3),
            latency_p99_ms=round(p99, 3), latency_max_ms=round(p99, 3), queue_wait_p99_ms=0.0,
            input_tokens=int(tokens_in), output_tokens=int(tokens_out),
            tokens_per_s=round((tokens_in + tokens_out) / w, 3), over_2s_share=0.0, cache_hits=int(hits),
            deferred=int(deferred), replayed=int(replayed),
            demand_rps=round(max(0.0, n - replayed + deferred - hits) / w, 3),
            ttft_p50_ms=round(ttft_p50 * 1000, 3) if ttft_p50 is not None else None,
            ttft_p99_ms=round(p99, 3) if ttft_p99 is not None else None,
            itl_p50_ms=None, itl_p99_ms=round(tpot * 1000, 3) if tpot is not None else None,
            peak_rps=round(peak, 3))

    def observation(self, start: int, fleet: Fleet, backlog: tuple[int, float] = (0, 0.0)) -> Observation:
        tiers = {t: self._stats([(t, RT), (t, BATCH)], self.ttft[t], self.deferred[t], self.replayed[t])
                 for t in self.tiers}
        service = self._stats(list(self.served), [p for t in self.tiers for p in self.ttft[t]],
                              sum(self.deferred.values()), sum(self.replayed.values()))
        busy = sum(self.busy) / len(self.busy)
        pool = PoolStats(samples=len(self.busy), utilisation_mean=round(min(1.0, busy), 6),
                         utilisation_max=round(min(1.0, max(self.busy)), 6),
                         kv_cache_mean=round(sum(self.kv) / len(self.kv), 6), kv_cache_max=round(max(self.kv), 6),
                         queue_depth=int(self.waiting), queue_depth_max=int(self.waiting),
                         running_requests=int(self.running), tokens_per_s=round(self.generated / self.window_s, 3),
                         workers=fleet.ready + fleet.pending, ready_replicas=fleet.ready,
                         cold_starting_replicas=fleet.pending, backlog_tasks=backlog[0],
                         backlog_required_rps=round(backlog[1], 3))
        return Observation(window_start_ms=start * 1000, window_ms=self.window_s * 1000, service=service, tiers=tiers,
                           pool=pool)

    def row(self, start: int, fleet: Fleet, plan) -> WindowRow:
        w = self.window_s
        ttft = {t: (q * 1000 if (q := weighted_quantile(self.ttft[t], 0.99)) is not None else None) for t in self.tiers}
        tpot = weighted_quantile(self.tpot, 0.99)
        return WindowRow(
            t=start, demand=sum(self.demand.values()) / w,
            admitted=sum(self.demand[c] - self.rejected[c] for c in self.demand) / w,
            served=(sum(self.served.values()) + sum(self.hits.values())) / w,
            rejected={t: (self.rejected[(t, RT)] + self.rejected[(t, BATCH)]) for t in self.tiers},
            deferred=sum(self.deferred.values()), deferred_by_tier=dict(self.deferred),
            timed_out=sum(self.lost.values()) + self.expired, ttft_p99_ms=ttft,
            tpot_p99_ms=tpot * 1000 if tpot is not None else None,
            demand_by_tier={t: self.demand[(t, RT)] for t in self.tiers}, missed_by_tier=dict(self.missed),
            all_by_tier={t: self.demand[(t, RT)] + self.demand[(t, BATCH)] for t in self.tiers},
            good=max(0.0, self.good - sum(self.late.values())),  # replayed after the deadline: served, not good
            ready=fleet.ready, paid=fleet.paid, desired=plan.replicas, warm=fleet.warm, level=plan.level,
            utilisation=sum(self.util) / len(self.util), capacity_rps=self.capacity,
            kv_cache=max(self.kv), waiting=self.waiting, spilled=dict(self.spilled),
        )
