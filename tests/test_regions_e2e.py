"""Two regions on the embedded stack: region A overloaded, region B with headroom. A's decisions name the
spill-over of its free tier to B, and a gateway in A sends that share of free-tier calls to B's gateway with the
caller's key, none of the top tier's, and no batch work."""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
import urllib.request

import openai
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from support import TopicReader, WorkerProcess, eventually, serve_api

from surgegate.devtools.fake_llm import create_fake_llm_app
from surgegate.edge.app import PROXY, create_edge_app
from surgegate.edge.gate import EdgeGate
from surgegate.edge.identity import Identity
from surgegate.edge.relay import Relay
from surgegate.schemas.decisions import RegionLoad, ThrottleDecision
from surgegate.streams.producer import TelemetryProducer
from surgegate.streams.topics import Topics, create_topics

pytestmark = pytest.mark.e2e

# safe capacity in each region: 10 rps per replica x 2 replicas x 0.85 = 17 rps. A decision reaches the gateway
# 4-5 s after its 2 s window ends (2 s lateness, then the flush, merge and decide hops: measured on both Pythons);
# a lease of 4 windows keeps each in force until the next arrives, as the default 10 s windows do by far
SERVICES = json.dumps({"chat": {"pool": "gpu-a", "replica_rps": 10, "replicas": 2, "slo_p99_ms": 2000,
                                "lease_windows": 4}})
TIERS = ("enterprise", "pro", "free")
KEYS = {"sk-free": Identity("acme", "free"), "sk-enterprise": Identity("bigco", "enterprise")}


class Load:
    """RequestEvents stamped now at ``rate`` per second, the three tiers in turn, as a region's edges send."""

    def __init__(self, settings, rate: float, edge_id: str) -> None:
        self.producer = TelemetryProducer(settings, client_id=edge_id)
        self.rate, self.edge_id = rate, edge_id
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> Load:
        self._thread.start()
        return self

    def _run(self) -> None:
        i, started = 0, time.monotonic()
        while not self._stop.is_set():
            while i < (time.monotonic() - started) * self.rate:
                self.producer.send_request({"ts": int(time.time() * 1000), "service": "chat", "tenant": f"t{i % 2}",
                                            "tier": TIERS[i % 3], "edge_id": self.edge_id, "latency_ms": 80.0})
                i += 1
            self.producer.poll()
            time.sleep(0.01)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)
        self.producer.close()


def _region_b_gateway(seen: list[dict]) -> web.Application:
    """Stands in for region B's gateway: records who called and answers a chat completion."""

    async def chat(request: web.Request) -> web.Response:
        seen.append(dict(request.headers))
        await request.read()
        return web.json_response({
            "id": "cmpl-b", "object": "chat.completion", "created": int(time.time()), "model": "llama-3-8b",
            "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": "from B"}}],
            "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}})

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    return app


