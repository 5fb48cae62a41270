"""The deferral lane's front door: an edge writes a deferred request to ``sg.deferred`` and answers 202 only once
the broker has it.

The task's state (``queued``) then goes to Redis, where any edge and the status
API read it; a drainer (``surgegate drain``) runs it and writes what became of
it. If Redis cannot take the ``queued`` state the task is still safe on the
topic: its state appears when a drainer picks it up.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections import Counter
from collections.abc import Mapping

import msgspec
import redis

from surgegate.errors import BrokerError
from surgegate.schemas.deferral import DeferredTask, TaskView
from surgegate.settings import Settings
from surgegate.streams.producer import KafkaSender
from surgegate.streams.store import Keys
from surgegate.streams.tasks import TaskBook, view_of
from surgegate.streams.topics import Topics

log = logging.getLogger(__name__)

#: Request headers never written to the topic: the client's credentials and identity, and per-connection ones.
UNKEPT_HEADERS = frozenset({"authorization", "x-tenant", "x-tier", "x-request-type", "x-surgegate-deadline",
                            "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
                            "transfer-encoding", "upgrade", "host", "content-length", "cookie"})
#: How long a submit waits for the broker's acknowledgement.
ACK_TIMEOUT_S = 5.0
#: How often the lane serves its producer's delivery reports.
POLL_S = 0.01


class LaneUnavailable(BrokerError):
    """The broker did not take a deferred task: the client is told to retry, not given a task id."""


def kept_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """The request headers a deferred task keeps (see :data:`UNKEPT_HEADERS`)."""
    return {k: v for k, v in headers.items() if k.lower() not in UNKEPT_HEADERS}


def new_task_id() -> str:
    return uuid.uuid4().hex


class DeferralLane:
    """Submits deferred tasks to the topic and reads task states from Redis."""

    def __init__(self, settings: Settings, edge_id: str, *, ack_timeout_s: float = ACK_TIMEOUT_S) -> None:
        if not settings.redis:
            raise ValueError("the deferral lane keeps task states in Redis: settings.redis is empty")
        self.topic = Topics(settings.topic_prefix).deferred
        self.edge_id = edge_id
        self.ack_timeout_s = ack_timeout_s
        self.sender = KafkaSender(settings, f"edge-{edge_id}-lane")
        self.book = TaskBook(settings.redis, prefix=Keys.for_topic_prefix(settings.topic_prefix).prefix)
        self.counts: Counter[str] = Counter()
        self._poller: asyncio.Task | None = None

    async def start(self) -> None:
        """Serve delivery reports from now on (once, however many gateways share the lane)."""
        if self._poller is None:
            self._poller = asyncio.create_task(self._poll())

    async def _poll(self) -> None:
        while True:
            self.sender.poll()
            await asyncio.sleep(POLL_S)

    async def submit(self, task: DeferredTask) -> TaskView:
        """Write ``task`` to the topic and wait for the broker; its ``queued`` view.

        Raises :class:`LaneUnavailable` when the broker does not acknowledge it in time (the message says
        whether it may still run).
        """
        loop = asyncio.get_running_loop()
        acked: asyncio.Future[str | None] = loop.create_future()

        def settle(why: str | None) -> None:
            if not acked.done():
                acked.set_result(why)

        def done(why: str | None) -> None:
            loop.call_soon_threadsafe(settle, why)

        try:
            self.sender.send(self.topic, msgspec.json.encode(task), key=task.tenant.encode(), on_done=done)
        except BrokerError as exc:
            self.counts["refused"] += 1
            raise LaneUnavailable(f"the deferral lane is full: {exc}") from None
        try:
            why = await asyncio.wait_for(asyncio.shield(acked), self.ack_timeout_s)
        except TimeoutError:
            self.counts["unconfirmed"] += 1
            raise LaneUnavailable(f"the broker did not confirm task {task.id} within {self.ack_timeout_s:g} s; it may "
                                  f"still run (GET its status later)") from None
        if why is not None:
            self.counts["refused"] += 1
            raise LaneUnavailable(f"the broker did not take the task: {why}")
        self.counts["accepted"] += 1
        view = view_of(task, "queued")
        try:
            return await self.book.put(view)
        except (redis.RedisError, OSError) as exc:
            self.counts["state_unwritten"] += 1
            log.warning("deferral lane: task %s is on the topic, its queued state not in Redis (%s)", task.id, exc)
            return view

    async def view(self, task_id: str) -> TaskView | None:
        """The task's state; raises the Redis client's error when Redis cannot answer."""
        return await self.book.get(task_id)

    async def close(self) -> None:
        if self._poller is None:
            return  # never started, or closed already
        self._poller.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._poller
        self._poller = None
        with contextlib.suppress(BrokerError):
            await asyncio.get_running_loop().run_in_executor(None, self.sender.flush, 5.0)
        await self.book.close()
