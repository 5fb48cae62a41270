"""On the real broker: traffic above a known capacity yields a throttle decision within two windows."""

from __future__ import annotations

import json
import random

import msgspec
import pytest
import redis
from confluent_kafka import Producer
from support import T0, TopicReader, W, WorkerProcess, eventually
from test_pipeline_e2e import send

from surgegate.edge.gate import EdgeGate
from surgegate.schemas.decisions import Override, Threshold, ThrottleDecision
from surgegate.schemas.telemetry import RequestEvent
from surgegate.streams.store import Keys
from surgegate.streams.topics import Topics

pytestmark = pytest.mark.e2e

# safe capacity: 10 rps per replica x 2 replicas x 0.85 = 17 rps
SERVICES = json.dumps({"chat": {"pool": "gpu-a", "replica_rps": 10, "replicas": 2, "slo_p99_ms": 2000}})


def load(windows: range, rps: int, seed: int) -> list[RequestEvent]:
    rng = random.Random(seed)
    per_window = rps * W // 1000
    return [RequestEvent(ts=T0 + w * W + int(i * W / per_window), service="chat", tenant=f"t{i % 3}",
                         tier=("enterprise", "pro", "free")[i % 3], edge_id="edge-1",
                         latency_ms=rng.uniform(50, 300), request_type="realtime" if i % 5 else "batch")
            for w in windows for i in range(per_window)]


def test_traffic_above_capacity_is_throttled_within_two_windows(settings, tmp_path):
    settings = settings.replace(services=SERVICES)
    over_from = 4
    worker = WorkerProcess(settings, tmp_path / "w.log").start()
    try:
        send(settings, load(range(0, over_from), 5, 1) + load(range(over_from, 8), 60, 2))
        topics = Topics(settings.topic_prefix)
        decisions = TopicReader(settings, topics.throttle)
        decisions.poll_until(lambda m: len(m) >= 8, 120, "a decision per window")
        got = {d.version: d for d in decisions.decoded(ThrottleDecision)}
        first = T0
        calm = [got[first + w * W] for w in range(1, over_from)]
        assert all(d.level == 0 for d in calm), [d.reason for d in calm]
        throttled = [v for v, d in got.items() if d.level > 0]
        assert throttled and min(throttled) <= first + (over_from + 1) * W, "throttled within two windows"
        d = got[min(throttled)]
        assert d.service == "chat" and d.defer_batch and d.safe_rps == pytest.approx(17.0)
        assert d.reason.startswith(f"level {d.level}: forecast") and "vs safe 17 rps" in d.reason
        assert d.valid_until > d.issued_at
        thresholds = TopicReader(settings, topics.thresholds)
        thresholds.poll_until(lambda m: len(m) >= 8, 30, "thresholds")
        assert all(t.safe_rps > 0 and "rps/replica" in t.reason for t in thresholds.decoded(Threshold))
        r = redis.Redis.from_url(settings.redis)
        key = Keys.for_topic_prefix(settings.topic_prefix).latest_decision("chat")
        eventually(lambda: r.get(key) is not None, 20, "the decision mirrored to Redis")
        mirrored = msgspec.json.decode(r.get(key), type=ThrottleDecision)
        decisions.read_to_end()
        assert mirrored == {d.version: d for d in decisions.decoded(ThrottleDecision)}[mirrored.version]
    finally:
        worker.stop()


def test_an_operator_override_on_the_topic_pins_the_level_and_is_named(settings, tmp_path):
    settings = settings.replace(services=SERVICES)
    pin = Override(id="ovr-7", service="chat", created_at=T0, expires_at=T0 + 4 * W, author="sre-on-call",
                   reason="incident 7", level=3)
    worker = WorkerProcess(settings, tmp_path / "w.log").start()
    try:
        topics = Topics(settings.topic_prefix)
        p = Producer({"bootstrap.servers": settings.kafka, "linger.ms": 5})
        p.produce(topics.overrides, msgspec.json.encode(pin), key=b"chat")
        p.flush()
        routed = TopicReader(settings, topics.control_inputs)  # the pin is routed before any window
        routed.poll_until(lambda m: any(b"ovr-7" in x.value() for x in m), 90, "the override to be routed")
        send(settings, load(range(0, 8), 5, 3))
        decisions = TopicReader(settings, topics.throttle)
        decisions.poll_until(lambda m: len(m) >= 8, 120, "a decision per window")
        got = {d.version: d for d in decisions.decoded(ThrottleDecision)}
        first = T0
        pinned = [got[first + w * W] for w in range(0, 3)]
        assert all(d.level == 3 and d.override == "ovr-7" for d in pinned), [d.reason for d in pinned]
        assert "override ovr-7 by sre-on-call pins level 3" in pinned[0].reason
        assert got[first + 5 * W].override is None and got[first + 5 * W].level < 3, "released at expiry"
    finally:
        worker.stop()


