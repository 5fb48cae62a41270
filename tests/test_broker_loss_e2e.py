"""The broker replaced by an empty one: every process recovers by itself, nothing is lost unseen.

The test runs its own broker (the session's is shared), kills it mid-stream and
starts an empty one on the same address. Neither the worker nor the sending
edge is restarted: the edge's producer renews itself (the new broker does not
know its producer id), the worker's topic keeper re-creates the topics, the
ingest tells the new logs from the old and the merge stage keeps its open
windows. Every event the edge sent is in a published window, or counted as
failed by the producer that sent it.

A memory-only broker that dies takes the records it acknowledged but nobody
had read yet with it (a replicated cluster does not); the edge pauses before the
broker is killed so that the test counts what surgegate loses, not what the
broker did.
"""

from __future__ import annotations

import contextlib
import time

import pytest
import redis
from support import Edge, W, WindowFollower, WorkerProcess, eventually

from surgegate.devtools.embedded import EmbeddedBroker
from surgegate.errors import DeliveryFailed
from surgegate.streams.topics import create_topics

pytestmark = pytest.mark.e2e

RATE = 100  # events per second from the edge
OUTAGE_S = 3


def _mid_window() -> None:
    """Sleep until the middle of the current window: far from any window's closing."""
    now = time.time()
    wait = (W / 2000 - now % (W / 1000)) % (W / 1000)
    time.sleep(wait)


def test_the_broker_replaced_by_an_empty_one_is_recovered_without_restarting_any_process(settings, tmp_path):
    broker = EmbeddedBroker().start()
    replacement: EmbeddedBroker | None = None
    # 4 partitions, as the embedded broker gives a topic that Faust's client has it auto-create (see
    # streams/topics.py:keep_topics)
    settings = settings.replace(kafka=broker.bootstrap, topic_prefix="lost.", partitions=4)
    redis_url = settings.redis
    create_topics(settings)
    worker = WorkerProcess(settings, tmp_path / "worker.log").start()
    follower = WindowFollower(settings)
    edge = Edge(settings, RATE).start()
    try:
        first = (int(time.time() * 1000) // W + 1) * W
        eventually(lambda: first in follower.windows, 60, "a first full window from the old broker")
        # nothing in the old broker that only it holds: the edge pauses, what it sent is read and merged
        edge.sending.clear()
        edge.producer.flush(10)
        _mid_window()
        broker.stop()
        edge.sending.set()  # the edge goes on while the broker is away
        time.sleep(OUTAGE_S)  # the outage itself
        replacement = EmbeddedBroker(port=broker.port).start()
        sender = edge.producer.sender

        def diagnosis() -> str:
            counters = redis.Redis.from_url(redis_url).hgetall("lost:counters")
            return (f"sent per window {sorted(edge.sent.items())}, published {sorted(follower.windows.items())}; "
                    f"delivered {sender.delivered}, failed {sender.failed}; worker counters {counters}\n"
                    f"{worker.log()}")

        back = (int(time.time() * 1000) // W + 3) * W
        try:
            eventually(lambda: back in follower.windows, 90, "windows from the new broker")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{diagnosis()}") from None
        edge.sending.clear()
        with contextlib.suppress(DeliveryFailed):  # records the renewed producer counted as failed: see below
            edge.producer.flush(30)

        last = max(edge.sent)
        try:
            eventually(lambda: last in follower.windows, 60, f"the window at {last} published by the new broker")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{diagnosis()}") from None
        assert worker.proc is not None and worker.proc.poll() is None, worker.log()
        assert sender.renewals >= 1, "the producer never noticed the new broker did not know it"
        sent = sum(edge.sent.values())
        assert sender.delivered + sender.failed == sent
        in_windows = sum(n for start, n in follower.windows.items() if start >= min(edge.sent))
        assert in_windows == sender.delivered, diagnosis()
        # nearly all of it made it: only what was in flight when the producer renewed may have failed
        assert sender.failed < RATE * 5
    finally:
        edge.stop()
        follower.stop()
        worker.stop()
        if replacement is not None:
            replacement.stop()
        broker.stop()
