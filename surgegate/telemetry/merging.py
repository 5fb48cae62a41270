"""Stage 2 of the window aggregation, free of Kafka and Faust: :class:`ScopeWindows`.

It runs in the merge agent, one per scope: it merges the partials stage 1
(:class:`~surgegate.telemetry.windowing.PartialAggregator`) cut, recognises a
partial it has already merged, counts late events, and closes windows into
:class:`WindowStats` once the watermark passes their end plus the allowed
lateness.
"""

from __future__ import annotations

from collections.abc import Iterable

import msgspec

from surgegate.schemas.aggregates import (
    PoolAggregate,
    PoolStats,
    TrafficAggregate,
    TrafficStats,
    WindowPartial,
    WindowStats,
)
from surgegate.schemas.telemetry import Sketch
from surgegate.telemetry.scopes import parse_scope
from surgegate.telemetry.sketch import LogHistogram
from surgegate.telemetry.windowing import add_arrivals, keep_latest, window_start, wire_sketch

#: After a scope's last traffic, closed windows without traffic are still
#: published as zeros for this many windows; then the scope goes quiet.
ZERO_FILL_WINDOWS = 30


def tier_outcomes(t: TrafficStats) -> dict[str, int]:
    """What became of a window's requests, as the API reports each tier's: admitted (the servers worked on
    them), throttled, deferred."""
    return {"admitted": t.served, "throttled": t.throttled, "deferred": t.deferred}


def histogram_of(sketch: Sketch) -> LogHistogram:
    """A wire sketch as a histogram to query."""
    h = LogHistogram()
    h.merge_parts(sketch.bins, sketch.zeros, sketch.max)
    return h


#: a service's request latency as a Prometheus histogram: its bucket bounds in seconds, from a cache hit to a long
#: generation
LATENCY_BUCKETS_S = (0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0)


def latency_counts(stats: WindowStats, window: OpenWindow) -> dict[str, int]:
    """A published service-level window's request latencies as cumulative histogram counters, named
    ``latency/<service>/<bound in s>`` for each of :data:`LATENCY_BUCKETS_S` (requests at most that long),
    ``latency/<service>/count`` and ``latency/<service>/sum_us`` (their sum, microseconds); nothing for any other
    scope. From the window's merged sketch: a request within 1% of a bound may fall on either side of it.

    >>> sketch = LogHistogram()
    >>> sketch.extend([40.0, 300.0, 3_000.0])
    >>> agg = TrafficAggregate(ok=3, latency=wire_sketch(sketch))
    >>> w = WindowStats(scope="service=chat", kind="traffic", window_start=0, window_end=10_000, service="chat",
    ...                 traffic=traffic_stats(agg, 10_000))
    >>> counts = latency_counts(w, OpenWindow(partials=1, events=3, traffic=agg))
    >>> counts["latency/chat/0.05"], counts["latency/chat/0.5"], counts["latency/chat/5"], counts["latency/chat/count"]
    (1, 2, 3, 3)
    """
    t = window.traffic
    if t is None or stats.service is None or stats.tier is not None or stats.tenant is not None:
        return {}
    h = histogram_of(t.latency)
    if not h.count:
        return {}
    at_most = h.at_most(bound * 1000 for bound in LATENCY_BUCKETS_S)
    out = {f"latency/{stats.service}/{bound:g}": n for bound, n in zip(LATENCY_BUCKETS_S, at_most, strict=True) if n}
    out[f"latency/{stats.service}/count"] = h.count
    out[f"latency/{stats.service}/sum_us"] = round(h.total() * 1000)
    return out


def tier_counts(stats: WindowStats) -> dict[str, int]:
    """A published per-tier window's requests by outcome, as pipeline counters named
    ``requests/<service>/<tier>/<outcome>`` (a name never holds a ``/``); nothing for any other scope.

    >>> w = WindowStats(scope="service=chat,tier=pro", kind="traffic", window_start=0, window_end=10_000,
    ...                 service="chat", tier="pro", traffic=traffic_stats(TrafficAggregate(ok=3, throttled=2), 10_000))
    >>> tier_counts(w)
    {'requests/chat/pro/admitted': 3, 'requests/chat/pro/throttled': 2}
    """
    t = stats.traffic
    if t is None or stats.service is None or stats.tier is None or stats.tenant is not None:
        return {}
    return {f"requests/{stats.service}/{stats.tier}/{outcome}": n for outcome, n in tier_outcomes(t).items() if n}


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
    add_arrivals(out, b)
    return out


def _merge_sketch(a: Sketch, b: Sketch) -> Sketch:
    h = histogram_of(a)
    h.merge_parts(b.bins, b.zeros, b.max)
    return wire_sketch(h)


def merge_pool(a: PoolAggregate, b: PoolAggregate) -> PoolAggregate:
    """The merge of two pool aggregates (latest report per worker wins)."""
    workers = dict(a.workers)
    for worker, sample in b.workers.items():
        keep_latest(workers, worker, sample)
    drainers = dict(a.drainers)
    for drainer, report in b.drainers.items():
        keep_latest(drainers, drainer, report)
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
    latency, queue, ttft, itl = (histogram_of(agg.latency), histogram_of(agg.queue_wait), histogram_of(agg.ttft),
                                 histogram_of(agg.itl))
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
        return [stats for stats, _ in self.close_each(watermark, lateness_ms)]

    def close_each(self, watermark: int, lateness_ms: int) -> list[tuple[WindowStats, OpenWindow]]:
        """:meth:`close`, each window's statistics with what was merged into it (its sketches whole)."""
        w = self.window_ms
        newest = window_start(watermark - lateness_ms, w) - w
        if newest <= self.closed_through:
            return []
        out: list[tuple[WindowStats, OpenWindow]] = []
        start = self.closed_through + w if self.closed_through >= 0 else min(self.open, default=None)
        while start is not None and start <= newest:
            window = self.open.pop(start, None)
            if window is None and not (self.last_traffic >= 0 and start <= self.last_traffic + ZERO_FILL_WINDOWS * w):
                # quiet scope: skip ahead to its next window with data
                start = min(self.open, default=None)
                continue
            window = window or OpenWindow()
            out.append((self._stats(start, window), window))
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
