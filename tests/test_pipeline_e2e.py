"""End to end on the real broker and Redis: producer SDK -> ingest -> merge agent -> sg.windows."""

from __future__ import annotations

import base64
import random
import signal
import time
import urllib.request
from collections import Counter

import msgspec
import pytest
import redis
from confluent_kafka import Producer
from prometheus_client.parser import text_string_to_metric_families
from support import T0, TopicReader, W, WorkerProcess, eventually, lint

from surgegate.devtools.embedded import EmbeddedRedis, free_port
from surgegate.schemas.aggregates import SourceRange, WindowPartial, WindowStats
from surgegate.schemas.deadletter import DeadLetter
from surgegate.schemas.telemetry import MetricEvent, RequestEvent
from surgegate.streams.producer import TelemetryProducer
from surgegate.streams.store import Keys
from surgegate.streams.topics import Topics
from surgegate.telemetry.merging import merge_all
from surgegate.telemetry.sketch import RELATIVE_ACCURACY
from surgegate.telemetry.summaries import summarize
from surgegate.telemetry.windowing import PartialAggregator

pytestmark = pytest.mark.e2e


def traffic(service: str, windows: range, per_window: int, seed: int) -> list[RequestEvent]:
    rng = random.Random(seed)
    out = []
    for w in windows:
        for _ in range(per_window):
            slow = rng.random() < 0.1
            out.append(RequestEvent(
                ts=T0 + w * W + rng.randrange(W), service=service, tenant=rng.choice(["acme", "globex", "initech"]),
                tier=rng.choice(["free", "pro", "enterprise"]), edge_id=f"edge-{rng.randrange(6)}",
                latency_ms=round(rng.uniform(2000, 9000) if slow else rng.uniform(5, 200), 3),
                queue_ms=round(rng.uniform(0, 40), 3),
                status=rng.choice(["ok"] * 17 + ["error", "timeout", "throttled"]),
                request_type=rng.choice(["realtime", "realtime", "batch"]), input_tokens=rng.randrange(1000),
                output_tokens=rng.randrange(500), cache_hit=rng.random() < 0.2,
            ))
    out.sort(key=lambda e: e.ts)
    return out


def reference(events, settings, until: int = T0 + 100 * W) -> dict[tuple[str, int], WindowStats]:
    """What the pipeline must publish, computed in-process by the same pure code (windows before ``until``)."""
    agg = PartialAggregator(settings.window_ms)
    for ev in events:
        agg.add(ev)
    stats = merge_all(agg.drain(SourceRange("x", 0, 0, 0)), settings.window_ms, until, 0)
    return {s.identity: s for s in stats if (s.traffic and s.traffic.requests) or (s.gpu and s.gpu.samples)}


def send(settings, events) -> None:
    with TelemetryProducer(settings, client_id="test-edge") as producer:
        for ev in events:
            if isinstance(ev, RequestEvent):
                producer.send_request(ev)
            elif isinstance(ev, MetricEvent):
                producer.send_metric(ev)
            else:
                producer.send_summary(ev)


def windows_of(reader: TopicReader, scope_prefix: str) -> dict[tuple[str, int], WindowStats]:
    out: dict[tuple[str, int], WindowStats] = {}
    for s in reader.decoded(WindowStats):
        if s.scope.startswith(scope_prefix) and ((s.traffic and s.traffic.requests) or (s.gpu and s.gpu.samples)):
            assert out.setdefault(s.identity, s) == s, f"window {s.identity} published with different content"
    return out


