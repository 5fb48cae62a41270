"""Pure stage-1 / stage-2 aggregation: counts, percentiles, equivalences, replays."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from surgegate.schemas.aggregates import SourceRange
from surgegate.schemas.telemetry import MetricEvent, RequestEvent
from surgegate.telemetry.merging import ZERO_FILL_WINDOWS, ScopeWindows, merge_all
from surgegate.telemetry.sketch import RELATIVE_ACCURACY, LogHistogram
from surgegate.telemetry.summaries import summarize
from surgegate.telemetry.watermarks import MemberMarks
from surgegate.telemetry.windowing import PartialAggregator

W = 10_000
T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z, a window boundary


def make_events(n: int, seed: int = 1, windows: int = 3) -> list[RequestEvent]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        slow = rng.random() < 0.1
        streamed = rng.random() < 0.4  # an LLM response streamed through the gateway: TTFT and ITL measured
        out.append(RequestEvent(
            ts=T0 + rng.randrange(windows * W), service=rng.choice(["chat", "embed"]),
            tenant=rng.choice(["acme", "globex", "initech"]), tier=rng.choice(["free", "pro"]),
            edge_id="edge-1", latency_ms=rng.uniform(2000, 9000) if slow else rng.uniform(5, 200),
            queue_ms=rng.uniform(0, 50), status=rng.choice(["ok"] * 8 + ["error", "throttled", "deferred"]),
            request_type=rng.choice(["realtime", "batch"]), input_tokens=rng.randrange(500),
            output_tokens=rng.randrange(300), cache_hit=rng.random() < 0.2, replayed=rng.random() < 0.05,
            ttft_ms=rng.uniform(20, 900) if streamed else None, itl_ms=rng.uniform(5, 60) if streamed else None,
        ))
    return out


def run_pipeline(events, cuts: int = 3) -> list:
    """Stage 1 over `cuts` source ranges, then stage 2."""
    agg = PartialAggregator(W)
    partials = []
    size = max(1, len(events) // cuts)
    for i in range(0, len(events), size):
        for ev in events[i:i + size]:
            agg.add(ev)
        partials += agg.drain(SourceRange("sg.requests", 0, i, i + size - 1))
    return merge_all(partials, W, watermark=T0 + 100 * W, lateness_ms=5_000)


def by_identity(stats):
    return {s.identity: s for s in stats}


def test_counts_and_percentiles_match_the_raw_events():
    events = make_events(5000)
    stats = by_identity(run_pipeline(events))
    for i in range(3):
        start = T0 + i * W
        mine = [e for e in events if e.service == "chat" and start <= e.ts < start + W]
        s = stats[("service=chat", start)].traffic
        deferred = [e for e in mine if e.status == "deferred"]
        assert s.deferred == len(deferred) > 0
        mine = [e for e in mine if e.status != "deferred"]  # backlog, reported again when it runs
        assert s.requests == len(mine)
        assert s.realtime + s.batch == len(mine)
        assert s.throttled == sum(e.status == "throttled" for e in mine)
        assert s.error == sum(e.status == "error" for e in mine)
        assert s.input_tokens == sum(e.input_tokens for e in mine)
        assert s.rate_rps == pytest.approx(len(mine) / 10)
        served = sorted(e.latency_ms for e in mine if e.status != "throttled")
        for q, got in ((0.5, s.latency_p50_ms), (0.9, s.latency_p90_ms), (0.99, s.latency_p99_ms)):
            exact = served[int(q * (len(served) - 1))]
            assert abs(got - exact) <= RELATIVE_ACCURACY * exact + 1e-3
        assert s.latency_max_ms == pytest.approx(max(served), abs=1e-3)
        assert s.over_2s_share == pytest.approx(sum(v > 2000 for v in served) / len(served), abs=1e-6)


def test_demand_counts_new_arrivals_not_deferred_work_run_later():
    def ev(status="ok", replayed=False):
        return RequestEvent(ts=T0 + 1, service="chat", tenant="a", tier="free", edge_id="e", latency_ms=5.0,
                            status=status, replayed=replayed)

    events = [ev() for _ in range(7)] + [ev(replayed=True) for _ in range(3)] + [ev("deferred")] * 2 + [ev("throttled")]
    s = by_identity(run_pipeline(events, cuts=1))[("service=chat", T0)].traffic
    assert (s.requests, s.replayed, s.deferred) == (11, 3, 2)
    assert s.rate_rps == pytest.approx(1.1)  # load: what ran or was refused
    assert s.demand == s.demand_rps == pytest.approx((11 - 3 + 2) / 10)  # demand: what arrived


def test_scopes_per_service_tier_and_tenant_add_up():
    stats = by_identity(run_pipeline(make_events(3000)))
    for i in range(3):
        start = T0 + i * W
        total = stats[("service=embed", start)].traffic.requests
        tiers = sum(stats[(f"service=embed,tier={t}", start)].traffic.requests for t in ("free", "pro"))
        tenants = sum(stats[(f"service=embed,tenant={t}", start)].traffic.requests
                      for t in ("acme", "globex", "initech"))
        assert total == tiers == tenants


def test_summaries_and_single_events_give_identical_windows():
    events = make_events(4000, seed=7)
    assert run_pipeline(events) == run_pipeline(summarize(events))


def test_how_events_are_cut_into_partials_does_not_change_the_windows():
    events = make_events(2000, seed=3)
    assert run_pipeline(events, cuts=1) == run_pipeline(events, cuts=17)


def test_a_replayed_partial_is_recognised_and_not_counted_twice():
    agg = PartialAggregator(W)
    for ev in make_events(500):
        agg.add(ev)
    partials = agg.drain(SourceRange("sg.requests", 2, 0, 499))
    state = ScopeWindows(scope="service=chat", window_ms=W)
    mine = [p for p in partials if p.scope == "service=chat"]
    assert [state.add(p) for p in mine] == ["merged"] * len(mine)
    assert [state.add(p) for p in mine] == ["duplicate"] * len(mine)
    once = ScopeWindows(scope="service=chat", window_ms=W)
    for p in mine:
        once.add(p)
    assert state.close(T0 + 50 * W, 0) == once.close(T0 + 50 * W, 0)


def test_an_event_for_a_closed_window_is_counted_late_in_the_next_window():
    agg = PartialAggregator(W)
    state = ScopeWindows(scope="service=chat", window_ms=W)
    agg.add(make_events(1, windows=1)[0].__replace__(service="chat", ts=T0 + 1))
    for p in agg.drain(SourceRange("sg.requests", 0, 0, 0)):
        if p.scope == "service=chat":
            state.add(p)
    assert [s.window_start for s in state.close(T0 + W + 5_000, 5_000)] == [T0]
    agg.add(make_events(1, windows=1)[0].__replace__(service="chat", ts=T0 + 2))
    late = [p for p in agg.drain(SourceRange("sg.requests", 0, 1, 1)) if p.scope == "service=chat"]
    assert state.add(late[0]) == "late"
    nxt = state.close(T0 + 2 * W + 5_000, 5_000)
    assert [(s.window_start, s.late_events, s.traffic.requests) for s in nxt] == [(T0 + W, 1, 0)]


def test_quiet_windows_are_zeros_for_a_while_then_the_scope_goes_quiet():
    agg = PartialAggregator(W)
    agg.add(make_events(1, windows=1)[0].__replace__(service="chat", ts=T0))
    state = ScopeWindows(scope="service=chat", window_ms=W)
    for p in agg.drain(SourceRange("sg.requests", 0, 0, 0)):
        if p.scope == "service=chat":
            state.add(p)
    out = state.close(T0 + 1000 * W, 0)
    assert len(out) == 1 + ZERO_FILL_WINDOWS
    assert all(s.traffic.requests == 0 for s in out[1:])
    assert [s.window_start for s in out] == [T0 + i * W for i in range(ZERO_FILL_WINDOWS + 1)]


def test_pool_windows_report_latest_state_per_worker():
    agg = PartialAggregator(W)
    agg.add(MetricEvent(ts=T0 + 1, pool="a100", worker_id="w1", utilisation=0.5, state="cold_starting",
                        queue_depth=3))
    agg.add(MetricEvent(ts=T0 + 2, pool="a100", worker_id="w1", utilisation=0.7, queue_depth=5))
    agg.add(MetricEvent(ts=T0 + 3, pool="a100", worker_id="w2", utilisation=0.9, state="cold_starting",
                        kv_cache_use=0.4, queue_depth=1))
    [stats] = merge_all(agg.drain(SourceRange("sg.metrics", 0, 0, 2)), W, T0 + W, 0)
    g = stats.gpu
    assert (g.workers, g.ready_replicas, g.cold_starting_replicas) == (2, 1, 1)
    assert g.utilisation_mean == pytest.approx(0.7) and g.utilisation_max == 0.9
    assert (g.queue_depth, g.queue_depth_max) == (6, 5)


def test_drainers_backlog_reports_are_summed_apart_from_the_replicas():
    agg = PartialAggregator(W)
    agg.add(MetricEvent(ts=T0 + 1, pool="a100", worker_id="w1", utilisation=0.6, queue_depth=2))
    drainer = {"pool": "a100", "utilisation": 0.0, "kind": "drainer"}
    agg.add(MetricEvent(ts=T0 + 2, worker_id="d1", queue_depth=40, backlog_tokens=4000, backlog_oldest_ms=9000.0,
                        backlog_required_rps=1.5, **drainer))
    agg.add(MetricEvent(ts=T0 + 5, worker_id="d1", queue_depth=30, backlog_tokens=3000, backlog_oldest_ms=8000.0,
                        backlog_required_rps=1.0, **drainer))
    first = agg.drain(SourceRange("sg.metrics", 0, 0, 2))
    agg.add(MetricEvent(ts=T0 + 3, worker_id="d2", queue_depth=5, backlog_tokens=500, backlog_oldest_ms=20000.0,
                        backlog_required_rps=0.25, **drainer))
    [stats] = merge_all(first + agg.drain(SourceRange("sg.metrics", 1, 0, 0)), W, T0 + W, 0)
    g = stats.gpu
    # the replica's figures are its own: a drainer is not a replica
    assert (g.workers, g.samples, g.queue_depth, g.utilisation_mean) == (1, 1, 2, pytest.approx(0.6))
    # each drainer's latest report, summed across partials
    assert (g.backlog_tasks, g.backlog_tokens, g.backlog_oldest_ms, g.backlog_required_rps) == (35, 3500, 20000.0,
                                                                                                1.25)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(min_value=0.0, max_value=3_600_000.0), min_size=1, max_size=300),
       st.floats(min_value=0.0, max_value=1.0))
def test_sketch_quantiles_stay_within_relative_accuracy(values, q):
    h = LogHistogram()
    h.extend(values)
    exact = sorted(values)[int(q * (len(values) - 1))]
    assert abs(h.quantile(q) - exact) <= RELATIVE_ACCURACY * exact + 1e-3


@settings(max_examples=100, deadline=None)
@given(st.lists(st.floats(min_value=0.0, max_value=1e6), max_size=100),
       st.lists(st.floats(min_value=0.0, max_value=1e6), max_size=100))
def test_merging_sketches_equals_adding_all_values(a, b):
    ha, hb, hall = LogHistogram(), LogHistogram(), LogHistogram()
    ha.extend(a)
    hb.extend(b)
    hall.extend(a + b)
    ha.merge(hb)
    assert (ha.bins, ha.zeros, ha.max) == (hall.bins, hall.zeros, hall.max)


def test_ttft_and_inter_token_latency_reach_the_window_from_events_and_summaries_alike():
    events = make_events(3000, seed=11)
    for windows in (run_pipeline(events), run_pipeline(summarize(events))):
        chat = [w for w in windows if w.scope == "service=chat" and w.traffic.requests]
        assert chat and all(w.traffic.ttft_p50_ms is not None and w.traffic.itl_p99_ms is not None for w in chat)
        assert all(20 * 0.99 <= w.traffic.ttft_p50_ms <= w.traffic.ttft_p99_ms <= 900 * 1.01 for w in chat)
    plain = [e.__replace__(ttft_ms=None, itl_ms=None) for e in events]
    assert all(w.traffic.ttft_p50_ms is None for w in run_pipeline(plain) if w.traffic is not None)


# ------------------------------------------------------------ several ingest members


def test_a_member_reading_a_backlog_holds_the_partition_until_it_has_read_it():
    marks = MemberMarks(silent_ms=20_000)
    assert marks.heard("caught-up", T0 + 60_000, at=T0 + 60_000) == T0 + 60_000
    # another member joins with a backlog: its claim, not the newest, is the partition's
    assert marks.heard("backlog", T0 + 5_000, at=T0 + 60_500) == T0 + 5_000
    assert marks.heard("caught-up", T0 + 61_000, at=T0 + 61_000) == T0 + 5_000
    assert marks.heard("backlog", T0 + 61_000, at=T0 + 61_500) == T0 + 61_000


def test_a_dead_members_last_claim_holds_until_its_successor_claims_then_is_forgotten():
    marks = MemberMarks(silent_ms=20_000)
    marks.heard("a", T0 + 10_000, at=T0 + 10_000)
    marks.heard("b", T0 + 10_000, at=T0 + 10_000)  # a dies now, with a backlog unread
    assert marks.heard("b", T0 + 18_000, at=T0 + 18_000) == T0 + 10_000
    # b takes a's partitions over and claims from their backlog again
    assert marks.heard("b", 0, at=T0 + 19_000) == 0
    assert marks.heard("b", T0 + 25_000, at=T0 + 29_000) == T0 + 10_000  # a not silent for 20 s yet
    assert marks.heard("b", T0 + 31_000, at=T0 + 31_000) == T0 + 31_000 and set(marks.members) == {"b"}


def test_marks_read_out_of_time_order_do_not_turn_the_partitions_clock_back():
    marks = MemberMarks(silent_ms=20_000)
    marks.heard("a", T0, at=T0 + 30_000)
    marks.heard("b", T0 + 40_000, at=T0 + 5_000)  # a host whose clock is behind: heard now, not 25 s ago
    assert marks.clock == T0 + 30_000 and marks.low() == T0


@given(st.lists(st.tuples(st.sampled_from("abcd"), st.integers(0, 10**6), st.integers(0, 10**5)), min_size=1))
def test_the_partition_watermark_is_the_lowest_claim_of_the_members_heard_lately(claims):
    marks = MemberMarks(silent_ms=20_000)
    last: dict[str, tuple[int, int]] = {}
    clock = 0
    for member, mark, at in claims:
        clock = max(clock, at)
        last[member] = (mark, clock)
        low = marks.heard(member, mark, at)
        assert low == min(m for m, heard in last.values() if heard >= clock - 20_000)
        assert low <= mark  # the member just heard always counts


@given(st.lists(st.tuples(st.sampled_from("abc"), st.integers(0, 10**6), st.integers(0, 10**5),
                          st.sets(st.integers(0, 3))), min_size=1))
def test_the_watermark_moves_past_its_last_covered_value_only_while_every_source_partition_is_claimed(claims):
    marks = MemberMarks(silent_ms=20_000)
    last: dict[str, tuple[int, int, set[int]]] = {}
    clock, covered_at = 0, -1
    for member, mark, at, owns in claims:
        clock = max(clock, at)
        last[member] = (mark, clock, owns)
        low = marks.heard(member, mark, at, owns=[f"r:{p}" for p in sorted(owns)], sources=4)
        lately = [(m, o) for m, heard, o in last.values() if heard >= clock - 20_000]
        lowest = min(m for m, _ in lately)
        if set().union(*(o for _, o in lately)) == {0, 1, 2, 3}:
            assert low == lowest
            covered_at = low
        else:  # some partition has no claim: held where it was, never past what was covered
            assert low == min(lowest, covered_at)


def test_a_member_that_does_not_say_what_it_reads_is_taken_to_read_everything():
    marks = MemberMarks(silent_ms=20_000)
    marks.heard("new", T0 + 5_000, at=T0, owns=["r:0"], sources=4)
    assert marks.heard("old", T0 + 7_000, at=T0) == T0 + 5_000  # an older ingest: no owns, covers everything
