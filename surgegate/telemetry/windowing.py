"""Two-stage tumbling-window aggregation, free of Kafka and Faust.

Stage 1, :class:`PartialAggregator`, runs in the ingest consumer: it folds the
events of one source partition into small per-(cell, window) accumulators and,
at each cut, rolls them up into one :class:`WindowPartial` per scope and window.
Stage 2, :class:`ScopeWindows`, runs in the merge agent, one per scope: it
merges partials, recognises a partial it has already merged, counts late
events, and closes windows into :class:`WindowStats` once the watermark passes
their end plus the allowed lateness.

Windows are event-time, tumbling, aligned to multiples of the window length
since the epoch:

>>> window_start(1_700_000_012_345, 10_000)
1700000010000
"""

from __future__ import annotations

from collections.abc import Iterable
from math import ceil, log
from typing import Any

import msgspec

from surgegate.schemas.aggregates import (
    DrainerSample,
    PoolAggregate,
    PoolStats,
    SourceRange,
    TrafficAggregate,
    TrafficStats,
    WindowPartial,
    WindowStats,
    WorkerSample,
)
from surgegate.schemas.telemetry import SLOW_REQUEST_MS, MetricEvent, RequestEvent, RequestSummary, Sketch
from surgegate.telemetry.scopes import parse_scope, pool_scope, service_scope, tenant_scope, tier_scope
from surgegate.telemetry.sketch import INV_LOG_GAMMA, MIN_VALUE, LogHistogram

#: After a scope's last traffic, closed windows without traffic are still
#: published as zeros for this many windows; then the scope goes quiet.
ZERO_FILL_WINDOWS = 30


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
        _add_arrivals(self.arrivals, other.arrivals)

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


def _add_arrivals(into: dict[int, int], other: dict[int, int]) -> None:
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
            _keep_latest(self.drainers, m.worker_id, DrainerSample(m.ts, m.queue_depth, m.backlog_tokens,
                                                                   m.backlog_oldest_ms, m.backlog_required_rps))
            return
        self.samples += 1
        self.util_sum += m.utilisation
        self.util_max = max(self.util_max, m.utilisation)
        self.kv_sum += m.kv_cache_use
        self.kv_max = max(self.kv_max, m.kv_cache_use)
        self.queue_max = max(self.queue_max, m.queue_depth)
        sample = WorkerSample(m.ts, m.state, m.queue_depth, m.running_requests, m.tokens_per_s)
        _keep_latest(self.workers, m.worker_id, sample)

    def to_wire(self) -> PoolAggregate:
        """The immutable wire form."""
        return PoolAggregate(
            samples=self.samples, utilisation_sum=self.util_sum, utilisation_max=self.util_max,
            kv_cache_sum=self.kv_sum, kv_cache_max=self.kv_max, queue_depth_max=self.queue_max,
            workers=dict(self.workers), drainers=dict(self.drainers),
        )


def _keep_latest(workers: dict[str, Any], worker: str, sample: Any) -> None:
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


# --------------------------------------------------------------------- stage 2


def merge_traffic(a: TrafficAggregate, b: TrafficAggregate) -> TrafficAggregate:
    """The sum of two traffic aggregates."""
    return TrafficAggregate(
        ok=a.ok + b.ok, error=a.error + b.error, timeout=a.timeout + b.timeout,
        throttled=a.throttled + b.throttled, deferred=a.deferred + b.deferred, realtime=a.realtime + b.realtime,
        batch=a.batch + b.batch,
        input_tokens=a.input_tokens + b.input_tokens, output_tokens=a.output_tokens + b.output_tokens,
        cache_hits=a.cache_hits + b.cache_hits, over_2s=a.over_2s + b.over_2s,
        replayed=a.replayed + b.replayed, cancelled=a.cancelled + b.cancelled,
        latency=_merge_sketch(a.latency, b.latency), queue_wait=_merge_sketch(a.queue_wait, b.queue_wait),
        ttft=_merge_sketch(a.ttft, b.ttft), itl=_merge_sketch(a.itl, b.itl),
        arrivals=_merged_arrivals(a.arrivals, b.arrivals),
    )


def _merged_arrivals(a: dict[int, int], b: dict[int, int]) -> dict[int, int]:
    if not b:
        return a
    out = dict(a)
    _add_arrivals(out, b)
    return out


def _merge_sketch(a: Sketch, b: Sketch) -> Sketch:
    h = LogHistogram()
    h.merge_parts(a.bins, a.zeros, a.max)
    h.merge_parts(b.bins, b.zeros, b.max)
    return wire_sketch(h)


