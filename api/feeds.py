"""The status API's followers of topics: the decision stream its SSE clients read, and the overrides in
force."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import uuid

import msgspec

from surgegate.gpu.pools import PoolBook
from surgegate.schemas.decisions import Override
from surgegate.settings import Settings
from surgegate.streams.kafka import follow_from_start
from surgegate.streams.topics import Topics

log = logging.getLogger(__name__)


class DecisionStream:
    """Follows the decision topics in threads and fans each new record out to SSE clients."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.topics = Topics(settings.topic_prefix)
        self._stop = threading.Event()
        self._clients: set[asyncio.Queue] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self.records = 0
        self.last_error: str | None = None
        #: the newest scaling decision per pool, as it streams by
        self.pools = PoolBook()

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        for topic, kind in ((self.topics.throttle, "throttle"), (self.topics.scaling, "scaling")):
            threading.Thread(target=self._follow, args=(topic, kind), name=f"api-{kind}", daemon=True).start()

    def stop(self) -> None:
        self._stop.set()

    def _follow(self, topic: str, kind: str) -> None:
        try:
            follow_from_start(self.settings, topic, f"api-{kind}-{uuid.uuid4().hex[:6]}", self._stop,
                              lambda raw: self._publish(kind, raw), self._on_error, fetch_wait_ms=100)
        except Exception as exc:  # the API keeps serving; /readyz and /metrics say the stream stopped
            self.last_error = f"{kind} stream stopped: {exc}"
            log.exception("decision stream %s stopped", kind)

    def _on_error(self, err: object) -> None:
        self.last_error = str(err)

    def _publish(self, kind: str, raw: bytes) -> None:
        self.records += 1
        if kind == "scaling":
            self.pools.offer(raw)
        loop = self._loop
        if loop is None:
            return
        for queue in list(self._clients):
            loop.call_soon_threadsafe(offer, queue, (kind, raw))

    def subscribe(self) -> asyncio.Queue:
        queue: asyncio.Queue = asyncio.Queue(maxsize=1000)
        self._clients.add(queue)
        return queue

    def unsubscribe(self, queue: asyncio.Queue) -> None:
        self._clients.discard(queue)


class OverrideBook:
    """The overrides in force, read from the overrides topic itself (the audit log), not from Redis.

    A thread follows the topic from its start; a pin adds an entry, a release
    (``cancel``) removes it, and an expired one is left out when read. So an
    override can be listed and released while Redis is down.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.topic = Topics(settings.topic_prefix).overrides
        self._stop = threading.Event()
        self._active: dict[str, Override] = {}
        self._decoder = msgspec.json.Decoder(Override)
        self.records = 0
        self.last_error: str | None = None

    def start(self) -> None:
        threading.Thread(target=self._follow, name="api-overrides", daemon=True).start()

    def stop(self) -> None:
        self._stop.set()

    def _follow(self) -> None:
        try:
            follow_from_start(self.settings, self.topic, f"api-overrides-{uuid.uuid4().hex[:6]}", self._stop,
                              self._on_record, self._on_error, fetch_wait_ms=100)
        except Exception as exc:  # the API keeps serving; releases fall back to the Redis lookup
            self.last_error = f"override log stopped: {exc}"
            log.exception("override log stopped")

    def _on_error(self, err: object) -> None:
        self.last_error = str(err)

    def _on_record(self, raw: bytes) -> None:
        try:
            self.apply(self._decoder.decode(raw))
        except (msgspec.ValidationError, msgspec.DecodeError) as exc:
            self.last_error = f"unreadable override record: {exc}"
            return
        self.records += 1

    def apply(self, override: Override) -> None:
        """Take one record of the log into account (the API applies its own writes at once too)."""
        if override.cancel:
            self._active.pop(override.id, None)
        else:
            self._active[override.id] = override

    def get(self, oid: str, now_ms: int) -> Override | None:
        """The override ``oid`` if it is in force."""
        found = self._active.get(oid)
        return found if found is not None and found.expires_at > now_ms else None

    def active(self, now_ms: int) -> list[Override]:
        """Every override in force, oldest first."""
        return sorted((o for o in list(self._active.values()) if o.expires_at > now_ms),
                      key=lambda o: o.created_at)


def offer(queue: asyncio.Queue, item: tuple[str, bytes]) -> None:
    with contextlib.suppress(asyncio.QueueFull):  # a client too slow to read drops records, not the API
        queue.put_nowait(item)


