"""The cut-intent log: how an ingest member that dies halfway through publishing a cut is succeeded exactly.

Before the partials of a cut ``[first, last]`` of source partition ``p`` are
published, the intent ``{"first", "last"}`` goes to partition ``p`` of
``<source>.cuts`` and is acknowledged; the source offset ``last + 1`` is
committed only once the partials are. A member assigned ``p`` reads the last
intent there: when reading resumes at the intent's ``first``, the member before
died between the intent and the commit, and this one must cut at exactly the
intent's ``last`` again (:func:`forced_cut`), so every partial it republishes
carries a source range the merge stage has seen and drops. An intent that does
not decode as such a range (no ingest wrote it) is dead-lettered once and the
partition is read as if it had none.

The broker is reached through a consumer factory, so the log is tested with a
fake consumer (``tests/test_cuts.py``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any, Protocol, cast

import msgspec
from confluent_kafka import KafkaError, KafkaException, TopicPartition

log = logging.getLogger(__name__)

#: How long a lookup of the last intent waits for the broker.
LOOKUP_TIMEOUT_S = 5.0
#: How long an assignment waits for a cut-intent topic that does not exist (yet) before it resumes without.
TOPIC_WAIT_S = 8.0
#: Errors of a topic or partition the broker does not know.
UNKNOWN = {KafkaError._UNKNOWN_PARTITION, KafkaError.UNKNOWN_TOPIC_OR_PART, KafkaError._UNKNOWN_TOPIC}


class CutIntent(msgspec.Struct, frozen=True):
    """The source range the next partials of one partition will cover."""

    first: int
    last: int


def forced_cut(resume_at: int, intent: CutIntent | None) -> int | None:
    """Where the next cut of a partition must end, reading resuming at ``resume_at`` after ``intent``: the
    intent's ``last`` when the member before died between writing it and committing (reading resumes at its
    ``first``), else None (cut wherever the flushes fall).

    >>> forced_cut(100, CutIntent(100, 180)), forced_cut(181, CutIntent(100, 180)), forced_cut(0, None)
    (180, None, None)
    """
    return intent.last if intent is not None and resume_at == intent.first else None


class IntentReader(Protocol):
    """The consumer calls the log makes (confluent-kafka's ``Consumer`` has them)."""

    def get_watermark_offsets(self, partition: TopicPartition, timeout: float) -> tuple[int, int]: ...

    def assign(self, partitions: list[TopicPartition]) -> None: ...

    def poll(self, timeout: float) -> Any: ...

    def close(self) -> None: ...


class CutLog:
    """Reads the last intent of a source partition (``reader`` makes a consumer for each lookup); an unreadable
    one goes to ``dead_letter(message, reason, detail)`` once."""

    def __init__(self, cuts_topic: Callable[[str], str], reader: Callable[[], IntentReader],
                 dead_letter: Callable[[Any, str, str], None], *, member_id: str = "ingest",
                 topic_wait_s: float = TOPIC_WAIT_S, lookup_timeout_s: float = LOOKUP_TIMEOUT_S,
                 sleep: Callable[[float], None] = time.sleep, monotonic: Callable[[], float] = time.monotonic) -> None:
        self.cuts_topic = cuts_topic
        self.reader = reader
        self.dead_letter = dead_letter
        self.member_id = member_id
        self.topic_wait_s = topic_wait_s
        self.lookup_timeout_s = lookup_timeout_s
        self._sleep = sleep
        self._monotonic = monotonic
        #: intents found unreadable and dead-lettered (once each, not at every assignment)
        self._bad: set[tuple[str, int, int]] = set()

    @staticmethod
    def encode(first: int, last: int) -> bytes:
        """An intent's bytes."""
        return msgspec.json.encode(CutIntent(first, last))

    def last_intent(self, topic: str, partition: int) -> CutIntent | None:
        """The last intent written for ``topic[partition]``, or None (none written, unreadable, or the topic is
        gone with every intent on it)."""
        cuts_topic = self.cuts_topic(topic)
        reader = self.reader()
        try:
            low, high = self._offsets(reader, cuts_topic, partition)
            if high <= low:
                return None
            reader.assign([TopicPartition(cuts_topic, partition, high - 1)])
            deadline = self._monotonic() + self.lookup_timeout_s
            while self._monotonic() < deadline:
                msg = reader.poll(0.2)
                if msg is not None and msg.error() is None:
                    return self._read(msg)
            raise TimeoutError(f"could not read the last cut intent of {cuts_topic}[{partition}]")
        finally:
            reader.close()

    def _offsets(self, reader: IntentReader, cuts_topic: str, partition: int) -> tuple[int, int]:
        deadline = self._monotonic() + self.topic_wait_s
        while True:
            try:
                return reader.get_watermark_offsets(TopicPartition(cuts_topic, partition),
                                                    timeout=self.lookup_timeout_s)
            except KafkaException as exc:
                code = exc.args[0].code()
                if code not in UNKNOWN:
                    raise
                if self._monotonic() >= deadline:
                    # the broker lost the topic (the keeper re-creates it): it lost every intent with it
                    log.warning("ingest %s: %s[%d] does not exist: no unfinished cut to resume", self.member_id,
                                cuts_topic, partition)
                    return 0, 0
                self._sleep(0.5)  # a topic being re-created: its partitions appear in a moment

    def _read(self, msg: Any) -> CutIntent | None:
        """The intent in ``msg``; an unreadable one (not written by an ingest) is dead-lettered and counted, and
        the partition resumes as if it had none: cut wherever the flushes fall, which can cost the one window a
        dead member left half published, where refusing to read the partition would cost them all."""
        try:
            intent = msgspec.json.decode(msg.value() or b"", type=CutIntent)
            if 0 <= intent.first <= intent.last:
                return intent
            detail = f"first={intent.first}, last={intent.last}: not a range of offsets"
        except msgspec.DecodeError as exc:
            detail = str(exc)
        where = (cast(str, msg.topic()), cast(int, msg.partition()), cast(int, msg.offset()))
        if where not in self._bad:
            self._bad.add(where)
            self.dead_letter(msg, "invalid_cut_intent", detail)
            log.warning("ingest %s: the last cut intent on %s[%d] at offset %d is unreadable (%s): dead-lettered; "
                        "the partition resumes without it", self.member_id, *where, detail)
        return None
