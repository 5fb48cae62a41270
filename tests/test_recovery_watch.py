"""A table recovery stuck waiting on changelog records: sought again, or taken as read once the broker is found
not to have them."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from types import SimpleNamespace
from typing import Any

from faust.types import TP
from hypothesis import given
from hypothesis import strategies as st

from surgegate.agents.recovery_watch import STALL_S, RecoveryWatch, step
from surgegate.settings import Settings


def test_a_partition_read_to_its_end_or_waiting_briefly_is_left_alone():
    assert step(offset=8, highwater=8, position=9, idle_s=600) == "wait"
    assert step(offset=-1, highwater=-1, position=0, idle_s=600) == "wait"  # an empty changelog
    assert step(offset=3, highwater=8, position=4, idle_s=STALL_S - 1) == "wait"
    assert step(offset=None, highwater=8, position=4, idle_s=600) == "wait"  # not known to the recovery


def test_a_stalled_partition_is_sought_again_then_probed_unless_everything_was_fetched():
    assert step(offset=3, highwater=8, position=4, idle_s=STALL_S) == "seek"
    assert step(offset=3, highwater=8, position=None, idle_s=STALL_S) == "seek"
    assert step(offset=3, highwater=8, position=8, idle_s=STALL_S) == "seek"  # the last record not fetched yet
    assert step(offset=3, highwater=8, position=4, idle_s=STALL_S, sought=True) == "probe"
    assert step(offset=3, highwater=8, position=9, idle_s=STALL_S) == "end"


@given(st.integers(-1, 50), st.integers(-1, 50), st.none() | st.integers(0, 60), st.floats(0, 100), st.booleans())
def test_a_partition_is_moved_on_only_when_stalled_and_taken_as_read_only_when_fetched_past_its_end(
        offset, highwater, position, idle, sought):
    what = step(offset, highwater, position, idle, sought=sought, stall_s=20.0)
    if offset >= highwater or idle < 20.0:
        assert what == "wait"
    elif position is not None and position > highwater:
        assert what == "end"
    else:
        assert what == ("probe" if sought else "seek")


class StandInConsumer:
    def __init__(self, positions: dict[TP, int], paused: set[TP]) -> None:
        self.positions = positions
        self._paused_partitions = paused
        self.sought: list[tuple[TP, int]] = []
        self.resumed: list[TP] = []

    async def position(self, tp: TP) -> int:
        return self.positions[tp]

    async def seek(self, tp: TP, offset: int) -> None:
        self.sought.append((tp, offset))

    def resume_partitions(self, tps: list[TP]) -> None:
        self.resumed.extend(tps)


def recovering(now: float, received: dict[TP, float], offsets: dict[TP, int], highwaters: dict[TP, int],
               consumer: StandInConsumer) -> Any:
    recovery = SimpleNamespace(in_recovery=True, _recovery_started_at=now - 60, _active_events_received_at=received,
                               active_offsets=Counter(offsets), active_highwaters=Counter(highwaters),
                               active_tps=set(highwaters))
    return SimpleNamespace(tables=SimpleNamespace(recovery=recovery), consumer=consumer)


def test_the_watch_seeks_a_stalled_partition_ends_a_fetched_one_and_leaves_the_rest():
    fetched, stalled, paused, busy, done = (TP("t-changelog", p) for p in range(5))
    now = time.monotonic()
    consumer = StandInConsumer({fetched: 9, stalled: 4, paused: 0, busy: 2, done: 3}, paused={paused})
    app = recovering(now, received={fetched: now - 40, stalled: now - 40, busy: now - 1},
                     offsets={fetched: 5, stalled: 3, paused: -1, busy: 1, done: 2},
                     highwaters={fetched: 8, stalled: 8, paused: 6, busy: 8, done: 2}, consumer=consumer)
    watch = RecoveryWatch(app, Settings())
    asyncio.run(watch.check())
    recovery = app.tables.recovery
    assert recovery.active_offsets[fetched] == 8  # everything fetched: taken as read, so the recovery can end
    assert sorted(consumer.sought) == [(stalled, 4), (paused, 0)]
    assert consumer.resumed == [paused]
    assert recovery.active_offsets[stalled] == 3 and recovery.active_offsets[busy] == 1
    assert watch.counters["recovery_ends"] == 1 and watch.counters["recovery_seeks"] == 2
    # looked at again at once: nothing acted on twice within the stall time
    asyncio.run(watch.check())
    assert len(consumer.sought) == 2 and watch.counters["recovery_seeks"] == 2


def test_a_partition_still_stalled_after_its_seek_is_taken_as_read_only_if_the_broker_has_not_its_record():
    missing, readable, away = (TP("t-changelog", p) for p in range(3))
    now = time.monotonic()
    consumer = StandInConsumer({missing: 4, readable: 4, away: 4}, paused=set())
    app = recovering(now, received={tp: now - 100 for tp in (missing, readable, away)},
                     offsets=dict.fromkeys((missing, readable, away), 3),
                     highwaters=dict.fromkeys((missing, readable, away), 8), consumer=consumer)
    watch = RecoveryWatch(app, Settings())
    watch._acted_at = dict.fromkeys((missing, readable, away), now - 30)  # sought 30 s ago, nothing since
    asked: list[tuple[TP, int]] = []

    def broker_has(tp: TP, offset: int) -> bool | None:
        asked.append((tp, offset))
        return {missing: False, readable: True, away: None}[tp]

    watch._readable = broker_has  # type: ignore[method-assign]
    asyncio.run(watch.check())
    assert sorted(asked) == [(missing, 4), (readable, 4), (away, 4)]
    assert app.tables.recovery.active_offsets[missing] == 8  # the broker answers and has not got it
    assert consumer.sought == [(readable, 4)]  # it has it: sought again
    assert app.tables.recovery.active_offsets[away] == 3  # the broker away: the recovery waits for it
    assert watch.counters["recovery_ends"] == 1 and watch.counters["recovery_seeks"] == 1


def test_the_watch_does_nothing_outside_a_recovery():
    consumer = StandInConsumer({}, set())
    app = recovering(time.monotonic(), {}, {TP("t", 0): 1}, {TP("t", 0): 8}, consumer)
    app.tables.recovery.in_recovery = False
    asyncio.run(RecoveryWatch(app, Settings()).check())
    assert consumer.sought == []


def test_the_direct_read_tells_a_record_the_broker_has_from_one_it_has_not_and_from_a_broker_away(settings):
    from confluent_kafka import Producer

    from surgegate.devtools.embedded import free_port

    topic = settings.topic_prefix + "changelog-probe"
    producer = Producer({"bootstrap.servers": settings.kafka})
    for i in range(3):
        producer.produce(topic, b"v%d" % i, partition=0)
    producer.flush(10)
    watch = RecoveryWatch(SimpleNamespace(), settings)
    assert watch._readable(TP(topic, 0), 2) is True
    assert watch._readable(TP(topic, 0), 3) is False  # past the end: the broker answers and has none
    away = RecoveryWatch(SimpleNamespace(), settings.replace(kafka=f"127.0.0.1:{free_port()}"))
    assert away._readable(TP(topic, 0), 0) is None
