"""The producer SDK that edges and GPU workers embed.

Every record is validated against its schema before it is queued, so a bad
record fails in the caller with a message naming the field, not later in the
pipeline. Sends are batched (``linger.ms``); delivery reports are counted; a
full local queue is retried a bounded number of times, then reported.

A producer that stops delivering renews itself. librdkafka's idempotent
producer keeps its producer id across reconnects; a broker that lost its state
(replaced, or restarted without storage) answers every batch with "unknown
producer id", librdkafka bumps the epoch locally and tries again, and nothing
is ever delivered again. So when a fatal error is reported, or records have been
waiting for :data:`STALL_S` with no delivery at all, the producer is replaced by
a fresh one (which asks the broker for a new id), the records still queued in
the old one are sent again through the new one, and so are those of the batch
the broker refused with "unknown producer id" (a refused batch is not written;
on a broker replaced during an outage that batch is the whole backlog queued
while it was away). Records of other batches still in flight (whose fate is
unknown) are counted as failed.

A sender made with ``hand_over=False`` never sends a record again behind one whose
fate is unknown: at a renewal everything the old producer held counts as failed,
and its owner sends it all again, in order (the ingest does: the merge stage takes a
record below one it already has for a duplicate, so a gap would lose it).

A broker that lost its topics (replaced by an empty one) makes librdkafka refuse
records for them once their absence has lasted ``topic.metadata.propagation.max.ms``.
Such a record is not the caller's error: it waits in the sender, in order, until the
topic is back (the worker's topic keeper re-creates lost topics) and is then
queued, or counts as failed once it is as old as the delivery timeout.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from functools import partial
from typing import Any, TypeVar

import msgspec
from confluent_kafka import KafkaError, KafkaException, Producer

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
#: Records waiting this long without a single delivery mean a wedged producer: it is renewed.
STALL_S = 5.0
#: How often a send or poll looks at whether the producer still delivers.
HEALTH_CHECK_S = 1.0
#: How long a renewal waits for the old producer to hand back its queued records.
RENEW_DRAIN_S = 5.0
#: Errors of ``produce()`` that mean "the broker does not know this topic (yet)": the record waits.
TOPIC_UNKNOWN = frozenset({KafkaError._UNKNOWN_TOPIC, KafkaError.UNKNOWN_TOPIC_OR_PART, KafkaError._UNKNOWN_PARTITION})

T = TypeVar("T", bound=msgspec.Struct)
#: Told once per record: None when the broker has it, else why it was given up.
Done = Callable[[str | None], None] | None


class KafkaSender:
    """A lazily created confluent-kafka producer with bounded retry, delivery counts and self-renewal.

    ``delivered`` and ``failed`` count delivery reports; ``renewals`` counts
    producers replaced because they stopped delivering; ``resent_refused`` the
    records sent again after the broker refused them for an unknown producer
    id; ``waiting`` is how many
    records wait for their topic to come back (see the module docstring).
    """

    def __init__(self, settings: Settings, client_id: str, *, stall_s: float = STALL_S, hand_over: bool = True,
                 **config: Any) -> None:
        self._config = producer_config(settings, client_id, error_cb=self._on_error, **config)
        self._timeout_ms = int(self._config["message.timeout.ms"])
        self._max_queued = int(self._config["queue.buffering.max.messages"])
        self._producer: Producer | None = None
        self._lock = threading.RLock()
        self.stall_s = stall_s
        #: records a renewed producer held are sent again by the new one (else they count as failed)
        self.hand_over = hand_over
        self._dropping = False  # in abandon(): what is purged is given up, not handed over
        self.delivered = 0
        self.failed = 0
        self.renewals = 0
        #: records sent again after the broker refused their batch for an unknown producer id
        self.resent_refused = 0
        self.last_error: str | None = None
        self._fatal = False
        self._progress_at = time.monotonic()  # the last delivery, or when the queue was last empty
        self._checked_at = 0.0
        # records for a topic the broker did not know, in order: (topic, value, produce kwargs with the timestamp,
        # the sender's callback)
        self._parked: deque[tuple[str, bytes, dict[str, Any], Done]] = deque()
        self._parked_logged_at = -1e9
        # records of a batch the broker refused for an unknown producer id: sent again by the renewed producer
        self._refused: list[tuple[Any, int | None, KafkaError, Done]] = []
        self._first_report = partial(self._on_delivery, None, None)

    @property
    def waiting(self) -> int:
        """Records waiting in the sender for their topic to exist again."""
        return len(self._parked)

    @property
    def producer(self) -> Producer:
        """The underlying producer, created on first use."""
        if self._producer is None:
            with self._lock:
                if self._producer is None:
                    return self._fresh()
        return self._producer

    def _fresh(self) -> Producer:
        """A new producer in place of whatever was there, counted as delivering from now."""
        self._producer = Producer(self._config)
        self._fatal = False
        self._progress_at = time.monotonic()
        return self._producer

    def _on_error(self, err: KafkaError) -> None:
        self.last_error = err.str()
        if err.fatal():
            self._fatal = True
            log.error("kafka producer: fatal error, renewing the producer: %s", err.str())
        else:
            log.warning("kafka producer: %s", err.str())

    def _on_delivery(self, created_ms: int | None, done: Done, err: KafkaError | None, msg: Any) -> None:
        """A delivery report; ``created_ms`` is when a record sent again was first sent (None: a first send)."""
        if err is None:
            self.delivered += 1
            self._progress_at = time.monotonic()
            if done is not None:
                done(None)
        elif err.code() == KafkaError._PURGE_QUEUE and self._producer is not None and self.hand_over \
                and not self._dropping:
            self._resend(msg, created_ms, err, done)  # never sent by the producer being renewed: the new one sends it
        elif err.code() in TOPIC_UNKNOWN:
            self._resend(msg, created_ms, err, done)  # refused, not written: it waits for its topic
        elif err.code() == KafkaError.UNKNOWN_PRODUCER_ID:
            # refused, not written, by a broker that does not know this producer: the producer that sent it is
            # fatally failed (librdkafka will not retry), so it waits for the renewed one
            if self.hand_over:
                self._refused.append((msg, created_ms, err, done))
            else:
                self._fail(err.str(), done)
            self._fatal = True
        else:
            self._fail(err.str(), done)

    def _fail(self, why: str, done: Done) -> None:
        """One record given up: counted, and its sender told."""
        self.failed += 1
        self.last_error = why
        if done is not None:
            done(why)

    def send(self, topic: str, value: bytes, key: bytes | None = None, partition: int | None = None,
             on_done: Done = None) -> None:
        """Queue one record; raises :class:`ProducerBufferFull` if the queue stays full.

        A record for a topic the broker does not know waits in the sender (see the module docstring).
        ``on_done`` is called from a later :meth:`poll` (or :meth:`flush`) with None once the broker has the
        record, or with the reason it was given up.
        """
        self._check_health()
        kwargs: dict[str, Any] = {"key": key}
        if partition is not None:
            kwargs["partition"] = partition
        if not self._parked:  # the hot path: nothing waits for a topic
            self._produce(topic, value, kwargs, on_done)
            return
        with self._lock:
            if self._parked:  # behind the records already waiting, so one key's records stay in order
                if len(self._parked) >= self._max_queued:
                    raise ProducerBufferFull(f"{len(self._parked)} records wait for a topic the broker does "
                                             f"not know ({self._parked[0][0]}); no room for more")
                kwargs["timestamp"] = int(time.time() * 1000)
                self._parked.append((topic, value, kwargs, on_done))  # _check_health just tried the queue's head
                return
            self._produce(topic, value, kwargs, on_done)

    def _produce(self, topic: str, value: bytes, kwargs: dict[str, Any], done: Done = None,
                 parked: bool = False) -> bool:
        """Queue one record in the producer. A record whose topic the broker does not know is parked (unless
        it is the ``parked`` one tried again) and False returned."""
        producer = self.producer
        for _ in range(BUFFER_FULL_RETRIES):
            try:
                # a record sent again, or one whose sender waits for it, has its own report (which carries the
                # first send's time: a refused record's own timestamp is not available); a first send shares one
                report = self._first_report if done is None and "timestamp" not in kwargs else \
                    partial(self._on_delivery, kwargs.get("timestamp"), done)
                producer.produce(topic, value, on_delivery=report, **kwargs)
                return True
            except BufferError:
                self._serve(producer, BUFFER_FULL_WAIT_S)
            except KafkaException as exc:
                if exc.args[0].code() == KafkaError._FATAL:
                    # the fatal error's callback is served by a later poll(): it may not have been seen yet
                    self.renew(f"a fatal producer error ({exc.args[0].str()})")
                    producer = self.producer
                    continue
                if exc.args[0].code() not in TOPIC_UNKNOWN:
                    raise
                self.last_error = exc.args[0].str()
                if not parked:
                    kwargs.setdefault("timestamp", int(time.time() * 1000))  # its wait counts from now
                    self._parked.append((topic, value, kwargs, done))
                    if len(self._parked) == 1 and time.monotonic() - self._parked_logged_at > 30:
                        self._parked_logged_at = time.monotonic()
                        log.warning("kafka producer: the broker does not know %s; records wait for it (%s)",
                                    topic, self.last_error)
                return False
        raise ProducerBufferFull(
            f"producer queue for {topic} still full after {BUFFER_FULL_RETRIES} retries; "
            "the broker is slow or unreachable"
        )

    def _expired(self, created_ms: int) -> bool:
        return time.time() * 1000 - created_ms > self._timeout_ms

    def _unpark(self) -> None:
        """Queue the waiting records whose topic is back, in order; fail those as old as the delivery timeout."""
        while self._parked:
            topic, value, kwargs, done = self._parked[0]
            if self._expired(kwargs["timestamp"]):
                self._parked.popleft()
                self._fail(f"{topic} unknown to the broker for {self._timeout_ms / 1000:g} s", done)
                continue
            try:
                if not self._produce(topic, value, kwargs, done, parked=True):
                    return
            except ProducerBufferFull:
                return  # tried again on the next send or poll
            except KafkaException as exc:  # refused for another reason now that the topic is back
                self._fail(f"refused once {topic} was back: {exc.args[0].str()}", done)
            self._parked.popleft()
        log.debug("kafka producer: the waiting records are queued")

    def _resend(self, msg: Any, created: int | None, err: KafkaError, done: Done) -> None:
        """Queue again a record the producer gave back unsent (it may wait for its topic)."""
        if created is None:  # a first send: its own timestamp, or, refused before it had one, from now on
            _, stamped = msg.timestamp()
            created = stamped if stamped > 0 else int(time.time() * 1000)
        if self._expired(created):
            # as old as the delivery timeout allows: it fails here as it would have in the producer
            self._fail(f"{msg.topic()}: not delivered within {self._timeout_ms / 1000:g} s ({err.str()})", done)
            return
        kwargs: dict[str, Any] = {"key": msg.key(), "timestamp": created}
        partition = msg.partition()
        if partition is not None and partition >= 0:
            kwargs["partition"] = partition
        try:
            self._produce(msg.topic(), msg.value(), kwargs, done)
        except (ProducerBufferFull, KafkaException) as exc:
            self._fail(f"not sent again: {exc}", done)

    def _check_health(self) -> None:
        producer = self._producer
        if producer is None:
            return
        if self._parked:
            with self._lock:
                self._unpark()
        if self._fatal:
            self.renew("a fatal producer error")
            return
        now = time.monotonic()
        if now - self._checked_at < HEALTH_CHECK_S:
            return
        self._checked_at = now
        # delivery reports not yet served count in len(): serve them first, or a sender that polls rarely
        # would look stalled while everything it sent was delivered
        self._serve(producer, 0)
        if self._fatal:
            self.renew("a fatal producer error")
            return
        if len(producer) == 0:
            self._progress_at = now
        elif now - self._progress_at >= self.stall_s:
            self.renew(f"{len(producer)} records waiting {self.stall_s:g} s with no delivery")

    def _serve(self, producer: Producer, timeout: float) -> None:
        """Serve ``producer``'s callbacks; a fatal error it raises marks the producer for renewal instead."""
        try:
            producer.poll(timeout)
        except KafkaException as exc:
            self._fatal_raised(exc)

    def _fatal_raised(self, exc: KafkaException) -> None:
        error = exc.args[0] if exc.args else None
        if not (isinstance(error, KafkaError) and (error.fatal() or error.code() == KafkaError._FATAL)):
            raise exc
        self._fatal = True
        self.last_error = error.str()
        log.error("kafka producer: fatal error raised, renewing the producer: %s", error.str())

    def renew(self, why: str) -> None:
        """Replace the producer with a fresh one; records it still queues are sent again by the new one."""
        with self._lock:
            old = self._producer
            if old is None:
                return
            self._fresh()
            self.renewals += 1
            log.warning("kafka producer renewed (%s); %d records %s", why, len(old),
                        "handed over" if self.hand_over else "given up, for the sender to send again")
            self._send_refused()  # sent before what was queued behind them
            # queued records come back as _PURGE_QUEUE and go to the new producer (see _on_delivery);
            # in-flight ones as _PURGE_INFLIGHT: their fate is unknown, so they count as failed
            left = self._purge(old)
            self._fatal = False  # the old producer's fatal error, seen while it was drained, is not the new one's
            self._send_refused()  # reported while the old producer was drained
            if left:
                self.failed += left
                self.last_error = f"{left} records lost with a renewed producer"

    def _purge(self, old: Producer) -> int:
        """Purge ``old``'s queued and in-flight records and serve their reports (for up to
        :data:`RENEW_DRAIN_S`); how many it still holds."""
        try:
            old.purge(in_queue=True, in_flight=True, blocking=False)
        except KafkaException as exc:  # a producer in a fatal state may refuse even this: its records count
            log.warning("kafka producer: the old producer could not be purged (%s)", exc)
        deadline = time.monotonic() + RENEW_DRAIN_S
        while len(old) and time.monotonic() < deadline:
            self._serve(old, 0.05)
        return len(old)

    def abandon(self, why: str) -> None:
        """Give up every record not yet delivered (queued, in flight, waiting for its topic, refused), each
        counted as failed: the owner sends them again, in order, after the ones that did arrive."""
        with self._lock:
            for _topic, _value, _kwargs, done in self._parked:
                self._fail(why, done)
            self._parked.clear()
            for _msg, _created, _err, done in self._refused:
                self._fail(why, done)
            self._refused = []
            old = self._producer
            if old is None or not len(old):
                return
            self._dropping = True
            try:
                left = self._purge(old)
            finally:
                self._dropping = False
            if left:  # still held: a fresh producer, so none of them is delivered behind what is sent next
                self.failed += left
                self.last_error = why
                self._fresh()

    def _send_refused(self) -> None:
        """Send again, through the renewed producer, the records of batches refused for an unknown producer id."""
        refused, self._refused = self._refused, []
        self.resent_refused += len(refused)
        for msg, created, err, done in refused:
            self._resend(msg, created, err, done)
        if refused:
            log.warning("kafka producer: %d records the broker refused for an unknown producer id are sent again",
                        len(refused))

    def poll(self) -> None:
        """Serve delivery reports without blocking; renews a producer that stopped delivering."""
        if self._producer is not None:
            self._serve(self._producer, 0)
            self._check_health()

    def flush(self, timeout: float = FLUSH_TIMEOUT_S, failed_before: int | None = None) -> None:
        """Wait for every queued record; raises :class:`DeliveryFailed` if any was lost (since ``failed``
        was ``failed_before``, if given: records given up while they were sent count too).

        A producer that stops delivering while it waits is renewed, and the wait goes on with the new one.
        """
        failed_before = self.failed if failed_before is None else failed_before
        if self._producer is None:
            if self.failed > failed_before:
                raise DeliveryFailed(f"{self.failed - failed_before} records failed: {self.last_error}")
            return
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            try:
                remaining = self.producer.flush(max(0.0, min(1.0, left)))
            except KafkaException as exc:  # a fatal error raised by the wait: renewed, and the wait goes on
                self._fatal_raised(exc)
                remaining = len(self.producer)
            if (not remaining and not self._parked and not self._refused) or left <= 1.0:
                break
            if self._parked and not remaining:
                time.sleep(0.1)  # the producer is empty: the wait is for a topic to come back
            self._check_health()
        remaining += len(self._parked) + len(self._refused)
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
