"""The short chaos run CI does: worker, Redis, an edge and the broker killed under load, every event accounted."""

from __future__ import annotations

import pytest

from surgegate.devtools.chaos import Chaos, Timing, table

pytestmark = pytest.mark.e2e


def test_every_event_is_accounted_for_through_worker_redis_edge_and_broker_faults():
    accounts = Chaos(Timing.short(), rate=200.0, log=lambda line: None).run()
    report = table(accounts)
    assert [a.fault for a in accounts] == ["baseline", "worker", "redis", "edge", "broker"], report
    for a in accounts:
        assert a.unaccounted == 0, report
        assert a.in_windows > 0.9 * a.produced, report  # the pipeline went on through each fault
        assert a.invalid > 0, report
    for a in accounts[:3]:  # nothing can be lost by a worker or Redis fault, and the malformed are all caught
        assert a.lost == 0 and a.failed == 0 and a.late == 0 and a.dead_lettered == a.invalid, report
