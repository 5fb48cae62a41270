"""Redis is a cache, not the truth: what the mirror could not write while Redis was down is written when it
returns, windows and counters alike."""

from __future__ import annotations

import asyncio

import pytest
import redis

from surgegate.agents import counters as agent_counters
from surgegate.agents.counters import AgentCounters
from surgegate.devtools.embedded import EmbeddedRedis
from surgegate.streams import store
from surgegate.streams.store import Keys, StateMirror

pytestmark = pytest.mark.e2e


def test_windows_and_counters_missed_during_a_redis_outage_are_written_when_it_returns(monkeypatch):
    # try Redis on every write and push counters on every report, so the test needs no waiting
    monkeypatch.setattr(store, "BACKOFF_S", 0.0)
    monkeypatch.setattr(agent_counters, "REPORT_EVERY_S", 0.0)
    server = EmbeddedRedis().start()
    keys = Keys("mirror:")
    scope = "service=chat"

    async def go() -> None:
        mirror = StateMirror(server.url, keys)
        counters = AgentCounters(mirror)
        try:
            for i in range(3):  # before the outage
                assert await mirror.put_window(scope, i * 10_000, b'{"w": %d}' % i)
            counters["windows.published"] += 3
            await counters.report()
            server.stop()
            for i in range(3, 8):  # during it: nothing reaches Redis, nothing is forgotten
                assert not await mirror.put_window(scope, i * 10_000, b'{"w": %d}' % i)
                counters["windows.published"] += 1
                await counters.report()
            restarted = EmbeddedRedis(port=server.port).start()  # empty, as a Redis without persistence returns
            try:
                assert await mirror.put_window(scope, 80_000, b'{"w": 8}')
                counters["windows.published"] += 1
                await counters.report()
                client = redis.Redis.from_url(restarted.url)
                history = client.zrange(keys.window_history(scope), 0, -1)
                # the restarted Redis lost what it had; everything since the outage began is back, in order
                assert history == [b'{"w": %d}' % i for i in range(3, 9)]
                assert client.get(keys.latest_window(scope)) == b'{"w": 8}'
                assert client.hget(keys.counters, "windows.published") == b"6"
                assert mirror.backfilled == 5 and mirror.dropped == 0
                client.close()
            finally:
                restarted.stop()
        finally:
            await mirror.close()

    try:
        asyncio.run(go())
    finally:
        server.stop()
