"""The agents read a re-created source topic from its start, and a partition with nothing committed too.

A broker that lost its topics (replaced by an empty one) gets them back from
the worker's topic keeper with new topic ids and offsets starting at zero
again. Faust drops every record below the offset it last read on a partition,
so without a seek the new log's first records (as many as the old log held:
a long outage's whole backlog) would never reach an agent. Every few seconds
the topic ids of the agents' sources are looked up; a changed one has its
assigned partitions sought to the start (``logs_replaced`` counts each), and
Faust's bookkeeping of the old log's offsets for them (committed, and processed
but not yet committed) is cleared, so that none of them is committed to the
new broker and the new log's commits are taken from their first.

A rebalance follows a new broker (the group is new to it), and Faust then
gives up the records it had fetched but not yet handed to an agent, counting
on a seek back to the committed offsets to fetch them again. With nothing
committed (a new log, or a new group) that seek does nothing (aiokafka seeks
only to an offset above zero), and the records were gone: after a two-minute
outage, the partials of one or two of four source partitions for every
window of the outage. So after every assignment a
source partition with nothing committed is sought to its start
(``rewound`` counts each), as ``auto.offset.reset=earliest`` promises. What is
read twice is harmless downstream: the merge stage drops a partial it already
has, the forecast and decide agents pass over a window they have seen.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import faust
from aiokafka import TopicPartition
from aiokafka.errors import KafkaError
from confluent_kafka.admin import AdminClient

from surgegate.agents.counters import AgentCounters
from surgegate.settings import Settings
from surgegate.streams.kafka import LOG_CHECK_S, admin_config, topic_ids
from surgegate.streams.store import StateMirror

log = logging.getLogger(__name__)

#: how long a rebalance waits for the group's committed offsets before it leaves the partitions where they are
COMMITTED_TIMEOUT_S = 10.0


class NewLogs:
    """Watches ``topics``' ids and assignments for the agents of ``app`` (see the module docstring)."""

    def __init__(self, app: faust.App, settings: Settings, topics: list[str],
                 mirror: StateMirror | None = None) -> None:
        self.app = app
        self.settings = settings
        self.topics = sorted(set(topics))
        self.counters = AgentCounters(mirror)
        self._ids: dict[str, str] = {}
        self._admin: Any = None

    def register(self) -> None:
        self.app.timer(LOG_CHECK_S)(self.check)
        self.app.on_partitions_assigned.connect(self._assigned)

    async def _assigned(self, app: Any, /, *args: Any, signal: Any, **kwargs: Any) -> None:
        """The receiver of Faust's ``on_partitions_assigned`` signal, sent with the new assignment."""
        await self.on_assigned(set(args[0]))

    async def check(self) -> None:
        if self._admin is None:
            self._admin = AdminClient(admin_config(self.settings))
        ids = await asyncio.get_running_loop().run_in_executor(None, topic_ids, self._admin, self.topics)
        for topic, log_id in ids.items():
            known, self._ids[topic] = self._ids.get(topic), log_id
            if known is None or known == log_id:
                continue
            partitions = sorted(tp for tp in self.app.consumer.assignment() if tp.topic == topic)
            log.warning("agents: %s is a new log (topic id %s): reading %d assigned partitions from the start",
                        topic, log_id, len(partitions))
            for tp in partitions:
                await self._forget(tp)
            self.counters["logs_replaced"] += 1
        await self.counters.report()

    async def on_assigned(self, assigned: set[Any]) -> None:
        """Seeks each assigned source partition with nothing committed to its start."""
        partitions = sorted(tp for tp in assigned if tp.topic in self.topics)
        if not partitions:
            return
        try:
            committed = await asyncio.wait_for(self.committed(partitions), COMMITTED_TIMEOUT_S)
        except (TimeoutError, KafkaError) as exc:  # the broker away again: the next assignment asks again
            log.warning("agents: committed offsets not known after a rebalance (%r): none sought", exc)
            return
        rewound = [tp for tp in partitions if not committed.get(tp)]
        for tp in rewound:
            await self.app.consumer.seek(tp, 0)
            self.counters["rewound"] += 1
        log.info("agents: assigned %d source partitions, %d with nothing committed read from their start%s",
                 len(partitions), len(rewound), f": {sorted(f'{tp.topic}[{tp.partition}]' for tp in rewound)}"
                 if rewound else "")

    async def committed(self, partitions: list[Any]) -> dict[Any, int | None]:
        """The offsets the agents' group committed on ``partitions``: asked by Faust's consumer, in its thread."""
        thread: Any = self.app.consumer._thread  # type: ignore[attr-defined]  # Faust's aiokafka consumer thread
        consumer = thread._ensure_consumer()

        async def ask() -> dict[Any, int | None]:
            return {tp: await consumer.committed(TopicPartition(tp.topic, tp.partition)) for tp in partitions}

        return await thread.call_thread(ask)

    async def _forget(self, tp: Any) -> None:
        """Reads ``tp`` from offset 0, with none of the old log's offsets left to commit."""
        consumer: Any = self.app.consumer  # Faust's bookkeeping of offsets, not in its ConsumerT
        for pending in (consumer._acked, consumer._acked_index, consumer._gap):
            pending.pop(tp, None)
        consumer._committed_offset[tp] = None
        await consumer.seek(tp, 0)
