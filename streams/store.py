"""The Redis mirror: latest state per scope, short history, pipeline counters.

Redis is a convenience for the API and for edges that bootstrap before Kafka
catches up; it is never in the pipeline's critical path. Every write here
swallows Redis failures (counting them) and backs off for a while, so Redis
down slows nothing and stops nothing. What could not be written is kept (the
windows up to :data:`BACKLOG_WINDOWS`, counter increments whole) and written
when Redis answers again, so an outage leaves no hole in the history.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Mapping

import redis

from surgegate.settings import DEFAULT_WINDOW_S, RedisTarget
from surgegate.streams.redis_client import async_client, sync_client

log = logging.getLogger(__name__)

#: History kept per scope, in seconds of windows (an hour, whatever the window length).
HISTORY_S = 3600
#: After a Redis failure, writes are skipped for this long.
BACKOFF_S = 5.0
SOCKET_TIMEOUT_S = 0.5
#: Windows kept for Redis while it is down, written when it returns; older ones are dropped (and counted).
BACKLOG_WINDOWS = 20_000
#: Backlogged windows written per round trip once Redis is back.
BACKFILL_BATCH = 500


class Keys:
    """Redis key layout, all under one prefix derived from the topic prefix.

    >>> Keys.for_topic_prefix("sg.").latest_window("service=chat")
    'sg:window:service=chat'
    """

    def __init__(self, prefix: str = "sg:") -> None:
        self.prefix = prefix

    @classmethod
    def for_topic_prefix(cls, topic_prefix: str) -> Keys:
        """Keys for the deployment whose topics start with ``topic_prefix``."""
        return cls(topic_prefix.rstrip(".") + ":" if topic_prefix else "sg:")

    @property
    def scopes(self) -> str:
        return f"{self.prefix}scopes"

    @property
    def counters(self) -> str:
        return f"{self.prefix}counters"

    def latest_window(self, scope: str) -> str:
        return f"{self.prefix}window:{scope}"

    def window_history(self, scope: str) -> str:
        return f"{self.prefix}windows:{scope}"

    def latest_forecast(self, scope: str) -> str:
        return f"{self.prefix}forecast:{scope}"

    def latest_decision(self, service: str) -> str:
        return f"{self.prefix}decision:{service}"

    def latest_threshold(self, service: str) -> str:
        return f"{self.prefix}threshold:{service}"

    def pool_replicas(self, pool: str) -> str:
        """A pool's serving replicas (hash: URL -> its latest report), written by the process that runs them."""
        return f"{self.prefix}replicas:{pool}"

    def region_loads(self, service: str) -> str:
        """Every region's newest load of a service (hash: region -> its RegionLoad), this one's and its peers'."""
        return f"{self.prefix}regions:{service}"

    def edge_demand(self, service: str) -> str:
        """Each edge's recent demand for a service (hash: edge id -> ``rps@epoch seconds``), from which edges take
        their shares of the service's rates."""
        return f"{self.prefix}edge-demand:{service}"


class _Backoff:
    def __init__(self) -> None:
        self.until = 0.0
        self.errors = 0

    def ready(self) -> bool:
        return time.monotonic() >= self.until

    def failed(self, what: str, exc: Exception) -> None:
        self.errors += 1
        self.until = time.monotonic() + BACKOFF_S
        log.warning("redis %s failed (%s); skipping Redis writes for %.0f s", what, exc, BACKOFF_S)


class CounterSink:
    """Synchronous counter increments for the ingest thread (HINCRBY)."""

    def __init__(self, target: RedisTarget | str, keys: Keys | None = None) -> None:
        self.keys = keys or Keys()
        self._client = sync_client(target, timeout_s=SOCKET_TIMEOUT_S)
        self._backoff = _Backoff()
        self._pending: dict[str, int] = {}

    @property
    def errors(self) -> int:
        """Redis failures so far."""
        return self._backoff.errors

    def add(self, counts: Mapping[str, int]) -> None:
        """Add to the counters; kept and retried later when Redis is down."""
        for name, n in counts.items():
            if n:
                self._pending[name] = self._pending.get(name, 0) + n
        if not self._pending or not self._backoff.ready():
            return
        try:
            pipe = self._client.pipeline(transaction=False)
            for name, n in self._pending.items():
                pipe.hincrby(self.keys.counters, name, n)
            pipe.execute()
            self._pending.clear()
        except redis.RedisError as exc:
            self._backoff.failed("counter update", exc)

    def close(self) -> None:
        """Release the connection."""
        self._client.close()


