"""The status API through aiohttp's test client, on the real Redis and the real broker."""

from __future__ import annotations

import asyncio
import json
import time

import msgspec
import pytest
import redis
from aiohttp.test_utils import TestClient, TestServer
from confluent_kafka import Producer
from openapi_spec_validator import validate
from prometheus_client.parser import text_string_to_metric_families
from support import TopicReader, lint

from surgegate.api.app import create_api
from surgegate.api.openapi import openapi_document
from surgegate.devtools.embedded import EmbeddedRedis, free_port
from surgegate.schemas.aggregates import WindowStats
from surgegate.schemas.decisions import Override, ThrottleDecision, TierLimit
from surgegate.schemas.telemetry import RequestEvent
from surgegate.settings import Settings
from surgegate.streams.store import Keys
from surgegate.streams.topics import Topics
from surgegate.telemetry.merging import traffic_stats
from surgegate.telemetry.windowing import TrafficCell

pytestmark = pytest.mark.e2e

TOKEN = "s3cret-token"


def decision(version: int, level: int = 0) -> ThrottleDecision:
    now = int(time.time() * 1000)
    return ThrottleDecision(service="chat", version=version, issued_at=now, valid_until=now + 30_000, level=level,
                            mode="enforce", tiers={"pro": TierLimit(realtime_rps=10, batch_rps=2, burst=24)},
                            tenants={}, defer_batch=level >= 1, breaker="closed", forecast_upper_rps=12.0,
                            safe_rps=20.0, reason=f"level {level}: forecast 12 rps vs safe 20 rps: demand fits")


def seed(settings: Settings) -> None:
    """What the agents would have mirrored: a window history, a forecast, a threshold, a decision."""
    r = redis.Redis.from_url(settings.redis)
    k = Keys.for_topic_prefix(settings.topic_prefix)
    now = int(time.time() * 1000)
    w = settings.window_ms
    start = now - now % w - w
    r.sadd(k.scopes, "service=chat")
    for i in range(5):
        row = json.dumps({"schema": "sg.WindowStats/1", "scope": "service=chat", "window_start": start - i * w})
        r.zadd(k.window_history("service=chat"), {row: start - i * w})
    r.set(k.latest_forecast("service=chat"), b'{"schema":"sg.Forecast/1","scope":"service=chat"}')
    r.set(k.latest_threshold("chat"), b'{"schema":"sg.Threshold/1","service":"chat","safe_rps":20.0}')
    r.set(k.latest_decision("chat"), msgspec.json.encode(decision(1)))
    cell = TrafficCell()  # the newest window: two streamed responses with their first-token and inter-token times
    for ttft, itl in ((200.0, 20.0), (400.0, 40.0)):
        cell.add_event(RequestEvent(ts=start, service="chat", tenant="a", tier="pro", edge_id="e", latency_ms=900.0,
                                    ttft_ms=ttft, itl_ms=itl))
    r.set(k.latest_window("service=chat"), msgspec.json.encode(WindowStats(
        scope="service=chat", kind="traffic", window_start=start, window_end=start + w, service="chat",
        traffic=traffic_stats(cell.to_wire(), w))))
    tier = TrafficCell()  # the pro tier's newest window: 30 served, 20 throttled
    for i in range(50):
        tier.add_event(RequestEvent(ts=start, service="chat", tenant="a", tier="pro", edge_id="e", latency_ms=100.0,
                                    status="ok" if i < 30 else "throttled"))
    r.set(k.latest_window("service=chat,tier=pro"), msgspec.json.encode(WindowStats(
        scope="service=chat,tier=pro", kind="traffic", window_start=start, window_end=start + w,
        service="chat", tier="pro", traffic=traffic_stats(tier.to_wire(), w))))
    r.hset(k.counters, mapping={"windows.published": 42, "dead_letter.invalid_field": 3, "dead_letters": 3,
                                "partials.duplicate": 5, "decisions.published": 7, "scaling.published": 7,
                                "timing.decide.us": 5000, "timing.decide.runs": 10,
                                "requests/chat/pro/admitted": 300, "requests/chat/pro/throttled": 200,
                                "latency/chat/0.1": 5, "latency/chat/2": 9, "latency/chat/count": 10,
                                "latency/chat/sum_us": 4_500_000})


async def client_for(settings: Settings, stream: bool = False) -> TestClient:
    client = TestClient(TestServer(create_api(settings, stream=stream)))
    await client.start_server()
    return client


def run(coro):
    return asyncio.run(coro)