def test_known_traffic_over_three_windows_gives_exact_counts_and_percentiles(settings, worker_factory):
    events = traffic("chat", range(3), 1500, seed=11)
    metrics = [MetricEvent(ts=T0 + w * W + i * W // 10, pool="gpu-a", worker_id=f"gpu-a-{k}", utilisation=0.5 + k / 10,
                           queue_depth=k, state="cold_starting" if k == 3 and i < 5 else "ready")
               for w in range(3) for i in range(10) for k in range(4)]
    expected = reference(events + metrics, settings)
    worker = worker_factory()
    send(settings, events + metrics)
    reader = TopicReader(settings, Topics(settings.topic_prefix).windows)
    reader.poll_until(lambda _: set(expected) <= set(windows_of(reader, "")), 90, "three closed windows")
    got = windows_of(reader, "")
    assert {k: got[k] for k in expected} == expected
    # and against the raw events themselves
    for w in range(3):
        start = T0 + w * W
        mine = [e for e in events if start <= e.ts < start + W]
        t = got[("service=chat", start)].traffic
        assert t.requests == len(mine) == 1500
        assert (t.ok, t.error, t.timeout, t.throttled) == tuple(sum(e.status == s for e in mine)
                                                              for s in ("ok", "error", "timeout", "throttled"))
        served = sorted(e.latency_ms for e in mine if e.status != "throttled")
        for q, value in ((0.5, t.latency_p50_ms), (0.9, t.latency_p90_ms), (0.99, t.latency_p99_ms)):
            exact = served[int(q * (len(served) - 1))]
            assert abs(value - exact) <= RELATIVE_ACCURACY * exact + 1e-3
        assert t.latency_max_ms == max(served)
        assert t.tokens_per_s == pytest.approx(sum(e.input_tokens + e.output_tokens for e in mine) / (W / 1000))
        pool = got[("pool=gpu-a", start)].gpu
        assert (pool.workers, pool.ready_replicas, pool.cold_starting_replicas) == (4, 4, 0)
    # mirrored to Redis
    keys = Keys.for_topic_prefix(settings.topic_prefix)
    r = redis.Redis.from_url(settings.redis)
    eventually(lambda: r.zcard(keys.window_history("service=chat")) >= 3
               and b"service=chat,tier=pro" in r.smembers(keys.scopes), 20, "windows mirrored to Redis")
    history = [msgspec.json.decode(v, type=WindowStats) for v in r.zrange(keys.window_history("service=chat"), 0, -1)]
    assert [h.window_start for h in history if h.traffic.requests][:3] == [T0, T0 + W, T0 + 2 * W]
    assert b"service=chat,tier=pro" in r.smembers(keys.scopes)
    assert worker.proc.poll() is None, worker.log()


def test_summaries_and_single_events_give_the_same_windows(settings, worker_factory):
    events = traffic("direct", range(3), 800, seed=5)
    twin = [e.__replace__(service="summed") for e in events]
    worker_factory()
    send(settings, events + summarize(twin))
    reader = TopicReader(settings, Topics(settings.topic_prefix).windows)

    def both(_):
        direct, summed = windows_of(reader, "service=direct"), windows_of(reader, "service=summed")
        return len(direct) >= 3 * 7 and len(summed) >= 3 * 7

    reader.poll_until(both, 90, "windows of both services")
    direct = windows_of(reader, "service=direct")
    summed = windows_of(reader, "service=summed")
    renamed = {(k[0].replace("summed", "direct"), k[1]): v.__replace__(scope=v.scope.replace("summed", "direct"),
                                                                      service="direct")
               for k, v in summed.items()}
    assert renamed == direct


