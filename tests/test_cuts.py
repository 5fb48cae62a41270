"""The cut-intent log against a fake consumer: the last intent is found, a missing topic is waited for, and an
unreadable intent is dead-lettered once."""

from __future__ import annotations

from unittest import mock

import msgspec
import pytest
from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from surgegate.streams.cuts import CutIntent, CutLog, forced_cut


class Record:
    """What the log reads of a consumed record."""

    def __init__(self, value: bytes, offset: int, topic: str = "sg.requests.cuts", partition: int = 0) -> None:
        self._value, self._offset, self._topic, self._partition = value, offset, topic, partition

    def value(self) -> bytes:
        return self._value

    def error(self) -> None:
        return None

    def topic(self) -> str:
        return self._topic

    def partition(self) -> int:
        return self._partition

    def offset(self) -> int:
        return self._offset


def fake_consumer(records: list[bytes] | None, missing_for: int = 0) -> mock.Mock:
    """A consumer over one cut-intent partition holding ``records`` (None: the topic does not exist); the
    topic appears after ``missing_for`` lookups."""
    consumer = mock.create_autospec(Consumer, instance=True, spec_set=True)
    lookups = {"n": 0}

    def offsets(tp: TopicPartition, timeout: float) -> tuple[int, int]:
        lookups["n"] += 1
        if records is None or lookups["n"] <= missing_for:
            raise KafkaException(KafkaError(KafkaError.UNKNOWN_TOPIC_OR_PART))
        return 0, len(records)

    assigned: list[int] = []
    consumer.get_watermark_offsets.side_effect = offsets
    consumer.assign.side_effect = lambda tps: assigned.append(tps[0].offset)
    consumer.poll.side_effect = lambda timeout: Record(records[assigned[-1]], assigned[-1]) if assigned else None
    return consumer


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def monotonic(self) -> float:
        return self.t

    def sleep(self, s: float) -> None:
        self.t += s


def log_over(consumer: mock.Mock, dead: list | None = None, **kw) -> CutLog:
    clock = Clock()
    return CutLog(lambda topic: f"{topic}.cuts", lambda: consumer,
                  lambda msg, reason, detail: (dead if dead is not None else []).append((msg.offset(), reason)),
                  sleep=clock.sleep, monotonic=clock.monotonic, **kw)


def test_the_last_intent_written_is_the_one_read():
    records = [CutLog.encode(0, 99), CutLog.encode(100, 180)]
    consumer = fake_consumer(records)
    assert log_over(consumer).last_intent("sg.requests", 0) == CutIntent(100, 180)
    consumer.close.assert_called_once()


def test_a_partition_without_intents_has_none():
    assert log_over(fake_consumer([])).last_intent("sg.requests", 0) is None


def test_a_cut_topic_being_recreated_is_waited_for_and_a_lost_one_means_no_intent():
    assert log_over(fake_consumer([CutLog.encode(5, 9)], missing_for=3)).last_intent("sg.requests", 0) == \
        CutIntent(5, 9)
    assert log_over(fake_consumer(None), topic_wait_s=2.0).last_intent("sg.requests", 0) is None


@pytest.mark.parametrize("junk", [b"not json", msgspec.json.encode({"first": 9, "last": 3}), b'{"first": -1}'])
def test_an_unreadable_intent_is_dead_lettered_once_and_the_partition_read_without_it(junk):
    dead: list = []
    cuts = log_over(fake_consumer([CutLog.encode(0, 4), junk]), dead)
    assert cuts.last_intent("sg.requests", 0) is None
    assert cuts.last_intent("sg.requests", 0) is None  # the next assignment finds it again
    assert dead == [(1, "invalid_cut_intent")]


def test_a_member_resuming_at_an_intents_first_offset_must_cut_at_its_last():
    intent = CutIntent(100, 180)
    assert forced_cut(100, intent) == 180
    assert forced_cut(181, intent) is None  # committed: the cut was finished
    assert forced_cut(90, intent) is None  # committed below (a failed commit): cut where flushes fall
