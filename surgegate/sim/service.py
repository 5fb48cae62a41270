"""The simulated service: GPU replicas, cold starts, priority queues, long-tail service times.

A fluid model stepped once a simulated second, so three hours at 120,000 rps
run in seconds:

- Each replica serves up to ``concurrency`` requests at once. A request's
  service time is 90% log-normal (median 60 ms, p90 200 ms) and 10% uniform in
  2-6 s. So a replica's throughput is ``concurrency / E[S]``, and the slow
  tenth holds most of the slots.
- Admitted requests queue by priority: each tier's realtime queue, top tier
  first, then batch. Each second the fleet serves up to its throughput, in
  that order. A class waits behind its own queue and every queue ahead of it
  (Little's law: wait = queued / throughput).
- A class's p99 latency in a second is its wait plus the service-time p99.
  A request queued for longer than ``timeout_s`` gives up (a timeout).
- Replicas asked for are ready after ``cold_start_s``, or after
  ``warm_start_s`` when taken from the warm pool. Warm replicas are loaded
  and idle, and are paid for.
- A Deployment-like controller keeps ready plus starting replicas at the
  target, so failed replicas are replaced (cold).
"""

from __future__ import annotations

import dataclasses
import math

TIER_ORDER = ("enterprise", "pro", "free")


@dataclasses.dataclass(frozen=True)
class ServiceModel:
    """Physics of the simulated service."""

    concurrency: int = 2048
    fast_median_ms: float = 60.0
    fast_p90_ms: float = 200.0
    slow_share: float = 0.1
    slow_ms: tuple[float, float] = (2000.0, 6000.0)
    cold_start_s: float = 15.0
    warm_start_s: float = 0.8
    timeout_s: float = 30.0
    slo_p99_ms: float = 10_000.0

    def __post_init__(self) -> None:
        if self.concurrency < 1 or not 0 <= self.slow_share < 1 or self.cold_start_s < 0 or self.timeout_s <= 0 \
                or self.slo_p99_ms <= 0:
            raise ValueError("service model: need concurrency >= 1, slow_share in [0, 1), cold_start_s >= 0, "
                             "timeout_s > 0 and slo_p99_ms > 0")

    def mean_service_s(self, slow_factor: float = 1.0) -> float:
        """E[S]: the log-normal body's mean and the slow tail's mean, weighted."""
        sigma = math.log(self.fast_p90_ms / self.fast_median_ms) / 1.2816
        fast = self.fast_median_ms * math.exp(sigma * sigma / 2)
        slow = (self.slow_ms[0] + self.slow_ms[1]) / 2 * slow_factor
        return ((1 - self.slow_share) * fast + self.slow_share * slow) / 1000

    def p99_service_ms(self, slow_factor: float = 1.0) -> float:
        """The service time's 99th percentile (inside the slow tail when it holds more than 1%)."""
        lo, hi = self.slow_ms[0] * slow_factor, self.slow_ms[1] * slow_factor
        if self.slow_share <= 0.01:
            return self.fast_p90_ms * 2
        return hi - 0.01 * (hi - lo) / self.slow_share

    def replica_rps(self, slow_factor: float = 1.0) -> float:
        """One replica's throughput when every slot is busy."""
        return self.concurrency / self.mean_service_s(slow_factor)


@dataclasses.dataclass
class Fleet:
    """Replicas by state; ``starting`` holds (ready at second, how many)."""

    ready: int
    starting: list[tuple[float, int]] = dataclasses.field(default_factory=list)
    warm: int = 0
    warming: list[tuple[float, int]] = dataclasses.field(default_factory=list)

    @property
    def pending(self) -> int:
        return sum(n for _, n in self.starting)

    @property
    def paid(self) -> int:
        """Replicas that cost money: ready, starting, warm and warming."""
        return self.ready + self.pending + self.warm + sum(n for _, n in self.warming)

    def advance(self, now: float) -> None:
        """Replicas whose start time has come are ready (or warm)."""
        done = sum(n for at, n in self.starting if at <= now)
        if done:
            self.ready += done
            self.starting = [(at, n) for at, n in self.starting if at > now]
        warmed = sum(n for at, n in self.warming if at <= now)
        if warmed:
            self.warm += warmed
            self.warming = [(at, n) for at, n in self.warming if at > now]

    def reconcile(self, target: int, warm_target: int, now: float, model: ServiceModel) -> None:
        """Start or stop replicas so ready + starting = ``target``; the warm pool to ``warm_target``."""
        have = self.ready + self.pending
        if target > have:
            need = target - have
            from_warm = min(need, self.warm)
            if from_warm:
                self.warm -= from_warm
                self.starting.append((now + model.warm_start_s, from_warm))
            if need > from_warm:
                self.starting.append((now + model.cold_start_s, need - from_warm))
        elif target < have:
            # cancel the starts furthest from ready first, then stop ready replicas
            extra = _cancel_latest(self.starting, have - target)
            self.ready -= min(extra, self.ready)
        warm_have = self.warm + sum(n for _, n in self.warming)
        if warm_target > warm_have:
            self.warming.append((now + model.cold_start_s, warm_target - warm_have))
        elif warm_target < warm_have:
            drop = min(warm_have - warm_target, self.warm)
            self.warm -= drop
            _cancel_latest(self.warming, warm_have - warm_target - drop)

    def fail(self, share: float) -> int:
        """A share of the ready replicas fails; returns how many."""
        lost = round(self.ready * share)
        self.ready -= lost
        return lost


def _cancel_latest(pending: list[tuple[float, int]], extra: int) -> int:
    """Cancel up to ``extra`` of the ``(ready_at, n)`` pending replicas, latest first; what is left to cancel."""
    pending.sort()
    while extra and pending:
        at, n = pending.pop()
        keep = max(0, n - extra)
        extra -= n - keep
        if keep:
            pending.append((at, keep))
    return extra


class Queues:
    """Admitted requests waiting, per class, served in priority order."""

    def __init__(self) -> None:
        self.order = [(t, "realtime") for t in TIER_ORDER] + [(t, "batch") for t in TIER_ORDER]
        self.waiting = {c: 0.0 for c in self.order}

    def add(self, cls: tuple[str, str], n: float) -> None:
        self.waiting[cls] += n

    def serve(self, capacity: float) -> dict[tuple[str, str], float]:
        """Serve up to ``capacity`` requests in priority order; what each class got."""
        served = {}
        left = capacity
        for c in self.order:
            take = min(self.waiting[c], left)
            self.waiting[c] -= take
            served[c] = take
            left -= take
        return served

    def waits(self, throughput: float) -> dict[tuple[str, str], float]:
        """Each class's wait in seconds: the queues at and ahead of it over throughput."""
        out, ahead = {}, 0.0
        for c in self.order:
            ahead += self.waiting[c]
            out[c] = ahead / throughput if throughput > 0 else math.inf
        return out

    def expire(self, waits: dict[tuple[str, str], float], timeout_s: float, throughput: float
               ) -> dict[tuple[str, str], float]:
        """Drop what would wait past ``timeout_s`` (lowest priority first); what each class lost."""
        lost = {c: 0.0 for c in self.order}
        budget = timeout_s * throughput  # requests that can be served within the timeout
        ahead = 0.0
        for c in self.order:
            keep = max(0.0, min(self.waiting[c], budget - ahead))
            lost[c] = self.waiting[c] - keep
            self.waiting[c] = keep
            ahead += keep
        return lost

    @property
    def total(self) -> float:
        return sum(self.waiting.values())