@pytest.fixture
def api_settings(settings):
    s = settings.replace(api_token=TOKEN)
    seed(s)
    return s


def test_health_readiness_and_reads(api_settings):
    async def go():
        c = await client_for(api_settings)
        try:
            assert (await c.get("/healthz")).status == 200
            ready = await c.get("/readyz")
            body = await ready.json()
            assert body["checks"]["redis"]["ok"] and body["checks"]["kafka"]["ok"]
            assert body["checks"]["worker"]["ok"] and ready.status == 200
            assert (await (await c.get("/v1/scopes")).json()) == {"scopes": ["service=chat"]}
            windows = await (await c.get("/v1/windows/service=chat?last=3")).json()
            assert len(windows["windows"]) == 3
            starts = [w["window_start"] for w in windows["windows"]]
            assert starts == sorted(starts), "oldest first, the newest last"
            assert (await (await c.get("/v1/forecasts/service=chat")).json())["scope"] == "service=chat"
            assert (await (await c.get("/v1/thresholds/service=chat")).json())["safe_rps"] == 20.0
            d = await (await c.get("/v1/decisions/service=chat")).json()
            assert d["version"] == 1 and d["reason"].startswith("level 0")
            assert [x["service"] for x in (await (await c.get("/v1/decisions")).json())["decisions"]] == ["chat"]
            response = await c.get("/metrics")
            assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
            m = samples(await response.text())
            assert m["surgegate_windows_published_total", ()] == 42
            assert m["surgegate_dead_letters_total", (("reason", "invalid_field"),)] == 3
            assert not any(name == "surgegate_dead_letters_total" and not labels for name, labels in m)  # no sum
            assert m["surgegate_partials_merged_total", (("outcome", "duplicate"),)] == 5
            assert m["surgegate_decisions_published_total", (("kind", "scaling"),)] == 7
            assert m["surgegate_level", (("service", "chat"),)] == 0
            assert m["surgegate_safe_capacity_rps", (("service", "chat"),)] == 20.0
            assert m["surgegate_forecast_upper_rps", (("service", "chat"),)] == 12.0
            assert m["surgegate_tier_limit_rps", (("request_type", "realtime"), ("service", "chat"),
                                                  ("tier", "pro"))] == 10
            assert m["surgegate_tier_requests_per_second", (("outcome", "admitted"), ("service", "chat"),
                                                            ("tier", "pro"))] == 30 / api_settings.window_s
            assert m["surgegate_tier_requests_per_second", (("outcome", "throttled"), ("service", "chat"),
                                                            ("tier", "pro"))] == 20 / api_settings.window_s
            assert m["surgegate_tier_requests_total", (("outcome", "admitted"), ("service", "chat"),
                                                       ("tier", "pro"))] == 300
            assert m["surgegate_tier_requests_total", (("outcome", "throttled"), ("service", "chat"),
                                                       ("tier", "pro"))] == 200
            # the request latency histogram: cumulative buckets, a bound without a count the one below's
            buckets = {dict(labels)["le"]: v for (name, labels), v in m.items()
                       if name == "surgegate_request_latency_seconds_bucket" and dict(labels)["service"] == "chat"}
            assert (buckets["0.05"], buckets["0.1"], buckets["1"], buckets["2"], buckets["+Inf"]) == (0, 5, 5, 9, 10)
            assert m["surgegate_request_latency_seconds_count", (("service", "chat"),)] == 10
            assert m["surgegate_request_latency_seconds_sum", (("service", "chat"),)] == 4.5
            assert m["surgegate_agent_seconds_total", (("agent", "decide"),)] == 0.005
            assert m["surgegate_agent_runs_total", (("agent", "decide"),)] == 10
            assert ("surgegate_window_lag_seconds", ()) in m
            ttft = m["surgegate_time_to_first_token_seconds", (("percentile", "50"), ("service", "chat"))]
            itl = m["surgegate_inter_token_latency_seconds", (("percentile", "50"), ("service", "chat"))]
            assert 0.19 <= ttft <= 0.41 and 0.019 <= itl <= 0.041  # the sketch's 1% accuracy
            page = await c.get("/")
            assert page.status == 200 and "/static/plotly.min.js" in await page.text()
            js = await c.get("/static/plotly.min.js")
            assert js.status == 200 and len(await js.read()) > 1_000_000
        finally:
            await c.close()

    run(go())


