"""After a rebalance, a source partition with nothing committed is read from its start.

Faust gives up the records it fetched but had not handed to an agent when a
rebalance begins, and counts on a seek back to the committed offsets; with
nothing committed (a broker replaced by an empty one, a new group) aiokafka
does not seek, and those records were lost. ``NewLogs.on_assigned`` seeks
those partitions to offset 0 itself. (The chaos test's broker phase runs it
live; here the consumer is a stand-in that records the seeks.)
"""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

from aiokafka.errors import KafkaConnectionError
from faust.types import TP

from surgegate.agents.new_logs import NewLogs
from surgegate.settings import Settings

SOURCE, CHANGELOG = "sg.partials", "sg.surgegate-scope_windows-changelog"


class RecordingConsumer:
    """What ``on_assigned`` uses of Faust's consumer: a seek."""

    def __init__(self) -> None:
        self.seeks: dict[TP, int] = {}

    async def seek(self, tp: TP, offset: int) -> None:
        self.seeks[tp] = offset


def _rebalance(committed: dict[TP, int | None] | Exception) -> tuple[RecordingConsumer, NewLogs]:
    consumer = RecordingConsumer()
    logs = NewLogs(SimpleNamespace(consumer=consumer), Settings(), [SOURCE])  # type: ignore[arg-type]

    async def asked(partitions: list[TP]) -> dict[TP, int | None]:
        assert all(tp.topic == SOURCE for tp in partitions), "only the agents' sources are asked about"
        if isinstance(committed, Exception):
            raise committed
        return {tp: committed[tp] for tp in partitions}

    logs.committed = asked  # type: ignore[method-assign]  # the group's offsets, as the broker would answer
    assigned = {TP(SOURCE, p) for p in range(4)} | {TP(CHANGELOG, 0)}
    asyncio.run(logs.on_assigned(assigned))
    return consumer, logs


def test_only_source_partitions_with_nothing_committed_are_sought_to_their_start():
    # nothing committed on partition 0, 0 on partition 2 (aiokafka does not seek to 0 either), the changelog
    # (which Faust's table recovery positions) has nothing committed and is left alone
    consumer, logs = _rebalance({TP(SOURCE, 0): None, TP(SOURCE, 1): 4, TP(SOURCE, 2): 0, TP(SOURCE, 3): 17,
                                 TP(CHANGELOG, 0): None})
    assert consumer.seeks == {TP(SOURCE, 0): 0, TP(SOURCE, 2): 0}
    assert logs.counters["rewound"] == 2


def test_a_broker_that_does_not_answer_leaves_the_partitions_where_they_are_without_failing_the_rebalance():
    consumer, logs = _rebalance(KafkaConnectionError("the broker went away again"))
    assert consumer.seeks == {}
    assert logs.counters["rewound"] == 0
