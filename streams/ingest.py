"""Stage 1: the batch ingest consumer.

A confluent-kafka consumer group reads sg.requests and sg.metrics in batches,
decodes each record with one typed msgspec decoder, folds it into a per-partition
:class:`~surgegate.telemetry.windowing.PartialAggregator`, and every ``flush_interval``
publishes one WindowPartial per scope and window to sg.partials, then a
Watermark to every partials partition. Bad records go to sg.deadletter.

Exactness across restarts. Before a cut ``[first, last]`` of a source partition
is published, its intent is written to that partition of ``<source>.cuts``; the
source offset ``last + 1`` is committed only after the partials are
acknowledged. A consumer that takes over a partition whose committed offset
equals the last intent's ``first`` cuts at exactly that intent's ``last``
again, so every republished partial carries a source range the merge stage has
seen and drops.

A topic re-created by a broker that lost it (see
:func:`~surgegate.streams.topics.keep_topics`) starts its offsets at zero
again. Partials name the topic's incarnation (its topic id) in their source
range, so the merge stage tells the new log's ranges from the old one's.
"""

from __future__ import annotations

import base64
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import cast

import msgspec
from confluent_kafka import (
    OFFSET_BEGINNING,
    OFFSET_INVALID,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient

from surgegate.errors import InvalidEvent
from surgegate.schemas.aggregates import SourceRange, Watermark
from surgegate.schemas.deadletter import DeadLetter
from surgegate.settings import Settings
from surgegate.streams.kafka import LOG_CHECK_S, admin_config, consumer_config, topic_ids
from surgegate.streams.producer import KafkaSender
from surgegate.streams.store import CounterSink, Keys, NullCounterSink
from surgegate.streams.topics import Topics
from surgegate.telemetry.validation import TelemetryValidator
from surgegate.telemetry.windowing import PartialAggregator

log = logging.getLogger(__name__)

#: A dead letter keeps at most this much of a record's value (and key): base64 of it stays far below the
#: producer's 1 MB message limit, so an oversized record is dead-lettered, never the reason ingestion stops.
DEAD_LETTER_KEEP_BYTES = 64 * 1024

BATCH_SIZE = 10_000
POLL_TIMEOUT_S = 0.2
CUT_LOOKUP_TIMEOUT_S = 5.0
#: A partition nothing has come from for this long counts as read to its end even without the broker's
#: end-of-partition signal (at least ``idle_after_s``).
QUIET_AS_CAUGHT_UP_S = 5.0
#: After the broker was last unreachable, this long passes before quiet counts as idle again: the senders'
#: backlog (queued while it was away, sent by renewed producers) is on its way, and the wall clock must not
#: close its windows first.
BROKER_GRACE_S = 20.0
#: How long an assignment waits for a cut-intent topic that does not exist (yet) before it resumes without.
CUT_TOPIC_WAIT_S = 8.0
#: Errors of a topic or partition the broker does not know.
_UNKNOWN = {KafkaError._UNKNOWN_PARTITION, KafkaError.UNKNOWN_TOPIC_OR_PART, KafkaError._UNKNOWN_TOPIC}
#: Consumer errors that mean the broker cannot be reached (one connection dropped and re-made is not that).
_UNREACHABLE = {KafkaError._ALL_BROKERS_DOWN, KafkaError._RESOLVE}


class CutIntent(msgspec.Struct, frozen=True):
    """The source range the next partials of one partition will cover."""

    first: int
    last: int


class _PartitionWork:
    """One source partition: its uncut aggregate, and how far its event time has got."""

    __slots__ = ("aggregator", "first", "last", "read", "began", "max_ts", "caught_up", "last_at")

    def __init__(self, window_ms: int) -> None:
        self.aggregator = PartialAggregator(window_ms)
        self.first = -1
        self.last = -1
        #: the last offset read, kept across cuts: an offset below it means the log was replaced
        self.read = -1
        #: the offset reading began at when the partition was assigned
        self.began = -1
        #: the newest event time read from it (clamped to the ingest clock plus the allowed skew)
        self.max_ts = 0
        #: read to its end (the broker said so), and when a record last came from it
        self.caught_up = False
        self.last_at = time.monotonic()


def wall_clock_ms() -> int:
    """Current wall-clock time in epoch milliseconds."""
    return time.time_ns() // 1_000_000


class IngestWorker:
    """One member of the ingest consumer group; run it in a thread or process.

    ``counters`` holds what happened (``events``, ``dead_letters``,
    ``dead_letter.<reason>``, ``clock_ahead``: events stamped beyond the
    allowed skew and placed at the ingest clock, ``partials``, ``cuts``) for
    logs, benchmarks and the Redis counter hash.
    """

    def __init__(self, settings: Settings, *, member_id: str | None = None,
                 clock: Callable[[], int] = wall_clock_ms, redis_url: str | None = None) -> None:
        self.settings = settings
        self.topics = Topics(settings.topic_prefix)
        self.member_id = member_id or f"{settings.worker_id}-ingest"
        self.clock = clock
        self.validator = TelemetryValidator(window_ms=settings.window_ms, max_future_ms=settings.max_future_ms)
        self.sender = KafkaSender(settings, f"{self.member_id}-producer")
        self.counters: Counter[str] = Counter()
        url = redis_url if redis_url is not None else settings.redis
        self.counter_sink = (CounterSink(url, Keys.for_topic_prefix(settings.topic_prefix)) if url
                             else NullCounterSink())
        self._consumer: Consumer | None = None
        self._admin = AdminClient(admin_config(settings))
        #: topic -> its incarnation (Kafka topic id), stamped on every source range
        self._log_ids: dict[str, str] = {}
        self._work: dict[tuple[str, int], _PartitionWork] = {}
        #: where this member stopped reading the partitions the last revocation took (see _on_assign)
        self._left: dict[tuple[str, int], int] = {}
        self._forced_cuts: dict[tuple[str, int], int] = {}
        #: cut-intent records found unreadable and dead-lettered (once each, not at every assignment)
        self._bad_intents: set[tuple[str, int, int]] = set()
        self._max_event_ts = 0
        self._last_message_at = time.monotonic()
        self._unreachable_at = -BROKER_GRACE_S
        self._watermark = 0
        self._partials_partitions = 0
        self._stop = threading.Event()
        self._reported: Counter[str] = Counter()

    # ------------------------------------------------------------ lifecycle

    def stop(self) -> None:
        """Ask :meth:`run` to flush, commit and return."""
        self._stop.set()

    def run(self) -> None:
        """Consume until :meth:`stop`; flushes and commits before returning."""
        consumer = self._consumer = Consumer(
            # end-of-partition events tell which partitions are read to their end (see watermark())
            consumer_config(self.settings, f"{self.settings.topic_prefix}ingest", self.member_id,
                            error_cb=self._on_consumer_error, **{"enable.partition.eof": True})
        )
        consumer.subscribe([self.topics.requests, self.topics.metrics],
                           on_assign=self._on_assign, on_revoke=self._on_revoke)
        interval = self.settings.flush_interval_s
        next_flush = time.monotonic() + interval
        next_log_check = time.monotonic() + LOG_CHECK_S
        try:
            while not self._stop.is_set():
                messages = consumer.consume(BATCH_SIZE, POLL_TIMEOUT_S)
                if messages:
                    self._last_message_at = time.monotonic()
                    self.process(messages)
                self.sender.poll()
                if time.monotonic() >= next_flush:
                    self.flush()
                    next_flush = time.monotonic() + interval
                if time.monotonic() >= next_log_check:
                    self.check_logs()
                    next_log_check = time.monotonic() + LOG_CHECK_S
            self.flush()
        finally:
            consumer.close()
            self.sender.close()
            self.counter_sink.close()
            log.info("ingest %s stopped: %s", self.member_id, dict(self.counters))

    # ------------------------------------------------------------ per batch

    def process(self, messages: list[Message]) -> None:
        """Decode, validate and aggregate one batch of messages."""
        decode = self.validator.decode
        now = self.clock()
        work = self._work
        forced = self._forced_cuts
        max_ts = self._max_event_ts
        ahead = now + self.settings.max_skew_ms
        events = skewed = 0
        key: tuple[str, int] | None = None
        part: _PartitionWork | None = None
        arrived = time.monotonic()
        for msg in messages:
            err = msg.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    eof = (cast(str, msg.topic()), cast(int, msg.partition()))
                    at_end = work.get(eof)
                    if at_end is None:
                        at_end = work[eof] = _PartitionWork(self.settings.window_ms)
                    at_end.caught_up = True
                else:
                    log.warning("ingest consume error: %s", err.str())
                continue
            topic, partition = cast(str, msg.topic()), cast(int, msg.partition())  # set on every record
            if key is None or partition != key[1] or topic != key[0]:
                # consume() returns runs from one partition: look the partition up once per run
                key = (topic, partition)
                part = work.get(key)
                if part is None:
                    part = work[key] = _PartitionWork(self.settings.window_ms)
            offset = cast(int, msg.offset())
            assert part is not None  # looked up with the key above
            if offset <= part.read:
                self._log_replaced(key, offset)
            part.read = offset
            part.caught_up = False
            part.last_at = arrived
            if forced and key in forced and offset > forced[key]:
                self.flush([key])
            if part.first < 0:
                part.first = offset
            part.last = offset
            try:
                event = decode(msg.value() or b"", now)
            except InvalidEvent as exc:
                self._dead_letter(msg, exc.reason, exc.detail, now)
            else:
                if event.ts > ahead:
                    # a clock far ahead of ours: the event happened about now, not in our future
                    event = msgspec.structs.replace(event, ts=now)
                    skewed += 1
                part.aggregator.add(event)
                events += 1
                if event.ts > part.max_ts:
                    part.max_ts = event.ts
                if event.ts > max_ts:
                    max_ts = event.ts
            if forced and key in forced and offset == forced[key]:
                self.flush([key])
        self._max_event_ts = max_ts
        self.counters["events"] += events
        if skewed:
            self.counters["clock_ahead"] += skewed

    def _on_consumer_error(self, err: KafkaError) -> None:
        if err.code() in _UNREACHABLE:
            self._unreachable_at = time.monotonic()
        log.info("ingest %s: consumer: %s", self.member_id, err.str())

    def _log_replaced(self, key: tuple[str, int], offset: int) -> None:
        """Offsets went back: the topic was re-created. Cut what came from the old log, then name the new one."""
        part = self._work[key]
        log.warning("ingest %s: %s[%d] went back from offset %d to %d: the topic was re-created", self.member_id,
                    key[0], key[1], part.read, offset)
        self.counters["logs_replaced"] += 1
        self.flush([key])
        self._refresh_log_ids([key[0]])

    def _refresh_log_ids(self, topics: list[str]) -> None:
        """Look the topics' ids up (a changed one: the topic was re-created since last looked at)."""
        for topic, topic_id in topic_ids(self._admin, topics, CUT_LOOKUP_TIMEOUT_S).items():
            if self._log_ids.get(topic, topic_id) != topic_id:
                log.warning("ingest %s: %s is a new log (topic id %s)", self.member_id, topic, topic_id)
            self._log_ids[topic] = topic_id

    def check_logs(self) -> None:
        """Read a re-created source topic from its start: a position left over from the old log would skip
        the new one's first records (the broker resets it only while the new log is shorter)."""
        consumer = self._consumer
        ids = topic_ids(self._admin, [self.topics.requests, self.topics.metrics], CUT_LOOKUP_TIMEOUT_S)
        for topic, topic_id in ids.items():
            known = self._log_ids.get(topic)
            if known is None or known == topic_id:
                self._log_ids[topic] = topic_id
                continue
            log.warning("ingest %s: %s is a new log (topic id %s): reading it from the start", self.member_id,
                        topic, topic_id)
            keys = [key for key in self._work if key[0] == topic]
            self.flush(keys)  # what came from the old log is cut under the old log's name
            self._log_ids[topic] = topic_id
            for key in keys:
                self._work[key].read = -1
                if consumer is not None:
                    try:
                        consumer.seek(TopicPartition(topic, key[1], OFFSET_BEGINNING))
                    except KafkaException as exc:  # not fetching yet: its position is set when it starts
                        log.info("ingest %s: seek %s[%d]: %s", self.member_id, topic, key[1], exc)
            self.counters["logs_replaced"] += 1

    def _dead_letter(self, msg: Message, reason: str, detail: str, now: int) -> None:
        value = msg.value() or b""
        key = msg.key()
        topic = cast(str, msg.topic())  # set on every record consumed
        truncated = len(value) > DEAD_LETTER_KEEP_BYTES or (key is not None and len(key) > DEAD_LETTER_KEEP_BYTES)
        letter = DeadLetter(
            source_topic=topic, partition=cast(int, msg.partition()), offset=cast(int, msg.offset()), reason=reason,
            error=detail[:DEAD_LETTER_KEEP_BYTES], value_b64=_b64(value[:DEAD_LETTER_KEEP_BYTES]),
            key_b64=_b64(key[:DEAD_LETTER_KEEP_BYTES]) if key is not None else None, at=now,
            value_bytes=len(value), truncated=truncated,
        )
        self.sender.send(self.topics.deadletter, msgspec.json.encode(letter), key=topic.encode())
        self.counters["dead_letters"] += 1
        self.counters[f"dead_letter.{reason}"] += 1

    # ------------------------------------------------------------ cuts

    def watermark(self) -> int:
        """Event-time progress, never backwards and never past the ingest clock.

        While any partition this member reads still has records to read (a
        backlog after an outage), the watermark is the lowest event time among
        those partitions: windows close only as fast as the slowest backlog is
        read. Once every partition is read to its end (the broker says so, or
        nothing came from it for :data:`QUIET_AS_CAUGHT_UP_S`), it is the newest
        event time read, and the wall clock after ``idle_after_s`` without
        records, unless the broker was unreachable within :data:`BROKER_GRACE_S`
        (quiet then means nothing could be read, not that nothing was sent). Event times were clamped to the
        ingest clock plus ``max_skew_s`` on the way in: an edge with a clock far
        ahead cannot close everyone's windows early.
        """
        now = self.clock()
        parts = self._work.values()
        if not parts:
            return self._watermark  # nothing assigned yet (a restart joining its group): no progress to claim
        # read to its end: the broker said so, or nothing has come from it for a while (a broker whose
        # end offsets are off, as the embedded one's can be after batched writes, never says so)
        quiet = time.monotonic() - max(self.settings.idle_after_s, QUIET_AS_CAUGHT_UP_S)
        behind = [p.max_ts for p in parts if not p.caught_up and p.last_at > quiet]
        if behind:
            mark = min(behind)
        else:
            mark = max(p.max_ts for p in parts)
            idle = time.monotonic() - self._last_message_at >= self.settings.idle_after_s
            if idle and time.monotonic() - self._unreachable_at >= BROKER_GRACE_S:
                mark = max(mark, now)
        self._watermark = max(self._watermark, min(mark, now))
        return self._watermark

    def flush(self, keys: list[tuple[str, int]] | None = None) -> None:
        """Publish the partials of the given (or all) partitions, then commit them.

        A flush of all partitions leaves out a partition still reading an
        unfinished cut: cut anywhere short of where the member before cut it,
        its partials would carry lower offsets than those that member
        published, and the merge stage would drop a window that member never
        sent as one it had already seen.
        """
        consumer = self._consumer
        every = keys is None
        keys = list(self._work) if keys is None else keys
        cuts: list[tuple[tuple[str, int], _PartitionWork]] = []
        for key in keys:
            part = self._work.get(key)
            if part is None or part.first < 0:
                continue
            if every and self._unfinished(key, part):
                continue  # cut when its last record is read (process())
            cuts.append((key, part))
        with_data = [(k, p) for k, p in cuts if p.aggregator]
        # 1. intents first, acknowledged before any partial is sent
        for (topic, partition), part in with_data:
            self.sender.send(self.topics.cuts(topic), msgspec.json.encode(CutIntent(part.first, part.last)),
                             key=str(partition).encode(), partition=partition)
        if with_data:
            self.sender.flush()
        # 2. partials, then watermarks on every partials partition
        sent = 0
        for (topic, partition), part in with_data:
            log.debug("ingest %s: cut %s[%d] %d..%d", self.member_id, topic, partition, part.first, part.last)
            source = SourceRange(topic, partition, part.first, part.last, self._log_ids.get(topic, ""))
            for partial in part.aggregator.drain(source):
                self.sender.send(self.topics.partials, msgspec.json.encode(partial), key=partial.scope.encode())
                sent += 1
        self._send_watermarks()
        self.sender.flush()
        # 3. commit what is now safely published
        if cuts and consumer is not None:
            self._commit(consumer, [TopicPartition(t, p, part.last + 1) for (t, p), part in cuts])
        for key, part in cuts:
            self._forced_cuts.pop(key, None)
            part.first = part.last = -1
        self.counters["partials"] += sent
        self.counters["cuts"] += len(with_data)
        self._report_counters()

    def _unfinished(self, key: tuple[str, int], part: _PartitionWork) -> bool:
        """Still reading a cut the member before left unfinished (see :meth:`_on_assign`)."""
        return part.last < self._forced_cuts.get(key, -1)

    def _commit(self, consumer: Consumer, offsets: list[TopicPartition]) -> None:
        try:
            consumer.commit(offsets=offsets, asynchronous=False)
        except KafkaException as exc:
            # the partials are published and the next cut's commit covers this range too; a member taking
            # over before that would start below the last intent and could not repeat these cuts exactly
            self.counters["commit_failed"] += 1
            log.warning("ingest %s: commit failed (%s); the range will be read again", self.member_id,
                        exc.args[0].str() if exc.args else exc)

    def _send_watermarks(self) -> None:
        if not self._work:
            return  # nothing assigned: no claim to make (the merge stage stops counting this member)
        mark = msgspec.json.encode(Watermark(ingest_id=self.member_id, watermark=self.watermark()))
        for partition in range(self._partials_count()):
            self.sender.send(self.topics.partials, mark, key=b"~watermark", partition=partition)

    def _partials_count(self) -> int:
        """The partials topic's partition count, looked up (with the producer made) on first use."""
        if not self._partials_partitions:
            md = self.sender.producer.list_topics(self.topics.partials, timeout=CUT_LOOKUP_TIMEOUT_S)
            self._partials_partitions = len(md.topics[self.topics.partials].partitions)
        return self._partials_partitions

    def _report_counters(self) -> None:
        delta = self.counters - self._reported
        if delta:
            self.counter_sink.add(delta)
            self._reported = Counter(self.counters)

    # ------------------------------------------------------------ rebalance

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._refresh_log_ids(sorted({tp.topic for tp in partitions}))
        self._partials_count()  # with the other lookups, not in the first flush after reading begins
        committed = consumer.committed(partitions, timeout=CUT_LOOKUP_TIMEOUT_S)
        began: dict[tuple[str, int], int] = {}
        for tp in committed:
            start = tp.offset
            if start == OFFSET_INVALID:
                # nothing committed yet: consumption starts at the earliest offset
                start, _ = consumer.get_watermark_offsets(TopicPartition(tp.topic, tp.partition),
                                                          timeout=CUT_LOOKUP_TIMEOUT_S)
            began[(tp.topic, tp.partition)] = start
            intent = self._last_intent(tp.topic, tp.partition)
            if intent is not None and start == intent.first:
                self._forced_cuts[(tp.topic, tp.partition)] = intent.last
                log.info("ingest %s: %s[%d] resumes an unfinished cut %d..%d", self.member_id, tp.topic,
                         tp.partition, intent.first, intent.last)
        # not read to their end yet: they hold the watermark until their backlog is read (see watermark()),
        # and the quiet and idle clocks start now, when reading can begin, not before the lookups above
        now = time.monotonic()
        for tp in partitions:
            part = self._work.setdefault((tp.topic, tp.partition), _PartitionWork(self.settings.window_ms))
            part.last_at = now
            part.began = began.get((tp.topic, tp.partition), -1)
        self._last_message_at = now
        # kept: revoked by this rebalance and given back where this member left it; any other partition was
        # someone else's (maybe a dead member's, its records unread): its backlog may lie behind this member's
        # claim, so the claim starts again from what is read (the merge stage holds windows at the lowest claim)
        taken = sorted(k for k, start in began.items() if self._left.get(k) != start)
        self._left = {}
        if taken:
            self._watermark = 0
            log.info("ingest %s: claims event time afresh for %s", self.member_id, taken)
        log.info("ingest %s assigned %s", self.member_id, [(t.topic, t.partition) for t in partitions])

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        keys = [(tp.topic, tp.partition) for tp in partitions]
        unfinished = {k for k in keys if k in self._work and self._unfinished(k, self._work[k])}
        if unfinished:
            # nothing of it published, nothing committed: the next owner reads it again and cuts where it must
            log.info("ingest %s: %s revoked before its unfinished cut was read whole: left to the next owner",
                     self.member_id, sorted(unfinished))
        self.flush([k for k in keys if k in self._work and k not in unfinished])
        self._left = {}
        for key in keys:
            part = self._work.pop(key, None)
            if part is not None:
                self._left[key] = part.read + 1 if part.read >= part.began else part.began
            self._forced_cuts.pop(key, None)

    def _read_intent(self, msg: Message) -> CutIntent | None:
        """The cut intent in ``msg``; an unreadable one (not written by an ingest) is dead-lettered and counted,
        and the partition resumes as if it had none: cut wherever this member's flushes fall, which can cost the
        one window a dead member left half published, where refusing to read the partition would cost them all."""
        try:
            intent = msgspec.json.decode(msg.value() or b"", type=CutIntent)
            if 0 <= intent.first <= intent.last:
                return intent
            detail = f"first={intent.first}, last={intent.last}: not a range of offsets"
        except msgspec.DecodeError as exc:
            detail = str(exc)
        where = (cast(str, msg.topic()), cast(int, msg.partition()), cast(int, msg.offset()))
        if where not in self._bad_intents:
            self._bad_intents.add(where)
            self._dead_letter(msg, "invalid_cut_intent", detail, self.clock())
            log.warning("ingest %s: the last cut intent on %s[%d] at offset %d is unreadable (%s): dead-lettered; "
                        "the partition resumes without it", self.member_id, *where, detail)
        return None

    def _last_intent(self, topic: str, partition: int) -> CutIntent | None:
        cuts_topic = self.topics.cuts(topic)
        reader = Consumer(consumer_config(self.settings, f"{self.member_id}-cuts", f"{self.member_id}-cuts"))
        try:
            deadline = time.monotonic() + CUT_TOPIC_WAIT_S
            while True:
                try:
                    low, high = reader.get_watermark_offsets(TopicPartition(cuts_topic, partition),
                                                             timeout=CUT_LOOKUP_TIMEOUT_S)
                    break
                except KafkaException as exc:
                    if exc.args[0].code() not in _UNKNOWN or time.monotonic() >= deadline:
                        if exc.args[0].code() in _UNKNOWN:
                            # the broker lost the topic (the keeper re-creates it): it lost every intent with it
                            log.warning("ingest %s: %s[%d] does not exist: no unfinished cut to resume",
                                        self.member_id, cuts_topic, partition)
                            return None
                        raise
                    time.sleep(0.5)  # a topic being re-created: its partitions appear in a moment
            if high <= low:
                return None
            reader.assign([TopicPartition(cuts_topic, partition, high - 1)])
            deadline = time.monotonic() + CUT_LOOKUP_TIMEOUT_S
            while time.monotonic() < deadline:
                msg = reader.poll(0.2)
                if msg is not None and msg.error() is None:
                    return self._read_intent(msg)
            raise TimeoutError(f"could not read the last cut intent of {cuts_topic}[{partition}]")
        finally:
            reader.close()


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")