def test_with_five_second_windows_an_edge_accepts_every_decision(settings, tmp_path):
    five = settings.replace(window_s=5.0, services=SERVICES)
    w5 = 5_000
    rng = random.Random(4)
    events = [RequestEvent(ts=T0 + w * w5 + i * 500, service="chat", tenant="t1", tier="pro", edge_id="edge-1",
                           latency_ms=rng.uniform(50, 300)) for w in range(6) for i in range(10)]
    # the edge holds the last decision a 10 s worker made before the restart with 5 s windows
    before = ThrottleDecision(service="chat", version=T0 - W, issued_at=T0, valid_until=T0 + 3 * W, level=0,
                              mode="enforce", tiers={}, tenants={}, defer_batch=False, breaker="closed",
                              forecast_upper_rps=0.0, safe_rps=17.0, reason="from 10 s windows")
    p = Producer({"bootstrap.servers": five.kafka, "linger.ms": 5})
    p.produce(Topics(five.topic_prefix).throttle, msgspec.json.encode(before), key=b"chat")
    p.flush()
    worker = WorkerProcess(five, tmp_path / "w.log").start()
    try:
        with EdgeGate(five, "chat", edge_id="e5", bootstrap_from_redis=False, report="off") as gate:
            send(five, events)
            decisions = TopicReader(five, Topics(five.topic_prefix).throttle)
            decisions.poll_until(lambda m: len(m) >= 7, 120, "a decision per 5 s window")
            versions = [d.version for d in decisions.decoded(ThrottleDecision)]
            eventually(lambda: gate.feed["records"] >= len(versions), 20, "the edge to read every decision")
            # every decision the edge read was newer than the one it held: none dropped as stale
            counts = dict(gate.admission.counts)
            assert counts["stale_versions"] == 0 and counts["applied"] >= len(versions), (versions, counts)
            assert gate.admission.decision.version >= max(versions)
            made = sorted(v for v in versions if v >= T0)
            assert made[:6] == [T0 + w * w5 for w in range(6)], versions
    finally:
        worker.stop()


def test_the_decision_history_answers_for_a_past_window(settings, tmp_path):
    import asyncio

    from aiohttp.test_utils import TestClient, TestServer

    from surgegate.api.app import create_api

    settings = settings.replace(services=SERVICES)
    worker = WorkerProcess(settings, tmp_path / "w.log").start()
    try:
        send(settings, load(range(0, 3), 5, 1) + load(range(3, 8), 60, 2))
        decisions = TopicReader(settings, Topics(settings.topic_prefix).throttle)
        decisions.poll_until(lambda m: len(m) >= 8, 120, "a decision per window")
        history = TopicReader(settings, Topics(settings.topic_prefix).history)
        history.poll_until(lambda m: len(m) >= 24, 60, "threshold, throttle and scaling decision per window")
    finally:
        worker.stop()
    decided = {d.version: d for d in decisions.decoded(ThrottleDecision)}

    async def ask(query: str) -> tuple[int, dict]:
        client = TestClient(TestServer(create_api(settings, stream=False)))
        await client.start_server()
        try:
            resp = await client.get(f"/v1/history/chat?{query}")
            return resp.status, await resp.json()
        finally:
            await client.close()

    # "why was tenant t2 on the free tier throttled just after window 5 closed?"
    status, answer = asyncio.run(ask(f"at={T0 + 6 * W + 500}&tenant=t2&tier=free"))
    assert status == 200, answer
    throttle = answer["throttle"]
    assert throttle["version"] == T0 + 5 * W and throttle == msgspec.to_builtins(decided[T0 + 5 * W])
    assert answer["threshold"]["window_start"] == T0 + 5 * W and answer["scaling"]["version"] == T0 + 5 * W
    assert answer["tenant"]["why"] == throttle["reason"] and answer["tenant"]["level"] == throttle["level"]
    assert answer["tenant"]["tier_limit"] == throttle["tiers"].get("free")
    status, none = asyncio.run(ask(f"at={T0 - 3_600_000}"))
    assert status == 404 and none["parameter"] == "at"
    status, bad = asyncio.run(ask("at=soon"))
    assert status == 400 and bad["parameter"] == "at"
