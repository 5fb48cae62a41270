"""Agent counters, pushed to the Redis counter hash as they change."""

from __future__ import annotations

import contextlib
import logging
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import msgspec

from surgegate.streams.store import StateMirror

#: Pushes happen at most this often; increments in between go with the next push.
REPORT_EVERY_S = 1.0
#: Every AgentCounters of this process (the agents' own, for the worker's /metrics)
LIVE: list[AgentCounters] = []


class AgentCounters(Counter):
    """A Counter that can push what changed since the last push to Redis."""

    def __init__(self, mirror: StateMirror | None = None) -> None:
        super().__init__()
        self.mirror = mirror
        self._reported: Counter[str] = Counter()
        self._last = 0.0
        LIVE.append(self)

    async def report(self) -> None:
        """Add the increments since the last push to ``<prefix>:counters`` (if Redis is up)."""
        if time.monotonic() - self._last < REPORT_EVERY_S:
            return
        self._last = time.monotonic()
        delta = self - self._reported
        if delta and self.mirror is not None:
            await self.mirror.incr(delta)
        self._reported = Counter(self)

    @contextlib.contextmanager
    def timed(self, agent: str) -> Iterator[None]:
        """Count one run of ``agent`` and the microseconds it took (``timing.<agent>.us`` / ``.runs``)."""
        started = time.perf_counter()
        try:
            yield
        finally:
            self[f"timing.{agent}.us"] += int((time.perf_counter() - started) * 1e6)
            self[f"timing.{agent}.runs"] += 1


async def decode_or_count(decoder: msgspec.json.Decoder, raw: bytes | None, counters: AgentCounters, counter: str,
                          where: str) -> Any | None:
    """Decode one record; if it cannot be (a record with no value, a tombstone, among them), count it under
    ``counter``, log ``where``, return None."""
    try:
        if raw is None:
            raise msgspec.DecodeError("a record with no value (a tombstone)")
        return decoder.decode(raw)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        counters[counter] += 1
        logging.getLogger(__name__).error("%s: unreadable record: %s", where, exc)
        await counters.report()
        return None
