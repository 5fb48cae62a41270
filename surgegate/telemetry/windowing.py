"""Two-stage tumbling-window aggregation, free of Kafka and Faust.

Stage 1, :class:`PartialAggregator`, runs in the ingest consumer: it folds the
events of one source partition into small per-(cell, window) accumulators and,
at each cut, rolls them up into one :class:`WindowPartial` per scope and window.
Stage 2, :class:`~surgegate.telemetry.merging.ScopeWindows`, runs in the merge
agent (see :mod:`surgegate.telemetry.merging`).

Windows are event-time, tumbling, aligned to multiples of the window length
since the epoch:

>>> window_start(1_700_000_012_345, 10_000)
1700000010000
"""

from __future__ import annotations

from math import ceil, log
from typing import Any

import msgspec

from surgegate.schemas.aggregates import (
    DrainerSample,
    PoolAggregate,
    SourceRange,
    TrafficAggregate,
    WindowPartial,
    WorkerSample,
)
from surgegate.schemas.telemetry import SLOW_REQUEST_MS, MetricEvent, RequestEvent, RequestSummary, Sketch
from surgegate.telemetry.scopes import pool_scope, service_scope, tenant_scope, tier_scope
from surgegate.telemetry.sketch import INV_LOG_GAMMA, MIN_VALUE, LogHistogram


def window_start(ts_ms: int, window_ms: int) -> int:
    """Start of the window holding ``ts_ms``."""
    return ts_ms - ts_ms % window_ms


# --------------------------------------------------------------------- stage 1


