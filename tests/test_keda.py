"""The KEDA external scaler's plain parts: the wire format, the metadata, the pool book, the gauges."""

from __future__ import annotations

import struct

import msgspec
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from surgegate.gpu import keda_proto as pb
from surgegate.gpu.keda import Target, target_from_metadata
from surgegate.gpu.pools import PoolBook, PoolCollector
from surgegate.schemas.decisions import CapacityMix, Overflow, ScalingDecision


def decision(pool: str = "gpu-a", version: int = 1, desired: int = 4, warm: int = 1,
             overflow: Overflow | None = None) -> ScalingDecision:
    return ScalingDecision(pool=pool, version=version, issued_at=1_700_000_000_000, desired_replicas=desired,
                           previous_replicas=2, ready_replicas=2, cold_starting=2, warm_pool=warm, min_replicas=0,
                           max_replicas=20, lead_time_s=60.0, demand_rps=30.0, forecast_upper_rps=40.0,
                           mix=CapacityMix(reserved=2, on_demand=2, spot=0), cost_per_hour=8.0,
                           reason="test", overflow=overflow)


def test_messages_have_kedas_wire_format():
    # bytes written by hand from externalscaler.proto: name = 1, namespace = 2, map<string,string> scalerMetadata = 3
    ref = pb.ScaledObjectRef.FromString(bytes.fromhex("0a02736f12026e73") + b"\x1a\x0d\x0a\x04pool\x12\x05gpu-a")
    assert (ref.name, ref.namespace, dict(ref.scalerMetadata)) == ("so", "ns", {"pool": "gpu-a"})
    request = pb.GetMetricsRequest.FromString(b"\x0a\x04\x0a\x02so\x12\x01m")  # scaledObjectRef = 1, metricName = 2
    assert (request.scaledObjectRef.name, request.metricName) == ("so", "m")
    # metricName = 1 (string), metricValue = 2 (int64, varint), metricValueFloat = 3 (double, fixed64)
    value = pb.MetricValue(metricName="m", metricValue=3, metricValueFloat=3.0).SerializeToString()
    assert value == b"\x0a\x01m\x10\x03\x19" + struct.pack("<d", 3.0)
    spec = pb.MetricSpec(metricName="m", targetSize=1, targetSizeFloat=1.0).SerializeToString()
    assert spec[:5] == b"\x0a\x01m\x10\x01" and spec[5] == 0x19  # targetSize = 2, targetSizeFloat = 3
    assert pb.IsActiveResponse(result=True).SerializeToString() == b"\x08\x01"
    response = pb.GetMetricSpecResponse(metricSpecs=[pb.MetricSpec(metricName="m")]).SerializeToString()
    assert response == b"\x0a\x03\x0a\x01m"  # repeated MetricSpec metricSpecs = 1


@pytest.mark.parametrize(("metadata", "field"), [
    ({}, "scalerMetadata.pool"),
    ({"pool": ""}, "scalerMetadata.pool"),
    ({"pool": "gpu a\n"}, "scalerMetadata.pool"),
    ({"pool": "gpu-a", "replicas": "all"}, "scalerMetadata.replicas"),
])
def test_bad_metadata_names_the_key(metadata, field):
    with pytest.raises(ValueError, match=field):
        target_from_metadata(metadata)


def test_each_target_follows_its_part_of_the_decision():
    d = decision(desired=7, warm=2, overflow=Overflow(pool="gpu-b", replicas=3))
    assert target_from_metadata({"pool": "gpu-a"}) == Target("gpu-a", "desired")
    assert [Target("gpu-a", kind).count(d) for kind in ("desired", "warm", "overflow")] == [7, 2, 3]
    assert Target("gpu-a", "overflow").count(decision()) == 0
    assert Target("GPU_A.x", "warm").metric_name == "surgegate-gpu-a-x-warm-replicas"


def test_the_book_keeps_each_pools_newest_version():
    book = PoolBook()
    enc = msgspec.json.encode
    assert book.offer(enc(decision(version=2, desired=5)))
    assert not book.offer(enc(decision(version=1, desired=9)))  # older: ignored
    assert book.offer(enc(decision(pool="gpu-b", version=1, desired=1)))
    assert not book.offer(b"{not json")
    assert book.get("gpu-a").desired_replicas == 5 and book.get("gpu-b").desired_replicas == 1
    assert book.get("gpu-c") is None
    assert book.counts == {"records": 4, "bad_records": 1, "stale_versions": 1}


def test_the_gauges_show_every_pools_newest_decision():
    book = PoolBook()
    book.offer(msgspec.json.encode(decision(desired=6, warm=2, overflow=Overflow(pool="gpu-b", replicas=3))))
    registry = CollectorRegistry()
    registry.register(PoolCollector(book))
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in text_string_to_metric_families(generate_latest(registry).decode())
               for s in family.samples}
    assert samples[("surgegate_pool_desired_replicas", (("pool", "gpu-a"),))] == 6
    assert samples[("surgegate_pool_warm_replicas", (("pool", "gpu-a"),))] == 2
    assert samples[("surgegate_pool_ready_replicas", (("pool", "gpu-a"),))] == 2
    assert samples[("surgegate_pool_overflow_replicas", (("overflow_pool", "gpu-b"), ("pool", "gpu-a")))] == 3
    assert 0 <= samples[("surgegate_pool_decision_age_seconds", (("pool", "gpu-a"),))] < 60


def test_a_pool_scaler_shows_its_counts_and_its_pools_decision():
    from surgegate.gpu.scaler import LogScaler, ScalerCollector, ScalingSubscriber
    from surgegate.settings import Settings

    subscriber = ScalingSubscriber(Settings(), "gpu-a", LogScaler())
    subscriber.offer(msgspec.json.encode(decision(version=2, desired=5)))
    subscriber.offer(msgspec.json.encode(decision(version=1, desired=9)))  # stale
    subscriber.offer(msgspec.json.encode(decision(pool="gpu-b", version=9)))  # another pool's
    registry = CollectorRegistry()
    registry.register(ScalerCollector(subscriber))
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in text_string_to_metric_families(generate_latest(registry).decode())
               for s in family.samples}
    assert samples[("surgegate_scaler_records_total", ())] == 3
    assert samples[("surgegate_scaler_decisions_applied_total", ())] == 1
    assert samples[("surgegate_scaler_stale_versions_total", ())] == 1
    assert samples[("surgegate_pool_desired_replicas", (("pool", "gpu-a"),))] == 5
    assert ("surgegate_pool_desired_replicas", (("pool", "gpu-b"),)) not in samples
