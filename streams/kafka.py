"""Thin, shared confluent-kafka configuration, and a probe that a broker answers.

Every client gets the connection's security (TLS, SASL) and the consumer-group
timeouts from the settings: Kafka's own defaults on a cluster, short ones on
the embedded Tansu broker (a join there waits for the rebalance timeout; see
:meth:`~surgegate.settings.Settings.group_timeouts`). Producers batch
(``linger.ms``) and do not compress (compressed fetches stall on Tansu).

librdkafka's own log goes to the ``surgegate.librdkafka`` logger, never
straight to stderr: an unreachable broker would otherwise print a line per
connection attempt. The CLI keeps that logger quiet unless ``--verbose``;
clients report broker failures through their error callbacks and
:func:`probe_broker` names the address once.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

from surgegate.errors import BrokerUnavailable
from surgegate.settings import Settings

#: Where librdkafka's log lines go (see the module docstring).
LIBRDKAFKA_LOG = logging.getLogger("surgegate.librdkafka")
log = logging.getLogger(__name__)

#: Producer waits this long to fill a batch; one-record batches saturate the broker.
LINGER_MS = 5
#: How long a record may wait for its delivery before it counts as failed (librdkafka's default).
MESSAGE_TIMEOUT_MS = 300_000
#: How long flush/close waits for outstanding deliveries.
FLUSH_TIMEOUT_S = 30.0
#: How long a command waits for the broker to answer before it gives up.
PROBE_TIMEOUT_S = 5.0
#: The cluster id the embedded broker (Tansu) reports.
TANSU_CLUSTER_ID = "tansu_cluster"
#: How often a long-lived reader checks that the topics it reads are still the logs it started on.
LOG_CHECK_S = 5.0


def security_config(settings: Settings) -> dict[str, Any]:
    """The connection's security as librdkafka names it (nothing for PLAINTEXT)."""
    config: dict[str, Any] = {}
    protocol = settings.kafka_security_protocol
    if protocol != "PLAINTEXT":
        config["security.protocol"] = protocol.lower()
    if protocol.startswith("SASL"):
        config.update({"sasl.mechanisms": settings.kafka_sasl_mechanism, "sasl.username": settings.kafka_sasl_username,
                       "sasl.password": settings.kafka_sasl_password})
    if protocol.endswith("SSL"):
        for option, path in (("ssl.ca.location", settings.kafka_ssl_ca_file),
                             ("ssl.certificate.location", settings.kafka_ssl_cert_file),
                             ("ssl.key.location", settings.kafka_ssl_key_file)):
            if path:
                config[option] = path
    return config


def admin_config(settings: Settings, **extra: Any) -> dict[str, Any]:
    """confluent-kafka admin client settings."""
    return {"bootstrap.servers": settings.kafka, "logger": LIBRDKAFKA_LOG, **security_config(settings), **extra}


def probe_broker(settings: Settings, timeout_s: float = PROBE_TIMEOUT_S) -> Settings:
    """Check that a broker answers at ``settings.kafka``; :class:`BrokerUnavailable` naming the address when
    none does within ``timeout_s``. Commands call it before any work, so a wrong address fails in seconds with
    one line instead of queueing records for a broker that is not there.

    Returns the settings with the consumer-group timeouts settled for the broker found (short ones for the
    embedded broker, Kafka's defaults for a cluster; set ones stay as they are)."""
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient

    admin = AdminClient(admin_config(settings))
    try:
        metadata = admin.list_topics(timeout=timeout_s)
    except KafkaException as exc:
        error = exc.args[0] if exc.args else exc
        detail = error.str() if hasattr(error, "str") else str(error)
        raise BrokerUnavailable(f"no Kafka broker answered at {settings.kafka} within {timeout_s:g} s "
                                f"({detail}); check SURGEGATE_KAFKA or --kafka") from None
    return settle_timeouts(settings, embedded=metadata.cluster_id == TANSU_CLUSTER_ID)


def settle_timeouts(settings: Settings, *, embedded: bool) -> Settings:
    """``settings`` with the group timeouts for this kind of broker written in, so child processes and every
    client agree on them."""
    timeouts = settings.group_timeouts(embedded)
    return settings.replace(kafka_session_timeout_s=timeouts.session_s,
                            kafka_max_poll_interval_s=timeouts.max_poll_interval_s)


def end_offsets_trusted(settings: Settings, timeout_s: float = PROBE_TIMEOUT_S) -> bool:
    """False for a broker that reports a partition's end wrongly after a multi-record batch: the embedded broker
    (Tansu, told by its cluster id) answers ``ListOffsets`` with the batch's first offset plus one (a batch of
    10 then one of 3: 11, not 13). A broker that does not answer is taken for one that does it right."""
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient

    try:
        metadata = AdminClient(admin_config(settings)).list_topics(timeout=timeout_s)
    except KafkaException:
        return True
    return metadata.cluster_id != TANSU_CLUSTER_ID


def topic_ids(admin: Any, topics: list[str], timeout_s: float = PROBE_TIMEOUT_S) -> dict[str, str]:
    """Each topic's id: a topic re-created (by a broker that lost it) has a new one, and its offsets start
    again at zero. Topics the broker does not have, or a broker without topic ids, are left out."""
    from confluent_kafka import KafkaException, TopicCollection

    ids: dict[str, str] = {}
    try:
        described = admin.describe_topics(TopicCollection(topics), request_timeout=timeout_s)
    except KafkaException:
        return ids
    for topic, future in described.items():
        try:
            ids[topic] = str(future.result(timeout=timeout_s).topic_id)
        except (KafkaException, TimeoutError):  # the broker away: nothing learnt, asked again next time
            continue
    return ids


