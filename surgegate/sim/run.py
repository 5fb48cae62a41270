"""Run a workload against a policy on the simulated LLM service, and score the run.

Edges apply decisions with the edge gate's own :class:`~surgegate.admission.gate.Admission`
on simulated time: each admit() call stands for ``k`` requests (the gate's
``share`` is 1/k), so a second at 120,000 rps costs about a hundred calls.
Arrivals of every tier join one waiting queue as they come; the fleet is a
:class:`~surgegate.llm.fluid.FluidPool` of the service's replica profile.
Batch work that is deferred waits in a backlog and is offered again. Every
policy, baselines included, runs through :func:`simulate`. Deterministic for a
seed.

Scoring (:mod:`surgegate.sim.result`), per tier: a window *meets* the tier's SLO when at most 1% of the
tier's realtime requests missed it, a miss being a request rejected at the
edge, one that timed out waiting, one whose time to first token exceeded the
target, or one that decoded slower than the TPOT target. Goodput counts the
requests served within their SLO.
"""

from __future__ import annotations

import collections
import dataclasses
import math
import random
from collections.abc import Callable
from typing import cast

from surgegate.admission.actions import ADMIT, DEFER, REJECT
from surgegate.admission.gate import Admission, Fallback, hold_after_s
from surgegate.checks import check
from surgegate.llm.caching import CACHE_ONLY_LEVEL
from surgegate.llm.fluid import (
    FluidPool,
    Second,
    prefill_s,
    prompt_quantile,
    steady_tpot,
    token_rates,
    ttft_miss_share,
    weighted_quantile,
)
from surgegate.schemas.aggregates import PoolStats, TrafficStats
from surgegate.schemas.telemetry import RequestType
from surgegate.settings import DEFAULT_WINDOW_S
from surgegate.sim.policies import FleetBounds, Observation, Policy, Sample
from surgegate.sim.result import Result, WindowRow
from surgegate.sim.service import TIER_ORDER, Fleet, ServiceModel
from surgegate.sim.workload import Workload

#: admit() calls per simulated second at the workload's peak
CALLS_PER_SECOND = 120
#: deferred work goes back to the service over at least this long
BACKLOG_DRAIN_S = 60.0
#: the replica bounds every policy shares: the peak's need times this, the trough's floor as a share of it
HEADROOM, FLOOR_SHARE = 1.3, 0.02
RT: RequestType = "realtime"
BATCH: RequestType = "batch"


def fleet_bounds(workload: Workload, model: ServiceModel, *, window_s: int = DEFAULT_WINDOW_S) -> FleetBounds:
    """The bounds an operator would give every policy on this workload.

    A replica's rate is what it serves within the top tier's TPOT target at the
    lengths the service is sized for; the maximum is the busiest window's need
    (at its own request lengths) with 30% room, or the GPU quota when the
    workload has one; the minimum 2% of it.
    """
    prompt, output = workload.mean_lengths()
    rps = model.replica_rps(prompt, output)
    need = peak_need(workload, model, window_s)
    top = math.ceil(need * (workload.quota_share if workload.quota_share is not None else HEADROOM))
    tpot = steady_tpot(model.profile, rps, prompt, output)
    return FleetBounds(replica_rps=rps, min_replicas=max(1, math.ceil(need * FLOOR_SHARE)), max_replicas=max(1, top),
                       cold_start_s=cold_start(workload, model), replica_concurrency=rps * output * tpot,
                       ttft_slo_ms=round(model.ttft_target_s(TIER_ORDER[0], prompt) * 1000, 1),
                       replica_tps=token_rates(model.profile, prompt, output, model.tpot_s[0]))


def peak_need(workload: Workload, model: ServiceModel, window_s: int = DEFAULT_WINDOW_S) -> float:
    """Replicas the busiest window needs at the top tier's TPOT target, at that window's request lengths."""
    rates: dict[tuple[float, float], float] = {}
    need = 0.0
    for i in range(0, workload.seconds, window_s):
        chunk = workload.rate[i:i + window_s]
        lengths = workload.lengths(i)
        key = (round(lengths[0]), round(lengths[1]))
        if key not in rates:
            rates[key] = model.replica_rps(*key)
        need = max(need, sum(chunk) / len(chunk) / rates[key])
    return need


def cold_start(workload: Workload, model: ServiceModel) -> float:
    return workload.cold_start_s if workload.cold_start_s is not None else model.cold_start_s