@pytest.mark.parametrize(("path", "status", "parameter"), [
    ("/v1/windows/service=nope", 404, "scope"),
    ("/v1/forecasts/service=nope", 404, "scope"),
    ("/v1/decisions/service=nope", 404, "scope"),
    ("/v1/thresholds/service=nope", 404, "scope"),
    ("/v1/windows/service=chat?last=zero", 400, "last"),
    ("/v1/windows/service=chat?last=%C2%B2", 400, "last"),  # "²": a digit to str.isdigit, not an integer
    ("/v1/windows/service=chat?last=100000", 400, "last"),
    # thousands of digits: Python refuses to read such an int, the API refuses the parameter
    ("/v1/windows/service=chat?last=" + "9" * 5000, 400, "last"),
    ("/v1/history/chat?at=" + "9" * 5000, 400, "at"),
    ("/v1/history/chat/recent?minutes=" + "9" * 5000, 400, "minutes"),
    ("/v1/windows/bogus", 400, "scope"),
    ("/v1/decisions/service=chat,tier=pro", 400, "scope"),
    ("/v1/decisions/pool=gpu-a", 503, None),  # pools come from the decision stream, off in this instance
    ("/v1/decisions?pool=gpu-a", 400, "pool"),  # not a filter it has: refused, not ignored
])
def test_unknown_scopes_are_404_and_malformed_parameters_400_naming_them(api_settings, path, status, parameter):
    async def go():
        c = await client_for(api_settings)
        try:
            resp = await c.get(path)
            body = await resp.json()
            assert resp.status == status and body.get("parameter") == parameter and body["error"]
        finally:
            await c.close()

    run(go())


def test_overrides_need_the_token_are_validated_and_audited_on_the_topic(api_settings):
    async def go():
        c = await client_for(api_settings)
        try:
            good = {"service": "chat", "level": 2, "expires_in_s": 60, "reason": "incident 42", "author": "sre-1"}
            for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
                resp = await c.post("/v1/overrides", json=good, headers=headers)
                assert resp.status == 401 and (await resp.json()) == {"error": "unauthorised"}
            auth = {"Authorization": f"Bearer {TOKEN}"}
            for bad, field in (({**good, "level": 9}, "level"), ({**good, "reason": ""}, "reason"),
                               ({**good, "expires_in_s": 0}, "expires_in_s"), ({**good, "service": "a b"}, "service"),
                               ({**good, "service": "chat\n"}, "service"),
                               ({"service": "chat", "reason": "x"}, "level"), ({**good, "colour": 1}, "colour")):
                resp = await c.post("/v1/overrides", json=bad, headers=auth)
                assert resp.status == 400 and (await resp.json())["parameter"] == field
            # json.loads takes NaN and Infinity; they are not JSON, and 2e12 is beyond the worker's wire type
            for number, field in ((b"NaN", "body"), (b"Infinity", "body"), (b"2e12", "limit_rps")):
                body = b'{"service": "chat", "limit_rps": ' + number + b', "reason": "x"}'
                resp = await c.post("/v1/overrides", data=body, headers=auth)
                assert resp.status == 400 and (await resp.json())["parameter"] == field, number
            for broken in (b"{not json", b"[" * 100_000 + b"]" * 100_000):  # malformed, and absurdly nested
                resp = await c.post("/v1/overrides", data=broken, headers=auth)
                assert resp.status == 400 and (await resp.json())["parameter"] == "body"
            created = await c.post("/v1/overrides", json=good, headers=auth)
            assert created.status == 201
            pin = await created.json()
            assert pin["level"] == 2 and pin["author"] == "sre-1"
            assert (await c.delete("/v1/overrides/nope", headers=auth)).status == 404
            assert (await c.delete(f"/v1/overrides/{pin['id']}")).status == 401
            released = await c.delete(f"/v1/overrides/{pin['id']}", headers=auth)
            assert released.status == 200 and (await released.json())["cancel"] is True
            return pin["id"]
        finally:
            await c.close()

    oid = run(go())
    audit = TopicReader(api_settings, Topics(api_settings.topic_prefix).overrides)
    audit.poll_until(lambda m: len(m) >= 2, 20, "the pin and its release on sg.overrides")
    records = audit.decoded(Override)
    assert [(o.id, o.cancel) for o in records] == [(oid, False), (oid, True)]
    assert records[0].reason == "incident 42" and records[0].level == 2