def test_bad_events_land_on_deadletter_with_reasons_and_nothing_else_is_lost(settings, worker_factory):
    topics = Topics(settings.topic_prefix)
    good = traffic("chat", range(1), 200, seed=2)
    now = int(time.time() * 1000)
    bad = {
        b"\xff\xfe garbage": "undecodable",
        b'{"schema":"sg.Mystery/9","ts":1}': "unknown_schema",
        b'{"schema":"sg.RequestEvent/1","ts":1,"service":"chat"}': "missing_field",
        msgspec.json.encode({**msgspec.to_builtins(good[0]), "latency_ms": -5}): "invalid_field",
        msgspec.json.encode({**msgspec.to_builtins(good[0]), "ts": now + 86_400_000}): "future_timestamp",
    }
    metrics_port = free_port()
    worker_factory(metrics_port=metrics_port)
    producer = Producer({"bootstrap.servers": settings.kafka, "linger.ms": 5})
    for raw in bad:
        producer.produce(topics.requests, raw, key=b"bad-edge")
    producer.flush()
    send(settings, good)
    dead = TopicReader(settings, topics.deadletter)
    dead.poll_until(lambda m: len(m) >= len(bad), 60, "dead letters")
    letters = dead.decoded(DeadLetter)
    assert sorted((base64.b64decode(d.value_b64), d.reason) for d in letters) == sorted(bad.items())
    assert all(d.source_topic == topics.requests and d.error for d in letters)
    assert sorted(d.offset for d in letters) == list(range(len(bad)))  # one producer, one key: one partition
    windows = TopicReader(settings, topics.windows)
    windows.poll_until(lambda _: ("service=chat", T0) in windows_of(windows, "service=chat"), 60, "the good window")
    assert windows_of(windows, "service=chat")[("service=chat", T0)].traffic.requests == 200
    counters = redis.Redis.from_url(settings.redis).hgetall(Keys.for_topic_prefix(settings.topic_prefix).counters)
    assert int(counters[b"dead_letters"]) == len(bad)
    assert int(counters[b"dead_letter.future_timestamp"]) == 1
    tiers = {e.tier for e in good}
    windows.poll_until(lambda _: {w.tier for w in windows_of(windows, "service=chat,tier=").values()} >= tiers, 60,
                       "every tier's window")
    # the worker's own /metrics: the same counts under the worker's names
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as response:
        page = response.read().decode()
    m = {(s.name, tuple(sorted(s.labels.items()))): s.value
         for family in text_string_to_metric_families(page) for s in family.samples}
    assert m["surgegate_worker_dead_letters_total", (("reason", "future_timestamp"),)] == 1
    assert sum(v for (name, _), v in m.items() if name == "surgegate_worker_dead_letters_total") == len(bad)
    assert m["surgegate_worker_ingest_events_total", ()] >= 200
    assert m["surgegate_worker_windows_published_total", ()] >= 1
    assert m["surgegate_worker_partials_merged_total", (("outcome", "merged"),)] >= 1
    assert m["surgegate_worker_up", ()] == 1
    # each tier's requests counted once per published window, by outcome, as its windows say
    expected: Counter[tuple[str, str]] = Counter()
    for w in windows_of(windows, "service=chat,tier=").values():
        assert w.tier is not None and w.traffic is not None
        for outcome, n in (("admitted", w.traffic.served), ("throttled", w.traffic.throttled),
                           ("deferred", w.traffic.deferred)):
            expected[w.tier, outcome] += n
    counted = {(dict(labels)["tier"], dict(labels)["outcome"]): v for (name, labels), v in m.items()
               if name == "surgegate_worker_tier_requests_total"}
    assert counted and counted == {key: n for key, n in expected.items() if n}
    # the service's latency histogram: every request with a latency (a cancelled one has none) in its windows
    timed = sum(w.traffic.ok + w.traffic.error + w.traffic.timeout
                for w in windows_of(windows, "service=chat").values() if w.tier is None and w.tenant is None)
    assert m["surgegate_worker_request_latency_seconds_count", (("service", "chat"),)] == timed > 0
    assert lint(page) == []


def test_a_record_no_agent_can_read_is_counted_and_every_agent_goes_on(settings, worker_factory):
    """Tombstones (records with no value) and garbage on every topic the agents read, before any traffic: each
    counted by the agent that met it; the traffic after them is still windowed, forecast and decided."""
    topics = Topics(settings.topic_prefix)
    metrics_port = free_port()
    worker_factory(metrics_port=metrics_port)
    producer = Producer({"bootstrap.servers": settings.kafka, "linger.ms": 5})
    read_by = (topics.partials, topics.windows, topics.forecasts, topics.overrides)
    for topic in read_by:
        producer.produce(topic, None, key=b"chat")
        producer.produce(topic, b"\xff not a record", key=b"chat")
    producer.flush()
    send(settings, traffic("chat", range(3), 100, seed=5))
    windows = TopicReader(settings, topics.windows)

    def requests_by_window() -> dict[int, int]:
        out = {}
        for m in windows.messages:
            if m.value() and m.value().startswith(b"{"):  # not one of the two records this test wrote
                s = msgspec.json.decode(m.value(), type=WindowStats)
                if s.scope == "service=chat" and s.traffic is not None:
                    out[s.window_start] = s.traffic.requests
        return out

    windows.poll_until(lambda _: T0 + W in requests_by_window(), 60, "the second window")
    assert [requests_by_window()[T0 + w * W] for w in range(2)] == [100, 100]
    forecasts = TopicReader(settings, topics.forecasts)
    forecasts.poll_until(lambda m: any(x.value() and b"service=chat" in x.value() for x in m), 60, "a forecast")
    decisions = TopicReader(settings, topics.throttle)
    decisions.poll_until(lambda m: any(b'"chat"' in x.value() for x in m), 60, "a decision")

    def counted() -> dict[str, float]:
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as response:
            page = response.read().decode()
        return {s.name + "".join(s.labels.values()): s.value
                for family in text_string_to_metric_families(page) for s in family.samples}

    expected = {  # two records on each topic, each counted by every agent that reads the topic
        "surgegate_worker_partials_merged_totalrejected": 2,  # the merge agent: partials
        "surgegate_worker_forecasts_totalunreadable": 2,  # the forecast agent: windows
        "surgegate_worker_mirror_unreadable_total": 2,  # the mirror: windows
        "surgegate_worker_control_unroutable_total": 6,  # the router: windows, forecasts, overrides
    }
    eventually(lambda: {name: counted().get(name) for name in expected} == expected, 30, f"counts {expected}")


