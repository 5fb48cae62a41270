"""`surgegate keda` on the real broker, asked by a real gRPC client as KEDA asks an external scaler."""

from __future__ import annotations

import os
import subprocess
import sys
import urllib.request

import grpc
import msgspec
import pytest
from prometheus_client.parser import text_string_to_metric_families
from support import eventually
from test_keda import decision

from surgegate.devtools.embedded import free_port
from surgegate.gpu import keda_proto as pb
from surgegate.schemas.decisions import Overflow
from surgegate.streams.producer import KafkaSender
from surgegate.streams.topics import Topics

pytestmark = pytest.mark.e2e


class KedaClient:
    """What KEDA's external scaler client calls, over a real channel."""

    def __init__(self, port: int) -> None:
        self.channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        grpc.channel_ready_future(self.channel).result(timeout=30)

        def method(name: str, request: type, response: type, streaming: bool = False):
            call = self.channel.unary_stream if streaming else self.channel.unary_unary
            return call(f"/externalscaler.ExternalScaler/{name}", request_serializer=request.SerializeToString,
                        response_deserializer=response.FromString)

        self.is_active = method("IsActive", pb.ScaledObjectRef, pb.IsActiveResponse)
        self.stream_is_active = method("StreamIsActive", pb.ScaledObjectRef, pb.IsActiveResponse, True)
        self.get_metric_spec = method("GetMetricSpec", pb.ScaledObjectRef, pb.GetMetricSpecResponse)
        self.get_metrics = method("GetMetrics", pb.GetMetricsRequest, pb.GetMetricsResponse)

    def metric(self, **metadata: str) -> float:
        ref = pb.ScaledObjectRef(name="llm", namespace="prod", scalerMetadata=metadata)
        spec = self.get_metric_spec(ref, timeout=5).metricSpecs[0]
        values = self.get_metrics(pb.GetMetricsRequest(scaledObjectRef=ref, metricName=spec.metricName), timeout=5)
        return values.metricValues[0].metricValueFloat


@pytest.fixture
def keda(settings, tmp_path):
    port, metrics_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SURGEGATE_")}
    log = open(tmp_path / "keda.log", "wb")  # noqa: SIM115 - the child keeps it
    proc = subprocess.Popen(
        [sys.executable, "-m", "surgegate.cli", "keda", "--kafka", settings.kafka, "--prefix", settings.topic_prefix,
         "--listen", f"127.0.0.1:{port}", "--metrics-port", str(metrics_port)],
        env=env, stdout=log, stderr=subprocess.STDOUT)
    client = KedaClient(port)
    yield client, metrics_port
    client.channel.close()
    proc.terminate()
    proc.wait(30)
    log.close()


def publish(settings, *decisions, key: bytes | None = None) -> None:
    sender = KafkaSender(settings, "test-scaling")
    try:
        for d in decisions:
            sender.send(Topics(settings.topic_prefix).scaling, msgspec.json.encode(d), key=key or d.pool.encode())
        sender.flush(10)
    finally:
        sender.close()


def test_keda_gets_the_decided_replicas_as_a_metric_that_makes_the_hpa_land_on_them(settings, keda):
    client, metrics_port = keda
    ref = pb.ScaledObjectRef(name="llm", namespace="prod", scalerMetadata={"pool": "gpu-a"})
    # no decision yet: UNAVAILABLE, so KEDA applies the ScaledObject's fallback
    with pytest.raises(grpc.RpcError) as err:
        client.is_active(ref, timeout=5)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE and "gpu-a" in err.value.details()

    publish(settings, decision(version=1, desired=7, warm=2, overflow=Overflow(pool="gpu-b", replicas=3)))
    eventually(lambda: _answers(client, ref), 30, "the scaler to know pool gpu-a")
    spec = client.get_metric_spec(ref, timeout=5).metricSpecs[0]
    assert (spec.metricName, spec.targetSize, spec.targetSizeFloat) == ("surgegate-gpu-a-desired-replicas", 1, 1.0)
    # AverageValue: the HPA wants ceil(value / target) = the decided count
    assert client.metric(pool="gpu-a") == 7
    assert client.metric(pool="gpu-a", replicas="warm") == 2
    assert client.metric(pool="gpu-a", replicas="overflow") == 3
    assert client.is_active(ref, timeout=5).result is True

    # a newer decision scales to zero: the open stream says so without being asked again
    stream = client.stream_is_active(ref, timeout=60)
    assert next(stream).result is True
    publish(settings, decision(version=2, desired=0, warm=0))
    assert next(stream).result is False
    stream.cancel()
    assert client.metric(pool="gpu-a") == 0
    assert client.metric(pool="gpu-a", replicas="overflow") == 0
    # an older version arriving late changes nothing (another pool's decision, keyed to the same partition, is
    # read after it)
    publish(settings, decision(version=1, desired=9), decision(pool="gpu-z", version=1, desired=1),
            key=b"gpu-a")
    gpu_z = pb.ScaledObjectRef(name="other", scalerMetadata={"pool": "gpu-z"})
    eventually(lambda: _answers(client, gpu_z), 30, "the marker decision after the stale one")
    samples = _samples(metrics_port)
    assert samples[("surgegate_pool_desired_replicas", (("pool", "gpu-a"),))] == 0
    assert samples[("surgegate_pool_decision_version", (("pool", "gpu-a"),))] == 2
    assert samples[("surgegate_keda_requests_total", (("code", "UNAVAILABLE"), ("method", "IsActive")))] >= 1


def test_bad_metadata_is_invalid_argument_naming_the_key(keda):
    client, _ = keda
    for metadata, key in (({}, "scalerMetadata.pool"), ({"pool": "gpu-a", "replicas": "x"}, "scalerMetadata.replicas")):
        with pytest.raises(grpc.RpcError) as err:
            client.get_metric_spec(pb.ScaledObjectRef(name="llm", scalerMetadata=metadata), timeout=5)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and key in err.value.details()


def _answers(client: KedaClient, ref) -> bool:
    try:
        client.is_active(ref, timeout=5)
    except grpc.RpcError:
        return False
    return True


def _samples(port: int) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}