def test_the_sse_stream_delivers_a_decision_published_on_the_broker(api_settings):
    async def go():
        c = await client_for(api_settings, stream=True)
        try:
            resp = await c.get("/v1/decisions/stream")
            assert resp.headers["Content-Type"].startswith("text/event-stream")
            assert await resp.content.readline() == b": connected\n"
            producer = Producer({"bootstrap.servers": api_settings.kafka, "log_level": 0})
            producer.produce(Topics(api_settings.topic_prefix).throttle, msgspec.json.encode(decision(7, level=2)),
                             key=b"chat")
            producer.flush(10)
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                line = await asyncio.wait_for(resp.content.readline(), 20)
                if line.startswith(b"data: "):
                    got = msgspec.json.decode(line[len(b"data: "):].strip(), type=ThrottleDecision)
                    if got.version == 7:
                        return got
            raise AssertionError("no decision on the stream")
        finally:
            await c.close()

    got = run(go())
    assert got.level == 2 and got.service == "chat"


def test_a_pools_scaling_decision_is_read_by_scope_and_its_replicas_are_gauges(api_settings):
    from test_keda import decision as scaling

    async def go():
        c = await client_for(api_settings, stream=True)
        try:
            assert (await c.get("/v1/decisions/pool=gpu-a")).status == 404
            producer = Producer({"bootstrap.servers": api_settings.kafka, "log_level": 0})
            producer.produce(Topics(api_settings.topic_prefix).scaling,
                             msgspec.json.encode(scaling(version=3, desired=6, warm=2)), key=b"gpu-a")
            producer.flush(10)
            deadline = time.monotonic() + 20
            while (resp := await c.get("/v1/decisions/pool=gpu-a")).status == 404 and time.monotonic() < deadline:
                await asyncio.sleep(0.2)
            return await resp.json(), samples(await (await c.get("/metrics")).text())
        finally:
            await c.close()

    found, m = run(go())
    assert found["pool"] == "gpu-a" and found["version"] == 3 and found["desired_replicas"] == 6
    assert m["surgegate_pool_desired_replicas", (("pool", "gpu-a"),)] == 6
    assert m["surgegate_pool_warm_replicas", (("pool", "gpu-a"),)] == 2


