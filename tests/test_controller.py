"""The service controller: one object the decide agent and the simulator both step."""

from __future__ import annotations

import pytest
from test_throttle import even, stats

from surgegate.admission.gate import Admission
from surgegate.control.config import ServiceConfig
from surgegate.control.controller import ServiceController, ServiceWindow
from surgegate.schemas.aggregates import PoolStats

CONFIG = ServiceConfig(service="chat", pool="gpu-a", replica_rps=1000.0, replicas=10, slo_p99_ms=2000.0)
T0 = 1_767_225_600_000


def window(start: int, window_ms: int, total: float, pool: PoolStats | None = None) -> ServiceWindow:
    tiers = {t: stats(rt, b) for t, (rt, b) in even(total).items()}
    return ServiceWindow(window_start=start, window_ms=window_ms, service=stats(total * 0.8, total * 0.2),
                         tiers=tiers, pool=pool)


def pool(ready: int, starting: int = 0) -> PoolStats:
    return PoolStats(samples=ready, utilisation_mean=0.5, utilisation_max=0.6, kv_cache_mean=0.0, kv_cache_max=0.0,
                     queue_depth=0, queue_depth_max=0, running_requests=0, tokens_per_s=0.0,
                     workers=ready + starting, ready_replicas=ready, cold_starting_replicas=starting)


def test_a_burst_raises_the_level_and_the_pool_together():
    c = ServiceController(CONFIG)
    calm = c.step(window(T0, 10_000, 2_000, pool(10)))
    burst = c.step(window(T0 + 10_000, 10_000, 60_000, pool(10)))
    assert calm.throttle.level == 0 and burst.throttle.level > 0
    assert burst.scaling.desired_replicas > calm.scaling.desired_replicas
    assert burst.throttle.version == burst.scaling.version == burst.threshold.window_start == T0 + 10_000


def test_a_window_already_decided_is_recognised_as_a_replay():
    c = ServiceController(CONFIG)
    c.step(window(T0, 10_000, 2_000))
    assert c.decided(T0) and c.decided(T0 - 10_000) and not c.decided(T0 + 10_000)


def test_without_pool_reports_the_last_scaling_decision_is_taken_as_carried_out():
    c = ServiceController(CONFIG)
    assert c.ready_replicas(None) == CONFIG.replicas
    out = c.step(window(T0, 10_000, 60_000))
    assert c.ready_replicas(None) == out.scaling.desired_replicas != CONFIG.replicas
    assert c.ready_replicas(pool(3)) == 3


def test_the_same_windows_give_the_same_outputs():
    seq = [window(T0 + i * 10_000, 10_000, x, pool(10)) for i, x in enumerate([2_000, 40_000, 40_000, 5_000])]
    a, b = ServiceController(CONFIG), ServiceController(CONFIG)
    assert [a.step(w) for w in seq] == [b.step(w) for w in seq]


@pytest.mark.parametrize(("before_s", "after_s"), [(10, 5), (5, 10), (10, 20)])
def test_decisions_after_a_change_of_window_length_are_still_newer_for_an_edge(before_s, after_s):
    gate = Admission("chat", tiers=("enterprise", "pro", "free"), clock=lambda: 0.0, wall=lambda: T0 / 1000)
    before = ServiceController(CONFIG)
    for i in range(3):
        assert gate.apply(before.step(window(T0 + i * before_s * 1000, before_s * 1000, 2_000)).throttle)
    # the worker restarts with another SURGEGATE_WINDOW_S; windows go on from where they were
    after = ServiceController(CONFIG)
    start = T0 + 3 * before_s * 1000
    start -= start % (after_s * 1000)
    start += after_s * 1000
    out = after.step(window(start, after_s * 1000, 2_000))
    assert gate.apply(out.throttle), "a decision from a later window must not look stale"
    assert gate.decision.version == start and gate.counts["stale_versions"] == 0
