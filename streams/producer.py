"""The producer SDK that edges and GPU workers embed.

Every record is validated against its schema before it is queued, so a bad
record fails in the caller with a message naming the field, not later in the
pipeline. Sends are batched (``linger.ms``); delivery reports are counted; a
full local queue is retried a bounded number of times, then reported.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from typing import Any, TypeVar

import msgspec
from confluent_kafka import KafkaError, Producer

from surgegate.errors import DeliveryFailed, InvalidEvent, ProducerBufferFull
from surgegate.schemas.telemetry import MetricEvent, RequestEvent, RequestSummary
from surgegate.settings import Settings
from surgegate.streams.kafka import FLUSH_TIMEOUT_S, producer_config
from surgegate.streams.topics import Topics
from surgegate.telemetry.validation import NameCheck, check_summary

log = logging.getLogger(__name__)

#: How often, and how long each time, a send waits for room in a full local queue.
BUFFER_FULL_RETRIES = 50
BUFFER_FULL_WAIT_S = 0.02

T = TypeVar("T", bound=msgspec.Struct)


class KafkaSender:
    """A lazily created confluent-kafka producer with bounded retry and delivery counts."""

    def __init__(self, settings: Settings, client_id: str, **config: Any) -> None:
        self._config = producer_config(settings, client_id, error_cb=self._on_error, **config)
        self._producer: Producer | None = None
        self._lock = threading.Lock()
        self.delivered = 0
        self.failed = 0
        self.last_error: str | None = None

    @property
    def producer(self) -> Producer:
        """The underlying producer, created on first use."""
        if self._producer is None:
            self._producer = Producer(self._config)
        return self._producer

    def _on_error(self, err: KafkaError) -> None:
        self.last_error = err.str()
        log.warning("kafka producer: %s", err.str())

    def _on_delivery(self, err: KafkaError | None, _msg: Any) -> None:
        if err is None:
            self.delivered += 1
        else:
            self.failed += 1
            self.last_error = err.str()

    def send(self, topic: str, value: bytes, key: bytes | None = None, partition: int | None = None) -> None:
        """Queue one record; raises :class:`ProducerBufferFull` if the queue stays full."""
        producer = self.producer
        kwargs: dict[str, Any] = {"key": key, "on_delivery": self._on_delivery}
        if partition is not None:
            kwargs["partition"] = partition
        for _ in range(BUFFER_FULL_RETRIES):
            try:
                producer.produce(topic, value, **kwargs)
                return
            except BufferError:
                producer.poll(BUFFER_FULL_WAIT_S)
        raise ProducerBufferFull(
            f"producer queue for {topic} still full after {BUFFER_FULL_RETRIES} retries; "
            "the broker is slow or unreachable"
        )

    def poll(self) -> None:
        """Serve delivery reports without blocking."""
        if self._producer is not None:
            self._producer.poll(0)

    def flush(self, timeout: float = FLUSH_TIMEOUT_S) -> None:
        """Wait for every queued record; raises :class:`DeliveryFailed` if any was lost."""
        if self._producer is None:
            return
        failed_before = self.failed
        remaining = self._producer.flush(timeout)
        if remaining:
            raise DeliveryFailed(f"{remaining} records not delivered within {timeout:.0f} s: {self.last_error}")
        if self.failed > failed_before:
            raise DeliveryFailed(f"{self.failed - failed_before} records failed: {self.last_error}")

    def close(self) -> None:
        """Flush and drop the producer."""
        try:
            self.flush()
        finally:
            self._producer = None


class TelemetryProducer:
    """What an edge or GPU worker uses to send telemetry.

    ``send_request``, ``send_summary`` and ``send_metric`` accept either the
    typed record or a mapping of its fields (``schema`` may be left out).
    """

    def __init__(self, settings: Settings, client_id: str = "surgegate-sdk") -> None:
        self.topics = Topics(settings.topic_prefix)
        self.sender = KafkaSender(settings, client_id)

    def send_request(self, event: RequestEvent | Mapping[str, Any]) -> RequestEvent:
        """Validate and queue one RequestEvent (keyed by its edge)."""
        ev = _validated(RequestEvent, event)
        self.sender.send(self.topics.requests, msgspec.json.encode(ev), key=ev.edge_id.encode())
        return ev

    def send_summary(self, summary: RequestSummary | Mapping[str, Any]) -> RequestSummary:
        """Validate and queue one RequestSummary (keyed by its edge)."""
        s = _validated(RequestSummary, summary)
        check_summary(s)
        self.sender.send(self.topics.requests, msgspec.json.encode(s), key=s.edge_id.encode())
        return s

    def send_metric(self, metric: MetricEvent | Mapping[str, Any]) -> MetricEvent:
        """Validate and queue one MetricEvent (keyed by its worker)."""
        m = _validated(MetricEvent, metric)
        self.sender.send(self.topics.metrics, msgspec.json.encode(m), key=m.worker_id.encode())
        return m

    def poll(self) -> None:
        """Serve delivery reports; call now and then from a long-running sender."""
        self.sender.poll()

    def flush(self, timeout: float = FLUSH_TIMEOUT_S) -> None:
        """Wait until everything sent so far is acknowledged."""
        self.sender.flush(timeout)

    def close(self) -> None:
        """Flush and release the producer."""
        self.sender.close()

    def __enter__(self) -> TelemetryProducer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _validated(kind: type[T], record: T | Mapping[str, Any]) -> T:
    # A struct built in Python skips its constraints; a round trip checks them all.
    if isinstance(record, kind):
        raw = msgspec.json.encode(record)
    elif isinstance(record, Mapping):
        tag = kind.__struct_config__.tag
        raw = msgspec.json.encode({**record, "schema": tag})
    else:
        raise InvalidEvent("invalid_field", f"expected {kind.__name__} or a mapping, got {type(record).__name__}")
    try:
        decoded = msgspec.json.decode(raw, type=kind)
    except msgspec.ValidationError as exc:
        raise InvalidEvent("invalid_field", f"{kind.__name__}: {exc}") from None
    _NAMES.check(decoded)  # type: ignore[arg-type]  # T is one of the three telemetry types
    return decoded


_NAMES = NameCheck()
