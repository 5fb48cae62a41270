"""Redis clients made one way: from a :class:`~surgegate.settings.RedisTarget` (URL, credentials, TLS files),
with the timeouts of the part that uses them."""

from __future__ import annotations

import redis
import redis.asyncio as aredis

from surgegate.settings import RedisTarget


def sync_client(target: RedisTarget | str, *, timeout_s: float, **extra: object) -> redis.Redis:
    """A blocking client for ``target``; every call gives up after ``timeout_s``."""
    target = RedisTarget.of(target)
    return redis.Redis.from_url(target.url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s,
                                **target.options(), **extra)


def async_client(target: RedisTarget | str, *, timeout_s: float, **extra: object) -> aredis.Redis:
    """An asyncio client for ``target``; every call gives up after ``timeout_s``."""
    target = RedisTarget.of(target)
    return aredis.Redis.from_url(target.url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s,
                                 **target.options(), **extra)  # type: ignore[arg-type]
