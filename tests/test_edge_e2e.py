"""The edge gate on the real broker and Redis: decisions in, admission and telemetry out."""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace

import msgspec
import pytest
import redis
from aiohttp.test_utils import TestClient, TestServer
from confluent_kafka import Producer
from support import TopicReader, eventually

from surgegate.admission.actions import ADMIT, REJECT
from surgegate.admission.gate import Fallback
from surgegate.devtools.embedded import EmbeddedBroker, EmbeddedRedis
from surgegate.devtools.fake_llm import create_fake_llm_app
from surgegate.edge import gate as gate_module
from surgegate.edge.app import create_edge_app
from surgegate.edge.gate import Contract, EdgeGate, GlobalQuota
from surgegate.schemas.decisions import ThrottleDecision, TierLimit
from surgegate.schemas.telemetry import RequestSummary
from surgegate.settings import Settings
from surgegate.streams.store import Keys
from surgegate.streams.topics import Topics, create_topics
from surgegate.telemetry.validation import TelemetryValidator

pytestmark = pytest.mark.e2e

OPEN = {t: TierLimit(realtime_rps=1000, batch_rps=1000, burst=2000) for t in ("enterprise", "pro", "free")}
FREE_SHUT = {**OPEN, "free": TierLimit(realtime_rps=0, batch_rps=0, burst=1)}


def decision(version: int, tiers=OPEN, *, valid_for_s: float = 60.0, mode: str = "enforce",
             defer_batch: bool = False) -> ThrottleDecision:
    now = int(time.time() * 1000)
    return ThrottleDecision(service="chat", version=version, issued_at=now, valid_until=now + int(valid_for_s * 1000),
                            level=2 if tiers is FREE_SHUT else 0, mode=mode, tiers=tiers, tenants={},
                            defer_batch=defer_batch, breaker="closed", forecast_upper_rps=100.0, safe_rps=1000.0,
                            reason=f"test decision {version}")


def publish(settings: Settings, *decisions: ThrottleDecision) -> None:
    producer = Producer({"bootstrap.servers": settings.kafka, "log_level": 0})
    for d in decisions:
        producer.produce(Topics(settings.topic_prefix).throttle, msgspec.json.encode(d), key=d.service.encode())
    assert producer.flush(10) == 0


def free_verdict(gate: EdgeGate) -> str:
    return gate.admit("acme", "free").action


def test_a_new_decision_changes_admission_within_a_second_and_the_gate_reports_it(settings):
    publish(settings, decision(1))
    with EdgeGate(settings, "chat", edge_id="e1", bootstrap_from_redis=False) as gate:
        eventually(lambda: gate.admission.decision is not None, 15, "the first decision")
        assert free_verdict(gate) == ADMIT
        publish(settings, decision(2, FREE_SHUT))
        sent = time.monotonic()
        while free_verdict(gate) != REJECT and time.monotonic() - sent < 5:
            time.sleep(0.01)
        took = time.monotonic() - sent
        assert free_verdict(gate) == REJECT and gate.admission.decision.version == 2
        assert took < 1.0, f"a new decision took {took:.2f} s to change admission"
        assert gate.admit("acme", "enterprise").action == ADMIT
        gate.record("acme", "enterprise", "realtime", "ok", 120.0, output_tokens=40)
    # what the gate saw reaches sg.requests as summaries with its state
    reader = TopicReader(settings, Topics(settings.topic_prefix).requests)
    reader.poll_until(lambda m: len(m) >= 2, 20, "the gate's summaries")
    summaries = reader.decoded(RequestSummary)
    assert sum(s.throttled for s in summaries if s.tier == "free") >= 2
    assert sum(s.ok for s in summaries if s.tier == "enterprise") == 1
    assert {s.gate for s in summaries} == {"live"} and {s.edge_id for s in summaries} == {"e1"}


def test_an_older_decision_version_is_ignored(settings):
    publish(settings, decision(5, FREE_SHUT), decision(3))
    with EdgeGate(settings, "chat", edge_id="e1", bootstrap_from_redis=False, report="off") as gate:
        eventually(lambda: gate.feed["records"] >= 2, 15, "both decisions read")
        assert gate.admission.decision.version == 5 and gate.admission.counts["stale_versions"] == 1
        assert free_verdict(gate) == REJECT


def test_the_gate_bootstraps_from_the_redis_mirror(settings):
    r = redis.Redis.from_url(settings.redis)
    r.set(Keys.for_topic_prefix(settings.topic_prefix).latest_decision("chat"), msgspec.json.encode(decision(9)))
    gate = EdgeGate(settings, "chat", edge_id="e1", report="off").start()
    try:
        # applied before start() returned, without waiting for the topic
        assert gate.admission.decision.version == 9 and gate.feed["from_redis"] == 1
    finally:
        gate.close()


