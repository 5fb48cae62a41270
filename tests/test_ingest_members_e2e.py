"""Two ingest members, one of them stuck with a backlog: windows close at the lowest claim, not the newest."""

from __future__ import annotations

import threading
import time

import msgspec
import pytest
from confluent_kafka import Producer
from support import TopicReader, eventually, start_thread
from test_pipeline_e2e import reference, traffic, windows_of

from surgegate.schemas.aggregates import Watermark
from surgegate.streams.ingest import IngestWorker
from surgegate.streams.topics import Topics

pytestmark = pytest.mark.e2e


@pytest.fixture
def settings(settings):
    # one-second windows closed the moment the watermark passes them: any window closed before a backlog is
    # read shows as a short window
    return settings.replace(window_s=1.0, lateness_s=0.0, idle_after_s=0.5)


class StuckOnRecords(IngestWorker):
    """Hangs on the first batch holding a record, as a worker stuck in a call would, until released."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.stuck = threading.Event()
        self.release = threading.Event()

    def process(self, messages):
        if any(m.error() is None for m in messages):
            self.stuck.set()
            self.release.wait(120)
            raise RuntimeError("stuck member released")
        super().process(messages)


def test_a_stuck_members_backlog_is_read_by_its_successor_into_windows_nobody_closed(settings, worker_factory):
    topics = Topics(settings.topic_prefix)
    partials = TopicReader(settings, topics.partials)
    worker_factory()  # its ingest member, w1-ingest, reads every partition to its end and claims the wall clock
    partials.poll_until(lambda m: any(b'"w1-ingest"' in x.value() for x in m), 60, "the worker's first claim")

    stuck = StuckOnRecords(settings, member_id="a-ingest", redis_url="")
    thread, raised = start_thread(stuck.run)
    try:
        eventually(lambda: any(t == topics.requests for t, _ in stuck.member.parts) and stuck.member.mark > 0, 60,
                   "the second member to own request partitions and claim the wall clock")

        # stamped 2 s ahead (within the allowed skew): no claim made before they were read can pass them
        now = int(time.time() * 1000) + 2000
        events = [msgspec.structs.replace(ev, ts=now + i % 500) for i, ev in
                  enumerate(traffic("chat", range(1), 600, seed=21))]
        producer = Producer({"bootstrap.servers": settings.kafka, "log_level": 0})
        for i, ev in enumerate(events):
            producer.produce(topics.requests, msgspec.json.encode(ev), partition=i % settings.partitions)
        assert producer.flush(10) == 0
        eventually(stuck.stuck.is_set, 30, "the second member to get stuck on its records")

        # its records are read again only once the group gives up on it (max.poll.interval.ms), long after
        # the worker's own claim has passed them; the worker's member then reads them
        windows = TopicReader(settings, topics.windows)
        wanted = reference(events, settings, until=now + 60_000)
        windows.poll_until(lambda _: set(wanted) <= set(windows_of(windows, "service=chat")), 90,
                           "the windows of every event")
        assert windows_of(windows, "service=chat") == wanted  # every scope of the events is a service=chat one
        partials.read_to_end()
        claims = [msgspec.json.decode(m.value(), type=Watermark).watermark for m in partials.messages
                  if m.partition() == 0 and b'"w1-ingest"' in m.value()]
        assert any(after < before for before, after in zip(claims, claims[1:])), \
            "the worker's member should have claimed afresh (back to the backlog) on taking the stuck member's"
    finally:
        stuck.release.set()
        thread.join(30)
    assert not thread.is_alive() and [str(e) for e in raised] == ["stuck member released"]
