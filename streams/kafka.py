"""Thin, shared confluent-kafka configuration.

Defaults suit both Apache Kafka and the embedded Tansu broker: short group
timeouts (a join waits for the rebalance timeout), producers that batch
(``linger.ms``) and no compression (compressed fetches stall on Tansu).
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable
from typing import Any

from surgegate.settings import Settings

#: Producer waits this long to fill a batch; one-record batches saturate the broker.
LINGER_MS = 5
SESSION_TIMEOUT_MS = 6000
MAX_POLL_INTERVAL_MS = 10000
#: How long flush/close waits for outstanding deliveries.
FLUSH_TIMEOUT_S = 30.0


def producer_config(settings: Settings, client_id: str, **extra: Any) -> dict[str, Any]:
    """confluent-kafka producer settings."""
    return {
        "bootstrap.servers": settings.kafka,
        "client.id": client_id,
        "linger.ms": LINGER_MS,
        "compression.type": "none",
        "enable.idempotence": True,
        # Java-compatible key hashing, so Faust and confluent clients agree on partitions.
        "partitioner": "murmur2_random",
        "queue.buffering.max.messages": 500_000,
        **extra,
    }


def consumer_config(settings: Settings, group_id: str, client_id: str, **extra: Any) -> dict[str, Any]:
    """confluent-kafka consumer settings: manual commits, start at the beginning."""
    return {
        "bootstrap.servers": settings.kafka,
        "group.id": group_id,
        "client.id": client_id,
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
        "session.timeout.ms": SESSION_TIMEOUT_MS,
        "max.poll.interval.ms": MAX_POLL_INTERVAL_MS,
        "heartbeat.interval.ms": 1000,
        **extra,
    }


def follow_from_start(settings: Settings, topic: str, client_id: str, stop: threading.Event,
                      on_value: Callable[[bytes], object], on_error: Callable[[object], None],
                      fetch_wait_ms: int = 50) -> None:
    """Read a (compacted) topic from the beginning, then follow it until ``stop`` is set.

    Subscribers of decisions use this: every partition is assigned, so no
    consumer group is joined and nothing waits for a rebalance. A topic that
    does not exist yet is asked for again every second. Broker errors go to
    ``on_error``; tombstones are skipped.
    """
    from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition

    consumer = Consumer(consumer_config(settings, group_id=f"{client_id}-{uuid.uuid4().hex[:8]}", client_id=client_id,
                                        error_cb=on_error, **{"fetch.wait.max.ms": fetch_wait_ms, "log_level": 3}))
    try:
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
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
        while not stop.is_set():
            msg = consumer.poll(0.1)
            if msg is None:
                continue
            if msg.error():
                if msg.error().code() != KafkaError._PARTITION_EOF:
                    on_error(msg.error())
                continue
            if msg.value() is not None:
                on_value(msg.value())
    finally:
        consumer.close()
