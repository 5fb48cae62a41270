"""Spill-over between regions: lower tiers first into the other region's headroom, never the top tier; the
two-region simulation moves exactly what it spills."""

from __future__ import annotations

import pytest

from surgegate.control.spill import RegionDemand, away_shares, spill_over
from surgegate.sim.regions import simulate_regions
from surgegate.sim.workload import Workload

TIERS = ("enterprise", "pro", "free")


def _load(region: str, enterprise: float, pro: float, free: float, safe: float) -> RegionDemand:
    return RegionDemand(region, dict(zip(TIERS, (enterprise, pro, free))), safe)


def test_the_excess_goes_lowest_tier_first_and_the_top_tier_never():
    # 150 over a safe 50: free's 40 and pro's 40 move, enterprise's 70 stays whatever the headroom
    spills = spill_over([_load("a", 70, 40, 40, 50), _load("b", 0, 0, 0, 1000)])
    assert [(s.source, s.target, s.share, s.rps) for s in spills] == [("a", "b", {"free": 1.0, "pro": 1.0}, 80.0)]
    assert "the top tier stays" in spills[0].reason


def test_headroom_is_what_the_target_has_after_its_own_demand_every_tier_of_it():
    spills = spill_over([_load("a", 10, 30, 60, 80), _load("b", 30, 10, 10, 70)], detour_ms=120)
    assert [(s.target, s.share, s.rps) for s in spills] == [("b", {"free": pytest.approx(20 / 60)}, 20.0)]
    assert "120 ms detour" in spills[0].reason
    # the target's own demand fills its capacity: nothing moves
    assert spill_over([_load("a", 10, 30, 60, 80), _load("b", 30, 20, 20, 70)]) == []


def test_two_regions_both_over_send_nothing_and_the_most_room_is_taken_first():
    assert spill_over([_load("a", 10, 10, 100, 50), _load("b", 10, 10, 100, 50)]) == []
    spills = spill_over([_load("a", 0, 0, 100, 40), _load("b", 0, 0, 10, 30), _load("c", 0, 0, 10, 60)])
    assert [(s.target, s.rps) for s in spills] == [("c", 50.0), ("b", 10.0)]
    assert away_shares(spills, "a") == {"free": pytest.approx(0.6)} and away_shares(spills, "c") == {}


def test_the_simulated_regions_move_exactly_what_is_spilled_and_never_the_top_tier():
    # A needs twice its GPU quota; B is quiet and sized for itself
    regions = {"A": Workload("A", [4_000.0] * 1200, True, quota_share=0.5),
               "B": Workload("B", [3_000.0] * 600 + [600.0] * 600, True)}
    off = simulate_regions("t", regions, spill=False, window_s=10)
    on = simulate_regions("t", regions, spill=True, window_s=10)
    sent = {t: sum(r.spilled.get(t, 0.0) for r in on.results["A"].all_rows) for t in TIERS}
    assert sent["enterprise"] == 0 and sent["free"] > 0
    assert sum(r.spilled.get(t, 0.0) for r in off.results["A"].all_rows for t in TIERS) == 0

    def demand(run, region):
        return sum(r.demand for r in run.results[region].all_rows) * 10

    # what A sent arrived at B, request for request
    assert demand(on, "B") - demand(off, "B") == pytest.approx(sum(sent.values()), rel=1e-6)
    assert demand(off, "A") - demand(on, "A") == pytest.approx(sum(sent.values()), rel=1e-6)
    # and A refused less of its lower tiers for it
    assert on.results["A"].tier_share("rejected", "free") < off.results["A"].tier_share("rejected", "free")


def _decision(spill: dict[str, float], *, mode: str = "enforce", valid_until: int = 10_000):
    from surgegate.schemas.decisions import SpillOver, ThrottleDecision

    return ThrottleDecision(service="chat", version=1, issued_at=0, valid_until=valid_until, level=2, mode=mode,
                            tiers={}, tenants={}, defer_batch=False, breaker="closed", forecast_upper_rps=0,
                            safe_rps=0, reason="", spill=[SpillOver(region="B", share=spill, rps=1.0)])


def test_the_edge_sends_exactly_the_named_share_evenly_and_never_the_top_tier():
    from surgegate.edge.regions import SpillRouter

    router = SpillRouter("A", {"B": "http://b/"}, "enterprise")
    d = _decision({"free": 0.25, "pro": 0.5})
    sent = [router.target(d, "free", spilled_in=False, now_ms=0) for _ in range(100)]
    assert sent.count(("B", "http://b")) == 25 and sent[3] == ("B", "http://b") and sent[7] is not None
    assert sum(router.target(d, "pro", spilled_in=False, now_ms=0) is not None for _ in range(10)) == 5
    assert all(router.target(d, "enterprise", spilled_in=False, now_ms=0) is None for _ in range(10))
    assert router.counts == {"spilled.B": 30}


def test_the_edge_spills_nothing_already_spilled_past_the_lease_unknown_or_in_shadow():
    from surgegate.edge.regions import SpillRouter

    router = SpillRouter("A", {"B": "http://b"}, "enterprise")
    d = _decision({"free": 1.0})
    assert router.target(d, "free", spilled_in=True, now_ms=0) is None
    assert router.target(d, "free", spilled_in=False, now_ms=10_001) is None
    assert SpillRouter("A", {"C": "http://c"}, "enterprise").target(d, "free", spilled_in=False, now_ms=0) is None
    shadow = _decision({"free": 1.0}, mode="shadow")
    assert [router.target(shadow, "free", spilled_in=False, now_ms=0) for _ in range(3)] == [None] * 3
    assert router.counts == {"spill_shadow.B": 3}


def test_the_service_as_a_whole_counts_a_spilled_call_once():
    from surgegate.api.regions import whole
    from surgegate.schemas.decisions import RegionLoad

    a = RegionLoad(service="chat", region="A", window_start=0, issued_at=1, safe_rps=17.0,
                   demand_by_tier={"enterprise": 20.0, "pro": 20.0, "free": 20.0}, sent_rps=12.0)
    b = RegionLoad(service="chat", region="B", window_start=0, issued_at=1, safe_rps=17.0,
                   demand_by_tier={"enterprise": 2.0, "pro": 1.0, "free": 14.0})  # 12 of its free calls are A's
    assert whole([a, b]) == {"demand_rps": 65.0, "safe_rps": 34.0, "spilled_rps": 12.0, "headroom_rps": 0.0}
