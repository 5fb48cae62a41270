"""The simulator's physics and the baselines' documented behaviour, on short runs."""

from __future__ import annotations

import math

import pytest

from surgegate.control.controller import ServiceController
from surgegate.sim.policies import FleetBounds, HpaPolicy, KpaPolicy, Sample, StaticPolicy, SurgegatePolicy
from surgegate.sim.report import make_policy, table
from surgegate.sim.run import simulate
from surgegate.sim.service import Fleet, Queues, ServiceModel
from surgegate.sim.workload import SCENARIOS, Workload, burst, from_trace

MODEL = ServiceModel(concurrency=100)  # about 207 rps a replica
BOUNDS = FleetBounds(replica_rps=MODEL.replica_rps())


def steady(rps: float, seconds: int = 600, name: str = "steady") -> Workload:
    return Workload(name, [rps] * seconds, True)


def test_the_service_time_model_has_the_configured_long_tail():
    m = ServiceModel()
    sigma = math.log(200 / 60) / 1.2816
    assert m.mean_service_s() == pytest.approx((0.9 * 60 * math.exp(sigma ** 2 / 2) + 0.1 * 4000) / 1000)
    assert m.p99_service_ms() == pytest.approx(5600.0)  # inside the 2-6 s tail, 90% of the way
    assert m.replica_rps(slow_factor=2.0) < m.replica_rps() / 1.5, "slow requests hold the slots"


def test_littles_law_holds_below_capacity():
    # 10 replicas, 60% of their throughput offered: requests in the system = rate x mean service time
    rps = 0.6 * 10 * MODEL.replica_rps()
    samples = []
    policy = StaticPolicy(BOUNDS, 10)
    original = policy.second
    policy.second = lambda s: (samples.append(s), original(s))
    r = simulate(steady(rps), policy, model=MODEL, bounds=BOUNDS)
    in_system = sum(s.concurrency for s in samples[60:]) / len(samples[60:])
    assert in_system == pytest.approx(rps * MODEL.mean_service_s(), rel=0.03)
    assert r.share("rejected") == 0 and r.share("timed_out") == 0
    assert r.mean_utilisation == pytest.approx(0.6, abs=0.02)


def test_a_fixed_fleet_saturates_at_its_throughput():
    capacity = 10 * MODEL.replica_rps()
    policy = StaticPolicy(BOUNDS, 10, limit_share=10.0)  # a limit far above: the fleet is the bottleneck
    r = simulate(steady(2 * capacity), policy, model=MODEL, bounds=BOUNDS)
    late = r.rows[20:]
    assert sum(row.served for row in late) / len(late) == pytest.approx(capacity, rel=0.01)
    assert all(row.utilisation == pytest.approx(1.0) for row in late)
    assert r.share("timed_out") > 0.4, "what cannot be served within the timeout gives up"
    assert r.slo_attainment("free") < 0.1 and r.slo_attainment("enterprise") == 1.0, "priority order holds"


def test_a_static_limit_sheds_above_it():
    capacity = 10 * MODEL.replica_rps()
    policy = StaticPolicy(BOUNDS, 10)  # limit: 90% of the fleet's throughput
    r = simulate(steady(2 * capacity), policy, model=MODEL, bounds=BOUNDS)
    late = r.rows[6:]
    assert sum(row.served for row in late) / len(late) == pytest.approx(0.9 * capacity, rel=0.02)
    # realtime above the limit is rejected, batch deferred (and offered again as the limit allows)
    assert r.share("rejected") + r.share("deferred") == pytest.approx(0.55, abs=0.05)
    assert r.share("timed_out") == 0
    # per tier: the shares weighted by each tier's demand add up to the overall share
    demand = {t: sum(row.all_by_tier[t] for row in r.rows) for t in ("enterprise", "pro", "free")}
    for what in ("rejected", "deferred"):
        weighted = sum(r.tier_share(what, t) * n for t, n in demand.items()) / sum(demand.values())
        assert weighted == pytest.approx(r.share(what), rel=1e-9)


