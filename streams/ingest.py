"""Stage 1: the batch ingest consumer.

A confluent-kafka consumer group reads sg.requests and sg.metrics in batches,
decodes each record with one typed msgspec decoder, folds it into a per-partition
:class:`~surgegate.telemetry.windowing.PartialAggregator`, and every ``flush_interval``
publishes one WindowPartial per scope and window to sg.partials, then a
Watermark to every partials partition. Bad records go to sg.deadletter.

Exactness across restarts: the cut-intent log (:mod:`surgegate.streams.cuts`).
The member's claim on event time, sent with every cut:
:class:`~surgegate.telemetry.member.MemberWatermark` (pure).

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

from surgegate.errors import DeliveryFailed, InvalidEvent
from surgegate.schemas.aggregates import SourceRange, Watermark
from surgegate.schemas.deadletter import DeadLetter
from surgegate.settings import Settings
from surgegate.streams.cuts import LOOKUP_TIMEOUT_S, CutLog, forced_cut
from surgegate.streams.kafka import LOG_CHECK_S, admin_config, consumer_config, topic_ids
from surgegate.streams.producer import KafkaSender
from surgegate.streams.store import CounterSink, Keys, NullCounterSink
from surgegate.streams.topics import Topics
from surgegate.telemetry.member import MemberWatermark, PartitionProgress
from surgegate.telemetry.validation import TelemetryValidator
from surgegate.telemetry.windowing import PartialAggregator

log = logging.getLogger(__name__)

#: A dead letter keeps at most this much of a record's value (and key): base64 of it stays far below the
#: producer's 1 MB message limit, so an oversized record is dead-lettered, never the reason ingestion stops.
DEAD_LETTER_KEEP_BYTES = 64 * 1024

BATCH_SIZE = 10_000
POLL_TIMEOUT_S = 0.2
#: A flush that waits on the broker longer than this is logged (nothing is read meanwhile).
SLOW_FLUSH_S = 1.0
#: Consumer errors that mean the broker cannot be reached (one connection dropped and re-made is not that).
_UNREACHABLE = {KafkaError._ALL_BROKERS_DOWN, KafkaError._RESOLVE}


class _PartitionWork(PartitionProgress):
    """One source partition: how far it is read (for the claim) and its uncut aggregate (for the next cut)."""

    __slots__ = ("aggregator", "first", "last")

    def __init__(self, window_ms: int, began: int, now: float) -> None:
        super().__init__(began, now)
        self.aggregator = PartialAggregator(window_ms)
        #: the offsets the uncut aggregate covers (-1: nothing read since the last cut)
        self.first = -1
        self.last = -1


def wall_clock_ms() -> int:
    """Current wall-clock time in epoch milliseconds."""
    return time.time_ns() // 1_000_000


class IngestWorker:
    """One member of the ingest consumer group; run it in a thread or process.

    ``counters`` holds what happened (``events``, ``dead_letters``,
    ``dead_letter.<reason>``, ``clock_ahead``: events stamped beyond the
    allowed skew and placed at the ingest clock, ``partials``, ``cuts``) for
    logs, benchmarks and the Redis counter hash. ``member`` is its claim on
    event time (:class:`~surgegate.telemetry.member.MemberWatermark`), holding
    each assigned partition's progress.
    """

    def __init__(self, settings: Settings, *, member_id: str | None = None,
                 clock: Callable[[], int] = wall_clock_ms, redis_url: str | None = None) -> None:
        self.settings = settings
        self.topics = Topics(settings.topic_prefix)
        self.member_id = member_id or f"{settings.worker_id}-ingest"
        self.clock = clock
        self.validator = TelemetryValidator(window_ms=settings.window_ms, max_future_ms=settings.max_future_ms)
        # never a partial sent behind one whose fate is unknown: the merge stage would take the lost one, sent
        # again, for a duplicate (see run())
        self.sender = KafkaSender(settings, f"{self.member_id}-producer", hand_over=False)
        self.counters: Counter[str] = Counter()
        url = settings.redis if redis_url is None else redis_url
        target = settings.redis_target() if url == settings.redis else url
        self.counter_sink = CounterSink(target, Keys.for_topic_prefix(settings.topic_prefix)) if url \
            else NullCounterSink()
        self.member = self._new_member()
        self.cuts = CutLog(self.topics.cuts, self._intent_reader, self._dead_letter_intent, member_id=self.member_id)
        self._consumer: Consumer | None = None
        self._admin = AdminClient(admin_config(settings))
        #: topic -> its incarnation (Kafka topic id), stamped on every source range
        self._log_ids: dict[str, str] = {}
        #: partitions whose next cut must end at a given offset (an unfinished cut of the member before)
        self._forced_cuts: dict[tuple[str, int], int] = {}
        self._partials_partitions = 0
        #: how many partitions the source topics have (told with every claim)
        self._sources = 0
        self._stop = threading.Event()
        self._reported: Counter[str] = Counter()
        self._abandoned = False  # the consumer closes after a failed flush: its revocation publishes nothing

    def _new_member(self) -> MemberWatermark:
        window_ms = self.settings.window_ms
        return MemberWatermark(idle_after_s=self.settings.idle_after_s,
                               make=lambda began, now: _PartitionWork(window_ms, began, now))

    @property
    def _work(self) -> dict[tuple[str, int], _PartitionWork]:
        return self.member.parts  # type: ignore[return-value]  # made by this worker's factory

    # ------------------------------------------------------------ lifecycle

    def stop(self) -> None:
        """Ask :meth:`run` to flush, commit and return."""
        self._stop.set()

    def run(self) -> None:
        """Consume until :meth:`stop`; flushes and commits before returning.

        A flush whose records were not all delivered (the broker away too long, or replaced) does not end
        it: the member gives up what it had not committed and starts again from its last commit, as a
        restarted member would, so the cut-intent log has it repeat an unfinished cut exactly. Its producer
        never delivers a partial behind a lost one, so what arrived is a prefix and the merge stage drops it
        as duplicates when it comes again.
        """
        try:
            while True:
                try:
                    self._consume()
                    return
                except DeliveryFailed as exc:
                    if self._stop.is_set():
                        raise
                    self.counters["restarts"] += 1
                    log.warning("ingest %s: %s; reading again from the last commit", self.member_id, exc)
                    self.sender.abandon(f"given up by the ingest after: {exc}")
                    self.member = self._new_member()
                    self._forced_cuts.clear()
        finally:
            self.sender.close()
            self.counter_sink.close()
            log.info("ingest %s stopped: %s", self.member_id, dict(self.counters))

    def _consume(self) -> None:
        consumer = self._consumer = Consumer(
            # end-of-partition events tell which partitions are read to their end (see MemberWatermark)
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
                    self.member.received(time.monotonic())
                    self.process(messages)
                else:
                    self.member.polled_empty(time.monotonic(), self.clock())
                self.sender.poll()
                if time.monotonic() >= next_flush:
                    self.flush()
                    next_flush = time.monotonic() + interval
                if time.monotonic() >= next_log_check:
                    self.check_logs()
                    next_log_check = time.monotonic() + LOG_CHECK_S
            self.flush()
        except DeliveryFailed:
            self._abandoned = True
            raise
        finally:
            try:
                consumer.close()
            finally:
                self._abandoned = False

    # ------------------------------------------------------------ per batch

    def process(self, messages: list[Message]) -> None:
        """Decode, validate and aggregate one batch of messages (the hot path: the partition's progress is
        updated in place, as :meth:`MemberWatermark.read` would)."""
        decode = self.validator.decode
        now = self.clock()
        member = self.member
        forced = self._forced_cuts
        ahead = now + self.settings.max_skew_ms
        events = skewed = 0
        key: tuple[str, int] | None = None
        part: _PartitionWork | None = None
        arrived = time.monotonic()
        for msg in messages:
            err = msg.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    member.end_of_partition((cast(str, msg.topic()), cast(int, msg.partition())), arrived)
                else:
                    log.warning("ingest consume error: %s", err.str())
                continue
            topic, partition = cast(str, msg.topic()), cast(int, msg.partition())  # set on every record
            if key is None or partition != key[1] or topic != key[0]:
                # consume() returns runs from one partition: look the partition up once per run
                key = (topic, partition)
                part = member.progress(key, arrived)  # type: ignore[assignment]  # made by this worker's factory
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
            if forced and key in forced and offset == forced[key]:
                self.flush([key])
        self.counters["events"] += events
        if skewed:
            self.counters["clock_ahead"] += skewed

    def _on_consumer_error(self, err: KafkaError) -> None:
        if err.code() in _UNREACHABLE:
            self.member.unreachable(time.monotonic())
        log.info("ingest %s: consumer: %s", self.member_id, err.str())

    def _log_replaced(self, key: tuple[str, int], offset: int) -> None:
        """Offsets went back: the topic was re-created. Cut what came from the old log, then name the new one."""
        part = self._work[key]
        log.warning("ingest %s: %s[%d] went back from offset %d to %d: the topic was re-created", self.member_id,
                    key[0], key[1], part.read, offset)
        self.counters["logs_replaced"] += 1
        self.flush([key])
        self._refresh_log_ids([key[0]])

    def _refresh_log_ids(self, topics: list[str]) -> set[str]:
        """Look the topics' ids up; returns those whose id changed (re-created since last looked at)."""
        replaced = set()
        for topic, topic_id in topic_ids(self._admin, topics, LOOKUP_TIMEOUT_S).items():
            if self._log_ids.get(topic, topic_id) != topic_id:
                log.warning("ingest %s: %s is a new log (topic id %s)", self.member_id, topic, topic_id)
                replaced.add(topic)
            self._log_ids[topic] = topic_id
        return replaced

    def check_logs(self) -> None:
        """Read a re-created source topic from its start: a position (or commit) left over from the old log would
        skip the new one's first records (Kafka resets one past the new log's end, the embedded broker none)."""
        consumer = self._consumer
        ids = topic_ids(self._admin, [self.topics.requests, self.topics.metrics], LOOKUP_TIMEOUT_S)
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

    def _dead_letter_intent(self, msg: Message, reason: str, detail: str) -> None:
        self._dead_letter(msg, reason, detail, self.clock())

    def _intent_reader(self) -> Consumer:
        return Consumer(consumer_config(self.settings, f"{self.member_id}-cuts", f"{self.member_id}-cuts"))

    # ------------------------------------------------------------ cuts

    def watermark(self) -> int:
        """This member's claim on event time (:meth:`MemberWatermark.claim` at the ingest's clock)."""
        return self.member.claim(self.clock(), time.monotonic())

    def flush(self, keys: list[tuple[str, int]] | None = None) -> None:
        """Publish the partials of the given (or all) partitions, then commit them.

        A flush of all partitions leaves out a partition still reading an
        unfinished cut: cut anywhere short of where the member before cut it,
        its partials would carry lower offsets than those that member
        published, and the merge stage would drop a window that member never
        sent as one it had already seen.
        """
        began = time.monotonic()
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
        failed_before = self.sender.failed  # a record given up while it is sent fails the flush too
        # 1. intents first, acknowledged before any partial is sent
        for (topic, partition), part in with_data:
            self.sender.send(self.topics.cuts(topic), self.cuts.encode(part.first, part.last),
                             key=str(partition).encode(), partition=partition)
        if with_data:
            self.sender.flush(failed_before=failed_before)
        # 2. partials, then watermarks on every partials partition
        sent = 0
        for (topic, partition), part in with_data:
            log.debug("ingest %s: cut %s[%d] %d..%d", self.member_id, topic, partition, part.first, part.last)
            source = SourceRange(topic, partition, part.first, part.last, self._log_ids.get(topic, ""))
            for partial in part.aggregator.drain(source):
                self.sender.send(self.topics.partials, msgspec.json.encode(partial), key=partial.scope.encode())
                sent += 1
        self._send_watermarks()
        self.sender.flush(failed_before=failed_before)
        # 3. commit what is now safely published
        if cuts and consumer is not None:
            self._commit(consumer, [TopicPartition(t, p, part.last + 1) for (t, p), part in cuts])
        for key, part in cuts:
            self._forced_cuts.pop(key, None)
            part.first = part.last = -1
        self.counters["partials"] += sent
        self.counters["cuts"] += len(with_data)
        took = time.monotonic() - began
        if took > SLOW_FLUSH_S:
            self.counters["slow_flushes"] += 1
            log.info("ingest %s: a flush of %d cuts waited %.1f s on the broker", self.member_id, len(with_data), took)
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
        # the partitions the claim covers: until their next owner claims them, the merge stage holds the windows
        owns = [f"{topic}:{partition}" for topic, partition in sorted(self._work)]
        mark = msgspec.json.encode(Watermark(ingest_id=self.member_id, watermark=self.watermark(), owns=owns,
                                             sources=self._sources))
        for partition in range(self._partials_count()):
            self.sender.send(self.topics.partials, mark, key=b"~watermark", partition=partition)

    def _partials_count(self) -> int:
        """The partials topic's partition count, looked up (with the producer made) on first use."""
        if not self._partials_partitions:
            md = self.sender.producer.list_topics(self.topics.partials, timeout=LOOKUP_TIMEOUT_S)
            self._partials_partitions = len(md.topics[self.topics.partials].partitions)
        return self._partials_partitions

    def _report_counters(self) -> None:
        delta = self.counters - self._reported
        if delta:
            self.counter_sink.add(delta)
            self._reported = Counter(self.counters)

    # ------------------------------------------------------------ rebalance

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """Each partition starts at its commit, else at its earliest offset, as also when the topic was re-created
        since this worker read it: its commit may be the older log's (see :meth:`check_logs`)."""
        replaced = self._refresh_log_ids(sorted({tp.topic for tp in partitions}))
        self._count_sources(consumer)
        self._partials_count()  # with the other lookups, not in the first flush after reading begins
        committed = consumer.committed(partitions, timeout=LOOKUP_TIMEOUT_S)
        began: dict[tuple[str, int], int] = {}
        stale: list[tuple[str, int]] = []
        for tp in committed:
            key, start = (tp.topic, tp.partition), tp.offset
            older_log = start != OFFSET_INVALID and tp.topic in replaced
            if start == OFFSET_INVALID or older_log:
                start, _ = consumer.get_watermark_offsets(TopicPartition(*key), timeout=LOOKUP_TIMEOUT_S)
            began[key] = start
            if older_log:
                stale.append(key)
                continue  # an older log's cut intent names that log's offsets: nothing here to resume
            cut = forced_cut(start, self.cuts.last_intent(tp.topic, tp.partition))
            if cut is not None:
                self._forced_cuts[(tp.topic, tp.partition)] = cut
                log.info("ingest %s: %s[%d] resumes an unfinished cut %d..%d", self.member_id, tp.topic,
                         tp.partition, start, cut)
        if stale:
            log.warning("ingest %s: commits of an older log on %s: reading them from their start", self.member_id,
                        stale)
            self.counters["stale_commits"] += len(stale)
            consumer.assign([TopicPartition(tp.topic, tp.partition,
                                            OFFSET_BEGINNING if (tp.topic, tp.partition) in stale else OFFSET_INVALID)
                             for tp in partitions])
        # not read to their end yet: they hold the claim until their backlog is read, and the quiet and idle
        # clocks start now, when reading can begin, not before the lookups above; a partition another member
        # read last may hold a backlog behind this member's claim, so the claim starts again from what is read
        taken = self.member.assign(began, time.monotonic())
        if taken:
            log.info("ingest %s: claims event time afresh for %s", self.member_id, taken)
        log.info("ingest %s assigned %s", self.member_id, [(t.topic, t.partition) for t in partitions])

    def _count_sources(self, consumer: Consumer) -> None:
        """The source topics' partitions, looked up at each assignment (kept if the broker does not answer)."""
        count = 0
        for topic in (self.topics.requests, self.topics.metrics):
            try:
                meta = consumer.list_topics(topic, timeout=LOOKUP_TIMEOUT_S).topics.get(topic)
            except KafkaException:
                return
            if meta is None or meta.error is not None:
                return
            count += len(meta.partitions)
        self._sources = count

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        keys = [(tp.topic, tp.partition) for tp in partitions]
        if self._abandoned:  # after a failed flush: nothing more is published, the range is read again
            self.member.revoke(keys)
            return
        unfinished = {k for k in keys if k in self._work and self._unfinished(k, self._work[k])}
        if unfinished:
            # nothing of it published, nothing committed: the next owner reads it again and cuts where it must
            log.info("ingest %s: %s revoked before its unfinished cut was read whole: left to the next owner",
                     self.member_id, sorted(unfinished))
        self.flush([k for k in keys if k in self._work and k not in unfinished])
        self.member.revoke(keys)
        for key in keys:
            self._forced_cuts.pop(key, None)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")
