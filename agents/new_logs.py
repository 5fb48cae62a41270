"""The agents read a re-created source topic from its start.

A broker that lost its topics (replaced by an empty one) gets them back from
the worker's topic keeper with new topic ids and offsets starting at zero
again. Faust drops every record below the offset it last read on a partition,
so without a seek the new log's first records (as many as the old log held:
a long outage's whole backlog) would never reach an agent. Every few seconds
the topic ids of the agents' sources are looked up; a changed one has its
assigned partitions sought to the start (``logs_replaced`` counts each).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import faust
from confluent_kafka.admin import AdminClient

from surgegate.agents.counters import AgentCounters
from surgegate.settings import Settings
from surgegate.streams.kafka import LOG_CHECK_S, admin_config, topic_ids
from surgegate.streams.store import StateMirror

log = logging.getLogger(__name__)


class NewLogs:
    """Watches ``topics``' ids for the agents of ``app`` (see the module docstring)."""

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
                await self.app.consumer.seek(tp, 0)
            self.counters["logs_replaced"] += 1
        await self.counters.report()
