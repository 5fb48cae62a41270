"""The live loop's pure parts: the balancer, edge shares, the load's plan and score, the live-versus-simulated
comparison and shadow mode's utilisation rule (the processes themselves: tests/test_live_e2e.py)."""

from __future__ import annotations

import random

import pytest

from surgegate.devtools import compare
from surgegate.devtools.live import ReplicaSpec
from surgegate.devtools.load import Call, LoadPlan, score
from surgegate.edge.balancer import Balancer
from surgegate.edge.shares import DemandShares
from surgegate.gpu.local_pool import PoolSample
from surgegate.sim.policies import FleetBounds

SLO = {"enterprise": 1.0, "pro": 2.0, "free": 4.0}


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_the_balancer_prefers_the_replica_with_less_outstanding_and_less_waiting():
    b = Balancer(rng=random.Random(0))
    b.set_endpoints({"http://a": (0, 0.1), "http://b": (6, 0.1)})
    picks = [b.pick().url for _ in range(4)]  # never released: outstanding grows on a
    assert picks[:4].count("http://a") == 4  # a's 0-3 outstanding stays below b's 6 waiting
    b.set_endpoints({"http://a": (0, 0.99), "http://b": (6, 0.1)})
    assert b.pick().url == "http://b"  # a's KV cache is full: taken only when nothing else is


def test_a_failed_replica_is_ejected_with_backoff_and_all_are_tried_when_all_failed():
    clock = Clock()
    b = Balancer(["http://a", "http://b"], eject_s=1.0, max_eject_s=4.0, clock=clock, rng=random.Random(0))
    a = b.endpoints["http://a"]
    for expected in (1.0, 2.0, 4.0, 4.0):  # doubling per failure in a row, up to the maximum
        b.done(a, ok=False)
        assert a.ejected_until - clock.now == expected
    assert {b.pick().url for _ in range(20)} == {"http://b"}
    b.done(b.endpoints["http://b"], ok=False)
    assert b.pick() is not None and b.counts["panic"] == 1  # every replica ejected: all tried again
    clock.now += 5
    b.done(a, ok=True)
    assert a.failures == 0
    assert Balancer().pick() is None


def test_a_replica_kept_across_a_registry_update_keeps_its_outstanding_calls():
    b = Balancer(["http://a"])
    ep = b.pick()
    b.set_endpoints({"http://a/": (2, 0.5), "http://c": None})
    assert b.endpoints["http://a"] is ep and ep.outstanding == 1 and ep.waiting == 2
    assert set(b.endpoints) == {"http://a", "http://c"}


@pytest.mark.parametrize("kwargs", [{"eject_s": 0.0}, {"eject_s": 5.0, "max_eject_s": 1.0}])
def test_the_balancer_refuses_a_bad_ejection(kwargs):
    with pytest.raises(ValueError, match="eject_s"):
        Balancer(**kwargs)


class FakeRedis(dict):
    up = True

    def hset(self, key, field, value):
        if not self.up:
            raise ConnectionError("redis away")
        self[field] = value

    def hgetall(self, key):
        return dict(self)


def test_edge_shares_follow_demand_ignore_stale_edges_and_fall_back_without_redis():
    r, clock = FakeRedis(), Clock()
    a = DemandShares(r, "k", "a", smoothing=1.0, clock=clock)
    b = DemandShares(r, "k", "b", smoothing=1.0, clock=clock)
    assert a.update(30.0) == 1.0  # alone
    b.update(10.0)
    assert a.update(30.0) == pytest.approx(0.75)
    clock.now += 10  # b stopped reporting: its demand no longer counts
    assert a.update(30.0) == 1.0
    assert b.update(0.0) == pytest.approx(0.02)  # never below min_share: its first clients are admitted
    r.up = False
    assert a.update(30.0) is None and a.counts["failures"] == 1


def test_the_load_plan_rises_holds_and_repeats():
    plan = LoadPlan(base_rps=2, peak_rps=22, burst_at_s=10, ramp_s=10, hold_s=5, every_s=40, duration_s=100)
    assert [plan.rate(t) for t in (0, 10, 15, 20, 24, 26, 50, 55, 66)] == [2, 2, 12, 22, 22, 2, 2, 12, 2]
    with pytest.raises(ValueError, match="peak_rps"):
        LoadPlan(base_rps=5, peak_rps=1)


