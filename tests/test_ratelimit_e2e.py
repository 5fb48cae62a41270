"""`surgegate ratelimit` on the real broker, called through Envoy's own generated client stub."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request

import grpc
import msgspec
import pytest
from envoy.service.ratelimit.v3 import rls_pb2, rls_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families
from support import TopicReader, eventually
from test_admission import decision
from test_ratelimit import SERVICES, request

from surgegate.devtools.embedded import free_port
from surgegate.schemas.telemetry import RequestSummary
from surgegate.streams.producer import KafkaSender
from surgegate.streams.topics import Topics

pytestmark = pytest.mark.e2e


@pytest.fixture
def rls(settings, tmp_path):
    port, metrics_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SURGEGATE_")}
    env["SURGEGATE_SERVICES"] = SERVICES
    log = open(tmp_path / "rls.log", "wb")  # noqa: SIM115 - the child keeps it
    proc = subprocess.Popen(
        [sys.executable, "-m", "surgegate.cli", "ratelimit", "--kafka", settings.kafka, "--prefix",
         settings.topic_prefix, "--service", "chat", "--listen", f"127.0.0.1:{port}",
         "--metrics-port", str(metrics_port), "--edge-id", "envoy-rls"],
        env=env, stdout=log, stderr=subprocess.STDOUT)
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    grpc.channel_ready_future(channel).result(timeout=30)
    yield rls_pb2_grpc.RateLimitServiceStub(channel), metrics_port
    channel.close()
    proc.terminate()
    proc.wait(30)
    log.close()


def test_envoy_is_answered_from_the_decision_in_force_and_refusals_reach_the_pipeline(settings, rls):
    stub, metrics_port = rls
    sender = KafkaSender(settings, "test-decisions")
    # enterprise 50 rps in this decision; the fallback before it is the service's conservative one
    sender.send(Topics(settings.topic_prefix).throttle,
                msgspec.json.encode(decision(version=7, now=time.time(), valid_for_s=600)), key=b"chat")
    sender.flush(10)
    sender.close()

    def limit_applied() -> bool:
        answer = stub.ShouldRateLimit(request({"tier": "enterprise"}), timeout=5)
        return answer.statuses[0].current_limit.requests_per_unit == 50
    eventually(limit_applied, 30, "the decision's enterprise limit in the answers")

    codes = [stub.ShouldRateLimit(request({"tenant": "acme", "tier": "free"}), timeout=5).overall_code
             for _ in range(8)]
    assert codes[0] == rls_pb2.RateLimitResponse.OK and codes[-1] == rls_pb2.RateLimitResponse.OVER_LIMIT
    refused = stub.ShouldRateLimit(request({"tenant": "acme", "tier": "free"}), timeout=5)
    headers = {h.key: h.value for h in refused.response_headers_to_add}
    assert headers["x-surgegate-decision-version"] == "7" and int(headers["retry-after"]) >= 1

    with pytest.raises(grpc.RpcError) as err:
        stub.ShouldRateLimit(request({"tier": "gold"}), timeout=5)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "descriptors[0].tier" in err.value.details()

    # the refusals are reported to the pipeline as an edge reports them
    reader = TopicReader(settings, Topics(settings.topic_prefix).requests)
    try:
        summaries = reader.poll_until(
            lambda ms: sum(s.throttled for s in _summaries(ms) if s.tenant == "acme") >= codes.count(2) + 1, 30,
            "the refusals as RequestSummaries")
    finally:
        reader.close()
    assert {s.edge_id for s in _summaries(summaries)} == {"envoy-rls"}

    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as response:
        families = {f.name: f for f in text_string_to_metric_families(response.read().decode())}
    answers = {s.labels["code"]: s.value for s in families["surgegate_ratelimit_answers"].samples
               if s.name.endswith("_total")}
    assert answers["OVER_LIMIT"] >= 2 and answers["INVALID_ARGUMENT"] == 1
    assert any(s.name == "surgegate_ratelimit_answer_seconds_count" and s.value > 0
               for s in families["surgegate_ratelimit_answer_seconds"].samples)


def _summaries(messages: list) -> list[RequestSummary]:
    out = []
    for m in messages:
        raw = json.loads(m.value())
        if raw.get("schema", "").startswith("sg.RequestSummary"):
            out.append(msgspec.json.decode(m.value(), type=RequestSummary))
    return out
