"""A worker away for several windows while the edges keep sending: the outage's windows come out exact, none late."""

from __future__ import annotations

import signal
import time

import pytest
from support import WINDOW_S, Edge, W, WindowFollower, eventually

pytestmark = pytest.mark.e2e

#: long against a window and the allowed lateness, so a worker that closed the outage's windows before reading its
#: backlog (the idle rule following the wall clock while it rejoins its group) would publish them short
OUTAGE_S = 5 * WINDOW_S


def test_a_worker_outage_of_several_windows_leaves_the_outage_windows_exact(settings, worker_factory):
    worker = worker_factory("w1")
    follower = WindowFollower(settings)
    edge = Edge(settings, rate=100).start()
    try:
        first = (int(time.time() * 1000) // W + 1) * W
        eventually(lambda: first in follower.windows, 60, "the first full window before the outage")
        worker.stop(signal.SIGKILL)
        time.sleep(OUTAGE_S)  # the outage itself
        back = int(time.time() * 1000)
        worker_factory("w1")  # the same member back: it reads its backlog from the committed offsets
        after = (back // W + 2) * W
        eventually(lambda: after in follower.windows, 90, "a window sent after the restart")
        edge.sending.clear()
        edge.producer.flush(10)
        last = max(edge.sent)
        eventually(lambda: last in follower.windows, 90, f"the window at {last}")
        # a window published twice (a restart between publishing and saving) would show within its lateness
        time.sleep(settings.lateness_s + W / 1000)
        full = {start: n for start, n in edge.sent.items() if start >= first}
        published = {start: follower.windows.get(start) for start in full}
        assert published == full, (f"sent {sorted(full.items())}, published {sorted(follower.published.items())}, "
                                   f"late {follower.late}, edge delivery failures {edge.producer.sender.failed}")
        assert not any(follower.late.values()), f"late events: {follower.late}"
    finally:
        edge.stop()
        follower.stop()
