"""The edge gate's pure core: buckets, versions, fail-static, shadow and its summaries."""

from __future__ import annotations

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from surgegate.admission.actions import ADMIT, DEFER, REJECT
from surgegate.admission.gate import Admission, Bucket, Fallback, UnknownTier
from surgegate.admission.tally import Tally
from surgegate.control.config import ServiceConfig
from surgegate.schemas.decisions import TenantLimit, ThrottleDecision, TierLimit
from surgegate.schemas.telemetry import RequestEvent, RequestSummary
from surgegate.telemetry.windowing import TrafficCell

TIERS = ("enterprise", "pro", "free")


class Clock:
    """Monotonic and wall clock in one, moved by hand."""

    def __init__(self, t: float = 1_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def decision(version: int = 1, *, valid_for_s: float = 30.0, level: int = 2, mode: str = "enforce",
             tiers: dict | None = None, tenants: dict | None = None, defer_batch: bool = False,
             safe_rps: float = 100.0, now: float = 1_000.0, service: str = "chat") -> ThrottleDecision:
    return ThrottleDecision(
        service=service, version=version, issued_at=int(now * 1000), valid_until=int((now + valid_for_s) * 1000),
        level=level, mode=mode, defer_batch=defer_batch, breaker="closed", forecast_upper_rps=150.0,
        safe_rps=safe_rps, reason=f"level {level}: test", tenants=tenants or {},
        tiers=tiers if tiers is not None else {
            "enterprise": TierLimit(realtime_rps=50, batch_rps=10, burst=120),
            "pro": TierLimit(realtime_rps=20, batch_rps=5, burst=50),
            "free": TierLimit(realtime_rps=2, batch_rps=1, burst=6, max_tokens=256),
        },
    )


def gate(clock: Clock, **kw) -> Admission:
    return Admission("chat", TIERS, clock=clock, wall=clock, **kw)


def admitted_over(g: Admission, clock: Clock, seconds: float, per_s: int, *args, **kw) -> dict[str, int]:
    """Offer ``per_s`` requests a second, evenly, for ``seconds``; count the verdicts."""
    out = {ADMIT: 0, DEFER: 0, REJECT: 0}
    step = 1.0 / per_s
    for _ in range(int(seconds * per_s)):
        out[g.admit(*args, **kw).action] += 1
        clock.t += step
    return out


@settings(max_examples=60, deadline=None)
@given(rate=st.floats(0.5, 200), burst=st.floats(1, 50), seconds=st.floats(0.5, 20), offered=st.integers(1, 400))
def test_a_bucket_admits_its_burst_plus_its_rate_and_never_more(rate, burst, seconds, offered):
    clock = Clock(0.0)
    b = Bucket(rate, burst, clock())
    n = int(seconds * offered)
    taken = 0
    for _ in range(n):
        taken += b.take(clock()) == 0.0
        clock.t += 1.0 / offered
    assert taken <= burst + rate * seconds + 1e-6
    # demand above the rate, and room for a token that arrives between two requests:
    # the bucket alone is the limit
    if offered > rate * 1.2 and n > 0 and burst >= 1 + rate / offered:
        assert taken >= min(n, int(burst) + int(rate * seconds) - 1) - 1


def test_each_tier_gets_its_realtime_rate_and_excess_realtime_is_rejected_with_retry_after():
    clock = Clock()
    g = gate(clock)
    assert g.apply(decision())
    got = admitted_over(g, clock, 10, 20, "acme", "free")  # 20 rps offered, 2 rps decided, burst ~4
    assert 2 * 10 <= got[ADMIT] <= 2 * 10 + 5
    assert got[REJECT] == 200 - got[ADMIT]
    v = g.admit("acme", "free")
    assert v.action == REJECT and 1.0 <= v.retry_after_s <= 60 and v.version == 1 and v.level == 2
    assert admitted_over(g, clock, 10, 20, "acme", "enterprise")[REJECT] == 0


def test_batch_is_deferred_not_rejected_and_all_of_it_when_the_decision_says_defer_batch():
    clock = Clock()
    g = gate(clock)
    g.apply(decision())
    got = admitted_over(g, clock, 10, 10, "acme", "free", "batch")
    assert got[REJECT] == 0 and got[DEFER] > 0 and got[ADMIT] >= 10
    g.apply(decision(2, defer_batch=True, now=clock.t))
    assert admitted_over(g, clock, 2, 10, "acme", "enterprise", "batch") == {ADMIT: 0, DEFER: 20, REJECT: 0}
    # a request taken back from the deferred queue is not counted twice
    before = g.tally.totals["deferred"]
    assert g.admit("acme", "pro", "batch", requeued=True).action == DEFER
    assert g.tally.totals["deferred"] == before


def test_a_noisy_tenant_is_held_to_its_own_limit_without_using_up_its_tier():
    clock = Clock()
    g = gate(clock)
    g.apply(decision(tenants={"noisy": TenantLimit(rate_rps=1, burst=1)}))
    noisy = quiet = 0
    for step in range(1000):  # noisy sends 200 rps, quiet 40 rps, for 5 s
        noisy += g.admit("noisy", "enterprise").action == ADMIT
        if step % 5 == 0:
            quiet += g.admit("quiet", "enterprise").action == ADMIT
        clock.t += 1 / 200
    assert noisy <= 1 + 5 + 1
    # the noisy tenant's refused requests gave their tier tokens back, so the
    # tier's 50 rps still covers the quiet tenant
    assert quiet == 200


def test_an_older_or_repeated_version_never_replaces_a_newer_decision():
    clock = Clock()
    g = gate(clock)
    assert g.apply(decision(5, level=1))
    assert not g.apply(decision(4, level=4))
    assert not g.apply(decision(5, level=1))
    assert g.decision.version == 5 and g.decision.level == 1
    assert g.counts == {"applied": 1, "stale_versions": 1, "other_service": 0}
    assert not g.apply(decision(9, service="embed"))
    assert g.counts["other_service"] == 1


def test_a_new_decision_keeps_what_a_class_already_used():
    clock = Clock()
    g = gate(clock)
    g.apply(decision())
    admitted_over(g, clock, 1, 50, "acme", "free")  # drains the free tier's bucket
    g.apply(decision(2, now=clock.t))
    assert g.admit("acme", "free").action == REJECT


def test_with_default_timings_a_decision_that_arrives_late_is_still_held_before_its_lease_ends():
    # issued at 1,000 s with a 30 s lease, it reaches this edge 8 s later: 22 s of lease are left
    clock = Clock()
    clock.t = 1_008.0
    g = gate(clock)
    g.apply(decision(valid_for_s=30.0, now=1_000.0))
    clock.t += 16  # no decision since: the edge holds the last one (it went straight to fallback before)
    assert g.admit("acme", "pro").state == "holding"
    clock.t += 7  # past valid_until
    assert g.admit("acme", "pro").state == "fallback"


def test_fail_static_holds_the_last_decision_until_valid_until_then_falls_back():
    clock = Clock()
    cfg = ServiceConfig(service="chat", replicas=2, replica_rps=10.0, target_utilisation=0.5)
    g = gate(clock, fallback=Fallback.conservative(cfg), hold_after_s=5.0)
    assert g.state() == "fallback"  # nothing decided yet
    g.apply(decision(valid_for_s=30.0))
    assert g.admit("acme", "free").state == "live"
    clock.t += 6
    v = g.admit("acme", "free")
    assert (v.state, v.version, v.level) == ("holding", 1, 2)
    clock.t += 25
    v = g.admit("acme", "free")
    assert (v.state, v.version, v.level) == ("fallback", 0, 0)
    # the fallback: 10 rps in all; free may use its floor plus the unreserved share
    got = admitted_over(g, clock, 10, 50, "acme", "free")
    fb = Fallback.conservative(cfg)
    assert fb.total_rps == 10.0 and fb.tier_rps["free"] == pytest.approx(10.0 * (0.05 + 0.35))
    assert got[ADMIT] <= 4 * 10 + 2 * 4 + 1
    total = admitted_over(g, clock, 10, 50, "acme", "enterprise")[ADMIT]
    assert total <= 10 * 10 + 20 + 1
    # a fresh decision ends the fallback
    g.apply(decision(3, now=clock.t))
    assert g.admit("acme", "enterprise").state == "live"


def test_a_decision_that_arrives_late_in_its_lease_is_held_before_the_gate_falls_back():
    # a decision delayed on its way has 8 s of its lease left: the gate holds after half of that (4 s, sooner
    # than its usual 15 s) and keeps holding the decision until the lease ends, then falls back
    clock = Clock()
    g = gate(clock, hold_after_s=15.0)
    g.apply(decision(valid_for_s=8.0, now=clock.t))
    assert g.state() == "live"
    clock.t += 3.9
    assert g.state() == "live"
    clock.t += 0.2
    assert (g.state(), g.admit("acme", "pro").version) == ("holding", 1)
    clock.t += 3.8
    assert g.admit("acme", "pro").state == "holding"
    clock.t += 0.2
    assert (g.state(), g.admit("acme", "pro").version) == ("fallback", 0)


def test_without_a_fallback_limit_the_fallback_admits_everything():
    clock = Clock()
    g = gate(clock)
    assert admitted_over(g, clock, 1, 1000, "acme", "free") == {ADMIT: 1000, DEFER: 0, REJECT: 0}


def test_shadow_mode_admits_everything_and_records_what_it_would_have_done():
    for kw, mode in (({"shadow": True}, "enforce"), ({}, "shadow")):
        clock = Clock()
        g = gate(clock, **kw)
        g.apply(decision(mode=mode, defer_batch=True))
        got = admitted_over(g, clock, 10, 20, "acme", "free")
        assert got == {ADMIT: 200, DEFER: 0, REJECT: 0}
        assert g.admit("acme", "free", "batch").would == DEFER
        assert 170 <= g.tally.totals["would_reject"] <= 180
        assert g.tally.totals["rejected"] == 0 and g.tally.totals["would_defer"] == 1
        assert g.status()["shadow"] is True


def test_a_degraded_tier_gets_its_output_capped():
    clock = Clock()
    g = gate(clock)
    g.apply(decision())
    assert g.admit("acme", "free", tokens=4000).max_tokens == 256
    assert g.admit("acme", "free", tokens=100).max_tokens is None
    assert g.admit("acme", "enterprise", tokens=4000).max_tokens is None


def test_a_tier_the_decision_does_not_list_gets_its_reserved_floor():
    clock = Clock()
    g = gate(clock, floor_share={"enterprise": 0.4})
    g.apply(decision(level=2, safe_rps=100.0, tiers={"free": TierLimit(realtime_rps=1, batch_rps=0, burst=2)}))
    got = admitted_over(g, clock, 10, 100, "acme", "enterprise")
    assert 400 <= got[ADMIT] <= 400 + 81
    g.apply(decision(2, level=0, safe_rps=100.0, tiers={}, now=clock.t))
    assert admitted_over(g, clock, 1, 90, "acme", "pro")[REJECT] == 0


def test_an_edge_applies_its_share_of_service_wide_rates():
    clock = Clock()
    g = gate(clock, share=0.25)
    g.apply(decision(tiers={"pro": TierLimit(realtime_rps=40, batch_rps=0, burst=8)}))
    assert 10 * 10 <= admitted_over(g, clock, 10, 50, "acme", "pro")[ADMIT] <= 10 * 10 + 2 + 1
    with pytest.raises(ValueError, match="share"):
        gate(clock, share=1.5)


def test_an_unknown_tier_is_refused_by_name():
    g = gate(Clock())
    with pytest.raises(UnknownTier, match=r"tier='gold'.*known: enterprise, free, pro"):
        g.admit("acme", "gold")


def test_the_tally_becomes_valid_summaries_that_fold_like_the_events():
    clock = Clock()
    g = gate(clock)
    g.apply(decision(defer_batch=True))
    admitted_over(g, clock, 2, 20, "acme", "free")
    g.admit("acme", "pro", "batch")
    for i in range(5):
        g.tally.served(RequestEvent(ts=1, service="chat", tenant="acme", tier="free", edge_id="e1",
                                    latency_ms=100.0 * (i + 1), output_tokens=10))
    out = g.tally.drain(ts=1_000, duration_ms=1000, service="chat", edge_id="e1", gate="live", shadow=False)
    by = {(s.tier, s.request_type): s for s in out}
    free, batch = by[("free", "realtime")], by[("pro", "batch")]
    assert free.ok == 5 and free.throttled == g.tally.totals["rejected"] and free.latency.count == 5
    assert batch.deferred == 1 and batch.requests == 0
    assert all(s.gate == "live" for s in out)
    for s in out:  # what the producer would send: a valid record by its schema
        msgspec.json.decode(msgspec.json.encode(s), type=RequestSummary)
    cell = TrafficCell()
    for s in out:
        cell.add_summary(s)
    assert cell.counts == [5, 0, 0, free.throttled, 1, 0]
    assert g.tally.drain(ts=2_000, duration_ms=1000, service="chat", edge_id="e1", gate="live",
                         shadow=False) == []


def test_status_says_what_applies_and_why():
    clock = Clock()
    g = gate(clock)
    g.apply(decision(7))
    st_ = g.status()
    assert st_["state"] == "live" and st_["version"] == 7 and st_["reason"] == "level 2: test"
    assert isinstance(Tally().totals, dict)


def test_every_class_together_is_held_to_the_safe_capacity_refusing_all_but_the_top_tier_first():
    clock = Clock()
    g = gate(clock)
    roomy = {t: TierLimit(realtime_rps=100, batch_rps=100, burst=100) for t in TIERS}
    g.apply(decision(level=0, safe_rps=100.0, tiers=roomy, now=clock.t))
    out = {t: {ADMIT: 0, REJECT: 0} for t in ("enterprise", "pro")}
    # 90 a second of each tier for 20 s: each within its own rate, together more than the 100 safe
    for _ in range(20 * 90):
        for tier in ("enterprise", "pro"):
            out[tier][g.admit("acme", tier).action] += 1
        clock.t += 1 / 90
    assert out["enterprise"][REJECT] == 0, "the top tier's realtime is never refused by the shared capacity"
    admitted = out["enterprise"][ADMIT] + out["pro"][ADMIT]
    assert admitted == pytest.approx(100 * 20 + 200, abs=3), "together: the safe rate plus two seconds of burst"
    assert out["pro"][ADMIT] == pytest.approx(admitted - 20 * 90, abs=3), "pro gets what enterprise leaves"


def test_a_forced_take_runs_a_bucket_into_debt_that_later_takers_repay():
    b = Bucket(rate=10.0, burst=5.0, now=0.0)
    for _ in range(9):
        b.force(0.0)
    assert b.available(0.0) == -4.0
    for _ in range(3):
        b.force(0.0)
    assert b.available(0.0) == -5.0, "the debt is at most one burst"
    assert b.take(0.0) == pytest.approx(0.6) and b.take(0.6) == 0.0
