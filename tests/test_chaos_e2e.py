"""The short chaos runs CI does: Redis, an edge and the broker killed under load, then every worker at once;
every event accounted.

The worker fault is in `surgegate chaos` but not in this run: a worker SIGKILLed mid-stream lost events about
one run in ten until an unfinished cut was cut again where it had been (test_ingest_e2e.py), and once in 83
runs since, with another signature not explained yet (docs/reliability.md); it would make this test fail
at random. The 30 s worker outage and a worker killed mid-stream have their own tests
(test_worker_outage_e2e.py, test_pipeline_e2e.py).
"""

from __future__ import annotations

import dataclasses

import pytest

from surgegate.devtools.chaos import Chaos, Timing, table

pytestmark = pytest.mark.e2e


def test_every_event_is_accounted_for_through_redis_edge_and_broker_faults():
    accounts = Chaos(Timing.short(), rate=200.0, faults=("redis", "edge", "broker"), log=lambda line: None).run()
    report = table(accounts)
    assert [a.fault for a in accounts] == ["baseline", "redis", "edge", "broker"], report
    for a in accounts:
        assert a.unaccounted == 0, report
        # the pipeline went on through each fault with what reached the broker (a renewed edge producer counts the
        # records it had in flight as failed: on a loaded machine, hundreds)
        assert a.in_windows > 0.9 * (a.produced - a.failed - a.lost), report
        assert a.invalid > 0, report
    for a in accounts[:2]:  # nothing can be lost by a Redis fault, and the malformed are all caught
        assert a.lost == 0 and a.failed == 0 and a.late == 0 and a.dead_lettered == a.invalid, report


def test_every_worker_killed_at_once_and_restarted_closes_no_window_before_every_partition_is_claimed():
    # two workers SIGKILLed together, back after 15 s (longer than a silent member holds the watermark), the second
    # 3 s after the first: the first reads every partition, then gives two up to the second. Windows must wait for
    # the second's claim on them; before the claims said which partitions they cover, 1,514 of 9,600 events came
    # late here (the first member's claim closed the windows on its own)
    timing = dataclasses.replace(Timing.short(), outage_s=15.0)
    accounts = Chaos(timing, rate=200.0, workers=2, faults=("workers",), log=lambda line: None).run()
    report = table(accounts)
    assert [a.fault for a in accounts] == ["baseline", "workers"], report
    for a in accounts:
        assert a.unaccounted == 0 and a.late == 0 and a.failed == 0, report
        assert a.dead_lettered == a.invalid > 0, report
