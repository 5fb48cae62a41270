"""The OpenAI-compatible gateway with the official `openai` client, in front of the vLLM-like fake server.

Decisions come through the real broker; the client is the one users run.
"""

from __future__ import annotations

import asyncio
import json
import time

import aiohttp
import msgspec
import openai
import pytest
from aiohttp.test_utils import TestServer
from confluent_kafka import Producer
from prometheus_client.parser import text_string_to_metric_families
from support import TopicReader, eventually
from test_edge_e2e import OPEN, decision, publish

from surgegate.devtools.fake_llm import create_fake_llm_app
from surgegate.edge.app import PROXY, create_edge_app
from surgegate.edge.gate import EdgeGate
from surgegate.edge.identity import Identity
from surgegate.edge.relay import Relay
from surgegate.schemas.aggregates import WindowStats
from surgegate.schemas.decisions import TierLimit
from surgegate.streams.topics import Topics

pytestmark = pytest.mark.e2e

KEYS = {"sk-acme-pro": Identity("acme", "pro"), "sk-tight": Identity("tight", "pro", tokens_per_minute=600),
        "sk-beta-pro": Identity("beta", "pro"), "sk-acme-free": Identity("acme", "free"),
        "sk-acme-enterprise": Identity("acme", "enterprise")}
MESSAGES = [{"role": "user", "content": "How busy is the service right now?"}]


class Stack:
    """fake-llm <- gateway <- AsyncOpenAI, all on loopback."""

    def __init__(self, settings, *, time_scale: float = 0.05, report: str = "off", relay: dict | None = None,
                 keys: dict | None = KEYS, upstream_app=None, **options) -> None:
        self.settings = settings
        self.time_scale = time_scale
        self.report = report
        self.relay_options = relay or {}
        self.keys = keys
        self.upstream_app = upstream_app
        self.options = options

    async def __aenter__(self) -> Stack:
        self.gate = EdgeGate(self.settings, "chat", edge_id="gw", bootstrap_from_redis=False,
                             report=self.report).start()
        eventually(lambda: self.gate.admission.decision is not None, 15, "the first decision")
        upstream_app = self.upstream_app or create_fake_llm_app(time_scale=self.time_scale, seed=1, output_median=40)
        self.upstream = TestServer(upstream_app, handler_cancellation=True)
        await self.upstream.start_server()
        self.relay = Relay(str(self.upstream.make_url("")), **self.relay_options)
        app = create_edge_app(self.gate, self.relay, keys=self.keys, **self.options)
        self.proxy = app[PROXY]
        self.server = TestServer(app, handler_cancellation=True)
        await self.server.start_server()
        self.base = str(self.server.make_url("/v1"))
        return self

    def client(self, api_key: str = "sk-acme-pro", **options) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(base_url=self.base, api_key=api_key, **{"max_retries": 0, **options})

    def counts(self) -> dict:
        """What the proxy and its relay counted."""
        return {**self.proxy.counts, **self.relay.counts}

    async def fake_stats(self) -> dict:
        async with aiohttp.ClientSession() as session, session.get(self.upstream.make_url("/_fake/stats")) as r:
            return await r.json()

    async def __aexit__(self, *exc) -> None:
        await self.server.close()
        await self.upstream.close()
        self.gate.close()


def run(coro):
    return asyncio.run(coro)


def test_a_chat_completion_is_served_with_its_usage(settings):
    publish(settings, decision(1))

    async def go():
        async with Stack(settings) as s:
            reply = await s.client().chat.completions.create(model="llama-3-8b", messages=MESSAGES, max_tokens=30)
            assert reply.choices[0].message.content and reply.model == "llama-3-8b"
            assert 1 <= reply.usage.completion_tokens <= 30 and reply.usage.prompt_tokens >= 1
            embedded = await s.client().embeddings.create(model="llama-3-8b", input=["a", "b"])
            assert len(embedded.data) == 2
            models = await s.client().models.list()
            assert [m.id for m in models.data] == ["llama-3-8b"]
            return s.proxy.counts

    counts = run(go())
    assert counts["forwarded"] == 3 and counts["upstream_ok"] == 3


