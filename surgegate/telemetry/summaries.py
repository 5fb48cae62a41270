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

from surgegate.schemas.telemetry import RequestEvent, RequestSummary, RequestType
from surgegate.telemetry.windowing import TrafficCell

_Key = tuple[int, str, str, str, RequestType, str]


class SummaryBuilder:
    """Accumulates RequestEvents into per-second, per-scope RequestSummaries.

    Each summary is folded by the same :class:`~surgegate.telemetry.windowing.TrafficCell`
    the ingest uses for raw events, so both paths agree by construction.
    """

    def __init__(self, interval_ms: int = 1000) -> None:
        if not 1 <= interval_ms <= 60_000:
            raise ValueError(f"interval_ms={interval_ms!r} must be within [1, 60000]")
        self.interval_ms = interval_ms
        self._cells: dict[_Key, TrafficCell] = {}

    def add(self, ev: RequestEvent) -> None:
        """Fold one event in."""
        key = (ev.ts - ev.ts % self.interval_ms, ev.service, ev.tenant, ev.tier, ev.request_type, ev.edge_id)
        cell = self._cells.get(key)
        if cell is None:
            cell = self._cells[key] = TrafficCell()
        cell.add_event(ev)

    def drain(self) -> list[RequestSummary]:
        """The summaries of everything added, in time order; starts empty again."""
        out = []
        for (start, service, tenant, tier, rtype, edge), cell in sorted(self._cells.items(), key=lambda kv: kv[0]):
            _, _, _, throttled, deferred, _ = cell.counts
            out.append(RequestSummary(
                ts=start, service=service, tenant=tenant, tier=tier, request_type=rtype, edge_id=edge,
                duration_ms=self.interval_ms, throttled=throttled, deferred=deferred, **cell.summary_fields(),
            ))
        self._cells.clear()
        return out


def summarize(events: Iterable[RequestEvent], interval_ms: int = 1000) -> list[RequestSummary]:
    """RequestSummaries of a batch of events."""
    builder = SummaryBuilder(interval_ms)
    for ev in events:
        builder.add(ev)
    return builder.drain()
