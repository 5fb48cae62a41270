"""Stage 2: merge window partials per scope and publish closed windows.

State per scope (:class:`~surgegate.telemetry.merging.ScopeWindows`) lives in a Faust
table backed by a changelog, so a restarted worker resumes open windows and
duplicate marks instead of losing or double-counting them. Watermarks from the
ingest consumers arrive on every partition of sg.partials and close the windows
of the scopes that partition holds at the lowest claim among the members still
speaking (:class:`~surgegate.telemetry.watermarks.MemberMarks`, kept in the
table too, so a worker taking a partition over knows who had claimed what).

Closing publishes the windows and awaits their delivery before the states that
say them closed go to the changelog: a worker killed in between comes back
with them open and publishes them again, never without them.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import faust
import msgspec
from faust.types import TP

from surgegate.agents.counters import AgentCounters, decode_or_count
from surgegate.agents.in_order import InOrder
from surgegate.schemas.aggregates import Watermark, WindowPartial
from surgegate.settings import Settings
from surgegate.streams.store import StateMirror
from surgegate.telemetry.merging import ScopeWindows, latency_counts, tier_counts
from surgegate.telemetry.watermarks import MemberMarks

log = logging.getLogger(__name__)

#: After a member's group has noticed it gone (session timeout) and rebalanced (at most the poll interval), this
#: long more for its successor to claim from its backlog (see :func:`member_silent_ms`).
CLAIM_AFTER_REBALANCE_MS = 4000


def member_silent_ms(settings: Settings) -> int:
    """How long an ingest member may be silent before it no longer holds a partition's watermark."""
    timeouts = settings.group_timeouts(embedded=False)  # as settled at start
    return int((timeouts.session_s + timeouts.max_poll_interval_s) * 1000) + CLAIM_AFTER_REBALANCE_MS


#: Table key of a partials partition's MemberMarks (scopes never start with "~").
MARKS_KEY = "~marks/{}"


class StoredScope(msgspec.Struct):
    """Table value: the scope's state and the partials partition it lives on."""

    partition: int
    state: ScopeWindows