def test_the_first_streamed_chunk_reaches_the_client_while_the_upstream_is_still_generating(settings):
    publish(settings, decision(1))

    async def go():
        async with Stack(settings, time_scale=1.0) as s:  # real GPU pace: about 10 ms a token
            stream = await s.client().chat.completions.create(
                model="llama-3-8b", messages=MESSAGES, max_tokens=60, stream=True,
                stream_options={"include_usage": True})
            chunks = []
            async for chunk in stream:
                if not chunks:  # the first chunk: the upstream has not finished this request
                    during = await s.fake_stats()
                chunks.append(chunk)
            after = await s.fake_stats()
            return chunks, during, after

    chunks, during, after = run(go())
    assert during["completed"] == 0 and during["running"] == 1, during
    assert after["completed"] == 1
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.split() and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == len(text.split()) == after["generated_tokens"]


def test_a_throttled_call_raises_rate_limit_error_with_message_type_and_code(settings):
    shut = {**OPEN, "pro": TierLimit(realtime_rps=0, batch_rps=0, burst=1)}
    publish(settings, msgspec.structs.replace(decision(1, shut), level=3))

    async def go():
        async with Stack(settings) as s:
            with pytest.raises(openai.RateLimitError) as caught:
                await s.client().chat.completions.create(model="llama-3-8b", messages=MESSAGES)
            return caught.value

    err = run(go())
    assert err.status_code == 429 and err.code == "rate_limit_exceeded" and err.type == "requests"
    assert "busy" in err.message and "retry" in err.message
    headers = err.response.headers
    assert int(headers["retry-after"]) >= 1 and int(headers["retry-after-ms"]) >= 1
    assert headers["x-ratelimit-limit-requests"] == "0" and headers["x-ratelimit-remaining-requests"] == "0"


def test_the_client_honours_retry_after_and_succeeds_on_its_retry(settings):
    # one request every 2 s: the second waits about 2 s; the client's own first backoff is 0.5 s
    slow = {**OPEN, "pro": TierLimit(realtime_rps=0.5, batch_rps=0, burst=1)}
    publish(settings, decision(1, slow))

    async def go():
        async with Stack(settings) as s:
            client = s.client(max_retries=1)
            await client.chat.completions.create(model="llama-3-8b", messages=MESSAGES, max_tokens=5)
            # refused once with retry-after-ms about 2,000; admitted when the client comes back after it
            await client.chat.completions.create(model="llama-3-8b", messages=MESSAGES, max_tokens=5)
            return dict(s.proxy.counts)

    counts = run(go())
    assert counts["rejected"] == 1 and counts["forwarded"] == 2


def test_a_level_3_token_cap_is_in_the_body_the_upstream_receives(settings):
    capped = {**OPEN, "pro": TierLimit(realtime_rps=1000, batch_rps=1000, burst=2000, max_tokens=16)}
    publish(settings, msgspec.structs.replace(decision(1, capped), level=3))  # level 3: low tiers get token caps

    async def go():
        async with Stack(settings) as s:
            reply = await s.client().chat.completions.create(model="llama-3-8b", messages=MESSAGES,
                                                             max_completion_tokens=500)
            return reply, (await s.fake_stats())["last_body"]

    reply, received = run(go())
    body = json.loads(received)
    assert body["max_completion_tokens"] == 16 and body["messages"] == MESSAGES
    assert reply.usage.completion_tokens <= 16


def test_a_client_that_disconnects_mid_stream_ends_the_upstream_request(settings):
    publish(settings, decision(1))

    async def go():
        async with Stack(settings, time_scale=1.0) as s:  # 2,000 tokens: twenty seconds at GPU pace
            stream = await s.client().chat.completions.create(model="llama-3-8b", messages=MESSAGES,
                                                              max_tokens=2000, stream=True)
            async for _ in stream:
                break
            await stream.close()
            deadline = time.monotonic() + 10
            stats = await s.fake_stats()
            while stats["cancelled"] < 1 and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
                stats = await s.fake_stats()
            return stats, s.counts()

    stats, counts = run(go())
    assert stats["cancelled"] == 1 and stats["completed"] == 0 and stats["running"] == 0, stats
    assert counts["client_disconnects"] == 1


def test_without_keys_a_request_naming_nobody_is_served_as_the_default_tenant(settings):
    publish(settings, decision(1))

    async def go():
        async with Stack(settings, keys=None) as s:
            async with aiohttp.ClientSession() as session, session.post(f"{s.base}/chat/completions",
                                    json={"model": "llama-3-8b", "messages": MESSAGES, "max_tokens": 3}) as r:
                assert r.status == 200, await r.text()
            return s.gate.admission.tally.drain(ts=0, duration_ms=1000, service="chat", edge_id="gw", gate="live",
                                                shadow=False)

    summaries = run(go())
    assert [(x.tenant, x.tier, x.ok) for x in summaries] == [("anonymous", "free", 1)]