def test_shadow_mode_admits_everything_and_counts_what_it_would_have_rejected(settings):
    publish(settings, decision(1, FREE_SHUT))
    with EdgeGate(settings, "chat", edge_id="shadow-1", shadow=True, bootstrap_from_redis=False) as gate:
        eventually(lambda: gate.admission.decision is not None, 15, "the decision")
        verdicts = [gate.admit("acme", "free") for _ in range(50)]
        assert all(v.action == ADMIT for v in verdicts)
        assert sum(v.would == REJECT for v in verdicts) >= 49
        assert gate.status()["total_would_reject"] >= 49 and gate.status()["total_rejected"] == 0
    reader = TopicReader(settings, Topics(settings.topic_prefix).requests)
    reader.poll_until(lambda m: len(m) >= 1, 20, "the shadow gate's summary")
    summaries = reader.decoded(RequestSummary)
    assert all(s.shadow and s.throttled == 0 for s in summaries)
    assert sum(s.would_throttle for s in summaries) >= 49


def test_the_last_report_of_a_gate_closed_just_after_a_window_boundary_lies_in_one_window(settings, monkeypatch):
    # a last report stamped as the second before "now" crossed the boundary and was dead-lettered
    validator = TelemetryValidator(window_ms=settings.window_ms, max_future_ms=300_000)
    publish(settings, decision(1))
    with EdgeGate(settings, "chat", edge_id="e1", bootstrap_from_redis=False) as gate:
        eventually(lambda: gate.admission.decision is not None, 15, "the decision")
        just_after = (time.time() * 1000 // settings.window_ms) * settings.window_ms + 200
        monkeypatch.setattr(gate_module, "time", SimpleNamespace(time=lambda: just_after / 1000,
                                                                  monotonic=time.monotonic))
        gate.record("acme", "enterprise", "realtime", "ok", 120.0, output_tokens=40)
    reader = TopicReader(settings, Topics(settings.topic_prefix).requests)
    reader.poll_until(lambda m: len(m) >= 1, 20, "the gate's last summary")
    summaries = [validator.decode(m.value(), now_ms=int(time.time() * 1000)) for m in reader.messages]
    assert sum(s.ok for s in summaries) == 1  # each one decoded: none crosses a window boundary


def test_with_the_broker_stopped_the_gate_holds_the_last_decision_then_falls_back(tmp_path):
    broker = EmbeddedBroker().start()
    try:
        settings = Settings(kafka=broker.bootstrap, topic_prefix="own.", partitions=1)
        create_topics(settings)
        publish(settings, decision(1, FREE_SHUT, valid_for_s=6.0))
        gate = EdgeGate(settings, "chat", edge_id="e1", report="off", hold_after_s=1.0,
                        fallback=Fallback(total_rps=100.0))
        with gate:
            eventually(lambda: gate.admission.decision is not None, 15, "the decision")
            broker.stop()
            assert free_verdict(gate) == REJECT
            eventually(lambda: gate.admission.state() == "holding", 3, "the gate to hold")
            assert free_verdict(gate) == REJECT, "fail-static: the last decision still applies"
            eventually(lambda: gate.admission.state() == "fallback", 10, "the decision to expire")
            v = gate.admit("acme", "free")
            assert (v.action, v.state, v.version) == (ADMIT, "fallback", 0)
            assert gate.status()["state"] == "fallback"
    finally:
        broker.stop()


async def _proxy_session(settings: Settings, gate: EdgeGate, **options):
    upstream = TestServer(create_fake_llm_app(time_scale=0.01, seed=1, output_median=20))
    await upstream.start_server()
    app = create_edge_app(gate, str(upstream.make_url("")), **options)
    client = TestClient(TestServer(app))
    await client.start_server()
    return upstream, client


def test_the_proxy_forwards_admits_rejects_and_defers(settings):
    publish(settings, decision(1, FREE_SHUT, defer_batch=True))

    async def run():
        gate = EdgeGate(settings, "chat", edge_id="px", bootstrap_from_redis=False, report="off").start()
        eventually(lambda: gate.admission.decision is not None, 15, "the decision")
        upstream, client = await _proxy_session(settings, gate)
        try:
            body = {"model": "llama-3-8b", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}
            ok = await client.post("/v1/chat/completions", headers={"X-Tenant": "acme", "X-Tier": "enterprise"},
                                   json=body)
            assert ok.status == 200 and (await ok.json())["choices"]
            assert ok.headers["X-Surgegate-Version"] == "1" and ok.headers["X-Surgegate-State"] == "live"
            no = await client.post("/v1/chat/completions", headers={"X-Tenant": "acme", "X-Tier": "free"}, json=body)
            assert no.status == 429 and int(no.headers["Retry-After"]) >= 1
            assert no.headers["X-Surgegate-Version"] == "1"
            assert (await no.json())["error"]["code"] == "rate_limit_exceeded"
            later = await client.post("/v1/chat/completions", json=body,
                                      headers={"X-Tenant": "acme", "X-Tier": "pro", "X-Request-Type": "batch"})
            assert later.status == 202
            task = (await later.json())["task_id"]
            mine = {"X-Tenant": "acme"}
            other = await client.get(f"/_surgegate/tasks/{task}", headers={"X-Tenant": "globex"})
            assert other.status == 404, "another tenant's task is not there for it"
            view = await client.get(f"/_surgegate/tasks/{task}", headers=mine)
            assert (await view.json())["state"] == "queued"
            # batch work is admitted again: the deferred task runs
            publish(settings, decision(2))
            for _ in range(100):
                view = await (await client.get(f"/_surgegate/tasks/{task}", headers=mine)).json()
                if view["state"] == "done":
                    break
                await asyncio.sleep(0.1)
            assert view["state"] == "done" and view["status"] == 200
            status = await (await client.get("/_surgegate/status")).json()
            assert status["proxy"]["rejected"] == 1 and status["proxy"]["deferred_done"] == 1
            assert gate.admission.tally.totals["deferred"] == 1  # the retries were not counted again
            reported = gate.admission.tally.drain(ts=0, duration_ms=1000, service="chat", edge_id="px",
                                                  gate="live", shadow=False)
            assert sum(s.replayed for s in reported) == 1, "the task ran as a replay, not as new demand"
        finally:
            await client.close()
            await upstream.close()
            gate.close()

    asyncio.run(run())


@pytest.mark.parametrize(("headers", "status", "reason", "header"), [
    ({"X-Tier": "pro"}, 400, "missing_tenant", "X-Tenant"),
    ({"X-Tenant": "bad tenant!", "X-Tier": "pro"}, 400, "malformed_tenant", "X-Tenant"),
    ({"X-Tenant": "acme", "X-Tier": "gold"}, 400, "unknown_tier", "X-Tier"),
    ({"X-Tenant": "acme", "X-Tier": "pro", "X-Request-Type": "bulk"}, 400, "malformed_request_type",
     "X-Request-Type"),
    ({"X-Tenant": "acme", "X-Tier": "pro", "X-Max-Tokens": "-5"}, 400, "malformed_max_tokens", "X-Max-Tokens"),
    # with a tenant registry: only its tenants, each on its own tier
    ({"X-Tenant": "stranger", "X-Tier": "pro", "registry": "1"}, 403, "unknown_tenant", "X-Tenant"),
    ({"X-Tenant": "acme", "X-Tier": "enterprise", "registry": "1"}, 403, "tier_not_allowed", "X-Tier"),
])
def test_bad_input_to_the_proxy_gets_a_clear_4xx_and_is_counted(settings, headers, status, reason, header):
    async def run():
        gate = EdgeGate(settings, "chat", edge_id="px", bootstrap_from_redis=False, report="off").start()
        registry = {"acme": "pro"} if headers.pop("registry", None) else None
        upstream, client = await _proxy_session(settings, gate, tenants=registry)
        try:
            resp = await client.get("/v1/models", headers=headers)
            error = (await resp.json())["error"]  # OpenAI's error shape
            assert (resp.status, error["code"], error["param"]) == (status, reason, header)
            assert header in error["message"] or "tenant" in error["message"]
            assert error["type"] == "invalid_request_error"
            counted = (await (await client.get("/_surgegate/status")).json())["proxy"]["bad_requests"]
            assert counted == {reason: 1}
            stats = await (await upstream_client_get(upstream, "/_fake/stats")).json()
            assert stats["requests"] == 0, "a bad request never reaches the upstream"
        finally:
            await client.close()
            await upstream.close()
            gate.close()

    asyncio.run(run())


async def upstream_client_get(upstream: TestServer, path: str):
    import aiohttp

    async with aiohttp.ClientSession() as session:
        resp = await session.get(upstream.make_url(path))
        await resp.read()
        return resp


def test_global_quotas_hold_across_edges_and_redis_down_does_not_fail_requests(settings):
    own_redis = EmbeddedRedis().start()

    async def run():
        contracts = {"acme": Contract(rate_rps=1.0, burst=3)}
        q1 = GlobalQuota(own_redis.url, contracts, prefix="own:")
        q2 = GlobalQuota(own_redis.url, contracts, prefix="own:")
        answers = [await q.check("acme") for q in (q1, q2, q1, q2, q1)]
        # a burst of 3 shared by both edges, then refused with a retry-after
        assert [a[0] for a in answers] == [True, True, True, False, False]
        assert 0 < answers[3][1] <= 1.0
        assert await q1.check("other") is None, "no contract: local buckets only"
        await q2.close()
        # through the proxy: Redis stops, requests still go through on the local buckets
        gate = EdgeGate(settings, "chat", edge_id="px", bootstrap_from_redis=False, report="off").start()
        upstream, client = await _proxy_session(settings, gate, quota=q1)
        try:
            refused = await client.get("/v1/models", headers={"X-Tenant": "acme", "X-Tier": "pro"})
            assert refused.status == 429, "the shared contract is used up"
            own_redis.stop()
            for _ in range(5):
                resp = await client.get("/v1/models", headers={"X-Tenant": "acme", "X-Tier": "pro"})
                assert resp.status == 200
            assert q1.counts["unavailable"] >= 1
        finally:
            await client.close()
            await upstream.close()
            gate.close()

    try:
        asyncio.run(run())
    finally:
        own_redis.stop()
