"""Reading the decision history topic between two moments.

Records are looked up by their timestamp (the decision's issue time):
``offsets_for_times`` finds where to start on a broker that keeps a time
index (Apache Kafka); one that answers with an earlier offset (the embedded
Tansu answers 0) costs only a longer read, because every record's own
timestamp is checked. Reading stops at each partition's end or at the first
record past ``end_ms``.
"""

from __future__ import annotations

import time
import uuid
from typing import cast

from surgegate.settings import Settings
from surgegate.streams.kafka import consumer_config

#: How long a history read may take in all.
READ_TIMEOUT_S = 10.0


def read_between(settings: Settings, topic: str, start_ms: int, end_ms: int,
                 keys: frozenset[bytes] | None = None) -> list[bytes]:
    """Values of ``topic`` stamped within [start_ms, end_ms] (of ``keys`` only, when given), oldest first."""
    from confluent_kafka import Consumer, KafkaException, TopicPartition

    from surgegate.errors import BrokerUnavailable

    consumer = Consumer(consumer_config(settings, f"history-{uuid.uuid4().hex[:8]}", "api-history",
                                        **{"enable.partition.eof": True}))
    try:
        try:
            meta = consumer.list_topics(topic, timeout=5).topics.get(topic)
            if meta is None or meta.error is not None or not meta.partitions:
                return []
            # a negative time is a special offset to the broker (-1 newest, -2 oldest): the epoch is the earliest
            wanted = [TopicPartition(topic, p, max(0, start_ms)) for p in sorted(meta.partitions)]
            starts = consumer.offsets_for_times(wanted, timeout=5)
            ends = {tp.partition: consumer.get_watermark_offsets(tp, timeout=5)[1] for tp in wanted}
        except KafkaException as exc:
            raise BrokerUnavailable(f"reading {topic}: {exc.args[0].str() if exc.args else exc}") from None
        todo = [TopicPartition(topic, tp.partition, tp.offset if tp.offset >= 0 else ends[tp.partition])
                for tp in starts]
        open_parts = {tp.partition for tp in todo}  # each until its end-of-log event (see below)
        out: list[tuple[int, bytes]] = []
        consumer.assign(todo)
        deadline = time.monotonic() + READ_TIMEOUT_S
        while open_parts and time.monotonic() < deadline:
            msg = consumer.poll(0.2)
            if msg is None:
                continue
            partition = cast(int, msg.partition())  # set on consumed records
            if msg.error() is not None:  # end of a partition (or a passing error): that partition is done
                open_parts.discard(partition)
                continue
            stamp = msg.timestamp()[1]
            if stamp > end_ms:
                open_parts.discard(partition)
                continue
            value = msg.value()
            if value is not None and stamp >= start_ms and (keys is None or msg.key() in keys):
                out.append((stamp, value))
            # no stop at the end offset read above: a broker can report it short of its newest records (the
            # embedded one does after a multi-record batch); the partition's end-of-log event ends it
        return [value for _, value in sorted(out, key=lambda sv: sv[0])]
    finally:
        consumer.close()