def test_with_keys_a_keyless_call_is_401_and_no_header_claims_a_tier(settings):
    publish(settings, decision(1))

    async def go():
        async with Stack(settings) as s:  # keys configured, no anonymous tier
            async with aiohttp.ClientSession() as session, session.post(
                    f"{s.base}/chat/completions", headers={"X-Tenant": "acme", "X-Tier": "enterprise"},
                    json={"model": "llama-3-8b", "messages": MESSAGES, "max_tokens": 3}) as r:
                keyless = r.status, (await r.json())["error"]
            upgraded = s.client(default_headers={"X-Tier": "enterprise"})  # a pro key claiming enterprise
            with pytest.raises(openai.PermissionDeniedError) as upgrade:
                await upgraded.chat.completions.create(model="llama-3-8b", messages=MESSAGES, max_tokens=3)
            return keyless, upgrade.value, (await s.fake_stats())["requests"]

    (status, error), upgrade, reached = run(go())
    assert status == 401 and error["code"] == "missing_api_key" and error["param"] == "Authorization"
    assert upgrade.status_code == 403 and upgrade.code == "tier_not_allowed"
    assert reached == 0


def test_an_anonymous_tier_serves_keyless_calls_on_that_tier_only(settings):
    publish(settings, decision(1))

    async def go():
        async with Stack(settings, anonymous_tier="free") as s:
            async with aiohttp.ClientSession() as session:
                async with session.post(f"{s.base}/chat/completions", json={
                        "model": "llama-3-8b", "messages": MESSAGES, "max_tokens": 3}) as served:
                    assert served.status == 200, await served.text()
                async with session.post(f"{s.base}/chat/completions", headers={"X-Tier": "enterprise"}, json={
                        "model": "llama-3-8b", "messages": MESSAGES, "max_tokens": 3}) as claimed:
                    refused = claimed.status
            return refused, s.gate.admission.tally.drain(ts=0, duration_ms=1000, service="chat", edge_id="gw",
                                                         gate="live", shadow=False)

    refused, summaries = run(go())
    assert refused == 401
    assert [(x.tenant, x.tier, x.ok) for x in summaries] == [("anonymous", "free", 1)]


def test_bad_keys_and_bad_fields_are_refused_in_openai_shape(settings):
    publish(settings, decision(1))

    async def go():
        async with Stack(settings) as s:
            with pytest.raises(openai.AuthenticationError) as unknown:
                await s.client(api_key="sk-nobody").chat.completions.create(model="llama-3-8b", messages=MESSAGES)
            with pytest.raises(openai.BadRequestError) as bad:
                await s.client().chat.completions.create(model="llama-3-8b", messages=MESSAGES,
                                                         max_tokens=-3)
            return unknown.value, bad.value, (await s.fake_stats())["requests"]

    unknown, bad, reached = run(go())
    assert unknown.code == "invalid_api_key"
    assert bad.code == "invalid_body" and bad.param == "max_tokens" and "max_tokens" in bad.message
    assert reached == 0, "a refused request never reaches the upstream"


def test_tokens_from_usage_and_ttft_arrive_in_the_windows(settings, worker_factory):
    publish(settings, decision(1))
    worker_factory()

    async def go():
        async with Stack(settings, report="summaries") as s:
            reply = await s.client().chat.completions.create(model="llama-3-8b", messages=MESSAGES, max_tokens=25)
            stream = await s.client().chat.completions.create(model="llama-3-8b", messages=MESSAGES, max_tokens=25,
                                                              stream=True, stream_options={"include_usage": True})
            last = None
            async for chunk in stream:
                last = chunk
        return reply.usage, last.usage, s.gate.reported  # read once the stack closed: its last report is sent

    plain, streamed, reported = run(go())
    assert reported["summaries"] >= 1 and reported["send_failures"] == 0, reported
    reader = TopicReader(settings, Topics(settings.topic_prefix).windows)

    def served(_) -> list:
        return [w for w in reader.decoded(WindowStats) if w.scope == "service=chat" and w.traffic.ok]

    reader.poll_until(lambda m: sum(w.traffic.ok for w in served(m)) >= 2, 60, "windows with both requests")
    windows = served(None)
    assert sum(w.traffic.output_tokens for w in windows) == plain.completion_tokens + streamed.completion_tokens
    assert sum(w.traffic.input_tokens for w in windows) == plain.prompt_tokens + streamed.prompt_tokens
    measured = [w.traffic for w in windows if w.traffic.ttft_p50_ms is not None]
    assert len(measured) == 1 and 0 < measured[0].ttft_p50_ms <= measured[0].latency_max_ms, measured
    assert measured[0].itl_p50_ms is not None and measured[0].itl_p50_ms > 0


