"""Every agent reads each of its partitions in order and whole, also across Faust's recovery.

Faust hands records to an agent through queues that it clears when its flow
resumes at the end of a recovery. Records fetched after the partitions were
sought to their committed offsets and before that resume are cleared with the
rest and never fetched again: the agent goes on at the next record fetched, and
the commit follows it. Measured with ``surgegate chaos --faults workers`` (two
workers killed and restarted together, about one run in twenty): the merge
agent of a restarted worker never saw records 164-189 of a partials
partition, and in other runs windows were published 24 and 37 events short,
none counted late.

So each agent checks the offsets it is handed (:class:`Gaps`, pure): on each
partition the next record is the one after the last it took, or the committed
offset for the first since an assignment. Before a record beyond it, the agent
is handed the skipped records, read from the broker by a consumer of its own
(:func:`~surgegate.streams.kafka.read_range`), and only then are they marked
done for Faust's commit. Seeking Faust's consumer back instead does not work:
records it fetched before the seek keep arriving and move its read position
past the seek, so it drops what the seek fetches. Where the log has no records
between (compaction), nothing is read and the agent goes on; a skip on a
partition taken from the worker meanwhile is left to its next owner, who reads
from the committed offset. A record below the expected one is taken: it is
read again after Faust sought back to the committed offset, and every agent
recognises what it has applied already.

A skip shows when the partition's next record comes, which is soon on every
partition an agent reads: each ingest member sends a watermark to every
partials partition with each flush, and windows and forecasts follow traffic.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Hashable, Iterable
from types import SimpleNamespace
from typing import Any

import faust
from confluent_kafka import KafkaException
from faust.types import TP

from surgegate.agents.counters import AgentCounters
from surgegate.settings import Settings
from surgegate.streams.kafka import Record, read_range

log = logging.getLogger(__name__)

#: How long reading a skipped range may take before it is tried again.
READ_TIMEOUT_S = 10.0


class Gaps:
    """Per partition, the offset an agent expects next; where a record skips ahead of it (pure).

    >>> gaps = Gaps()
    >>> gaps.check("p", 107, committed=107), gaps.check("p", 108, committed=107)
    (None, None)
    >>> gaps.check("p", 135, committed=107)      # 109..134 never came
    109
    >>> gaps.check("p", 136, committed=107), gaps.check("p", 105, committed=107)  # read again after a seek
    (None, None)
    >>> gaps.check("p", 106, committed=107)
    """

    def __init__(self) -> None:
        self._next: dict[Hashable, int] = {}

    def check(self, partition: Hashable, offset: int, committed: int | None) -> int | None:
        """The record at ``offset`` is taken next (``committed``: the partition's committed offset, None if not
        known); returns the first offset skipped before it, or None if none was."""
        expected = self._next.get(partition, committed)
        self._next[partition] = offset + 1
        if expected is not None and offset > expected:
            return expected
        return None

    def forget(self, partitions: Iterable[Hashable]) -> None:
        """Partitions taken from the agent: their next assignment starts from the committed offset."""
        for partition in partitions:
            self._next.pop(partition, None)


def _event(tp: TP, record: Record) -> Any:
    """A record read directly, as the agents read a Faust event (key, value, its message's place and time)."""
    message = SimpleNamespace(topic=tp.topic, partition=tp.partition, offset=record.offset, tp=tp,
                              timestamp=record.timestamp_ms / 1000)
    return SimpleNamespace(key=record.key, value=record.value, message=message)


class InOrder:
    """One agent's check of the records Faust hands it (see the module docstring); ``counters`` counts
    ``skips`` (skips found) and ``records_read_again`` (records read directly)."""

    def __init__(self, app: faust.App, settings: Settings, name: str, counters: AgentCounters) -> None:
        self.app = app
        self.settings = settings
        self.name = name
        self.counters = counters
        self.gaps = Gaps()

    def register(self) -> None:
        self.app.on_partitions_revoked.connect(self._on_revoked)  # type: ignore[arg-type]  # faust calls it with revoked=

    async def _on_revoked(self, sender: Any, revoked: set[Any], **kwargs: Any) -> None:
        self.gaps.forget(revoked)

    async def events(self, stream: faust.StreamT) -> AsyncIterator[Any]:
        """The stream's events, each partition's in order and none skipped."""
        consumer: Any = self.app.consumer  # Faust's bookkeeping of offsets, not in its ConsumerT
        async for event in stream.events():
            message = event.message
            tp = message.tp
            skipped = self.gaps.check(tp, message.offset, consumer._committed_offset.get(tp))
            if skipped is not None and tp not in consumer.assignment():
                skipped = None  # taken away meanwhile: its next owner reads from the committed offset
            if skipped is not None:
                log.warning("%s: records %d..%d of %s[%d] were skipped by the consumer: reading them again",
                            self.name, skipped, message.offset - 1, tp.topic, tp.partition)
                self.counters["skips"] += 1
                for record in await self._read(tp, skipped, message.offset):
                    self.counters["records_read_again"] += 1
                    yield _event(tp, record)
                # taken: Faust's commit may pass them now (it counts offsets it never handed over as a gap)
                await consumer._add_gap(tp, skipped, message.offset - 1)
            yield event

    async def _read(self, tp: TP, start: int, end: int) -> list[Record]:
        """The records read directly; the broker away, tried again until it answers (nothing after them is
        taken meanwhile, as nothing is while the broker is away)."""
        loop = asyncio.get_running_loop()
        attempt = 0
        while True:
            try:
                return await loop.run_in_executor(None, read_range, self.settings, tp.topic, tp.partition, start,
                                                  end, READ_TIMEOUT_S)
            except (TimeoutError, KafkaException) as exc:
                attempt += 1
                log.warning("%s: reading %s[%d] %d..%d again failed (attempt %d): %s", self.name, tp.topic,
                            tp.partition, start, end - 1, attempt, exc)
                await asyncio.sleep(min(2.0 * attempt, READ_TIMEOUT_S))
