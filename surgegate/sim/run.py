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

from surgegate.admission.actions import ADMIT, DEFER, REJECT
from surgegate.admission.gate import Admission, Fallback, hold_after_s
from surgegate.checks import check
from surgegate.llm.caching import CACHE_ONLY_LEVEL
from surgegate.llm.fluid import (
    FluidPool,
    steady_tpot,
    token_rates,
)
from surgegate.schemas.telemetry import RequestType
from surgegate.settings import DEFAULT_WINDOW_S
from surgegate.sim.policies import FleetBounds, Policy, Sample
from surgegate.sim.result import Result, WindowRow
from surgegate.sim.service import TIER_ORDER, Fleet, ServiceModel
from surgegate.sim.window import Decoding, Targets, WindowScores
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
    run = Run(workload, policy, model=model, bounds=bounds, seed=seed, window_s=window_s)
    for t in range(workload.seconds):
        run.second(t)
        if progress is not None and t % (60 * window_s) == 60 * window_s - 1:
            progress(t + 1, workload.seconds)
    return run.result()


class Run:
    """One region's service stepped a second at a time (:func:`simulate` steps one to its end).

    Arrivals may leave for another region (``away``: a share per tier) and come from one (``incoming``:
    requests per class); both pass the gate of the region they are served in, as a request a gateway
    routes to another region's upstream does.
    """

    def __init__(self, workload: Workload, policy: Policy, *, model: ServiceModel | None = None,
                 bounds: FleetBounds | None = None, seed: int = 0, window_s: int = DEFAULT_WINDOW_S) -> None:
        check(isinstance(window_s, int) and window_s >= 1, "window_s", window_s,
              "must be a whole number of seconds >= 1")
        self.workload, self.policy, self.window_s = workload, policy, window_s
        self.model = model = model or ServiceModel()
        self.bounds = bounds = bounds or fleet_bounds(workload, model, window_s=window_s)
        self.rng = random.Random(seed)
        self.k = k = max(1.0, max(workload.rate) / CALLS_PER_SECOND)
        self.tiers = tiers = tuple(TIER_ORDER)
        self.clock = clock = [0.0]
        # a static limit is for all edges together; each admit() call stands for k requests
        limit = policy.static_limit_rps
        fallback = Fallback(total_rps=limit / k) if limit is not None else Fallback()
        self.gate = Admission("chat", tiers, share=1.0 / k, fallback=fallback, clock=lambda: clock[0],
                              wall=lambda: clock[0], hold_after_s=hold_after_s(window_s))
        self.starts = dataclasses.replace(model, cold_start_s=cold_start(workload, model))
        self.fleet = Fleet(ready=min(bounds.max_replicas, policy.plan().replicas))
        rank = (lambda c: tiers.index(c[0]) + (len(tiers) if c[1] == BATCH else 0)) if model.engine_priority \
            else None
        self.pool = FluidPool(model.profile, timeout_s=model.timeout_s, rank=rank)
        # deferred batch work per tier: (second deferred, requests)
        self.backlog: dict[str, collections.deque[list[float]]] = {t: collections.deque() for t in tiers}
        self.backlog_total = dict.fromkeys(tiers, 0.0)
        self.lane = model.deferral == "lane"
        ref_prompt, _ = workload.mean_lengths()
        self.targets = Targets(model, ref_prompt)
        self.decoding = Decoding()
        self.classes = list(workload.mix.items())
        self.rows: list[WindowRow] = []
        self.acc = WindowScores(tiers, window_s)
        self.applied_version: int | None = None

    def leaving(self, t: int, away: dict[str, float]) -> dict[tuple[str, RequestType], float]:
        """Requests per class of second ``t`` that ``away`` (a share per tier) sends to another region."""
        return {cls: self.workload.rate[t] * share * away.get(cls[0], 0.0)
                for cls, share in self.classes if away.get(cls[0], 0.0) > 0}

    def second(self, t: int, away: dict[str, float] | None = None,
               incoming: dict[tuple[str, RequestType], float] | None = None) -> None:
        """Second ``t``: starts and stops, the decision applied, arrivals through the gate, the replicas' step."""
        workload, model, bounds, fleet, gate, acc = self.workload, self.model, self.bounds, self.fleet, self.gate, \
            self.acc
        policy, pool, rng, k, tiers = self.policy, self.pool, self.rng, self.k, self.tiers
        backlog, backlog_total, window_s = self.backlog, self.backlog_total, self.window_s
        now = float(t)
        self.clock[0] = now
        acc.new_second()
        if t in workload.failures:
            fleet.fail(workload.failures[t])
        fleet.advance(now)
        plan = policy.plan()
        fleet.reconcile(min(bounds.max_replicas, plan.replicas), min(plan.warm, bounds.max_replicas), now,
                        self.starts)
        if plan.decision is not None and plan.decision.version != self.applied_version:
            gate.apply(plan.decision)
            self.applied_version = plan.decision.version
        prompt, output = workload.lengths(t)
        # arrivals at the edges, interleaved: every class of this second joins the queue together
        # the requests themselves are a flow; the gate decides for them in calls of about k, at least
        # one a class and second (a quiet class is still admitted by the gate, not around it), and the
        # calls of every class come interleaved, as arrivals do: no class is asked first
        calls: list[int] = []
        each: list[float] = []
        for i, ((tier, rtype), share) in enumerate(self.classes):
            arriving = workload.rate[t] * share
            if away and away.get(tier, 0.0) > 0:
                acc.spilled[tier] += arriving * away[tier]
                arriving -= arriving * away[tier]
            if incoming:
                arriving += incoming.get((tier, rtype), 0.0)
            # the response cache answers its share at the edge: neither the gate nor a replica sees those
            hits = arriving * model.cache_hit_ratio
            if hits:
                acc.hit(tier, rtype, hits)
            acc.arrivals[tier][-1] += arriving - hits
            n = max(1, _round((arriving - hits) / k, rng))
            calls += [i] * n
            each.append((arriving - hits) / n)
        rng.shuffle(calls)
        admitted = [0] * len(self.classes)
        deferred = [0] * len(self.classes)
        for i in calls:
            tier, rtype = self.classes[i][0]
            verdict = gate.admit("sim", tier, rtype)
            action = verdict.action
            if model.cache_hit_ratio and action == ADMIT and verdict.level >= CACHE_ONLY_LEVEL and tier != tiers[0]:
                action = REJECT  # cache only: this miss is refused, as the edge does
            acc.count(tier, rtype, action, each[i])
            if action == ADMIT:
                admitted[i] += 1
            elif action == DEFER:
                deferred[i] += 1
        for i, ((tier, rtype), _) in enumerate(self.classes):
            pool.submit((tier, rtype), admitted[i] * each[i], now=now, prompt=prompt, output=output)
            if deferred[i]:
                backlog[tier].append([now, deferred[i] * each[i]])
                backlog_total[tier] += deferred[i] * each[i]
        # the deferred backlog is offered again. The in-memory queue drains it over a minute at the most (as
        # an edge's async queue with bounded concurrency would), so it does not return as one spike; the
        # lane's drainers offer all of it, highest tier first, and a task past its deadline expires
        for tier in tiers:
            if self.lane:
                expired = _take(backlog[tier], backlog_total[tier], now - model.batch_deadline_s, only_before=True)
                if expired:
                    backlog_total[tier] = max(0.0, backlog_total[tier] - expired)
                    acc.expired += expired  # never run: not a timeout the replicas caused
            if backlog_total[tier] <= 1e-9:
                continue
            # each call stands for k requests at most, as the gate counts it
            drain = backlog_total[tier] if self.lane else max(backlog_total[tier] / BACKLOG_DRAIN_S,
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
        acc.second(sec, self.targets, capacity, self.decoding)
        policy.second(Sample(now_s=now, ready=fleet.ready, gpu_busy=sec.gpu_busy, running=sec.running,
                             waiting=sec.waiting, kv_cache=sec.kv_cache_usage))
        if t % window_s == window_s - 1:
            start = t - window_s + 1
            policy.window(acc.observation(start, fleet, _backlog(backlog, now, model.batch_deadline_s) if self.lane
                                          else (0, 0.0)))
            self.rows.append(acc.row(start, fleet, policy.plan()))
            self.acc = WindowScores(tiers, window_s)

    def result(self) -> Result:
        p = self.policy
        return Result(self.workload.name, p.name, self.rows, self.workload.onset_s, self.window_s, p.knob,
                      p.knob_value, p.knob_text or f"{p.knob_value:g}")


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
