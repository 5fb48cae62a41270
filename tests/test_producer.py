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


def _topic_back(settings, topic: str) -> None:
    from confluent_kafka.admin import AdminClient, NewTopic

    from surgegate.streams.kafka import admin_config

    admin = AdminClient(admin_config(settings))
    for future in admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)]).values():
        future.result(15)


def _until(check, timeout: float, what: str, sender) -> None:
    import time

    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what} (last error: {sender.last_error})"
        sender.poll()
        time.sleep(0.05)


def test_records_for_a_topic_the_broker_does_not_know_wait_for_it_in_order(settings):
    # a broker replaced by an empty one knows none of the topics until the worker's keeper re-creates them;
    # librdkafka then refuses records for them: they wait in the sender, not in the caller's traceback
    from support import TopicReader

    from surgegate.streams.producer import KafkaSender

    topic = settings.topic_prefix + "not-yet"
    sender = KafkaSender(settings, "waits", **{"topic.metadata.propagation.max.ms": 10})
    sender.send(topic, b"1", key=b"k")
    _until(lambda: sender.waiting == 1, 30, "the record to wait for its topic", sender)
    sender.send(topic, b"2", key=b"k")
    sender.send(topic, b"3", key=b"k")
    assert sender.waiting == 3
    _topic_back(settings, topic)
    _until(lambda: sender.waiting == 0, 30, "the waiting records to be queued", sender)
    sender.flush(10)
    assert (sender.delivered, sender.failed) == (3, 0)
    reader = TopicReader(settings, topic)
    assert [m.value() for m in reader.poll_until(lambda ms: len(ms) >= 3, 20)] == [b"1", b"2", b"3"]
    reader.close()


def test_a_record_whose_topic_never_comes_back_fails_at_the_delivery_timeout(settings):
    import pytest as _pytest

    from surgegate.errors import DeliveryFailed
    from surgegate.streams.producer import KafkaSender

    sender = KafkaSender(settings, "gives-up", **{"topic.metadata.propagation.max.ms": 10,
                                                   "message.timeout.ms": 2000})
    sender.send(settings.topic_prefix + "never", b"1")
    _until(lambda: sender.waiting == 0 and sender.failed == 1, 30, "the record to fail", sender)
    assert "unknown" in (sender.last_error or "").lower(), sender.last_error
    with _pytest.raises(DeliveryFailed):
        sender.send(settings.topic_prefix + "never", b"2")
        sender.flush(10)
    assert sender.failed == 2 and sender.delivered == 0


def test_the_embedded_broker_is_told_apart_as_one_whose_end_offsets_are_wrong_after_batches(settings):
    # Faust restores a table up to the end the broker reports: the worker sends one record per batch to a broker
    # that reports it wrongly (the embedded one), and batches as usual to any other
    from surgegate.agents.app import create_app
    from surgegate.streams.kafka import end_offsets_trusted

    assert end_offsets_trusted(settings) is False
    assert end_offsets_trusted(Settings(kafka="127.0.0.1:9"), timeout_s=0.5) is True  # no answer: a Kafka
    assert create_app(settings, one_record_batches=True).conf.producer_max_batch_size == 1
    assert create_app(settings).conf.producer_max_batch_size > 1000


def test_a_batch_refused_for_an_unknown_producer_id_is_sent_again_by_the_renewed_producer(settings):
    # A broker replaced during an outage does not know the producer: librdkafka fails the producer and reports
    # the backlog's batch with UNKNOWN_PRODUCER_ID (not written). Its records go out again through the renewed
    # producer, before what was queued behind them, instead of counting as failed. The report is made here as
    # librdkafka makes it (the path needs a broker to lose the producer id while a batch is being retried).
    import time

    from confluent_kafka import TIMESTAMP_CREATE_TIME, KafkaError, Message
    from support import TopicReader

    from surgegate.streams.producer import KafkaSender

    topic = settings.topic_prefix + "metrics"
    sender = KafkaSender(settings, "refused")
    sender.send(topic, b"first", key=b"k", partition=0)
    sender.flush(10)
    now_ms = int(time.time() * 1000)
    for i in range(3):
        refused = Message(topic=topic, partition=0, key=b"k", value=b"backlog-%d" % i,
                          timestamp=(TIMESTAMP_CREATE_TIME, now_ms), error=KafkaError(KafkaError.UNKNOWN_PRODUCER_ID))
        sender._first_report(refused.error(), refused)  # the delivery callback librdkafka calls for a first send
    sender.flush(10)
    assert (sender.delivered, sender.failed, sender.renewals, sender.resent_refused) == (4, 0, 1, 3)
    reader = TopicReader(settings, topic)
    got = reader.poll_until(lambda ms: len(ms) >= 4, 20)
    assert [(m.partition(), m.value(), m.timestamp()[1]) for m in got] == [
        (0, b"first", got[0].timestamp()[1])] + [(0, b"backlog-%d" % i, now_ms) for i in range(3)]


@pytest.mark.parametrize(("hand_over", "given_up"), [(True, 0), (False, 3)])
def test_a_renewal_hands_queued_records_over_only_to_a_sender_that_allows_gaps(hand_over, given_up):
    # a broker nobody answers at: the records stay queued. The edge's sender (hand_over) sends them again
    # through the new producer; the ingest's gives them up, so none is delivered behind one whose fate is unknown
    from surgegate.devtools.embedded import free_port
    from surgegate.streams.producer import KafkaSender

    sender = KafkaSender(Settings(kafka=f"127.0.0.1:{free_port()}"), "renewed", hand_over=hand_over)
    told: list[str | None] = []
    for i in range(3):
        sender.send("t", b"%d" % i, key=b"k", on_done=told.append)
    sender.renew("a test")
    assert (sender.renewals, sender.delivered, sender.failed, len(told)) == (1, 0, given_up, given_up)
    sender.abandon("the test is over")  # what the new producer holds: the records handed over, if any
    assert (sender.failed, len(told)) == (3, 3)


def test_abandon_gives_up_everything_not_yet_delivered():
    from surgegate.devtools.embedded import free_port
    from surgegate.streams.producer import KafkaSender

    sender = KafkaSender(Settings(kafka=f"127.0.0.1:{free_port()}"), "abandoned", hand_over=False)
    told: list[str | None] = []
    for i in range(3):
        sender.send("t", b"%d" % i, on_done=told.append)
    sender.abandon("the ingest starts again")
    assert (sender.failed, len(sender.producer), sender.waiting) == (3, 0, 0)
    assert len(told) == 3 and all(why for why in told)
