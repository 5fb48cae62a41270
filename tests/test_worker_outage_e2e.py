"""A worker away for 30 s while the edges keep sending: the outage's windows come out exact, none late."""

from __future__ import annotations

import signal
import time

import pytest
from support import Edge, W, WindowFollower, eventually

pytestmark = pytest.mark.e2e

OUTAGE_S = 30


def test_a_30_s_worker_outage_leaves_the_outage_windows_exact(settings, worker_factory):
    worker = worker_factory("w1")
    follower = WindowFollower(settings)
    edge = Edge(settings, rate=100).start()
    try:
        first = (int(time.time() * 1000) // W + 1) * W
        eventually(lambda: first in follower.windows, 60, "the first full window before the outage")
        worker.stop(signal.SIGKILL)
        time.sleep(OUTAGE_S)
        worker_factory("w1")  # the same member back: it reads its backlog from the committed offsets
        time.sleep(20)
        edge.sending.clear()
        edge.producer.flush(10)
        last = max(edge.sent)
        eventually(lambda: last in follower.windows, 90, f"the window at {last}")
        time.sleep(3)  # a window published twice (a restart between publishing and saving) would show here
        full = {start: n for start, n in edge.sent.items() if start >= first}
        published = {start: follower.windows.get(start) for start in full}
        assert published == full, f"sent {sorted(full.items())}, published {sorted(published.items())}"
        assert not any(follower.late.values()), f"late events: {follower.late}"
    finally:
        edge.stop()
        follower.stop()
