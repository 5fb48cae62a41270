"""The deferral lane's accepted tasks per second, and a cache hit's latency against an upstream call.

    python benchmarks/lane_cache.py [--seconds 10] [--concurrency 32] [--calls 300]

One run starts an embedded broker and Redis, ``surgegate fake-llm`` at a GPU's
pace (time scale 1: about 10 ms a token), and two ``surgegate edge`` processes
in front of it: one with the durable deferral lane and the response cache, one
that keeps deferred work in its memory (the baseline). A decision that defers
all batch work is published first, so every batch request becomes a task.

1. Tasks accepted per second: ``--concurrency`` clients post batch requests
   for ``--seconds``; each 202 through the lane means the broker had the task
   and Redis its state. The same against the in-memory queue, side by side.
2. Latency of one deterministic chat completion (``temperature: 0``,
   ``max_tokens: 16``), one call at a time: direct to the upstream, through
   the gateway to the upstream (``X-Surgegate-Cache: off``), and answered from
   the cache. p50 and p99 of each.

The client is Python (aiohttp) in this process, sharing the cores with the
servers: compare the columns of one run, not figures across machines.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import tempfile
import time
from pathlib import Path

import aiohttp
import msgspec
from confluent_kafka import Producer
from gateway_overhead import pct, start, wait_up

from surgegate.devtools.embedded import EmbeddedBroker, EmbeddedRedis, free_port
from surgegate.schemas.decisions import ThrottleDecision, TierLimit
from surgegate.settings import Settings
from surgegate.streams.topics import Topics, create_topics

SERVICES = json.dumps({"chat": {"replica_rps": 1_000_000, "replicas": 10}})
ASK = {"model": "llama-3-8b", "messages": [{"role": "user", "content": "What is a KV cache?"}], "max_tokens": 16,
       "temperature": 0}
BATCH = {"X-Request-Type": "batch", "X-Tenant": "acme", "X-Tier": "pro"}


def defer_batch(settings: Settings) -> None:
    """A decision that admits realtime work and defers every batch request, valid for an hour."""
    now = int(time.time() * 1000)
    open_tier = TierLimit(realtime_rps=1e6, batch_rps=1e6, burst=1e6)
    decision = ThrottleDecision(service="chat", version=1, issued_at=now, valid_until=now + 3_600_000, level=0,
                                mode="enforce", tiers={t: open_tier for t in ("enterprise", "pro", "free")},
                                tenants={}, defer_batch=True, breaker="closed", forecast_upper_rps=0.0,
                                safe_rps=1e6, reason="benchmark: defer batch work")
    producer = Producer({"bootstrap.servers": settings.kafka})
    producer.produce(Topics(settings.topic_prefix).throttle, msgspec.json.encode(decision), key=b"chat")
    assert producer.flush(10) == 0


async def decision_applied(edge: str, deadline_s: float = 30.0) -> None:
    end = time.monotonic() + deadline_s
    async with aiohttp.ClientSession() as session:
        while True:
            async with session.get(edge + "/_surgegate/status") as r:
                if (await r.json()).get("version") == 1:
                    return
            if time.monotonic() > end:
                raise RuntimeError(f"{edge} did not apply the decision")
            await asyncio.sleep(0.1)


async def accepted(base: str, seconds: float, concurrency: int) -> tuple[int, int]:
    """(tasks accepted with a 202, other answers) in ``seconds``."""
    done = other = 0
    end = time.monotonic() + seconds
    body = {**ASK, "temperature": 0.7}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as session:
        async def loop() -> None:
            nonlocal done, other
            while time.monotonic() < end:
                async with session.post(base + "/v1/chat/completions", json=body, headers=BATCH) as r:
                    await r.read()
                    if r.status == 202:
                        done += 1
                    else:
                        other += 1
        await asyncio.gather(*(loop() for _ in range(concurrency)))
    return done, other


async def one_at_a_time(session: aiohttp.ClientSession, url: str, n: int, headers: dict[str, str],
                        expect: str | None = None) -> list[float]:
    out = []
    for _ in range(n):
        t = time.perf_counter()
        async with session.post(url, json=ASK, headers=headers) as r:
            await r.read()
            assert r.status == 200, r.status
            if expect is not None:
                assert r.headers.get("X-Surgegate-Cache") == expect, r.headers.get("X-Surgegate-Cache")
        out.append((time.perf_counter() - t) * 1000)
    return out


async def measure(direct: str, lane: str, memory: str, args: argparse.Namespace) -> None:
    lane_n, lane_other = await accepted(lane, args.seconds, args.concurrency)
    memory_n, memory_other = await accepted(memory, args.seconds, args.concurrency)
    print(f"batch requests deferred, {args.concurrency} clients, {args.seconds:g} s  {'lane':>12} {'memory':>12}")
    print(f"  tasks accepted (202) per second                {lane_n / args.seconds:12,.0f} "
          f"{memory_n / args.seconds:12,.0f}")
    print(f"  other answers (full queue, broker slow)        {lane_other:12,} {memory_other:12,}")
    async with aiohttp.ClientSession() as session:
        url = "/v1/chat/completions"
        await one_at_a_time(session, lane + url, 1, {})  # the answer is cached from here on
        rows = [("upstream, direct", await one_at_a_time(session, direct + url, args.calls, {})),
                ("upstream, through the gateway",
                 await one_at_a_time(session, lane + url, args.calls, {"X-Surgegate-Cache": "off"})),
                ("cache hit, through the gateway", await one_at_a_time(session, lane + url, args.calls, {}, "hit"))]
    print(f"temperature 0, max_tokens 16, one call at a time (ms)  {'p50':>9} {'p99':>9}")
    for name, values in rows:
        print(f"  {name:50} {pct(values, 0.5):9.2f} {pct(values, 0.99):9.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each accepted-tasks run")
    parser.add_argument("--concurrency", type=int, default=32, help="clients posting batch requests")
    parser.add_argument("--calls", type=int, default=300, help="calls per latency row")
    args = parser.parse_args()
    with EmbeddedBroker() as broker, EmbeddedRedis() as redis_server, tempfile.TemporaryDirectory() as tmp:
        settings = Settings(kafka=broker.bootstrap, redis=redis_server.url, topic_prefix="bench.", services=SERVICES)
        create_topics(settings)
        defer_batch(settings)
        env = {**{k: v for k, v in os.environ.items() if not k.startswith("SURGEGATE_")},
               "SURGEGATE_KAFKA": settings.kafka, "SURGEGATE_REDIS": settings.redis,
               "SURGEGATE_TOPIC_PREFIX": settings.topic_prefix, "SURGEGATE_SERVICES": SERVICES}
        fake_port, lane_port, memory_port = free_port(), free_port(), free_port()
        upstream = f"http://127.0.0.1:{fake_port}"
        procs = [start(["fake-llm", "--port", str(fake_port), "--seed", "1"], env, Path(tmp) / "fake.log"),
                 start(["edge", "--port", str(lane_port), "--upstream", upstream, "--report", "off", "--cache",
                        "--deferral", "lane", "--edge-id", "lane"], env, Path(tmp) / "lane.log"),
                 start(["edge", "--port", str(memory_port), "--upstream", upstream, "--report", "off",
                        "--deferral", "memory", "--deferred-capacity", "1000000", "--edge-id", "memory"],
                       env, Path(tmp) / "memory.log")]
        try:
            lane, memory = f"http://127.0.0.1:{lane_port}", f"http://127.0.0.1:{memory_port}"
            for url in (upstream, lane, memory):
                asyncio.run(wait_up(url + "/v1/models"))
            for url in (lane, memory):
                asyncio.run(decision_applied(url))
            asyncio.run(measure(upstream, lane, memory, args))
        finally:
            for proc in procs:
                proc.terminate()
                proc.wait(10)


if __name__ == "__main__":
    main()
