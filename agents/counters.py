"""Agent counters, pushed to the Redis counter hash as they change."""

from __future__ import annotations

import time
from collections import Counter

from surgegate.streams.store import StateMirror


#: Pushes happen at most this often; increments in between go with the next push.
REPORT_EVERY_S = 1.0


class AgentCounters(Counter):
    """A Counter that can push what changed since the last push to Redis."""

    def __init__(self, mirror: StateMirror | None = None) -> None:
        super().__init__()
        self.mirror = mirror
        self._reported: Counter[str] = Counter()
        self._last = 0.0

    async def report(self) -> None:
        """Add the increments since the last push to ``<prefix>:counters`` (if Redis is up)."""
        if time.monotonic() - self._last < REPORT_EVERY_S:
            return
        self._last = time.monotonic()
        delta = self - self._reported
        if delta and self.mirror is not None:
            await self.mirror.incr(delta)
        self._reported = Counter(self)