def test_an_overloaded_region_spills_its_free_tier_to_the_region_with_headroom_and_never_the_top_tier(
        settings, tmp_path):
    a = settings.replace(services=SERVICES, region="A", topic_prefix=settings.topic_prefix + "a.")
    b = settings.replace(services=SERVICES, region="B", topic_prefix=settings.topic_prefix + "b.")
    # each region reads the other's loads where MirrorMaker 2 would put them; here both share one broker
    a = a.replace(peer_region_topics=Topics(b.topic_prefix).regions)
    b = b.replace(peer_region_topics=Topics(a.topic_prefix).regions)
    create_topics(a)
    create_topics(b)
    workers = [WorkerProcess(a, tmp_path / "a.log", "wa").start(), WorkerProcess(b, tmp_path / "b.log", "wb").start()]
    loads = [Load(a, 60.0, "edge-a").start(), Load(b, 5.0, "edge-b").start()]
    try:
        decisions = TopicReader(a, Topics(a.topic_prefix).throttle)
        decisions.poll_until(lambda m: any(b'"region":"B"' in x.value() for x in m), 120,
                             "a decision of A naming a spill-over to B")
        spilled = [d for d in decisions.decoded(ThrottleDecision) if d.spill]
        first = spilled[0]
        assert [s.region for s in first.spill] == ["B"] and set(first.spill[0].share) == {"free"}
        # A's demand is about 60 rps over a safe 17; B's headroom after its own 5 rps is about 12: about 0.6 of
        # free's 20 rps now, less while A's forecast runs above its demand
        assert 0.0 < first.spill[0].share["free"] <= 1.0 and "the top tier stays" in first.reason
        assert not any("enterprise" in s.share for d in spilled for s in d.spill)
        loads_b = TopicReader(b, Topics(b.topic_prefix).regions)
        loads_b.poll_until(lambda m: len(m) >= 1, 30, "B's load published")
        assert all(r.region == "B" and r.safe_rps > 0 for r in loads_b.decoded(RegionLoad))
        # A's status API: both regions' loads, and the service as a whole with what A sent counted once
        api = serve_api(a)

        def both() -> dict | None:
            with contextlib.suppress(OSError), urllib.request.urlopen(api + "/v1/regions/chat", timeout=5) as r:
                return json.loads(r.read())
            return None

        eventually(lambda: (got := both()) is not None and [r["region"] for r in got["regions"]] == ["A", "B"],
                   30, "both regions' loads on A's API")
        view = both()
        assert view is not None and view["whole"]["safe_rps"] == pytest.approx(34.0, abs=0.5)
        assert view["whole"]["spilled_rps"] > 0 and view["whole"]["demand_rps"] == pytest.approx(
            sum(sum(r["demand_by_tier"].values()) for r in view["regions"]) - view["whole"]["spilled_rps"], abs=0.01)
        seen: list[dict] = []
        asyncio.run(_through_a_gateway(a, seen))
    finally:
        for load in loads:
            load.stop()
        for worker in workers:
            worker.stop()
    free = [h for h in seen if h.get("Authorization") == "Bearer sk-free"]
    assert free and len(free) == len(seen), "only free-tier calls reach B, with the caller's own key"
    assert all(h.get("X-Surgegate-Spilled-From") == "A" for h in seen)
    assert 3 <= len(free) <= 30, f"{len(free)} of 30 free-tier calls went to B"


async def _through_a_gateway(settings, seen: list[dict]) -> None:
    gate = EdgeGate(settings, "chat", edge_id="gw-a", bootstrap_from_redis=False, report="off").start()
    upstream_b = TestServer(_region_b_gateway(seen))
    upstream_a = TestServer(create_fake_llm_app(time_scale=0.01, seed=1, output_median=5))
    await upstream_a.start_server()
    await upstream_b.start_server()
    try:
        eventually(lambda: gate.admission.decision is not None and bool(gate.admission.decision.spill)
                   and gate.admission.decision.valid_until > time.time() * 1000 + 2000, 60,
                   "a live decision with a spill-over at A's gateway")
        app = create_edge_app(gate, Relay(str(upstream_a.make_url(""))), keys=KEYS, region="A",
                              region_upstreams={"B": str(upstream_b.make_url(""))})
        server = TestServer(app, handler_cancellation=True)
        await server.start_server()
        try:
            base = str(server.make_url("/v1"))
            for key in ("sk-free", "sk-enterprise"):
                client = openai.AsyncOpenAI(base_url=base, api_key=key, max_retries=0)
                for _ in range(30):
                    # A's own gate refuses what it cannot serve: what is not spilled is A's to shed
                    with contextlib.suppress(openai.RateLimitError):
                        await client.chat.completions.create(model="llama-3-8b", max_tokens=5,
                                                             messages=[{"role": "user", "content": "hi"}])
            spilled = len(seen)
            # batch work stays home, in this region's deferral lane (its task id is known here)
            batch = openai.AsyncOpenAI(base_url=base, api_key="sk-free", max_retries=0,
                                       default_headers={"X-Request-Type": "batch"})
            for _ in range(10):
                with contextlib.suppress(openai.RateLimitError):
                    await batch.chat.completions.create(model="llama-3-8b", max_tokens=5,
                                                        messages=[{"role": "user", "content": "later"}])
            assert len(seen) == spilled
            counts = app[PROXY].status_view()["proxy"]["regions"]
            assert counts.get("spilled.B", 0) == len(seen)
        finally:
            await server.close()
    finally:
        await upstream_a.close()
        await upstream_b.close()
        gate.close()
