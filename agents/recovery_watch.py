"""A table recovery that waits on changelog records which never come is moved on, not left to wait forever.

After an assignment Faust restores each table partition by reading its
changelog up to the end the broker reported, and no agent runs until every
partition is read that far. After a broker was replaced by an empty one, a
recovery has been seen (in CI, twice) to take the first records of a changelog
partition and then none, for as long as the worker ran: the pipeline stopped
with it, and Faust only warned every five seconds that no event came. Those
partitions had been written to the new broker by produce requests that it
answered with an error (UnknownError) while the topic was being created.

Every few seconds this watch looks at the recovery in progress. A partition
that has waited :data:`STALL_S` for its next record:

- if the consumer's position is past the end Faust waits for (everything
  there was fetched), is taken as read to its end, as Faust itself does at a
  transaction's end marker, which is no record either;
- else is sought again to the first offset still missing, and resumed if it
  was left paused (``recovery_seeks``);
- if that brings nothing within another :data:`STALL_S`, the missing offset is
  read directly from the broker: a broker that answers but cannot hand the
  record over within :data:`PROBE_S` has no record there, and the partition is
  taken as read (``recovery_ends``); a record that can be read is sought again.

Each step is logged with the partition's offset, end and position. Records
not applied are not lost to this worker's table (its in-memory store kept
what it wrote); a worker started afresh would lack them.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from typing import Any, Literal

import faust

from surgegate.agents.counters import AgentCounters
from surgegate.errors import BrokerUnavailable
from surgegate.settings import Settings
from surgegate.streams.kafka import probe_broker, read_range
from surgegate.streams.store import StateMirror

log = logging.getLogger(__name__)

#: how long a changelog partition may wait for its next record before it is sought again (well above the few seconds
#: of a rebalance on the embedded broker, and below the minute a stuck recovery used to be noticed in)
STALL_S = 20.0
#: how often the recovery is looked at
CHECK_S = 5.0
#: how long the direct read of a missing record may take before the broker is taken not to have it
PROBE_S = 5.0

Step = Literal["wait", "seek", "probe", "end"]


def stalled(offset: int | None, highwater: int | None, idle_s: float, stall_s: float = STALL_S) -> bool:
    """Whether a changelog partition in recovery still waits for records and has waited ``stall_s`` or more."""
    return offset is not None and highwater is not None and offset < highwater and idle_s >= stall_s


def step(offset: int | None, highwater: int | None, position: int | None, idle_s: float, *, sought: bool = False,
         stall_s: float = STALL_S) -> Step:
    """What to do with one active changelog partition in recovery.

    ``offset`` is the last one applied (-1: none), ``highwater`` the last one the recovery waits for, ``position``
    the consumer's next fetch offset (None: not known), ``idle_s`` the time since its last record, since the
    recovery began or since this watch last acted on it, ``sought`` whether it already sought it again."""
    if not stalled(offset, highwater, idle_s, stall_s):
        return "wait"
    assert highwater is not None  # a stalled partition has an end
    if position is not None and position > highwater:
        return "end"  # every offset up to the end was fetched: nothing more will come
    return "probe" if sought else "seek"


class RecoveryWatch:
    """Watches ``app``'s table recovery (see the module docstring)."""

    def __init__(self, app: faust.App, settings: Settings, mirror: StateMirror | None = None, *,
                 stall_s: float = STALL_S) -> None:
        self.app = app
        self.settings = settings
        self.stall_s = stall_s
        self.counters = AgentCounters(mirror)
        self._acted_at: dict[Any, float] = {}

    def register(self) -> None:
        self.app.timer(CHECK_S)(self.check)

    async def check(self) -> None:
        recovery: Any = self.app.tables.recovery  # type: ignore[attr-defined]  # Faust's Recovery, not in its types
        if not recovery.in_recovery:
            self._acted_at.clear()
            return
        now = time.monotonic()
        started = recovery._recovery_started_at or now
        received: Mapping[Any, float] = recovery._active_events_received_at
        offsets, highwaters = recovery.active_offsets, recovery.active_highwaters
        for tp in sorted(recovery.active_tps):
            got = received.get(tp, started)
            acted = self._acted_at.get(tp)
            sought = acted is not None and acted > got  # sought again since its last record
            idle = now - max(got, acted or started)
            if not stalled(offsets.get(tp), highwaters.get(tp), idle, self.stall_s):
                continue  # the position is asked only of a partition that waited too long
            position = await self.app.consumer.position(tp)
            what = step(offsets.get(tp), highwaters.get(tp), position, idle, sought=sought, stall_s=self.stall_s)
            where = (f"{tp.topic}[{tp.partition}]: applied up to {offsets[tp]} of {highwaters[tp]}, position "
                     f"{position}, {idle:.0f} s without a record")
            if what == "probe":
                readable = await asyncio.get_running_loop().run_in_executor(None, self._readable, tp, offsets[tp] + 1)
                if readable is None:
                    continue  # the broker does not answer: nothing to learn, the recovery waits for it
                what = "seek" if readable else "end"
                where += "; the broker " + ("hands over" if readable else "does not have") + f" {offsets[tp] + 1}"
            self._acted_at[tp] = now
            if what == "end":
                log.warning("recovery of %s: taken as read to its end", where)
                offsets[tp] = highwaters[tp]
                self.counters["recovery_ends"] += 1
            else:
                paused = tp in self.app.consumer._paused_partitions  # type: ignore[attr-defined]  # Faust's own
                log.warning("recovery of %s%s: sought again to %d", where, ", paused" if paused else "",
                            offsets[tp] + 1)
                if paused:
                    self.app.consumer.resume_partitions([tp])
                await self.app.consumer.seek(tp, offsets[tp] + 1)
                self.counters["recovery_seeks"] += 1
        await self.counters.report()

    def _readable(self, tp: Any, offset: int) -> bool | None:
        """Whether the broker hands over ``tp``'s record at ``offset`` (or a later one); None if it does not
        answer at all."""
        try:
            read_range(self.settings, tp.topic, tp.partition, offset, offset + 1, timeout_s=PROBE_S)
            return True
        except TimeoutError:
            try:
                probe_broker(self.settings)
            except BrokerUnavailable:
                return None
            return False