class TrafficCell:
    """Mutable request accumulator for one (service, tier, tenant, window)."""

    __slots__ = ("counts", "input_tokens", "output_tokens", "cache_hits", "over_2s", "replayed",
                 "realtime", "batch", "latency", "queue_wait", "ttft", "itl", "arrivals")

    def __init__(self) -> None:
        # ok, error, timeout, throttled, deferred, cancelled
        self.counts = [0, 0, 0, 0, 0, 0]
        self.input_tokens = 0
        self.output_tokens = 0
        self.cache_hits = 0
        self.replayed = 0
        self.over_2s = 0
        self.realtime = 0
        self.batch = 0
        self.latency = LogHistogram()
        self.queue_wait = LogHistogram()
        self.ttft = LogHistogram()
        self.itl = LogHistogram()
        #: new demand by epoch second (see TrafficAggregate.arrivals)
        self.arrivals: dict[int, int] = {}

    def add_event(self, ev: RequestEvent) -> None:
        """Fold one RequestEvent in (the hot path: sketch updates are inlined)."""
        status = ev.status
        # new demand, exactly as demand_rps counts it (a deferred request is demand whatever its flags)
        new = 1 if status == "deferred" else 1 - ev.replayed - ev.cache_hit
        if new:
            second = ev.ts // 1000
            arrivals = self.arrivals
            arrivals[second] = arrivals.get(second, 0) + new
        if status == "throttled":
            self.counts[3] += 1
        elif status == "deferred":
            # backlog, not demand: the request is reported again when it runs
            self.counts[4] += 1
            return
        elif status == "cancelled":  # served as far as the client stayed; no latency of the service
            self.counts[5] += 1
        else:
            self.counts[_STATUS_INDEX[status]] += 1
            latency = ev.latency_ms
            if latency > SLOW_REQUEST_MS:
                self.over_2s += 1
            h = self.latency
            if latency <= MIN_VALUE:
                h.zeros += 1
            else:
                i = ceil(log(latency) * INV_LOG_GAMMA)
                bins = h.bins
                bins[i] = bins.get(i, 0) + 1
                if latency > h.max:
                    h.max = latency
            queued = ev.queue_ms
            h = self.queue_wait
            if queued <= MIN_VALUE:
                h.zeros += 1
            else:
                i = ceil(log(queued) * INV_LOG_GAMMA)
                bins = h.bins
                bins[i] = bins.get(i, 0) + 1
                if queued > h.max:
                    h.max = queued
            if ev.ttft_ms is not None:  # streamed LLM responses only: off the common path
                self.ttft.add(ev.ttft_ms)
                if ev.itl_ms is not None:
                    self.itl.add(ev.itl_ms)
        if ev.request_type == "realtime":
            self.realtime += 1
        else:
            self.batch += 1
        self.input_tokens += ev.input_tokens
        self.output_tokens += ev.output_tokens
        if ev.cache_hit:
            self.cache_hits += 1
        if ev.replayed:
            self.replayed += 1

    def add_summary(self, s: RequestSummary) -> None:
        """Fold one RequestSummary in; gives the same result as its events."""
        c = self.counts
        c[0] += s.ok
        c[1] += s.error
        c[2] += s.timeout
        c[3] += s.throttled
        c[4] += s.deferred
        c[5] += s.cancelled
        n = s.requests
        _spread(self.arrivals, s.ts, s.duration_ms, n + s.deferred - s.replayed - s.cache_hits)
        if s.request_type == "realtime":
            self.realtime += n
        else:
            self.batch += n
        self.input_tokens += s.input_tokens
        self.output_tokens += s.output_tokens
        self.cache_hits += s.cache_hits
        self.replayed += s.replayed
        self.over_2s += s.over_2s
        self.latency.merge_parts(s.latency.bins, s.latency.zeros, s.latency.max)
        self.queue_wait.merge_parts(s.queue_wait.bins, s.queue_wait.zeros, s.queue_wait.max)
        self.ttft.merge_parts(s.ttft.bins, s.ttft.zeros, s.ttft.max)
        self.itl.merge_parts(s.itl.bins, s.itl.zeros, s.itl.max)

    def merge(self, other: TrafficCell) -> None:
        """Merge another cell into this one."""
        for i in range(6):
            self.counts[i] += other.counts[i]
        self.input_tokens += other.input_tokens
        self.output_tokens += other.output_tokens
        self.cache_hits += other.cache_hits
        self.replayed += other.replayed
        self.over_2s += other.over_2s
        self.realtime += other.realtime
        self.batch += other.batch
        self.latency.merge(other.latency)
        self.queue_wait.merge(other.queue_wait)
        self.ttft.merge(other.ttft)
        self.itl.merge(other.itl)
        add_arrivals(self.arrivals, other.arrivals)

    @property
    def events(self) -> int:
        """Requests covered, deferred ones included."""
        return sum(self.counts)

    def summary_fields(self) -> dict[str, Any]:
        """What a RequestSummary takes from this cell: outcomes, tokens and the wire sketches."""
        ok, error, timeout, _, _, cancelled = self.counts
        return {"ok": ok, "error": error, "timeout": timeout, "cancelled": cancelled,
                "input_tokens": self.input_tokens,
                "output_tokens": self.output_tokens, "cache_hits": self.cache_hits, "over_2s": self.over_2s,
                "replayed": self.replayed, "latency": wire_sketch(self.latency),
                "queue_wait": wire_sketch(self.queue_wait), "ttft": wire_sketch(self.ttft),
                "itl": wire_sketch(self.itl)}

    def to_wire(self) -> TrafficAggregate:
        """The immutable wire form."""
        ok, error, timeout, throttled, deferred, cancelled = self.counts
        return TrafficAggregate(
            ok=ok, error=error, timeout=timeout, throttled=throttled, deferred=deferred, cancelled=cancelled,
            realtime=self.realtime, batch=self.batch,
            input_tokens=self.input_tokens, output_tokens=self.output_tokens,
            cache_hits=self.cache_hits, over_2s=self.over_2s, replayed=self.replayed,
            latency=wire_sketch(self.latency), queue_wait=wire_sketch(self.queue_wait),
            ttft=wire_sketch(self.ttft), itl=wire_sketch(self.itl), arrivals=dict(self.arrivals),
        )


def _spread(arrivals: dict[int, int], ts: int, duration_ms: int, n: int) -> None:
    """Count ``n`` arrivals over ``[ts, ts + duration_ms)`` evenly by second (a summary's interval)."""
    if n == 0:
        return
    first, last = ts // 1000, (ts + duration_ms - 1) // 1000
    seconds = last - first + 1
    share, extra = divmod(abs(n), seconds)
    sign = 1 if n > 0 else -1
    for i in range(seconds):
        k = share + (1 if i < extra else 0)
        if k:
            arrivals[first + i] = arrivals.get(first + i, 0) + sign * k


def add_arrivals(into: dict[int, int], other: dict[int, int]) -> None:
    for second, n in other.items():
        into[second] = into.get(second, 0) + n


_STATUS_INDEX = {"ok": 0, "error": 1, "timeout": 2, "throttled": 3}