class WindowMergeAgent:
    """Owns the merge table and the agent that feeds it.

    ``counters`` counts ``partials.merged``, ``partials.duplicate``,
    ``partials.late``, ``late_events``, ``windows.published`` and
    ``partials.rejected``.
    """

    def __init__(self, app: faust.App, settings: Settings, *, source: faust.TopicT, sink: faust.TopicT,
                 mirror: StateMirror | None = None) -> None:
        self.app = app
        self.settings = settings
        self.source = source
        self.sink = sink
        self.table = app.Table("scope_windows", key_type=str, value_type=str, partitions=settings.partitions)
        self.counters = AgentCounters(mirror)
        self.in_order = InOrder(app, settings, "merge_windows", self.counters)
        self._silent_ms = member_silent_ms(settings)
        # Decoded working copy of the table, by partition then scope.
        self._cache: dict[int, dict[str, ScopeWindows]] = {}
        self._decoder = msgspec.json.Decoder(WindowPartial | Watermark)
        self._stored = msgspec.json.Decoder(StoredScope)
        self._stored_marks = msgspec.json.Decoder(MemberMarks)
        self._marks: dict[int, MemberMarks] = {}
        #: per partition, the watermark its windows were last closed at
        self._closed_at: dict[int, int] = {}

    def register(self) -> None:
        """Attach the agent and the rebalance hook to the app."""
        self.app.agent(self.source, name="merge_windows")(self._run)
        self.app.on_partitions_revoked.connect(self._on_revoked)  # type: ignore[arg-type]  # faust calls it with revoked=
        self.in_order.register()

    async def _on_revoked(self, sender: Any, revoked: set[TP], **kwargs: Any) -> None:
        mine = sorted(tp.partition for tp in revoked if tp.topic == self.source.get_topic_name())
        if mine:
            log.info("merge_windows: partials partitions %s revoked: their open windows are read again from the "
                     "table when next assigned", mine)
        for tp in revoked:
            if tp.topic == self.source.get_topic_name():
                self._cache.pop(tp.partition, None)
                self._marks.pop(tp.partition, None)
                self._closed_at.pop(tp.partition, None)

    def _scopes(self, partition: int) -> dict[str, ScopeWindows]:
        scopes = self._cache.get(partition)
        if scopes is None:
            # First use since (re)assignment: load this partition's scopes from the table.
            scopes = self._cache[partition] = {}
            for key, raw in self.table.items():
                if key.startswith("~"):
                    continue
                stored = self._stored.decode(raw)
                if stored.partition == partition:
                    scopes[key] = stored.state
        return scopes

    def _save(self, partition: int, state: ScopeWindows) -> None:
        self.table[state.scope] = msgspec.json.encode(StoredScope(partition, state)).decode()

    async def _run(self, stream: faust.StreamT) -> None:
        async for event in self.in_order.events(stream):
            partition = event.message.partition
            record = await decode_or_count(
                self._decoder, event.value, self.counters, "partials.rejected",
                f"merge_windows at {event.message.topic}[{partition}]@{event.message.offset}")
            if record is None:
                continue
            if type(record) is Watermark:
                await self._heard(partition, record, int(event.message.timestamp * 1000))
            else:
                with self.counters.timed("merge"):
                    self._merge(partition, record)

    def _merge(self, partition: int, partial: WindowPartial) -> None:
        scopes = self._scopes(partition)
        state = scopes.get(partial.scope)
        if state is None:
            state = scopes[partial.scope] = ScopeWindows(scope=partial.scope, window_ms=self.settings.window_ms)
        outcome = state.add(partial)
        self.counters[f"partials.{outcome}"] += 1
        if outcome != "merged":
            # a late partial's window went out without it: said at info, a duplicate (a replay) only at debug
            log.log(logging.INFO if outcome == "late" else logging.DEBUG,
                    "merge_windows: %s partial %s@%d from %s[%d] %d..%d (%d events)", outcome, partial.scope,
                    partial.window_start, partial.source.topic, partial.source.partition,
                    partial.source.first_offset, partial.source.last_offset, partial.events)
        if outcome == "late":
            self.counters["late_events"] += partial.events
        if outcome != "duplicate":
            self._save(partition, state)

    async def _heard(self, partition: int, mark: Watermark, at: int) -> None:
        key = MARKS_KEY.format(partition)
        marks = self._marks.get(partition)
        if marks is None:
            # first use since (re)assignment: the claims the partition's last owner had heard
            raw = self.table.get(key)
            marks = self._marks[partition] = (self._stored_marks.decode(raw) if raw is not None
                                              else MemberMarks(silent_ms=self._silent_ms))
        watermark = marks.heard(mark.ingest_id, mark.watermark, at, owns=mark.owns, sources=mark.sources)
        self.table[key] = msgspec.json.encode(marks).decode()
        if watermark > self._closed_at.get(partition, -1):
            self._closed_at[partition] = watermark
            await self._advance(partition, watermark)

    async def _advance(self, partition: int, watermark: int) -> None:
        sent, closing = [], []
        for scope, state in self._scopes(partition).items():
            closed = state.close_each(watermark, self.settings.lateness_ms)
            if not closed:
                continue
            for stats, merged in closed:
                log.debug("merge_windows: watermark %d on partials[%d] closes %s@%d", watermark, partition, scope,
                          stats.window_start)
                sent.append(await self.sink.send(key=scope.encode(), value=msgspec.json.encode(stats)))
                self.counters.update(tier_counts(stats))
                self.counters.update(latency_counts(stats, merged))
            self.counters["windows.published"] += len(closed)
            closing.append(state)
        if sent:
            # the windows are on the broker before any state that says them closed goes to the changelog: a worker
            # killed in between comes back with them open and publishes them again, never without them
            await asyncio.gather(*sent)
        for state in closing:
            self._save(partition, state)
        await self.counters.report()