def simulate(workload: Workload, policy: Policy, *, model: ServiceModel | None = None,
             bounds: FleetBounds | None = None, seed: int = 0, window_s: int = DEFAULT_WINDOW_S,
             progress: Callable[[int, int], None] | None = None) -> Result:
    """Step ``workload`` second by second through the edges, the fleet and ``policy``.

    ``window_s`` is the pipeline's window length: ``policy`` sees one Observation per window.
    The fleet never exceeds ``bounds.max_replicas``, whatever the policy asks.
    """
    check(isinstance(window_s, int) and window_s >= 1, "window_s", window_s, "must be a whole number of seconds >= 1")
    model = model or ServiceModel()
    bounds = bounds or fleet_bounds(workload, model, window_s=window_s)
    rng = random.Random(seed)
    k = max(1.0, max(workload.rate) / CALLS_PER_SECOND)
    tiers = tuple(TIER_ORDER)
    clock = [0.0]
    # a static limit is for all edges together; each admit() call stands for k requests
    limit = policy.static_limit_rps
    fallback = Fallback(total_rps=limit / k) if limit is not None else Fallback()
    gate = Admission("chat", tiers, share=1.0 / k, fallback=fallback, clock=lambda: clock[0],
                     wall=lambda: clock[0], hold_after_s=hold_after_s(window_s))
    starts = dataclasses.replace(model, cold_start_s=cold_start(workload, model))
    fleet = Fleet(ready=min(bounds.max_replicas, policy.plan().replicas))
    rank = (lambda c: tiers.index(c[0]) + (len(tiers) if c[1] == BATCH else 0)) if model.engine_priority else None
    pool = FluidPool(model.profile, timeout_s=model.timeout_s, rank=rank)
    # deferred batch work per tier: (second deferred, requests)
    backlog: dict[str, collections.deque[list[float]]] = {t: collections.deque() for t in tiers}
    backlog_total = dict.fromkeys(tiers, 0.0)
    lane = model.deferral == "lane"
    ref_prompt, _ = workload.mean_lengths()
    targets = _Targets(model, ref_prompt)
    decoding = _Decoding()
    classes = list(workload.mix.items())
    rows: list[WindowRow] = []
    acc = _Window(tiers, window_s)
    applied_version = None
    for t in range(workload.seconds):
        now = float(t)
        clock[0] = now
        acc.new_second()
        if t in workload.failures:
            fleet.fail(workload.failures[t])
        fleet.advance(now)
        plan = policy.plan()
        fleet.reconcile(min(bounds.max_replicas, plan.replicas), min(plan.warm, bounds.max_replicas), now, starts)
        if plan.decision is not None and plan.decision.version != applied_version:
            gate.apply(plan.decision)
            applied_version = plan.decision.version
        prompt, output = workload.lengths(t)
        # arrivals at the edges, interleaved: every class of this second joins the queue together
        # the requests themselves are a flow; the gate decides for them in calls of about k, at least
        # one a class and second (a quiet class is still admitted by the gate, not around it), and the
        # calls of every class come interleaved, as arrivals do: no class is asked first
        calls: list[int] = []
        each: list[float] = []
        for i, ((tier, rtype), share) in enumerate(classes):
            arriving = workload.rate[t] * share
            # the response cache answers its share at the edge: neither the gate nor a replica sees those
            hits = arriving * model.cache_hit_ratio
            if hits:
                acc.hit(tier, rtype, hits)
            acc.arrivals[tier][-1] += arriving - hits
            n = max(1, _round((arriving - hits) / k, rng))
            calls += [i] * n
            each.append((arriving - hits) / n)
        rng.shuffle(calls)
        admitted = [0] * len(classes)
        deferred = [0] * len(classes)
        for i in calls:
            tier, rtype = classes[i][0]
            verdict = gate.admit("sim", tier, rtype)
            action = verdict.action
            if model.cache_hit_ratio and action == ADMIT and verdict.level >= CACHE_ONLY_LEVEL and tier != tiers[0]:
                action = REJECT  # cache only: this miss is refused, as the edge does
            acc.count(tier, rtype, action, each[i])
            if action == ADMIT:
                admitted[i] += 1
            elif action == DEFER:
                deferred[i] += 1
        for i, ((tier, rtype), _) in enumerate(classes):
            pool.submit((tier, rtype), admitted[i] * each[i], now=now, prompt=prompt, output=output)
            if deferred[i]:
                backlog[tier].append([now, deferred[i] * each[i]])
                backlog_total[tier] += deferred[i] * each[i]
        # the deferred backlog is offered again. The in-memory queue drains it over a minute at the most (as
        # an edge's async queue with bounded concurrency would), so it does not return as one spike; the
        # lane's drainers offer all of it, highest tier first, and a task past its deadline expires
        for tier in tiers:
            if lane:
                expired = _take(backlog[tier], backlog_total[tier], now - model.batch_deadline_s, only_before=True)
                if expired:
                    backlog_total[tier] = max(0.0, backlog_total[tier] - expired)
                    acc.expired += expired  # never run: not a timeout the replicas caused
            if backlog_total[tier] <= 1e-9:
                continue
            # each call stands for k requests at most, as the gate counts it
            drain = backlog_total[tier] if lane else max(backlog_total[tier] / BACKLOG_DRAIN_S,
                                                         min(k, backlog_total[tier]))
            offered = min(drain, CALLS_PER_SECOND * k)
            offers = max(1, _round(offered / k, rng))
            replayed = 0.0
            for _ in range(offers):
                if gate.admit("sim", tier, BATCH, requeued=True).action != ADMIT:
                    break
                replayed += offered / offers
            if replayed:
                late = _take(backlog[tier], replayed, now - model.batch_deadline_s)
                backlog_total[tier] = max(0.0, backlog_total[tier] - replayed)
                pool.submit((tier, BATCH), replayed, now=now, prompt=prompt, output=output)
                acc.replayed[tier] += replayed
                acc.late[tier] += late
        sec = pool.step(now, fleet.ready)
        capacity = fleet.ready * bounds.replica_rps
        acc.second(sec, targets, capacity, decoding)
        policy.second(Sample(now_s=now, ready=fleet.ready, gpu_busy=sec.gpu_busy, running=sec.running,
                             waiting=sec.waiting, kv_cache=sec.kv_cache_usage))
        if t % window_s == window_s - 1:
            start = t - window_s + 1
            policy.window(acc.observation(start, fleet, _backlog(backlog, now, model.batch_deadline_s) if lane
                                          else (0, 0.0)))
            plan = policy.plan()
            rows.append(acc.row(start, fleet, plan))
            acc = _Window(tiers, window_s)
            if progress is not None and len(rows) % 60 == 0:
                progress(t + 1, workload.seconds)
    return Result(workload.name, policy.name, rows, workload.onset_s, window_s, policy.knob, policy.knob_value,
                  policy.knob_text or f"{policy.knob_value:g}")


