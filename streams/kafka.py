"""Thin, shared confluent-kafka configuration.

Defaults suit both Apache Kafka and the embedded Tansu broker: short group
timeouts (a join waits for the rebalance timeout), producers that batch
(``linger.ms``) and no compression (compressed fetches stall on Tansu).
"""

from __future__ import annotations

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