class NullCounterSink:
    """Counter sink used when no Redis is configured."""

    errors = 0

    def add(self, counts: Mapping[str, int]) -> None:
        """Discard (the counts are still logged by their owner)."""

    def close(self) -> None:
        """Nothing to release."""


class StateMirror:
    """Async writer of the latest windows (and later forecasts and decisions) to Redis."""

    def __init__(self, target: RedisTarget | str, keys: Keys | None = None, *,
                 window_s: float = DEFAULT_WINDOW_S) -> None:
        self.keys = keys or Keys()
        #: windows kept per scope: an hour of them
        self.history = max(1, int(HISTORY_S // window_s))
        self._client = async_client(target, timeout_s=SOCKET_TIMEOUT_S)
        self._backoff = _Backoff()
        self.skipped = 0
        #: windows not written yet (Redis down), oldest first; ``dropped`` counts those that did not fit
        self._backlog: deque[tuple[str, int, bytes]] = deque(maxlen=BACKLOG_WINDOWS)
        self.dropped = 0
        self.backfilled = 0
        self._pending: dict[str, int] = {}

    @property
    def errors(self) -> int:
        """Redis failures so far."""
        return self._backoff.errors

    async def put_window(self, scope: str, window_start: int, payload: bytes) -> bool:
        """Record a closed window as latest and in the scope's history; kept for later while Redis is down."""
        if len(self._backlog) == self._backlog.maxlen:
            self.dropped += 1
        self._backlog.append((scope, window_start, payload))
        if not self._backoff.ready():
            self.skipped += 1
            return False
        k = self.keys
        written = 0
        try:
            while self._backlog:
                batch = [self._backlog[i] for i in range(min(BACKFILL_BATCH, len(self._backlog)))]
                pipe = self._client.pipeline(transaction=False)
                for scope_, start, raw in batch:
                    pipe.sadd(k.scopes, scope_)
                    pipe.zadd(k.window_history(scope_), {raw: start})
                    pipe.zremrangebyrank(k.window_history(scope_), 0, -self.history - 1)
                    pipe.set(k.latest_window(scope_), raw)
                await pipe.execute()
                for _ in batch:
                    self._backlog.popleft()
                written += len(batch)
            self.backfilled += written - 1  # all but this window were missed while Redis was down
            return True
        except (redis.RedisError, OSError) as exc:
            self.backfilled += max(0, written - 1)
            self._backoff.failed("window mirror", exc)
            self.skipped += 1
            return False

    async def put_forecast(self, scope: str, payload: bytes) -> bool:
        """Record the latest forecast of a scope."""
        return await self._set(self.keys.latest_forecast(scope), payload, "forecast mirror")

    async def put_decision(self, service: str, threshold: bytes, decision: bytes) -> bool:
        """Record a service's latest threshold and throttle decision."""
        return (await self._set(self.keys.latest_threshold(service), threshold, "threshold mirror")
                and await self._set(self.keys.latest_decision(service), decision, "decision mirror"))

    async def put_region(self, service: str, region: str, payload: bytes) -> bool:
        """Record a region's newest load of a service."""
        if not self._backoff.ready():
            self.skipped += 1
            return False
        try:
            await self._client.hset(self.keys.region_loads(service), region, payload)
            return True
        except (redis.RedisError, OSError) as exc:
            self._backoff.failed("region mirror", exc)
            self.skipped += 1
            return False

    async def _set(self, key: str, payload: bytes, what: str) -> bool:
        if not self._backoff.ready():
            self.skipped += 1
            return False
        try:
            await self._client.set(key, payload)
            return True
        except (redis.RedisError, OSError) as exc:
            self._backoff.failed(what, exc)
            self.skipped += 1
            return False

    async def incr(self, counts: Mapping[str, int]) -> None:
        """Add to the pipeline counters; kept and added later while Redis is down."""
        for name, n in counts.items():
            if n:
                self._pending[name] = self._pending.get(name, 0) + n
        if not self._pending or not self._backoff.ready():
            return
        try:
            pipe = self._client.pipeline(transaction=False)
            for name, n in self._pending.items():
                pipe.hincrby(self.keys.counters, name, n)
            await pipe.execute()
            self._pending.clear()
        except (redis.RedisError, OSError) as exc:
            self._backoff.failed("counter update", exc)

    async def close(self) -> None:
        """Release the connection pool."""
        await self._client.aclose()