def test_a_tenants_token_budget_refuses_in_tokens_and_is_settled_by_usage(settings):
    publish(settings, decision(1))

    async def go():
        async with Stack(settings, time_scale=1.0) as s:  # a minute holds 600 tokens for this key
            client = s.client(api_key="sk-tight")
            held = await client.chat.completions.create(model="llama-3-8b", messages=MESSAGES, max_tokens=580,
                                                        stream=True, stream_options={"include_usage": True})
            async for _ in held:  # the first request is under way: its 580 + prompt tokens are reserved
                break
            with pytest.raises(openai.RateLimitError) as caught:
                await client.chat.completions.create(model="llama-3-8b", messages=MESSAGES, max_tokens=580)
            usage = None
            async for chunk in held:
                usage = chunk.usage or usage
            # settled by its usage: what it did not use is back, so a large request fits again
            after = await client.chat.completions.create(model="llama-3-8b", messages=MESSAGES,
                                                         max_tokens=600 - usage.total_tokens - 20)
            return caught.value, usage, after, dict(s.proxy.counts)

    err, usage, after, counts = run(go())
    assert err.type == "tokens" and err.code == "rate_limit_exceeded" and "tokens per minute" in err.message
    headers = err.response.headers
    assert headers["x-ratelimit-limit-tokens"] == "600" and int(headers["x-ratelimit-remaining-tokens"]) < 580
    assert usage.completion_tokens < 580 and after.usage.completion_tokens >= 1
    assert counts["rejected_tokens"] == 1



def test_the_model_names_the_service_whose_decision_applies(settings):
    shut = {**OPEN, "pro": TierLimit(realtime_rps=0, batch_rps=0, burst=1)}
    publish(settings, decision(1), msgspec.structs.replace(decision(1, shut), service="embed"))

    async def go():
        chat = EdgeGate(settings, "chat", edge_id="gw", bootstrap_from_redis=False, report="off").start()
        embed = EdgeGate(settings, "embed", edge_id="gw", bootstrap_from_redis=False, report="off").start()
        eventually(lambda: chat.admission.decision is not None and embed.admission.decision is not None, 15,
                   "both services' decisions")
        upstream = TestServer(create_fake_llm_app(time_scale=0.01, seed=1, output_median=10))
        await upstream.start_server()
        app = create_edge_app(chat, str(upstream.make_url("")), models={"bge-small": "embed", "llama-3-8b": "chat"},
                              gates={"embed": embed}, keys=KEYS)
        server = TestServer(app)
        await server.start_server()
        client = openai.AsyncOpenAI(base_url=str(server.make_url("/v1")), api_key="sk-acme-pro", max_retries=0)
        try:
            served = await client.chat.completions.create(model="llama-3-8b", messages=MESSAGES, max_tokens=3)
            with pytest.raises(openai.RateLimitError):
                await client.embeddings.create(model="bge-small", input="refused by the embed service's decision")
            async with aiohttp.ClientSession() as session:
                async with session.get(server.make_url("/_surgegate/status")) as r:
                    status = await r.json()
                async with session.get(server.make_url("/_surgegate/metrics")) as r:
                    assert r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
                    metrics = await r.text()
                return served, status, metrics
        finally:
            await server.close()
            await upstream.close()
            chat.close()
            embed.close()

    served, status, metrics = run(go())
    assert served.choices and status["proxy"]["forwarded"] == 1
    assert status["services"]["embed"]["proxy"]["rejected"] == 1 and status["services"]["embed"]["service"] == "embed"
    # both gates on one /metrics, each family named once
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in text_string_to_metric_families(metrics) for s in family.samples}
    assert samples[("surgegate_edge_verdicts_total", (("action", "admit"), ("request_type", "realtime"),
                                                      ("service", "chat"), ("tier", "pro")))] == 1
    assert samples[("surgegate_edge_verdicts_total", (("action", "reject"), ("request_type", "realtime"),
                                                      ("service", "embed"), ("tier", "pro")))] == 1
    assert samples[("surgegate_edge_requests_total", (("service", "chat"), ("status", "ok"), ("tier", "pro")))] == 1
    assert samples[("surgegate_edge_request_duration_seconds_count", (("service", "chat"), ("tier", "pro")))] == 1
    assert samples[("surgegate_edge_gate_state", (("service", "embed"), ("state", "live")))] == 1
    assert ("surgegate_edge_level", (("service", "chat"),)) in samples
    assert metrics.count("# TYPE surgegate_edge_verdicts_total counter") == 1


