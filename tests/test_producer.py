"""The producer SDK refuses bad records before they are queued (no broker needed)."""

from __future__ import annotations

import pytest

from surgegate.errors import InvalidEvent
from surgegate.schemas.telemetry import RequestEvent, RequestSummary, Sketch
from surgegate.settings import Settings
from surgegate.streams.producer import TelemetryProducer


@pytest.fixture
def producer():
    # Nothing is sent in these tests, so the broker address is never dialled.
    return TelemetryProducer(Settings(kafka="127.0.0.1:9"))


GOOD = {"ts": 1_767_225_600_000, "service": "chat", "tenant": "acme", "tier": "pro", "edge_id": "e1",
        "latency_ms": 12.0}


@pytest.mark.parametrize(("change", "says"), [
    ({"latency_ms": -1.0}, "$.latency_ms"),
    ({"status": "weird"}, "$.status"),
    ({"tier": "with space"}, "tier='with space' must match"),
    ({"service": ""}, "$.service"),
])
def test_send_request_names_the_bad_field(producer, change, says):
    with pytest.raises(InvalidEvent) as err:
        producer.send_request({**GOOD, **change})
    assert says in str(err.value)
    with pytest.raises(InvalidEvent):
        producer.send_request(RequestEvent(**{**GOOD, **change}))
    assert producer.sender._producer is None  # nothing was queued


def test_send_request_reports_a_missing_field(producer):
    fields = dict(GOOD)
    del fields["edge_id"]
    with pytest.raises(InvalidEvent, match="missing required field `edge_id`"):
        producer.send_request(fields)


def test_send_summary_refuses_sketches_that_do_not_match_the_counts(producer):
    summary = RequestSummary(ts=GOOD["ts"], service="chat", tenant="a", tier="free", edge_id="e", ok=2,
                             latency=Sketch(zeros=1), queue_wait=Sketch(zeros=2))
    with pytest.raises(InvalidEvent, match=r"latency sketch holds 1 .* ok\+error\+timeout = 2"):
        producer.send_summary(summary)
    streamed = RequestSummary(ts=GOOD["ts"], service="chat", tenant="a", tier="free", edge_id="e", ok=1,
                              latency=Sketch(zeros=1), queue_wait=Sketch(zeros=1), ttft=Sketch(zeros=2))
    with pytest.raises(InvalidEvent, match="ttft sketch holds 2"):
        producer.send_summary(streamed)


def test_send_metric_refuses_utilisation_above_one(producer):
    with pytest.raises(InvalidEvent, match="utilisation"):
        producer.send_metric({"ts": 1, "pool": "a100", "worker_id": "w1", "utilisation": 1.5})


@pytest.mark.e2e
def test_a_sender_that_polls_rarely_is_not_taken_for_a_stalled_one(settings):
    # delivery reports wait in the producer until served; a sender that sends a record now and then without
    # polling must not look stalled (and be renewed) because of them
    import time

    from surgegate.streams.producer import KafkaSender

    sender = KafkaSender(settings, "rare", stall_s=0.5)
    topic = settings.topic_prefix + "metrics"
    sender.send(topic, b"{}")
    time.sleep(1.5)  # delivered by now, the report not served
    sender.send(topic, b"{}")
    time.sleep(1.5)
    sender.send(topic, b"{}")
    sender.flush(10)
    assert (sender.renewals, sender.delivered, sender.failed) == (0, 3, 0)
