"""Decoding and validating inbound telemetry (pure: the clock is passed in).

>>> v = TelemetryValidator(window_ms=10_000, max_future_ms=300_000)
>>> ev = v.decode(b'{"schema":"sg.RequestEvent/1","ts":1767225600000,"service":"chat","tenant":"a",'
...               b'"tier":"free","edge_id":"e1","latency_ms":12.5}', now_ms=1767225601000)
>>> ev.service, ev.status
('chat', 'ok')
>>> v.decode(b'{"schema":"sg.RequestEvent/1","ts":1000,"service":"chat","tenant":"a",'
...          b'"tier":"free","edge_id":"e1","latency_ms":12.5}', now_ms=1767225601000)
Traceback (most recent call last):
...
surgegate.errors.InvalidEvent: past_timestamp: ts=1000 is before 2000-01-01: a clock that was never set
>>> v.decode(b'{"schema":"sg.Nope/1"}', now_ms=0)
Traceback (most recent call last):
...
surgegate.errors.InvalidEvent: unknown_schema: Invalid value 'sg.Nope/1' - at `$.schema`
"""

from __future__ import annotations

import re

import msgspec

from surgegate.errors import InvalidEvent
from surgegate.schemas.telemetry import MetricEvent, RequestEvent, RequestSummary, Telemetry
from surgegate.telemetry.scopes import NAME_PATTERN

#: Events stamped before this (2000-01-01) come from a clock that was never set; they are dead-lettered
#: instead of opening windows in 1970.
OLDEST_EVENT_MS = 946_684_800_000

class TelemetryValidator:
    """Turns raw bytes into a typed telemetry record or raises :class:`InvalidEvent`.

    Checks beyond the schema: an event time more than ``max_future_ms`` ahead of
    ``now_ms`` is rejected (a skewed edge clock would otherwise hold windows
    open), and a RequestSummary must be internally consistent and lie within
    one window.
    """

    def __init__(self, *, window_ms: int, max_future_ms: int) -> None:
        if window_ms <= 0:
            raise ValueError(f"window_ms={window_ms!r} must be > 0")
        if max_future_ms <= 0:
            raise ValueError(f"max_future_ms={max_future_ms!r} must be > 0")
        self.window_ms = window_ms
        self.max_future_ms = max_future_ms
        self._decoder = msgspec.json.Decoder(Telemetry)
        self.names = NameCheck()

    def decode(self, raw: bytes, now_ms: int) -> RequestEvent | RequestSummary | MetricEvent:
        """Decode and check one event."""
        try:
            event = self._decoder.decode(raw)
        except msgspec.ValidationError as exc:
            raise InvalidEvent(_validation_reason(str(exc)), str(exc)) from None
        except msgspec.DecodeError as exc:
            raise InvalidEvent("undecodable", str(exc)) from None
        if event.ts < OLDEST_EVENT_MS:
            raise InvalidEvent("past_timestamp", f"ts={event.ts} is before 2000-01-01: a clock that was never set")
        if event.ts > now_ms + self.max_future_ms:
            raise InvalidEvent(
                "future_timestamp",
                f"ts={event.ts} is {(event.ts - now_ms) / 1000:.0f} s ahead of the ingest clock "
                f"(limit {self.max_future_ms / 1000:.0f} s)",
            )
        self.names.check(event)
        if type(event) is RequestSummary:
            check_summary(event)
            self._check_window(event)
        return event

    def _check_window(self, s: RequestSummary) -> None:
        start = s.ts - s.ts % self.window_ms
        if s.ts + s.duration_ms > start + self.window_ms:
            raise InvalidEvent(
                "inconsistent",
                f"summary [{s.ts}, {s.ts + s.duration_ms}) crosses the window boundary at "
                f"{start + self.window_ms}",
            )


def check_summary(s: RequestSummary) -> None:
    """:class:`InvalidEvent` (``inconsistent``) unless a summary's sketches and counts agree."""
    served = s.ok + s.error + s.timeout
    if s.latency.count != served or s.queue_wait.count != served:
        raise InvalidEvent(
            "inconsistent",
            f"latency sketch holds {s.latency.count} and queue_wait sketch {s.queue_wait.count} "
            f"values but ok+error+timeout = {served}",
        )
    if s.ttft.count > served or s.itl.count > s.ttft.count:
        raise InvalidEvent("inconsistent", f"ttft sketch holds {s.ttft.count} and itl sketch {s.itl.count} values: "
                           f"at most ok+error+timeout = {served}, and itl at most ttft")
    if s.over_2s > served or s.cache_hits > s.requests:
        raise InvalidEvent("inconsistent", "over_2s or cache_hits exceeds the requests covered")


def _validation_reason(message: str) -> str:
    if "`$.schema`" in message or "missing required field `schema`" in message:
        return "unknown_schema"
    if "missing required field" in message:
        return "missing_field"
    if message.startswith("Expected `object`"):
        return "undecodable"
    return "invalid_field"


class NameCheck:
    """Checks name fields against :data:`~surgegate.telemetry.scopes.NAME_PATTERN`, caching names seen.

    >>> NameCheck().check(RequestEvent(ts=0, service="chat", tenant="a b", tier="free", edge_id="e",
    ...                                latency_ms=1.0))
    Traceback (most recent call last):
    ...
    surgegate.errors.InvalidEvent: invalid_field: tenant='a b' must match ^[A-Za-z0-9_.:-]{1,64}$
    """

    #: The cache is dropped when it grows past this many names.
    MAX_CACHED = 100_000
    _REQUEST_FIELDS = ("service", "tenant", "tier", "edge_id")
    _METRIC_FIELDS = ("pool", "worker_id")

    def __init__(self) -> None:
        self._seen: set[str] = set()
        self._pattern = re.compile(NAME_PATTERN)

    def check(self, event: RequestEvent | RequestSummary | MetricEvent) -> None:
        """Raise :class:`InvalidEvent` naming the first field whose name is malformed."""
        seen = self._seen
        fields: tuple[str, ...]
        if isinstance(event, MetricEvent):
            fields = self._METRIC_FIELDS
        elif event.service in seen and event.tenant in seen and event.tier in seen and event.edge_id in seen:
            return  # the common case: every name seen before
        else:
            fields = self._REQUEST_FIELDS
        for field in fields:
            name = getattr(event, field)
            if name not in seen:
                if not self._pattern.fullmatch(name):  # fullmatch: "$" alone lets a trailing newline through
                    raise InvalidEvent("invalid_field", f"{field}={name!r} must match {NAME_PATTERN}")
                if len(seen) >= self.MAX_CACHED:
                    seen.clear()
                seen.add(name)
