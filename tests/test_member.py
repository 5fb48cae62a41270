"""An ingest member's claim on event time: unit tests and properties over any sequence of what can happen."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from surgegate.telemetry.member import BROKER_GRACE_S, MemberWatermark

R0, R1, M0 = ("sg.requests", 0), ("sg.requests", 1), ("sg.metrics", 0)


def test_a_backlog_holds_the_claim_at_its_lowest_event_time_until_read():
    m = MemberWatermark(idle_after_s=1.0)
    m.assign({R0: 0, R1: 0}, now=0.0)
    m.read(R0, 0, 50_000, now=0.1)
    m.read(R1, 0, 20_000, now=0.1)
    m.end_of_partition(R0, now=0.2)
    assert m.claim(clock_ms=60_000, now=0.3) == 20_000  # R1 still has a backlog
    m.read(R1, 1, 40_000, now=0.4)
    assert m.claim(clock_ms=60_000, now=0.5) == 40_000
    m.end_of_partition(R1, now=0.6)
    assert m.claim(clock_ms=60_000, now=0.7) == 50_000


def test_an_idle_member_follows_the_clock_but_not_right_after_the_broker_was_unreachable():
    m = MemberWatermark(idle_after_s=1.0)
    m.assign({R0: 0}, now=0.0)
    m.read(R0, 0, 5_000, now=0.0)
    m.end_of_partition(R0, now=0.0)
    m.unreachable(now=1.0)
    m.polled_empty(now=5.0, clock_ms=9_000)
    assert m.claim(clock_ms=9_000, now=5.0) == 5_000  # idle, but the broker was away 4 s ago
    m.polled_empty(now=1.0 + BROKER_GRACE_S, clock_ms=30_000)
    assert m.claim(clock_ms=30_000, now=1.0 + BROKER_GRACE_S) == 30_000


def test_a_member_held_up_between_polls_claims_the_clock_of_its_last_empty_poll_not_the_time_since():
    m = MemberWatermark(idle_after_s=1.5)
    m.assign({R0: 0}, now=0.0)
    m.read(R0, 0, 40_000, now=0.0)
    m.end_of_partition(R0, now=0.1)
    m.polled_empty(now=0.6, clock_ms=40_600)
    # a flush waits on a slow broker for three seconds: nobody asks for records, which may be waiting
    assert m.claim(clock_ms=43_600, now=3.6) == 40_000
    m.polled_empty(now=3.7, clock_ms=43_700)  # asked after it: nothing came, so the input is idle as of then
    assert m.claim(clock_ms=44_000, now=4.0) == 43_700


def test_a_partition_taken_over_from_another_member_claims_afresh_and_one_given_back_does_not():
    m = MemberWatermark(idle_after_s=1.0)
    m.assign({R0: 0, R1: 0}, now=0.0)
    for key in (R0, R1):
        m.read(key, 9, 70_000, now=0.1)
        m.end_of_partition(key, now=0.1)
    assert m.claim(clock_ms=80_000, now=0.2) == 70_000
    m.revoke([R0, R1])
    assert m.assign({R0: 10, R1: 10}, now=0.3) == []  # given back where this member left them
    assert m.claim(clock_ms=80_000, now=0.4) == 70_000
    m.revoke([R0, R1])
    assert m.assign({R0: 4, R1: 10}, now=0.5) == [R0]  # someone else read R0 meanwhile: a backlog may lie behind
    assert m.claim(clock_ms=80_000, now=0.6) == 0
    m.read(R0, 4, 60_000, now=0.7)
    m.end_of_partition(R1, now=0.7)
    assert m.claim(clock_ms=80_000, now=0.8) == 60_000


def test_a_member_without_partitions_claims_nothing_new():
    m = MemberWatermark(idle_after_s=1.0)
    assert m.claim(clock_ms=99_000, now=100.0) == 0


# ------------------------------------------------------------------ properties

KEYS = [R0, R1, M0]
step = st.one_of(
    # an (eager) rebalance: every partition revoked, then a new set assigned, each resuming at some offset
    st.tuples(st.just("rebalance"), st.lists(st.sampled_from(KEYS), unique=True), st.integers(0, 50)),
    st.tuples(st.just("read"), st.sampled_from(KEYS), st.integers(0, 120_000)),
    st.tuples(st.just("eof"), st.sampled_from(KEYS), st.just(0)),
    st.tuples(st.just("unreachable"), st.just(None), st.just(0)),
    st.tuples(st.just("poll"), st.just(None), st.just(0)),
    st.tuples(st.just("wait"), st.just(None), st.integers(0, 30_000)),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(step, max_size=60))
def test_the_claim_never_passes_the_clock_nor_a_backlog_and_goes_back_only_on_a_take_over(steps):
    m = MemberWatermark(idle_after_s=2.0)
    now, clock, offsets = 0.0, 100_000, dict.fromkeys(KEYS, 0)
    polled_at = -1  # the clock at the last poll that brought nothing
    previous = m.claim(clock, now)
    for kind, what, value in steps:
        taken = []
        if kind == "rebalance":
            m.revoke(list(m.parts))
            taken = m.assign({k: value for k in what}, now)
        elif kind == "read":
            offsets[what] += 1
            m.read(what, offsets[what], value, now)
        elif kind == "eof":
            m.end_of_partition(what, now)
        elif kind == "unreachable":
            m.unreachable(now)
        elif kind == "poll":
            m.polled_empty(now, clock)
            polled_at = clock
        else:
            now += value / 1000
            clock += value
        claim = m.claim(clock, now)
        assert claim <= clock
        if taken:
            assert claim == 0, "a member taking a partition over claims afresh, from what it reads"
        else:
            assert claim >= previous, "the claim went back without a take-over"
        recent_backlogs = [p.max_ts for p in m.parts.values() if not p.caught_up and p.last_at > now - m.quiet_s]
        if recent_backlogs:
            assert claim <= max(previous, min(recent_backlogs)), "the claim passed a backlog still being read"
        newest = max((p.max_ts for p in m.parts.values()), default=0)
        assert claim <= max(previous, newest, polled_at, 0), "the claim passed both what was read and the last poll"
        previous = claim