def test_a_window_meets_a_tier_slo_when_at_most_one_percent_of_its_realtime_calls_missed():
    calls = [Call(0.5 + i / 1000, "pro", False, "served", ttft_s=0.1) for i in range(200)]
    calls += [Call(1.0, "pro", False, "refused"), Call(1.1, "pro", False, "served", ttft_s=3.0)]  # 2 of 202
    calls += [Call(11.0, "pro", False, "served", ttft_s=2.5), Call(11.0, "pro", True, "deferred")]
    report = score(calls, started=0.0, seconds=20.0, window_s=10.0, ttft_slo_s=SLO)
    pro = report.tiers["pro"]
    assert (pro.windows, pro.windows_met) == (2, 1)  # 2/202 < 1% in the first; the second's only call missed
    assert (pro.refused, pro.deferred, pro.realtime) == (1, 1, 203)
    assert pro.good == 200


FLEET = FleetBounds(replica_rps=10, min_replicas=2, max_replicas=16, cold_start_s=15, ttft_slo_ms=1000)


def test_the_simulated_twin_of_a_plan_has_its_rates_mix_and_lengths():
    plan = LoadPlan(duration_s=60, batch_share=0.2)
    w = compare.workload_of(plan, ReplicaSpec())
    assert w.seconds == 60 and w.rate[35] == plan.rate(35)
    assert sum(w.mix.values()) == pytest.approx(1.0)
    assert w.mix[("enterprise", "batch")] == pytest.approx(0.2 * 0.2)
    assert 1 <= w.output[0] <= plan.max_tokens
    model = compare.model_of(ReplicaSpec(time_scale=2.0), FLEET, SLO)
    assert model.profile.max_num_seqs == ReplicaSpec().max_num_seqs and model.ttft_allowance_s == (1.0, 2.0, 4.0)
    assert model.profile.decode_step_s == pytest.approx(2 * 0.0098)


@pytest.mark.slow
def test_the_simulator_predicts_both_arms_and_the_report_names_where_live_differs():
    plan = LoadPlan(duration_s=120)
    arms = [compare.simulated(plan, FLEET, ReplicaSpec(), SLO, shadow=s, window_s=10) for s in (False, True)]
    assert all(set(a.tiers) == set(plan.tiers) and a.replica_seconds >= 2 * 120 for a in arms)
    live = compare.Arm("live", {t: (a * 0.5, g) for t, (a, g) in arms[0].tiers.items()}, arms[0].replica_seconds)
    off = compare.agreement(live, arms[0])
    assert [line.split(":")[0] for line in off] == [f"{t} SLO attainment" for t in plan.tiers]
    text = compare.report(plan, [live, live, *arms], 10)
    assert "enterprise: enforcing" in text and "apart from the prediction" in text


def test_shadow_mode_scales_on_gpu_utilisation_as_the_simulator_s_hpa_does():
    class Pool:
        def __init__(self) -> None:
            self.sample: PoolSample | None = PoolSample(ready=2, busy=1.0, running=16, waiting=10, kv_cache=0.2)
            self.targets: list[int] = []

        def set_targets(self, desired: int, warm: int = 0) -> None:
            self.targets.append(desired)

    pool = Pool()
    rule = compare.UtilisationRule(pool, FLEET)  # type: ignore[arg-type]
    for second in range(1, 31):
        rule.tick(second)
    # DCGM's sample at 30 s, HPA's sync: every GPU busy against the 0.7 target asks ceil(2 / 0.7) = 3 replicas
    assert pool.targets[0] == 2 and pool.targets[-1] == 3
    pool.sample = None  # before the first scrape: nothing to act on
    rule.tick(31)
    assert len(pool.targets) == 30


def test_a_plan_follows_a_trace_scaled_as_the_simulator_scales_it():
    from pathlib import Path

    trace = Path(__file__).resolve().parents[1] / "docs" / "examples" / "burst.csv"
    plan = LoadPlan.from_trace(trace, peak_rps=20.0, duration_s=600.0)
    busiest = max(sum(plan.rates[i:i + 10]) / len(plan.rates[i:i + 10]) for i in range(0, len(plan.rates), 10))
    assert busiest == pytest.approx(20.0)
    assert plan.rate(0) == plan.rates[0] and plan.rate(10_000) == plan.rates[-1]
    assert len(compare.workload_of(plan, ReplicaSpec()).rate) == len(plan.rates)  # its simulated twin follows it
