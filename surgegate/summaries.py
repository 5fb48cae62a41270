"""Building RequestSummaries at an edge: one per second per scope.

The SDK's summary path and the replay command use this, so a summary carries
exactly the sketch the raw events would have produced.

>>> from surgegate.schemas.telemetry import RequestEvent
>>> evs = [RequestEvent(ts=1_000 + i, service="chat", tenant="a", tier="free", edge_id="e",
...                     latency_ms=10.0 + i) for i in range(3)]
>>> [s.ok for s in summarize(evs)]
[3]
"""

from __future__ import annotations

from collections.abc import Iterable

from surgegate.schemas.telemetry import SLOW_REQUEST_MS, RequestEvent, RequestSummary
from surgegate.sketch import LogHistogram
from surgegate.windowing import wire_sketch

_Key = tuple[int, str, str, str, str, str]


class SummaryBuilder:
    """Accumulates RequestEvents into per-second, per-scope RequestSummaries."""

    def __init__(self, interval_ms: int = 1000) -> None:
        if not 1 <= interval_ms <= 60_000:
            raise ValueError(f"interval_ms={interval_ms!r} must be within [1, 60000]")
        self.interval_ms = interval_ms
        self._acc: dict[_Key, list] = {}

    def add(self, ev: RequestEvent) -> None:
        """Fold one event in."""
        start = ev.ts - ev.ts % self.interval_ms
        key = (start, ev.service, ev.tenant, ev.tier, ev.request_type, ev.edge_id)
        acc = self._acc.get(key)
        if acc is None:
            # ok, error, timeout, throttled, in, out, cache, over_2s, latency, queue
            acc = self._acc[key] = [0, 0, 0, 0, 0, 0, 0, 0, LogHistogram(), LogHistogram()]
        acc[_STATUS[ev.status]] += 1
        acc[4] += ev.input_tokens
        acc[5] += ev.output_tokens
        acc[6] += int(ev.cache_hit)
        if ev.status != "throttled":
            acc[8].add(ev.latency_ms)
            acc[9].add(ev.queue_ms)
            acc[7] += int(ev.latency_ms > SLOW_REQUEST_MS)

    def drain(self) -> list[RequestSummary]:
        """The summaries of everything added, in time order; starts empty again."""
        out = [
            RequestSummary(
                ts=start, service=service, tenant=tenant, tier=tier, request_type=rtype, edge_id=edge,
                duration_ms=self.interval_ms, ok=a[0], error=a[1], timeout=a[2], throttled=a[3],
                input_tokens=a[4], output_tokens=a[5], cache_hits=a[6], over_2s=a[7],
                latency=wire_sketch(a[8]), queue_wait=wire_sketch(a[9]),
            )
            for (start, service, tenant, tier, rtype, edge), a in sorted(self._acc.items(), key=lambda kv: kv[0])
        ]
        self._acc.clear()
        return out


_STATUS = {"ok": 0, "error": 1, "timeout": 2, "throttled": 3}


def summarize(events: Iterable[RequestEvent], interval_ms: int = 1000) -> list[RequestSummary]:
    """RequestSummaries of a batch of events."""
    builder = SummaryBuilder(interval_ms)
    for ev in events:
        builder.add(ev)
    return builder.drain()