class _Targets:
    """The SLO targets of a run, per tier."""

    def __init__(self, model: ServiceModel, prompt_mean: float) -> None:
        self.model = model
        self.ttft = {t: model.ttft_target_s(t, prompt_mean) for t in TIER_ORDER}
        self.tpot = {t: model.tpot_target_s(t) for t in TIER_ORDER}


class _Decoding:
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


def _take(backlog: collections.deque[list[float]], n: float, deadline: float, only_before: bool = False) -> float:
    """Take ``n`` requests off the oldest end of ``backlog`` (``only_before``: only those deferred before
    ``deadline``); how many of them were deferred before ``deadline``."""
    late = 0.0
    while n > 1e-9 and backlog:
        head = backlog[0]
        if only_before and head[0] >= deadline:
            break
        take = min(n, head[1])
        if head[0] < deadline:
            late += take
        head[1] -= take
        n -= take
        if head[1] <= 1e-9:
            backlog.popleft()
    return late


def _backlog(backlog: dict[str, collections.deque[list[float]]], now: float, deadline_s: float) -> tuple[int, float]:
    """(requests waiting, the start rate that meets every one's deadline), as the lane's drainers report it."""
    entries = sorted((t0, n) for queue in backlog.values() for t0, n in queue)
    total, required = 0.0, 0.0
    for t0, n in entries:
        total += n
        required = max(required, total / max(1.0, t0 + deadline_s - now))
    return int(total), required


def _round(x: float, rng: random.Random) -> int:
    """Stochastic rounding: unbiased, deterministic for the seed."""
    whole = math.floor(x)
    return whole + (rng.random() < x - whole)


class _Window:
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

    def second(self, sec: Second, targets: _Targets, capacity: float, decoding: _Decoding) -> None:
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
            kv_cache=max(self.kv), waiting=self.waiting,
        )