def test_no_free_upstream_connection_is_overload_with_retry_after_not_an_upstream_timeout(settings):
    publish(settings, decision(1))

    async def go():
        async with Stack(settings, time_scale=1.0, relay={"connections": 1, "connect_timeout_s": 0.2}) as s:
            busy = await s.client().chat.completions.create(model="llama-3-8b", messages=MESSAGES, max_tokens=300,
                                                            stream=True)
            async for _ in busy:  # the one upstream connection is in use for seconds
                break
            with pytest.raises(openai.InternalServerError) as caught:
                await s.client().chat.completions.create(model="llama-3-8b", messages=MESSAGES, max_tokens=3)
            await busy.close()
            return caught.value, s.counts()

    err, counts = run(go())
    assert err.status_code == 503 and err.code == "upstream_busy" and "no upstream connection" in err.message
    assert err.response.headers["retry-after"] == "1"
    assert counts["upstream_busy"] == 1 and counts.get("upstream_timeout", 0) == 0



def test_lower_tiers_and_batch_go_to_the_overflow_pool_while_the_decision_asks_for_it(settings):
    from test_keda import decision as scaling

    from surgegate.schemas.decisions import Overflow

    publish(settings, decision(1))

    def publish_scaling(d) -> None:
        producer = Producer({"bootstrap.servers": settings.kafka, "log_level": 0})
        producer.produce(Topics(settings.topic_prefix).scaling, msgspec.json.encode(d), key=d.pool.encode())
        assert producer.flush(10) == 0

    async def served_by(upstreams: dict[str, TestServer]) -> dict[str, int]:
        out = {}
        async with aiohttp.ClientSession() as session:
            for name, server in upstreams.items():
                async with session.get(server.make_url("/_fake/stats")) as r:
                    out[name] = (await r.json())["requests"]
        return out

    async def go():
        gate = EdgeGate(settings, "chat", edge_id="gw", bootstrap_from_redis=False, report="off",
                        follow_scaling=True).start()
        upstreams = {name: TestServer(create_fake_llm_app(time_scale=0.01, seed=1, output_median=5))
                     for name in ("primary", "overflow")}
        for server in upstreams.values():
            await server.start_server()
        app = create_edge_app(gate, str(upstreams["primary"].make_url("")),
                              overflow=str(upstreams["overflow"].make_url("")))
        server = TestServer(app)
        await server.start_server()

        async def ask(tier: str, request_type: str = "realtime") -> None:
            client = openai.AsyncOpenAI(base_url=str(server.make_url("/v1")), api_key="x", max_retries=0,
                                        default_headers={"X-Tenant": "acme", "X-Tier": tier,
                                                         "X-Request-Type": request_type})
            await client.chat.completions.create(model="llama-3-8b", messages=MESSAGES, max_tokens=2)

        try:
            eventually(lambda: gate.admission.decision is not None, 15, "the throttle decision")
            await ask("pro")  # no overflow asked: everything on the primary
            assert await served_by(upstreams) == {"primary": 1, "overflow": 0}
            publish_scaling(scaling(pool="chat", version=1, desired=20,
                                    overflow=Overflow(pool="cloud-b", replicas=4)))
            eventually(lambda: gate.overflow() == 4, 15, "the scaling decision asking overflow")
            await ask("enterprise")  # the top tier's realtime traffic stays on the primary
            await ask("pro")
            await ask("free")
            await ask("enterprise", "batch")  # batch work goes, whatever the tier
            assert await served_by(upstreams) == {"primary": 2, "overflow": 3}
            publish_scaling(scaling(pool="chat", version=2, desired=20))
            eventually(lambda: gate.overflow() == 0, 15, "the scaling decision without overflow")
            await ask("free")
            assert await served_by(upstreams) == {"primary": 3, "overflow": 3}
            return app[PROXY].counts
        finally:
            await server.close()
            for upstream in upstreams.values():
                await upstream.close()
            gate.close()

    counts = run(go())
    assert counts["to_overflow"] == 3 and counts["forwarded"] == 6