def test_a_record_near_the_size_limit_is_dead_lettered_bounded_and_ingestion_continues(settings, worker_factory):
    topics = Topics(settings.topic_prefix)
    huge = b'{"schema":"sg.RequestEvent/1","padding":"' + b"x" * 900_000 + b'"}'  # base64 of it exceeds 1 MB
    worker_factory()
    producer = Producer({"bootstrap.servers": settings.kafka, "linger.ms": 5, "message.max.bytes": 2_000_000})
    producer.produce(topics.requests, huge, key=b"big-edge")
    assert producer.flush(30) == 0
    good = traffic("chat", range(1), 300, seed=5)
    send(settings, good)
    dead = TopicReader(settings, topics.deadletter)
    dead.poll_until(lambda m: len(m) >= 1, 60, "the dead letter")
    [letter] = dead.decoded(DeadLetter)
    assert letter.truncated and letter.value_bytes == len(huge) and letter.reason == "missing_field"
    assert base64.b64decode(letter.value_b64) == huge[:len(base64.b64decode(letter.value_b64))]
    assert len(msgspec.json.encode(letter)) < 200_000
    windows = TopicReader(settings, topics.windows)
    windows.poll_until(lambda _: ("service=chat", T0) in windows_of(windows, "service=chat"), 60, "the good window")
    assert windows_of(windows, "service=chat")[("service=chat", T0)].traffic.requests == 300