def test_cold_starts_delay_capacity_by_the_configured_time_and_the_warm_pool_by_less():
    model = ServiceModel(cold_start_s=15.0, warm_start_s=0.8)
    fleet = Fleet(ready=5)
    fleet.reconcile(8, 2, now=100.0, model=model)
    for t in (100.0, 110.0, 114.9):
        fleet.advance(t)
        assert fleet.ready == 5
    fleet.advance(115.0)
    assert (fleet.ready, fleet.warm) == (8, 2)  # the warm pool was loading too
    fleet.reconcile(10, 2, now=200.0, model=model)  # two come from the warm pool
    fleet.advance(200.8)
    assert fleet.ready == 10 and fleet.warm == 0
    assert fleet.warming and fleet.warming[0][0] == 215.0, "the warm pool refills with a cold start"
    assert fleet.paid == 12


def test_failed_replicas_are_replaced_with_a_cold_start():
    w = steady(5 * MODEL.replica_rps(), 120)
    w.failures = {30: 0.5}
    policy = StaticPolicy(BOUNDS, 10)
    ready = {}
    policy.second = lambda s: ready.__setitem__(int(s.now_s), s.ready)
    simulate(w, policy, model=MODEL, bounds=BOUNDS)
    assert ready[29] == 10 and ready[30] == 5 and ready[44] == 5 and ready[45] == 10


def test_queues_serve_in_priority_order_and_waits_follow_littles_law():
    q = Queues()
    q.add(("free", "realtime"), 300)
    q.add(("enterprise", "realtime"), 100)
    served = q.serve(150)
    assert served[("enterprise", "realtime")] == 100 and served[("free", "realtime")] == 50
    waits = q.waits(throughput=50)
    assert waits[("enterprise", "realtime")] == 0 and waits[("free", "realtime")] == 250 / 50


def test_hpa_follows_its_documented_algorithm():
    hpa = HpaPolicy(BOUNDS)

    def sync(t0: int, util: float, ready: int) -> int:
        for t in range(t0, t0 + 15):
            hpa.second(Sample(now_s=t + 1, ready=ready, utilisation=util, concurrency=0))
        return hpa.plan().replicas

    assert sync(0, 0.75, 5) == 5, "within the 0.1 tolerance: no change"
    assert sync(15, 1.0, 5) == 8, "ceil(5 x 1.0 / 0.7) = 8"
    assert sync(30, 1.0, 8) == 12, "ceil(8 x 1.0 / 0.7) = 12"
    assert sync(45, 1.0, 12) == 18
    # scale-up is at most max(4 pods, 100%) per sync
    hpa2 = HpaPolicy(BOUNDS)
    for t in range(1, 16):
        hpa2.second(Sample(now_s=t, ready=5, utilisation=1.0 * 10, concurrency=0))
    assert hpa2.plan().replicas == 10
    # scale-down waits for the 300 s stabilisation window
    held = [sync(60 + 15 * i, 0.2, 18) for i in range(20)]
    assert set(held[:19]) == {18} and held[19] < 18, "down only once the last high recommendation is 300 s old"


def test_kpa_panics_at_twice_the_capacity_and_does_not_scale_down_while_panicking():
    kpa = KpaPolicy(BOUNDS, concurrency=100)  # target 70 concurrent per pod
    for t in range(1, 61):
        kpa.second(Sample(now_s=t, ready=5, utilisation=0.5, concurrency=5 * 35))
    assert kpa.plan().replicas == 5 and "stable" in kpa.reason
    for t in range(61, 67):  # the 6 s window sees 4x: panic
        kpa.second(Sample(now_s=t, ready=5, utilisation=1.0, concurrency=5 * 70 * 4))
    assert "panic" in kpa.reason and kpa.plan().replicas >= 10
    panicked = kpa.plan().replicas
    for t in range(67, 100):  # load falls, but the panic lasts 60 s: no scale-down
        kpa.second(Sample(now_s=t, ready=panicked, utilisation=0.1, concurrency=50))
    assert kpa.plan().replicas == panicked
    for t in range(100, 200):
        kpa.second(Sample(now_s=t, ready=panicked, utilisation=0.1, concurrency=50))
    assert kpa.plan().replicas < panicked and "stable" in kpa.reason