def samples(text: str) -> dict[tuple[str, tuple], float]:
    """Every sample of a Prometheus exposition, parsed by prometheus_client: (name, sorted labels) -> value."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_the_metrics_page_follows_the_naming_rules(api_settings):
    from surgegate.cli import no_created_series

    no_created_series()  # as every command does at start

    async def go():
        c = await client_for(api_settings)
        try:
            return await (await c.get("/metrics")).text()
        finally:
            await c.close()

    text = run(go())
    assert "surgegate_time_to_first_token_seconds" in text  # the seeded window's families are there to judge
    assert lint(text) == []
    assert lint('# TYPE x_ms gauge\nx_ms{quantile="0.5"} 1\n') == [
        "x_ms: not in base units", "x_ms: not under surgegate_", "x_ms: the quantile label on a gauge"]
    assert "surgegate_request_latency_seconds_bucket" in text
    assert lint('# TYPE surgegate_h_seconds histogram\nsurgegate_h_seconds_bucket{le="1"} 5\n'
                'surgegate_h_seconds_bucket{le="+Inf"} 4\nsurgegate_h_seconds_count 4\n'
                'surgegate_h_seconds_sum 2\n') == ["surgegate_h_seconds{}: buckets not cumulative"]


def test_redis_down_is_a_503_from_readyz_and_the_process_stays_up(settings):
    own = EmbeddedRedis().start()
    s = settings.replace(redis=own.url)

    async def go():
        c = await client_for(s)
        try:
            own.stop()
            ready = await c.get("/readyz")
            body = await ready.json()
            assert ready.status == 503 and body["checks"]["redis"]["ok"] is False
            assert (await c.get("/healthz")).status == 200, "still alive"
            assert (await c.get("/v1/scopes")).status == 503
            m = samples(await (await c.get("/metrics")).text())
            assert m["surgegate_state_store_up", ()] == 0 and m["surgegate_up", ()] == 1
        finally:
            await c.close()

    try:
        run(go())
    finally:
        own.stop()


def test_an_api_started_with_redis_down_says_so_at_start_without_its_password(settings, caplog):
    s = settings.replace(redis=f"redis://:hunter2@127.0.0.1:{free_port()}/0")

    async def go():
        c = await client_for(s)
        try:
            said = [r.getMessage() for r in caplog.records if "does not answer" in r.getMessage()]
            assert len(said) == 1 and "127.0.0.1" in said[0] and "hunter2" not in said[0]
        finally:
            await c.close()

    run(go())


def test_an_override_is_listed_and_released_while_redis_is_down(settings):
    own = EmbeddedRedis().start()
    s = settings.replace(redis=own.url, api_token=TOKEN)
    auth = {"Authorization": f"Bearer {TOKEN}"}
    pin = {"service": "chat", "level": 3, "expires_in_s": 600, "reason": "incident 7"}

    async def active(c: TestClient) -> list[str]:
        return [o["id"] for o in (await (await c.get("/v1/overrides")).json())["overrides"]]

    async def go():
        c = await client_for(s)
        try:
            before = await (await c.post("/v1/overrides", json=pin, headers=auth)).json()
            own.stop()
            during = await c.post("/v1/overrides", json={**pin, "level": 4}, headers=auth)
            assert during.status == 201, "the override topic is the record: Redis down does not stop a pin"
            during_id = (await during.json())["id"]
            assert await active(c) == [before["id"], during_id]
            for oid in (before["id"], during_id):
                released = await c.delete(f"/v1/overrides/{oid}", headers=auth)
                assert released.status == 200, await released.text()
                assert (await released.json())["cancel"] is True
            assert await active(c) == []
            assert (await c.delete(f"/v1/overrides/{before['id']}", headers=auth)).status == 404
        finally:
            await c.close()

    try:
        run(go())
    finally:
        own.stop()
    audit = TopicReader(s, Topics(s.topic_prefix).overrides)
    audit.poll_until(lambda m: len(m) >= 4, 20, "two pins and their releases on sg.overrides")
    assert [o.cancel for o in audit.decoded(Override)] == [False, False, True, True]


def test_a_fresh_api_lists_the_overrides_in_force_from_the_topic(api_settings):
    async def go():
        auth = {"Authorization": f"Bearer {TOKEN}"}
        first = await client_for(api_settings)
        try:
            pin = await (await first.post("/v1/overrides", json={"service": "chat", "limit_rps": 50, "reason": "x"},
                                          headers=auth)).json()
        finally:
            await first.close()
        second = await client_for(api_settings)  # another instance: it knows the pin only from the topic
        try:
            deadline = time.monotonic() + 20
            listed: list = []
            while time.monotonic() < deadline and not listed:
                listed = (await (await second.get("/v1/overrides")).json())["overrides"]
                await asyncio.sleep(0.2)
            assert [o["id"] for o in listed] == [pin["id"]] and listed[0]["limit_rps"] == 50
        finally:
            await second.close()

    run(go())


def test_the_openapi_document_validates_and_lists_every_route(api_settings):
    doc = openapi_document()
    validate(doc)
    app = create_api(api_settings, stream=False)
    routes = {(r.method.lower(), r.resource.canonical) for r in app.router.routes() if r.method != "HEAD"}
    documented = {(m, p) for p, ops in doc["paths"].items() for m in ops}
    assert routes == documented


def test_recent_decisions_come_from_the_history_for_a_dashboard_that_opens(api_settings):
    from test_keda import decision as scaling

    producer = Producer({"bootstrap.servers": api_settings.kafka, "log_level": 0})
    history = Topics(api_settings.topic_prefix).history
    now = int(time.time() * 1000)
    records = [(b"chat", decision(1), now - 120_000), (b"chat", decision(2, level=2), now - 60_000),
               (b"chat", scaling(pool="chat", version=5, desired=4), now - 60_000),
               (b"chat", decision(9), now - 3 * 3_600_000),  # older than asked
               (b"search", decision(3).__replace__(service="search"), now - 30_000)]  # another service
    for key, record, stamp in records:
        producer.produce(history, msgspec.json.encode(record), key=key, timestamp=stamp)
    assert producer.flush(10) == 0

    async def go():
        c = await client_for(api_settings)
        try:
            recent = await (await c.get("/v1/history/chat/recent?minutes=30")).json()
            bad = await c.get("/v1/history/chat/recent?minutes=0")
            services = await (await c.get("/v1/services")).json()
            return recent, bad.status, (await bad.json())["parameter"], services
        finally:
            await c.close()

    recent, bad_status, bad_parameter, services = run(go())
    assert [d["version"] for d in recent["throttle"]] == [1, 2] and recent["throttle"][1]["level"] == 2
    assert [d["desired_replicas"] for d in recent["scaling"]] == [4] and recent["pool"] == "chat"
    assert bad_status == 400 and bad_parameter == "minutes"
    assert isinstance(services["services"], dict)
