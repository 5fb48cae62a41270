"""An agent takes each partition's records in order and whole, whatever Faust's queues drop.

Faust clears the records it queued for an agent when its flow resumes after a
recovery, and fetches on after them: the agent never saw them and the commit
passed them. :class:`Gaps` finds the skip; :class:`InOrder` hands the agent the
skipped records, read directly, before the record that showed the skip, and
only then tells Faust's commit they are done. Here a model of Faust's delivery
loses records from the queue, and :class:`InOrder` runs on a stand-in consumer.
"""

from __future__ import annotations

import asyncio
import threading

import pytest
from faust.types import TP
from hypothesis import given
from hypothesis import strategies as st

from surgegate.agents import in_order as module
from surgegate.agents.counters import AgentCounters
from surgegate.agents.in_order import Gaps, InOrder
from surgegate.settings import Settings
from surgegate.streams.kafka import Record, read_range

PARTIALS = TP("sg.partials", 1)


def deliver(log: list[int], committed: int, losses: set[int]) -> list[int]:
    """The offsets an agent takes from ``log``, read from ``committed``, when Faust's queue loses the records at
    ``losses``: a skip found is read directly (what the log has in the range) before the record that showed it."""
    gaps, taken = Gaps(), []
    for offset in log[log.index(committed):]:
        if offset in losses:
            continue
        skipped = gaps.check(PARTIALS, offset, committed)
        if skipped is not None:
            taken += [o for o in log if skipped <= o < offset]
        taken.append(offset)
    return taken


@given(length=st.integers(1, 60), start=st.integers(0, 59), losses=st.sets(st.integers(0, 59), max_size=30),
       holes=st.sets(st.integers(0, 80), max_size=10))
def test_every_record_is_taken_once_and_in_order_whatever_the_queue_lost(length, start, losses, holes):
    log = [o for o in range(length + len(holes)) if o not in holes][:length]  # a log with gaps of its own too
    committed = log[min(start, length - 1)]
    # a skip shows when the partition's next record comes (on partials, a watermark every flush): the log goes on
    taken = deliver(log, committed, {o for o in losses if o < log[-1]})
    assert taken == [o for o in log if o >= committed]


def test_the_first_record_after_an_assignment_is_checked_against_the_committed_offset():
    gaps = Gaps()
    assert gaps.check(PARTIALS, 130, committed=107) == 107
    assert gaps.check(PARTIALS, 131, committed=107) is None
    gaps.forget([PARTIALS])  # revoked: the next owner's committed offset counts again
    assert gaps.check(PARTIALS, 300, committed=None) is None  # nothing committed: any start is the start
    assert gaps.check(PARTIALS, 3, committed=None) is None  # a re-created log starts again at 0: no skip


class _Consumer:
    """What :class:`InOrder` uses of Faust's consumer: its committed offsets and its record of offsets it never
    handed over."""

    def __init__(self, committed: int) -> None:
        self._committed_offset = {PARTIALS: committed}
        self.gaps: list[tuple[TP, int, int]] = []
        self.assigned = {PARTIALS}

    async def _add_gap(self, tp: TP, offset_from: int, offset_to: int) -> None:
        self.gaps.append((tp, offset_from, offset_to))

    def assignment(self) -> set[TP]:
        return self.assigned


class _Message:
    def __init__(self, offset: int) -> None:
        self.tp, self.topic, self.partition, self.offset = PARTIALS, PARTIALS.topic, PARTIALS.partition, offset


class _Event:
    def __init__(self, offset: int) -> None:
        self.message, self.key, self.value = _Message(offset), b"scope", b"record %d" % offset


class _Stream:
    def __init__(self, offsets: list[int]) -> None:
        self.offsets = offsets

    async def events(self):
        for offset in self.offsets:
            yield _Event(offset)


def test_a_skipped_range_is_read_directly_and_handed_over_before_the_record_that_showed_it(monkeypatch):
    consumer = _Consumer(committed=107)
    reads = []

    def read(settings, topic, partition, start, end, timeout_s):
        reads.append((topic, partition, start, end))
        return [Record(b"scope", b"record %d" % o, o, 1_000 * o) for o in range(start, end)]

    monkeypatch.setattr(module, "read_range", read)
    counters = AgentCounters()
    in_order = InOrder(_App(consumer), Settings(), "merge_windows", counters)  # type: ignore[arg-type]
    done_at_gap = []

    async def take() -> list[tuple[int, bytes]]:
        out = []
        async for event in in_order.events(_Stream([107, 108, 111, 112])):  # type: ignore[arg-type]
            out.append((event.message.offset, event.value))
            done_at_gap.append(list(consumer.gaps))
        return out

    taken = asyncio.run(take())
    assert taken == [(o, b"record %d" % o) for o in range(107, 113)]
    assert reads == [(PARTIALS.topic, PARTIALS.partition, 109, 111)]
    # Faust's commit learns 109..110 are done only once the agent has taken them
    assert done_at_gap[2] == [] and done_at_gap[3] == [] and consumer.gaps == [(PARTIALS, 109, 110)]
    assert counters["skips"] == 1 and counters["records_read_again"] == 2


def test_a_skip_on_a_partition_taken_away_meanwhile_is_left_to_its_next_owner(monkeypatch):
    # reading it would apply records of a partition this worker no longer owns (its table's changelog is another's)
    consumer = _Consumer(committed=107)
    consumer.assigned = set()
    monkeypatch.setattr(module, "read_range", lambda *args: pytest.fail("read a partition not assigned"))
    in_order = InOrder(_App(consumer), Settings(), "merge_windows", AgentCounters())  # type: ignore[arg-type]

    async def take() -> list[int]:
        return [event.message.offset async for event in in_order.events(_Stream([107, 111]))]  # type: ignore[arg-type]

    assert asyncio.run(take()) == [107, 111]
    assert consumer.gaps == [] and in_order.counters["skips"] == 0


class _App:
    def __init__(self, consumer: _Consumer) -> None:
        self.consumer = consumer


@pytest.mark.e2e
def test_read_range_reads_the_records_between_two_offsets_from_the_broker(broker_bootstrap):
    from confluent_kafka import Producer
    from confluent_kafka.admin import AdminClient, NewTopic

    settings = Settings(kafka=broker_bootstrap)
    topic = f"in-order-{threading.get_ident()}"
    admin = AdminClient({"bootstrap.servers": broker_bootstrap})
    for future in admin.create_topics([NewTopic(topic, 1)]).values():
        future.result(10)
    producer = Producer({"bootstrap.servers": broker_bootstrap, "linger.ms": 50})
    for i in range(20):  # in a few multi-record batches, as agents' producers send them
        producer.produce(topic, b"v%d" % i, key=b"k", partition=0)
    assert producer.flush(10) == 0
    records = read_range(settings, topic, 0, 5, 12)
    assert [(r.offset, r.value) for r in records] == [(o, b"v%d" % o) for o in range(5, 12)]
    assert all(r.key == b"k" and r.timestamp_ms > 0 for r in records)
    assert [r.offset for r in read_range(settings, topic, 0, 18, 20)] == [18, 19]  # the log's last records