def test_surgegate_scales_ahead_of_a_burst_and_keeps_the_top_tier_within_its_slo():
    w = burst(peak_rps=40 * MODEL.replica_rps() * 0.7, base_rps=40 * MODEL.replica_rps() * 0.7 / 24,
              hold_s=1200, before_s=600, after_s=300)
    policy = SurgegatePolicy(BOUNDS)
    r = simulate(w, policy, model=MODEL, bounds=BOUNDS)
    assert r.slo_attainment("enterprise") >= 0.999
    assert max(row.ready for row in r.rows) >= 40
    first, _ = r.onset_response()
    assert first is not None and first <= 60
    # the very object the decide agent steps
    assert type(policy.controller) is ServiceController


def test_a_run_is_deterministic_for_a_seed():
    w = SCENARIOS["flash_crowd"](20 * MODEL.replica_rps(), 3)
    a = simulate(w, make_policy("surgegate", w, MODEL, BOUNDS), model=MODEL, bounds=BOUNDS, seed=5)
    b = simulate(w, make_policy("surgegate", w, MODEL, BOUNDS), model=MODEL, bounds=BOUNDS, seed=5)
    assert a.rows == b.rows


def test_traces_are_scaled_to_the_target_peak_keeping_their_shape(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("timestamp_s,count\n" + "".join(f"{i},{1 + (i % 20 == 0) * 4}\n" for i in range(600)))
    w = from_trace(path, peak_rps=1000.0)
    assert w.peak_10s() == pytest.approx(1000.0)
    assert not w.synthetic and max(w.rate) / min(w.rate) == pytest.approx(5.0)


def test_the_report_says_which_targets_are_met_and_missed():
    w = steady(3 * MODEL.replica_rps(), 900)
    results = [simulate(w, make_policy(p, w, MODEL, BOUNDS), model=MODEL, bounds=BOUNDS) for p in ("surgegate", "hpa")]
    text = table(w, results)
    assert "| surgegate |" in text and "| hpa |" in text
    sg, hpa = results
    top = sg.slo_attainment("enterprise")
    ratio = sg.replica_hours / hpa.replica_hours
    steady_use = sg.steady_utilisation()
    expected = {
        "Top-tier realtime SLO attainment": "met" if top >= 0.999 else "missed",
        "Replica-hours": "met" if ratio <= 0.8 and top >= hpa.slo_attainment("enterprise") else "missed",
        "Steady-state utilisation": "met" if 0.65 <= steady_use <= 0.75 else "missed",
    }
    for target, verdict in expected.items():
        line = next(x for x in text.splitlines() if x.startswith(f"- {target}"))
        assert line.endswith(f": {verdict}."), (line, verdict)
    assert f"{100 * ratio:.1f}% of HPA's" in text


@pytest.mark.parametrize(("build", "message"), [
    (lambda: SCENARIOS["burst"](-5.0, 0), "base_rps"),
    (lambda: steady_scaled(-1.0), "peak_rps=-1.0"),
    (lambda: FleetBounds(replica_rps=100.0, min_replicas=9, max_replicas=3), "min_replicas=9"),
    (lambda: ServiceModel(slo_p99_ms=0), "slo_p99_ms > 0"),
])
def test_bad_simulation_settings_are_refused_by_name(build, message):
    with pytest.raises(ValueError, match=message):
        build()


def steady_scaled(peak: float) -> Workload:
    from surgegate.sim.workload import scaled

    return scaled("s", [1.0] * 20, peak, synthetic=True)


def test_scaling_in_cancels_the_latest_starts_first_then_stops_ready_replicas():
    model = ServiceModel(cold_start_s=15.0)
    fleet = Fleet(ready=5)
    fleet.reconcile(8, 0, now=0.0, model=model)   # 3 ready at 15
    fleet.reconcile(10, 0, now=5.0, model=model)  # 2 more ready at 20
    fleet.reconcile(7, 0, now=6.0, model=model)   # 3 fewer: the 2 of t=20 and 1 of t=15
    assert (fleet.ready, fleet.starting) == (5, [(15.0, 2)])
    fleet.reconcile(3, 0, now=7.0, model=model)   # the last start and 2 ready replicas go
    assert (fleet.ready, fleet.starting) == (3, [])
