"""schemathesis against the running status API: every operation of its /openapi.json, a test each (so the
parallel tier spreads them), 100 generated requests per operation and mode (valid and invalid), checked against
the document (no 5xx, declared status codes, content types and response schemas, invalid input refused). The SSE
stream is left out: it never ends."""

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

from surgegate.api.openapi import openapi_document
from surgegate.schemas.aggregates import WindowStats
from surgegate.schemas.telemetry import RequestEvent
from surgegate.settings import Settings
from surgegate.streams.store import Keys
from surgegate.streams.topics import Topics, create_topics
from surgegate.telemetry.merging import traffic_stats
from surgegate.telemetry.windowing import TrafficCell

pytestmark = pytest.mark.e2e

#: generated requests per operation and mode
EXAMPLES = 100
#: every operation of the document the API serves, as (method, path), but the SSE stream (it never ends)
OPERATIONS = [(method.upper(), path) for path, item in openapi_document()["paths"].items() for method in item
              if method in ("get", "put", "post", "delete", "patch") and path != "/v1/decisions/stream"]


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


@pytest.mark.parametrize(("method", "path"), OPERATIONS, ids=[f"{m} {p}" for m, p in OPERATIONS])
def test_every_operation_conforms_to_the_openapi_document(api_url, method, path):
    operation = schemathesis.openapi.from_url(api_url + "/openapi.json")[path][method]  # the document served
    failures, calls = [], 0
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
        except Exception as exc:  # both modes are tried; their failures are reported together
            failures.append(f"{operation.label} ({mode.value}): {exc}")
    assert calls > 0, operation.label
    assert not failures, "\n\n".join(failures)


def test_the_operations_tried_are_every_one_the_api_serves_but_its_stream(api_url):
    import json
    import urllib.request

    with urllib.request.urlopen(api_url + "/openapi.json", timeout=10) as response:
        served = json.load(response)["paths"]
    assert sorted(OPERATIONS) == sorted((m.upper(), p) for p, item in served.items() for m in item
                                        if m in ("get", "put", "post", "delete", "patch")
                                        and p != "/v1/decisions/stream")
