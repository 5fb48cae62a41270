"""The edge's response cache: exact-match answers in Redis, shared by every edge of a deployment.

Which requests may be cached, and their keys, are decided by
:mod:`surgegate.llm.caching` (``temperature: 0`` or an explicit opt-in; the key
covers the scope, the path and the normalised body). The scope is the tenant,
so one tenant never reads another's answer, unless the operator names a scope
that the service's tenants share (``shared_scope``).

Memory is bounded twice: an answer larger than ``max_entry_bytes`` is not kept,
and each service keeps at most ``max_entries`` answers (an index sorted by the
time each was stored; storing one more drops the oldest), each for ``ttl_s``.

Redis is a cache here, never the truth: an unreachable Redis is a miss (and the
cache is not asked again for a few seconds), never an error for the client.
"""

from __future__ import annotations

import logging
import time

import msgspec
import redis

from surgegate.llm.caching import request_key
from surgegate.settings import RedisTarget
from surgegate.streams.redis_client import async_client

log = logging.getLogger(__name__)

#: How long an unreachable Redis is not asked again.
CACHE_BACKOFF_S = 5.0

#: Store one answer and keep the service's index at most ARGV[4] long (the oldest answers go first).
#: KEYS: the answer, the service's index. ARGV: the answer, ttl ms, now ms, max entries.
PUT_LUA = """
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
redis.call('ZADD', KEYS[2], ARGV[3], KEYS[1])
redis.call('PEXPIRE', KEYS[2], ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', tonumber(ARGV[3]) - tonumber(ARGV[2]))
local over = redis.call('ZCARD', KEYS[2]) - tonumber(ARGV[4])
if over > 0 then
  local old = redis.call('ZPOPMIN', KEYS[2], over)
  for i = 1, #old, 2 do redis.call('DEL', old[i]) end
end
return math.max(over, 0)
"""


class CachedAnswer(msgspec.Struct, frozen=True):
    """One upstream answer as it was sent: a JSON body, or a whole event stream (``stream``)."""

    status: int
    content_type: str
    body: bytes
    stream: bool
    stored_at: float


class ResponseCache:
    """Exact-match answers for one deployment (``prefix``) in Redis; counts in ``counts``."""

    def __init__(self, target: RedisTarget | str, *, prefix: str = "sg:", ttl_s: float = 300.0,
                 max_entries: int = 10_000, max_entry_bytes: int = 128 * 1024, shared_scope: str | None = None,
                 timeout_s: float = 0.05) -> None:
        if ttl_s <= 0 or max_entries < 1 or max_entry_bytes < 1:
            raise ValueError(f"cache ttl_s={ttl_s!r} max_entries={max_entries!r} max_entry_bytes={max_entry_bytes!r}:"
                             " each must be positive")
        self.ttl_ms = int(ttl_s * 1000)
        self.max_entries = max_entries
        self.max_entry_bytes = max_entry_bytes
        self.shared_scope = shared_scope
        self._prefix = f"{prefix}cache:"
        self._client = async_client(target, timeout_s=timeout_s)
        self._put = self._client.register_script(PUT_LUA)
        self._decoder = msgspec.msgpack.Decoder(CachedAnswer)
        self._skip_until = 0.0
        self.counts = {"hits": 0, "misses": 0, "stored": 0, "too_large": 0, "evicted": 0, "unavailable": 0}

    def scope(self, tenant: str) -> str:
        """Whose answers a request may read: its tenant's, or the shared scope."""
        return f"shared:{self.shared_scope}" if self.shared_scope else f"tenant:{tenant}"

    def key(self, service: str, tenant: str, path: str, body: bytes) -> str:
        """The Redis key of a request's answer; ``ValueError`` if the body is not a JSON object."""
        return self._prefix + request_key(f"{service}\0{self.scope(tenant)}", path, body)

    def _index(self, service: str) -> str:
        return f"{self._prefix}index:{service}"

    def _available(self) -> bool:
        if time.monotonic() < self._skip_until:
            self.counts["unavailable"] += 1
            return False
        return True

    def _failed(self, exc: Exception) -> None:
        self._skip_until = time.monotonic() + CACHE_BACKOFF_S
        self.counts["unavailable"] += 1
        log.info("response cache unavailable (%s); not asked for %.0f s", exc, CACHE_BACKOFF_S)

    async def get(self, key: str) -> CachedAnswer | None:
        """The answer kept under ``key``, or None (also when Redis cannot answer)."""
        if not self._available():
            return None
        try:
            raw = await self._client.get(key)
        except (redis.RedisError, OSError) as exc:
            self._failed(exc)
            return None
        if raw is None:
            self.counts["misses"] += 1
            return None
        try:
            answer = self._decoder.decode(raw if isinstance(raw, bytes) else raw.encode())
        except msgspec.DecodeError:  # written by another version: a miss, replaced on the next store
            self.counts["misses"] += 1
            return None
        self.counts["hits"] += 1
        return answer

    async def put(self, service: str, key: str, answer: CachedAnswer) -> bool:
        """Keep ``answer`` for ``ttl_s``; False if it is too large or Redis cannot take it."""
        if len(answer.body) > self.max_entry_bytes:
            self.counts["too_large"] += 1
            return False
        if not self._available():
            return False
        try:
            evicted = await self._put(keys=[key, self._index(service)],
                                      args=[msgspec.msgpack.encode(answer), self.ttl_ms, int(time.time() * 1000),
                                            self.max_entries])
        except (redis.RedisError, OSError) as exc:
            self._failed(exc)
            return False
        self.counts["stored"] += 1
        self.counts["evicted"] += int(evicted)
        return True

    async def close(self) -> None:
        await self._client.aclose()