class PoolCell:
    """Mutable GPU-pool accumulator for one (pool, window)."""

    __slots__ = ("samples", "util_sum", "util_max", "kv_sum", "kv_max", "queue_max", "workers", "drainers")

    def __init__(self) -> None:
        self.samples = 0
        self.util_sum = 0.0
        self.util_max = 0.0
        self.kv_sum = 0.0
        self.kv_max = 0.0
        self.queue_max = 0
        self.workers: dict[str, WorkerSample] = {}
        self.drainers: dict[str, DrainerSample] = {}

    def add_metric(self, m: MetricEvent) -> None:
        """Fold one MetricEvent in (a drainer's backlog report apart from the replicas')."""
        if m.kind == "drainer":
            keep_latest(self.drainers, m.worker_id, DrainerSample(m.ts, m.queue_depth, m.backlog_tokens,
                                                                   m.backlog_oldest_ms, m.backlog_required_rps))
            return
        self.samples += 1
        self.util_sum += m.utilisation
        self.util_max = max(self.util_max, m.utilisation)
        self.kv_sum += m.kv_cache_use
        self.kv_max = max(self.kv_max, m.kv_cache_use)
        self.queue_max = max(self.queue_max, m.queue_depth)
        sample = WorkerSample(m.ts, m.state, m.queue_depth, m.running_requests, m.tokens_per_s)
        keep_latest(self.workers, m.worker_id, sample)

    def to_wire(self) -> PoolAggregate:
        """The immutable wire form."""
        return PoolAggregate(
            samples=self.samples, utilisation_sum=self.util_sum, utilisation_max=self.util_max,
            kv_cache_sum=self.kv_sum, kv_cache_max=self.kv_max, queue_depth_max=self.queue_max,
            workers=dict(self.workers), drainers=dict(self.drainers),
        )


def keep_latest(workers: dict[str, Any], worker: str, sample: Any) -> None:
    # Newest report wins; ties go to the larger tuple so merge order never matters.
    old = workers.get(worker)
    if old is None or (sample.ts, msgspec.json.encode(sample)) > (old.ts, msgspec.json.encode(old)):
        workers[worker] = sample


def wire_sketch(h: LogHistogram) -> Sketch:
    """The wire form of a sketch, bins in index order."""
    return Sketch(bins=dict(sorted(h.bins.items())), zeros=h.zeros, max=h.max)


class PartialAggregator:
    """Stage 1 for one source partition: events in, one partial per scope and window out.

    Requests are folded per (window, service, tier, tenant) cell and rolled up
    at :meth:`drain` into the service, service x tier and service x tenant
    scopes, so each event costs one accumulator update rather than three.
    """

    def __init__(self, window_ms: int) -> None:
        if window_ms <= 0:
            raise ValueError(f"window_ms={window_ms!r} must be > 0")
        self.window_ms = window_ms
        self._traffic: dict[tuple[int, str, str, str], TrafficCell] = {}
        self._pools: dict[tuple[int, str], PoolCell] = {}
        self.events = 0

    def add(self, event: RequestEvent | RequestSummary | MetricEvent) -> None:
        """Fold one validated telemetry record in."""
        self.events += 1
        ts = event.ts
        if type(event) is MetricEvent:
            pool_key = (ts - ts % self.window_ms, event.pool)
            pool = self._pools.get(pool_key)
            if pool is None:
                pool = self._pools[pool_key] = PoolCell()
            pool.add_metric(event)
            return
        assert not isinstance(event, MetricEvent)  # for the type checker: requests from here on
        key = (ts - ts % self.window_ms, event.service, event.tier, event.tenant)
        cell = self._traffic.get(key)
        if cell is None:
            cell = self._traffic[key] = TrafficCell()
        if isinstance(event, RequestEvent):
            cell.add_event(event)
        else:
            cell.add_summary(event)

    def __bool__(self) -> bool:
        return bool(self._traffic or self._pools)

    def drain(self, source: SourceRange) -> list[WindowPartial]:
        """Roll up and return the partials of everything added; start empty again.

        Partials come out ordered by window within each scope, which the merge
        stage relies on to recognise duplicates.
        """
        scopes: dict[tuple[str, int], TrafficCell] = {}
        for (start, service, tier, tenant), cell in self._traffic.items():
            for scope in (service_scope(service), tier_scope(service, tier), tenant_scope(service, tenant)):
                acc = scopes.get((scope, start))
                if acc is None:
                    acc = scopes[(scope, start)] = TrafficCell()
                acc.merge(cell)
        out = [
            WindowPartial(scope=scope, window_start=start, window_ms=self.window_ms, source=source,
                          events=cell.events, traffic=cell.to_wire())
            for (scope, start), cell in sorted(scopes.items())
        ]
        out.extend(
            WindowPartial(scope=pool_scope(pool), window_start=start, window_ms=self.window_ms,
                          source=source, events=cell.samples, pool=cell.to_wire())
            for (start, pool), cell in sorted(self._pools.items())
        )
        self._traffic.clear()
        self._pools.clear()
        self.events = 0
        return out