def producer_config(settings: Settings, client_id: str, **extra: Any) -> dict[str, Any]:
    """confluent-kafka producer settings."""
    return {
        "bootstrap.servers": settings.kafka,
        **security_config(settings),
        "client.id": client_id,
        "linger.ms": LINGER_MS,
        "compression.type": "none",
        "enable.idempotence": True,
        # Java-compatible key hashing, so Faust and confluent clients agree on partitions.
        "partitioner": "murmur2_random",
        "queue.buffering.max.messages": 500_000,
        "message.timeout.ms": MESSAGE_TIMEOUT_MS,
        # topics are created by `surgegate topics create` and the worker's keeper, with their partitions and
        # settings; a broker's auto-created topic would have its own (the embedded one: 4 partitions)
        "allow.auto.create.topics": False,
        "logger": LIBRDKAFKA_LOG,
        **extra,
    }


def consumer_config(settings: Settings, group_id: str, client_id: str, **extra: Any) -> dict[str, Any]:
    """confluent-kafka consumer settings: manual commits, start at the beginning, the group timeouts in force."""
    timeouts = settings.group_timeouts(embedded=False)  # as settled by probe_broker, else Kafka's
    return {
        "bootstrap.servers": settings.kafka,
        **security_config(settings),
        "group.id": group_id,
        "client.id": client_id,
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
        "session.timeout.ms": int(timeouts.session_s * 1000),
        "max.poll.interval.ms": int(timeouts.max_poll_interval_s * 1000),
        "heartbeat.interval.ms": int(timeouts.heartbeat_s * 1000),
        "logger": LIBRDKAFKA_LOG,
        **extra,
    }


def follow_from_start(settings: Settings, topic: str, client_id: str, stop: threading.Event,
                      on_value: Callable[[bytes], object], on_error: Callable[[object], None],
                      fetch_wait_ms: int = 50) -> None:
    """Read a (compacted) topic from the beginning, then follow it until ``stop`` is set.

    Subscribers of decisions use this: every partition is assigned, so no
    consumer group is joined and nothing waits for a rebalance. A topic that
    does not exist yet is asked for again every second; a topic re-created
    with a new id is read again from its start. Broker errors go to
    ``on_error``; tombstones are skipped.
    """
    from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition
    from confluent_kafka.admin import AdminClient

    consumer = Consumer(consumer_config(settings, group_id=f"{client_id}-{uuid.uuid4().hex[:8]}", client_id=client_id,
                                        error_cb=on_error, **{"fetch.wait.max.ms": fetch_wait_ms}))
    admin = AdminClient(admin_config(settings))

    def assign_from_start() -> str | None:
        partitions: list[int] = []
        while not partitions and not stop.is_set():
            try:
                meta = consumer.list_topics(topic, timeout=2.0).topics.get(topic)
            except Exception as exc:  # KafkaException: broker unreachable
                on_error(exc)
                meta = None
            if meta is not None and meta.error is None and meta.partitions:
                partitions = sorted(meta.partitions)
            else:
                stop.wait(1.0)
        log_id = topic_ids(admin, [topic]).get(topic)
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
        return log_id

    try:
        log_id = assign_from_start()
        next_check = time.monotonic() + LOG_CHECK_S
        while not stop.is_set():
            if time.monotonic() >= next_check:
                # the topic re-created (a broker that lost it): read the new log from its start, or its first
                # records would be skipped by a position left over from the old one
                now_id = topic_ids(admin, [topic]).get(topic)
                if now_id is not None and now_id != log_id:
                    log.warning("%s was re-created: reading it from the start", topic)
                    log_id = assign_from_start()
                next_check = time.monotonic() + LOG_CHECK_S
            msg = consumer.poll(0.1)
            if msg is None:
                continue
            error, value = msg.error(), msg.value()
            if error is not None:
                if error.code() != KafkaError._PARTITION_EOF:
                    on_error(error)
                continue
            if value is not None:
                on_value(value)
    finally:
        consumer.close()


class Record:
    """One record read by :func:`read_range`."""

    __slots__ = ("key", "value", "offset", "timestamp_ms")

    def __init__(self, key: bytes | None, value: bytes | None, offset: int, timestamp_ms: int) -> None:
        self.key, self.value, self.offset, self.timestamp_ms = key, value, offset, timestamp_ms


def read_range(settings: Settings, topic: str, partition: int, start: int, end: int,
               timeout_s: float = PROBE_TIMEOUT_S) -> list[Record]:
    """The records at offsets ``start`` to ``end - 1`` of ``topic[partition]`` (fewer where the log has none),
    read by a consumer of no group, for a partition known to hold a record at ``end`` or after it: the reading
    stops there, not at the end the broker reports (the embedded broker reports it too low after a multi-record
    batch). Raises TimeoutError when the broker does not hand them over in time."""
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer(consumer_config(settings, f"surgegate-read-range-{uuid.uuid4().hex[:8]}", "read-range"))
    out: list[Record] = []
    try:
        consumer.assign([TopicPartition(topic, partition, start)])
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for msg in consumer.consume(max(1, end - start), 0.2):
                if msg.error() is not None:
                    continue
                offset = msg.offset()
                if offset is None or offset >= end:
                    return out
                _, ts = msg.timestamp()
                out.append(Record(msg.key(), msg.value(), offset, ts))
                if offset == end - 1:
                    return out
        raise TimeoutError(f"{topic}[{partition}] {start}..{end - 1} not read within {timeout_s:g} s")
    finally:
        consumer.close()