def merge_pool(a: PoolAggregate, b: PoolAggregate) -> PoolAggregate:
    """The merge of two pool aggregates (latest report per worker wins)."""
    workers = dict(a.workers)
    for worker, sample in b.workers.items():
        _keep_latest(workers, worker, sample)
    drainers = dict(a.drainers)
    for drainer, report in b.drainers.items():
        _keep_latest(drainers, drainer, report)
    return PoolAggregate(
        samples=a.samples + b.samples,
        utilisation_sum=a.utilisation_sum + b.utilisation_sum,
        utilisation_max=max(a.utilisation_max, b.utilisation_max),
        kv_cache_sum=a.kv_cache_sum + b.kv_cache_sum,
        kv_cache_max=max(a.kv_cache_max, b.kv_cache_max),
        queue_depth_max=max(a.queue_depth_max, b.queue_depth_max),
        workers=workers, drainers=drainers,
    )


def traffic_stats(agg: TrafficAggregate, window_ms: int) -> TrafficStats:
    """WindowStats' request figures from a merged aggregate."""
    seconds = window_ms / 1000
    latency, queue, ttft, itl = LogHistogram(), LogHistogram(), LogHistogram(), LogHistogram()
    latency.merge_parts(agg.latency.bins, agg.latency.zeros, agg.latency.max)
    queue.merge_parts(agg.queue_wait.bins, agg.queue_wait.zeros, agg.queue_wait.max)
    ttft.merge_parts(agg.ttft.bins, agg.ttft.zeros, agg.ttft.max)
    itl.merge_parts(agg.itl.bins, agg.itl.zeros, agg.itl.max)
    requests = agg.ok + agg.error + agg.timeout + agg.throttled + agg.cancelled
    served = agg.ok + agg.error + agg.timeout  # the latency sketch's requests
    return TrafficStats(
        requests=requests, rate_rps=round(requests / seconds, 3),
        ok=agg.ok, error=agg.error, timeout=agg.timeout, throttled=agg.throttled, cancelled=agg.cancelled,
        realtime=agg.realtime, batch=agg.batch,
        latency_p50_ms=_r(latency.quantile(0.5)), latency_p90_ms=_r(latency.quantile(0.9)),
        latency_p99_ms=_r(latency.quantile(0.99)), latency_max_ms=_r(latency.max),
        queue_wait_p99_ms=_r(queue.quantile(0.99)),
        input_tokens=agg.input_tokens, output_tokens=agg.output_tokens,
        tokens_per_s=round((agg.input_tokens + agg.output_tokens) / seconds, 3),
        over_2s_share=round(agg.over_2s / served, 6) if served else 0.0,
        cache_hits=agg.cache_hits, deferred=agg.deferred, replayed=agg.replayed,
        # a cache hit costs the upstream nothing: demand is what the servers must answer
        demand_rps=round(max(0, requests - agg.replayed + agg.deferred - agg.cache_hits) / seconds, 3),
        ttft_p50_ms=_r(ttft.quantile(0.5)) if ttft.count else None,
        ttft_p99_ms=_r(ttft.quantile(0.99)) if ttft.count else None,
        itl_p50_ms=_r(itl.quantile(0.5)) if itl.count else None,
        itl_p99_ms=_r(itl.quantile(0.99)) if itl.count else None,
        peak_rps=float(max(0, max(agg.arrivals.values()))) if agg.arrivals else None,
    )


def pool_stats(agg: PoolAggregate) -> PoolStats:
    """WindowStats' GPU-pool figures from a merged aggregate."""
    n = agg.samples
    latest = list(agg.workers.values())
    drainers = list(agg.drainers.values())
    return PoolStats(
        samples=n,
        utilisation_mean=round(agg.utilisation_sum / n, 6) if n else 0.0,
        utilisation_max=agg.utilisation_max,
        kv_cache_mean=round(agg.kv_cache_sum / n, 6) if n else 0.0,
        kv_cache_max=agg.kv_cache_max,
        queue_depth=sum(w.queue_depth for w in latest),
        queue_depth_max=agg.queue_depth_max,
        running_requests=sum(w.running_requests for w in latest),
        tokens_per_s=round(sum(w.tokens_per_s for w in latest), 3),
        workers=len(latest),
        ready_replicas=sum(1 for w in latest if w.state == "ready"),
        cold_starting_replicas=sum(1 for w in latest if w.state == "cold_starting"),
        backlog_tasks=sum(d.tasks for d in drainers),
        backlog_tokens=sum(d.tokens for d in drainers),
        backlog_oldest_ms=max((d.oldest_ms for d in drainers), default=0.0),
        backlog_required_rps=round(sum(d.required_rps for d in drainers), 3),
    )


