"""Mirror closed windows into Redis for the API and bootstrapping edges."""

from __future__ import annotations

import faust
import msgspec

from surgegate.agents.counters import AgentCounters, decode_or_count
from surgegate.schemas.aggregates import WindowStats
from surgegate.streams.store import StateMirror


class MirrorAgent:
    """Copies every WindowStats from sg.windows into Redis (latest + history)."""

    def __init__(self, app: faust.App, mirror: StateMirror, *, windows: faust.TopicT) -> None:
        self.app = app
        self.mirror = mirror
        self.windows = windows
        self._decoder = msgspec.json.Decoder(WindowStats)
        self.counters = AgentCounters(mirror)

    def register(self) -> None:
        """Attach the agent to the app."""
        self.app.agent(self.windows, name="mirror_windows")(self._run)

    async def _run(self, stream: faust.StreamT) -> None:
        async for value in stream:
            stats = await decode_or_count(self._decoder, value, self.counters, "mirror.unreadable", "mirror_windows")
            if stats is None:
                continue
            await self.mirror.put_window(stats.scope, stats.window_start, value)
