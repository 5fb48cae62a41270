"""What the status API's ``/readyz`` checks: Redis answers, the broker has the decision topics, and a
worker mirrors fresh windows."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import redis
from confluent_kafka.admin import AdminClient

from surgegate.api.inputs import text
from surgegate.settings import Settings
from surgegate.streams.kafka import admin_config
from surgegate.streams.store import Keys
from surgegate.streams.topics import Topics

#: A worker whose newest mirrored window is older than this many windows is not fresh.
FRESH_WINDOWS = 6


class Readiness:
    """The checks, each ``{"ok": bool, ...detail}``; the worker's is unknown while Redis is unreachable."""

    def __init__(self, settings: Settings, client: Any, keys: Keys, topics: Topics) -> None:
        self.settings = settings
        self.redis = client
        self.keys = keys
        self.topics = topics

    async def checks(self) -> dict[str, dict]:
        checks = {"redis": await self.check_redis(), "kafka": await self.check_kafka()}
        checks["worker"] = await self.check_worker() if checks["redis"]["ok"] else \
            {"ok": False, "detail": "unknown while Redis is unreachable"}
        return checks

    async def check_redis(self) -> dict:
        try:
            await self.redis.ping()
            return {"ok": True}
        except (redis.RedisError, OSError) as exc:
            return {"ok": False, "detail": f"unreachable: {type(exc).__name__}"}

    async def check_kafka(self) -> dict:
        def probe() -> dict:
            admin = AdminClient(admin_config(self.settings))
            meta = admin.list_topics(timeout=2.0)
            return {"ok": self.topics.throttle in meta.topics, "brokers": len(meta.brokers)}

        try:
            return await asyncio.get_running_loop().run_in_executor(None, probe)
        except Exception as exc:  # KafkaException: unreachable
            return {"ok": False, "detail": f"unreachable: {type(exc).__name__}"}

    async def check_worker(self) -> dict:
        try:
            scopes = await self.redis.smembers(self.keys.scopes)
            pipe = self.redis.pipeline(transaction=False)
            for scope in list(scopes)[:1000]:
                pipe.zrevrange(self.keys.window_history(text(scope)), 0, 0, withscores=True)
            newest = max((int(top[0][1]) for top in await pipe.execute() if top), default=0)
        except (redis.RedisError, OSError) as exc:
            return {"ok": False, "detail": f"unreachable: {type(exc).__name__}"}
        if not newest:
            return {"ok": False, "detail": "no window mirrored yet"}
        age_s = time.time() - (newest + self.settings.window_ms) / 1000
        fresh = age_s <= FRESH_WINDOWS * self.settings.window_s + self.settings.lateness_s
        return {"ok": fresh, "newest_window_age_s": round(age_s, 1)}