def _r(value: float) -> float:
    return round(value, 3)


class OpenWindow(msgspec.Struct):
    """A window of one scope that has not closed yet."""

    partials: int = 0
    events: int = 0
    traffic: TrafficAggregate | None = None
    pool: PoolAggregate | None = None


class ScopeWindows(msgspec.Struct):
    """Stage-2 state of one scope: open windows, duplicate marks, closing.

    Serialisable as a whole (msgspec), so the merge agent keeps it in a Faust
    table backed by a changelog and a restarted worker resumes it.

    ``high_water`` holds, per source partition (and incarnation of its log), the
    ``(last_offset, window_start)`` of the newest partial merged: the ingest
    emits partials of one source in increasing order of that pair, so anything
    at or below it has been merged already.
    """

    scope: str
    window_ms: int
    open: dict[int, OpenWindow] = msgspec.field(default_factory=dict)
    high_water: dict[str, tuple[int, int]] = msgspec.field(default_factory=dict)
    closed_through: int = -1
    last_traffic: int = -1
    late_events: int = 0

    def add(self, partial: WindowPartial) -> str:
        """Merge one partial; returns ``merged``, ``duplicate`` or ``late``."""
        if partial.window_ms != self.window_ms:
            raise ValueError(
                f"partial for {partial.scope} has window_ms={partial.window_ms}, "
                f"this merge stage uses {self.window_ms}"
            )
        src = partial.source
        source_key = f"{src.topic}:{src.partition}" + (f"@{src.log_id}" if src.log_id else "")
        mark = (src.last_offset, partial.window_start)
        seen = self.high_water.get(source_key)
        if seen is not None and tuple(mark) <= tuple(seen):
            return "duplicate"
        self.high_water[source_key] = mark
        if partial.window_start <= self.closed_through:
            self.late_events += partial.events
            return "late"
        window = self.open.get(partial.window_start)
        if window is None:
            window = self.open[partial.window_start] = OpenWindow()
        window.partials += 1
        window.events += partial.events
        if partial.traffic is not None:
            window.traffic = (partial.traffic if window.traffic is None
                              else merge_traffic(window.traffic, partial.traffic))
        if partial.pool is not None:
            window.pool = partial.pool if window.pool is None else merge_pool(window.pool, partial.pool)
        return "merged"

    def close(self, watermark: int, lateness_ms: int) -> list[WindowStats]:
        """Close every window whose end plus lateness is at or before ``watermark``.

        Windows without data between the scope's last traffic and the newest
        closable window are published as zeros, up to :data:`ZERO_FILL_WINDOWS`.
        """
        w = self.window_ms
        newest = window_start(watermark - lateness_ms, w) - w
        if newest <= self.closed_through:
            return []
        out = []
        start = self.closed_through + w if self.closed_through >= 0 else min(self.open, default=None)
        while start is not None and start <= newest:
            window = self.open.pop(start, None)
            if window is None and not (self.last_traffic >= 0 and start <= self.last_traffic + ZERO_FILL_WINDOWS * w):
                # quiet scope: skip ahead to its next window with data
                start = min(self.open, default=None)
                continue
            window = window or OpenWindow()
            out.append(self._stats(start, window))
            self.late_events = 0
            if window.partials:
                self.last_traffic = start
            start += w
        self.closed_through = newest
        return out

    def _stats(self, start: int, window: OpenWindow) -> WindowStats:
        labels = parse_scope(self.scope)
        is_pool = "pool" in labels
        traffic = None
        gpu = None
        if is_pool:
            gpu = pool_stats(window.pool or PoolAggregate())
        else:
            traffic = traffic_stats(window.traffic or TrafficAggregate(), self.window_ms)
        return WindowStats(
            scope=self.scope, kind="pool" if is_pool else "traffic",
            window_start=start, window_end=start + self.window_ms,
            late_events=self.late_events,
            traffic=traffic, gpu=gpu, **labels,
        )


def merge_all(partials: Iterable[WindowPartial], window_ms: int, watermark: int, lateness_ms: int) -> list[WindowStats]:
    """Run stage 2 over partials in memory; the reference the agents must agree with."""
    states: dict[str, ScopeWindows] = {}
    for p in partials:
        state = states.get(p.scope)
        if state is None:
            state = states[p.scope] = ScopeWindows(scope=p.scope, window_ms=window_ms)
        state.add(p)
    out: list[WindowStats] = []
    for scope in sorted(states):
        out.extend(states[scope].close(watermark, lateness_ms))
    return out
