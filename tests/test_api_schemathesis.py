"""schemathesis against the running status API: every operation of its /openapi.json, a bounded number of
generated requests each (valid and invalid), checked against the document (no 5xx, declared status codes,
content types and response schemas, invalid input refused). The SSE stream is left out: it never ends."""

from __future__ import annotations

import os
import time

import msgspec
import pytest
import redis
import schemathesis
from confluent_kafka import Producer
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from support import serve_api
from test_api_e2e import TOKEN
from test_api_e2e import decision as throttle
from test_keda import decision as scaling

from surgegate.schemas.aggregates import WindowStats
from surgegate.schemas.telemetry import RequestEvent
from surgegate.settings import Settings
from surgegate.streams.store import Keys
from surgegate.streams.topics import Topics, create_topics
from surgegate.telemetry.merging import traffic_stats
from surgegate.telemetry.windowing import TrafficCell

pytestmark = pytest.mark.e2e

#: generated requests per operation and mode (the run takes under a minute on 2 cores)
EXAMPLES = 25


@pytest.fixture(scope="module")
def api_url(broker_bootstrap, redis_url):
    s = Settings(kafka=broker_bootstrap, redis=redis_url, topic_prefix=f"st{os.getpid()}.", partitions=3,
                 api_token=TOKEN, services='{"chat": {"pool": "gpu-a", "replica_rps": 40}}')
    create_topics(s)
    # what the agents would have written: a window, a decision, and the history of both kinds
    r = redis.Redis.from_url(s.redis)
    keys = Keys.for_topic_prefix(s.topic_prefix)
    now = int(time.time() * 1000)
    start = now - now % 10_000 - 10_000
    cell = TrafficCell()
    cell.add_event(RequestEvent(ts=start, service="chat", tenant="a", tier="pro", edge_id="e", latency_ms=80.0))
    window = msgspec.json.encode(WindowStats(scope="service=chat", kind="traffic", window_start=start,
                                             window_end=start + 10_000, service="chat",
                                             traffic=traffic_stats(cell.to_wire(), 10_000)))
    r.sadd(keys.scopes, "service=chat")
    r.zadd(keys.window_history("service=chat"), {window: start})
    r.set(keys.latest_window("service=chat"), window)
    r.set(keys.latest_decision("chat"), msgspec.json.encode(throttle(1)))
    producer = Producer({"bootstrap.servers": s.kafka, "log_level": 0})
    topics = Topics(s.topic_prefix)
    producer.produce(topics.history, msgspec.json.encode(throttle(1)), key=b"chat", timestamp=now - 5_000)
    producer.produce(topics.history, msgspec.json.encode(scaling(pool="gpu-a")), key=b"gpu-a",
                     timestamp=now - 5_000)
    producer.produce(topics.scaling, msgspec.json.encode(scaling(pool="gpu-a")), key=b"gpu-a")
    assert producer.flush(10) == 0
    return serve_api(s)


def test_every_operation_conforms_to_the_openapi_document(api_url):
    schema = schemathesis.openapi.from_url(api_url + "/openapi.json").exclude(path="/v1/decisions/stream")
    failures, calls = [], 0
    for result in schema.get_all_operations():
        operation = result.ok()
        for mode in GenerationMode:  # valid requests, then invalid ones (which must be refused with a 4xx)

            @given(case=operation.as_strategy(generation_mode=mode))
            @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None)
            def check(case) -> None:
                nonlocal calls
                calls += 1
                case.call_and_validate(base_url=api_url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30)

            try:
                check()
            except Unsatisfiable:  # an operation without parameters or body has no invalid request
                assert mode is GenerationMode.NEGATIVE, operation.label
            except Exception as exc:  # every operation is tried; all failures are reported together
                failures.append(f"{operation.label} ({mode.value}): {exc}")
    assert calls >= 2 * EXAMPLES, calls
    assert not failures, "\n\n".join(failures)
