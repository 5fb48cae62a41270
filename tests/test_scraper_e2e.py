"""The GPU-worker side reads a vLLM-like server's /metrics, and the pool's window carries its saturation."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from support import TopicReader

from surgegate.devtools.fake_llm import create_fake_llm_app
from surgegate.gpu.scraper import ServerScraper
from surgegate.llm.replica import ReplicaProfile
from surgegate.schemas.aggregates import WindowStats
from surgegate.schemas.telemetry import MetricEvent
from surgegate.streams.producer import TelemetryProducer
from surgegate.streams.topics import Topics

pytestmark = pytest.mark.e2e


def test_the_scraper_puts_the_servers_queue_and_kv_cache_into_the_pools_window(settings, worker_factory):
    worker_factory()
    # a small replica at GPU pace: 4 sequences, 3,000 tokens of cache; 16 long requests overload it
    profile = ReplicaProfile(kv_cache_tokens=3_000, max_num_seqs=4)
    seen: list[MetricEvent] = []

    async def go():
        server = TestServer(create_fake_llm_app(profile=profile, time_scale=1.0, seed=2, output_median=400),
                            handler_cancellation=True)
        await server.start_server()
        producer = TelemetryProducer(settings, client_id="scrape-test")
        url = str(server.make_url("/metrics"))
        scraper = ServerScraper(producer, url, pool="gpu-a", worker_id="r1",
                                max_num_seqs=4, interval_s=0.2)
        body = {"model": "llama-3-8b", "prompt": "x" * 2000, "max_tokens": 400}
        async with aiohttp.ClientSession() as session:
            load = [asyncio.create_task(session.post(server.make_url("/v1/completions"), json=body))
                    for _ in range(16)]
            for _ in range(40):  # scrape while the queue is there (each scrape is a blocking call: a thread)
                event = await asyncio.to_thread(scraper.scrape_once)
                if event is not None:
                    seen.append(event)
                if any(e.queue_depth > 0 and e.kv_cache_use > 0.5 for e in seen):
                    break
                await asyncio.sleep(0.2)
            for task in load:
                task.cancel()
        producer.flush()
        producer.close()
        await server.close()
        # and a server that is not there: counted, nothing published
        gone = ServerScraper(TelemetryProducer(settings, client_id="scrape-gone"), url, pool="gpu-a", worker_id="r2")
        assert gone.scrape_once() is None and gone.counts["failures"] == 1 and gone.last_error

    asyncio.run(go())
    saturated = [e for e in seen if e.queue_depth > 0 and e.kv_cache_use > 0.5]
    assert saturated, seen
    assert all(e.running_requests <= 4 for e in seen)
    reader = TopicReader(settings, Topics(settings.topic_prefix).windows)

    def pool_windows(_) -> list:
        return [w for w in reader.decoded(WindowStats) if w.scope == "pool=gpu-a" and w.gpu and w.gpu.samples]

    reader.poll_until(lambda m: any(w.gpu.queue_depth_max > 0 for w in pool_windows(m)), 60, "the pool's window")
    windows = pool_windows(None)
    assert max(w.gpu.queue_depth_max for w in windows) == max(e.queue_depth for e in seen)
    assert max(w.gpu.kv_cache_max for w in windows) == pytest.approx(max(e.kv_cache_use for e in seen))