def test_worker_killed_mid_stream_neither_loses_nor_changes_a_window(settings, tmp_path):
    # Windows close on event time only here, so the two halves can be told apart.
    no_idle = settings.replace(idle_after_s=600.0)
    first = traffic("chat", range(0, 3), 1000, seed=21)
    second = traffic("chat", range(3, 6), 1000, seed=22)
    second[0] = second[0].__replace__(ts=T0 + 3 * W + settings.lateness_ms + W // 4)  # past window 2's end + lateness
    closer = traffic("chat", range(8, 9), 5, seed=23)
    expected = {k: v for k, v in reference(first + second, settings).items() if k[0].startswith("service=chat")
                and k[1] < T0 + 6 * W}
    reader = TopicReader(settings, Topics(settings.topic_prefix).windows)
    a = WorkerProcess(no_idle, tmp_path / "a.log").start()
    try:
        send(settings, first + second[:1])  # the first event of window 3 closes windows 0..2
        reader.poll_until(lambda _: {("service=chat", T0 + w * W) for w in range(3)}
                          <= set(windows_of(reader, "service=chat")), 90, "the first three windows")
        half = len(second) // 2
        send(settings, second[1:half])
        # the ingest publishes the partials of everything sent so far, its windows 3 and 4 still open,
        # then the worker dies without warning
        partials = TopicReader(settings, Topics(settings.topic_prefix).partials)

        def first_half_published(messages) -> bool:
            records = [msgspec.json.decode(m.value(), type=WindowPartial) for m in messages
                       if b'"sg.WindowPartial/1"' in m.value()]
            return sum(p.events for p in records if p.scope == "service=chat" and p.window_start >= T0 + 3 * W) \
                >= half

        partials.poll_until(first_half_published, 60, "partials of the first half of the second batch")
        a.stop(signal.SIGKILL)
    finally:
        a.stop()
    b = WorkerProcess(no_idle, tmp_path / "b.log").start()
    try:
        send(settings, second[half:] + closer)
        reader.poll_until(lambda _: set(expected) <= set(windows_of(reader, "service=chat")), 120,
                          "all six windows after the restart")
        got = windows_of(reader, "service=chat")  # raises if a window was published twice, differently
        assert {k: got[k] for k in expected} == expected
    finally:
        b.stop()


def test_redis_down_does_not_stop_the_pipeline(settings, tmp_path):
    doomed = EmbeddedRedis().start()
    local = settings.replace(redis=doomed.url)
    worker = WorkerProcess(local, tmp_path / "w.log").start()
    try:
        doomed.stop()
        send(settings, traffic("chat", range(2), 300, seed=9))
        reader = TopicReader(settings, Topics(settings.topic_prefix).windows)
        reader.poll_until(lambda _: len(windows_of(reader, "service=chat")) >= 2, 90, "windows without Redis")
        assert worker.proc.poll() is None, worker.log()
    finally:
        worker.stop()


def test_an_edge_with_a_clock_far_ahead_leaves_the_other_edges_windows_exact(settings, tmp_path):
    # in real time, as in production: honest edges stamp events with the wall clock as they send them;
    # one edge's clock runs 250 s ahead (inside the 300 s an event may be in the future)
    topics = Topics(settings.topic_prefix)
    reader = TopicReader(settings, topics.windows)
    worker = WorkerProcess(settings, tmp_path / "w.log").start()
    honest: list[RequestEvent] = []
    skewed: list[RequestEvent] = []
    rng = random.Random(41)

    def event(ts: int, edge: str, service: str = "chat") -> RequestEvent:
        return RequestEvent(ts=ts, service=service, tenant="acme", tier=rng.choice(["free", "pro", "enterprise"]),
                            edge_id=edge, latency_ms=round(rng.uniform(5, 200), 3), queue_ms=0.0, status="ok",
                            request_type="realtime", input_tokens=rng.randrange(1000), output_tokens=rng.randrange(500),
                            cache_hit=False)
    try:
        with TelemetryProducer(settings, client_id="test-edges") as producer:
            started = time.time()
            while time.time() - started < 2.5 * W / 1000:
                now = int(time.time() * 1000)
                honest.append(event(now, "edge-1"))
                producer.send_request(honest[-1])
                if time.time() - started > W / 1000 and len(skewed) < 20:
                    # another service's edge, so its own (clamped) events are not in chat's windows
                    skewed.append(event(now + 250_000, "edge-skewed", "embed"))
                    producer.send_request(skewed[-1])
                time.sleep(0.02)
        first, last = honest[0].ts, honest[-1].ts
        whole = {k: v for k, v in reference(honest, settings, until=last + 100 * W).items()
                 if k[0] == "service=chat" and k[1] >= first - first % W + W and k[1] + W <= last}
        assert whole, "at least one window lies wholly inside the honest traffic"
        reader.poll_until(lambda _: set(whole) <= set(windows_of(reader, "service=chat")), 60, "the honest windows")
        got = windows_of(reader, "service=chat")
        assert {k: got[k] for k in whole} == whole, "no window closed early, no honest event late"
        r = redis.Redis.from_url(settings.redis)
        key = Keys.for_topic_prefix(settings.topic_prefix).counters
        eventually(lambda: int(r.hget(key, "clock_ahead") or 0) == len(skewed), 30,
                   "every skewed event counted as clock_ahead")
    finally:
        worker.stop()



def test_the_workers_own_info_lines_reach_its_log_once_faust_has_started(settings, worker_factory):
    """Faust replaces the root log handlers as it starts; surgegate's lines at ``SURGEGATE_LOG_LEVEL`` (info
    here) must still come through, without the terminal escapes of Faust's spinner."""
    worker = worker_factory()
    eventually(lambda: " assigned [" in worker.log(), 60, "the ingest's assignment in the worker's log")
    assert "\x1b[" not in worker.log()
