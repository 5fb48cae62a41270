"""What an edge saw, turned into RequestSummaries once a second.

The edge's telemetry: refusals (or, in shadow mode, would-be refusals) and
served requests are counted per (tenant, tier, request type) on the request
path, and a reporter drains them into one RequestSummary per scope.
"""

from __future__ import annotations

import threading

from surgegate.admission.actions import DEFER, REJECT
from surgegate.schemas.telemetry import GateState, RequestEvent, RequestSummary, RequestType
from surgegate.telemetry.windowing import TrafficCell


class Tally:
    """What an edge saw, turned into RequestSummaries once a second.

    ``count`` records a request that was deferred or rejected (or would have
    been, in shadow mode); ``served`` records a forwarded request's outcome.
    """

    def __init__(self) -> None:
        # (tenant, tier, request_type) -> [throttled, deferred, would_throttle]
        self._refused: dict[tuple[str, str, RequestType], list[int]] = {}
        self._cells: dict[tuple[str, str, RequestType], TrafficCell] = {}
        self.totals = {"rejected": 0, "deferred": 0, "would_reject": 0, "would_defer": 0, "served": 0}
        # requests are counted on the edge's threads while a reporter drains
        self._lock = threading.Lock()

    def count(self, tenant: str, tier: str, request_type: RequestType, action: str, shadow: bool) -> None:
        """One refusal (or, in shadow mode, one that would have been)."""
        key = (tenant, tier, request_type)
        with self._lock:
            row = self._refused.get(key)
            if row is None:
                row = self._refused[key] = [0, 0, 0]
            if shadow:
                row[2] += 1
                self.totals["would_reject" if action == REJECT else "would_defer"] += 1
            elif action == REJECT:
                row[0] += 1
                self.totals["rejected"] += 1
            else:
                row[1] += 1
                self.totals["deferred"] += 1

    def moved(self, tenant: str, tier: str, request_type: RequestType, was: str, now: str) -> None:
        """A refusal counted as ``was`` turned out to be ``now`` (a full deferred queue rejects)."""
        index = {REJECT: 0, DEFER: 1}
        names = {REJECT: "rejected", DEFER: "deferred"}
        with self._lock:
            row = self._refused.setdefault((tenant, tier, request_type), [0, 0, 0])
            if row[index[was]] > 0:  # else it was reported already: only add the new one
                row[index[was]] -= 1
                self.totals[names[was]] -= 1
            row[index[now]] += 1
            self.totals[names[now]] += 1

    def served(self, ev: RequestEvent) -> None:
        """One forwarded request's outcome."""
        key = (ev.tenant, ev.tier, ev.request_type)
        with self._lock:
            cell = self._cells.get(key)
            if cell is None:
                cell = self._cells[key] = TrafficCell()
            cell.add_event(ev)
            self.totals["served"] += 1

    def drain(self, ts: int, duration_ms: int, service: str, edge_id: str, gate: GateState,
              shadow: bool) -> list[RequestSummary]:
        """One summary per scope seen since the last drain, stamped ``[ts, ts + duration_ms)``."""
        with self._lock:
            refused, self._refused = self._refused, {}
            cells, self._cells = self._cells, {}
        out = []
        for key in sorted(set(refused) | set(cells)):
            tenant, tier, rtype = key
            throttled, deferred, would = refused.get(key, (0, 0, 0))
            cell = cells.get(key) or TrafficCell()
            out.append(RequestSummary(
                ts=ts, service=service, tenant=tenant, tier=tier, edge_id=edge_id, request_type=rtype,
                duration_ms=duration_ms, throttled=throttled, deferred=deferred, gate=gate, shadow=shadow,
                would_throttle=would, **cell.summary_fields(),
            ))
        return out
