"""The simulated LLM service, its scoring, and the baselines' documented behaviour, on short runs."""

from __future__ import annotations

import pytest

from surgegate.control.controller import ServiceController
from surgegate.sim.policies import (
    FleetBounds,
    HpaPolicy,
    KpaPolicy,
    Sample,
    StaticPolicy,
    SurgegatePolicy,
    WithAdmission,
)
from surgegate.sim.report import Comparison, compare, forced_rejection, make_policy, table
from surgegate.sim.result import WARMUP_S
from surgegate.sim.run import fleet_bounds, simulate
from surgegate.sim.service import Fleet, ServiceModel
from surgegate.sim.workload import DEFAULT_OUTPUT, DEFAULT_PROMPT, SCENARIOS, Workload, burst, from_trace

MODEL = ServiceModel()
RPS = MODEL.replica_rps(DEFAULT_PROMPT, DEFAULT_OUTPUT)  # about 6.4 a replica
BOUNDS = FleetBounds(replica_rps=RPS, min_replicas=2, max_replicas=60, replica_concurrency=135.0,
                     ttft_slo_ms=MODEL.ttft_target_s("enterprise", DEFAULT_PROMPT) * 1000)


def steady(rps: float, seconds: int = WARMUP_S + 600, name: str = "steady") -> Workload:
    return Workload(name, [rps] * seconds, True)


def sample(t: float, ready: int, *, busy: float = 0.5, running: float = 0.0, waiting: float = 0.0) -> Sample:
    return Sample(now_s=t, ready=ready, gpu_busy=busy, running=running, waiting=waiting, kv_cache=0.1)


def test_a_fleet_below_its_capacity_meets_every_slo_and_serves_everything():
    r = simulate(steady(0.6 * 20 * RPS), StaticPolicy(BOUNDS, 20), model=MODEL, bounds=BOUNDS)
    assert r.share("rejected") == 0 and r.share("timed_out") == 0
    assert all(r.slo_attainment(t) == 1.0 for t in ("enterprise", "pro", "free"))
    assert r.goodput_rps == pytest.approx(0.6 * 20 * RPS, rel=0.02)
    assert r.mean_utilisation == pytest.approx(0.6, abs=0.03)


def test_latency_rises_with_load_below_saturation():
    # headroom buys something: TTFT and TPOT grow with the load well before the fleet is full
    tpot, ttft = [], []
    for share in (0.3, 0.6, 0.9):
        r = simulate(steady(share * 20 * RPS), StaticPolicy(BOUNDS, 20), model=MODEL, bounds=BOUNDS)
        tpot.append(sum(row.tpot_p99_ms for row in r.rows) / len(r.rows))
        ttft.append(sum(row.ttft_p99_ms["enterprise"] for row in r.rows) / len(r.rows))
    assert tpot[0] < tpot[1] < tpot[2] and ttft[0] < ttft[1] < ttft[2]


def test_an_overloaded_fleet_misses_for_every_tier_alike_first_come_first_served():
    # no admission (no static limit, no decisions): twice the capacity reaches the replicas
    r = simulate(steady(2 * 20 * RPS), StaticPolicy(BOUNDS, 20), model=MODEL, bounds=BOUNDS)
    att = [r.slo_attainment(t) for t in ("enterprise", "pro", "free")]
    assert max(att) < 0.1 and max(att) - min(att) < 0.05, "the engine gives no tier protection it did not earn"
    assert r.share("timed_out") > 0.2, "what waits past the timeout gives up, and counts as a miss"


def test_rejected_requests_count_as_misses():
    # a static limit sheds a third of the load: the fleet is fine, but every tier lost more than 1%
    policy = StaticPolicy(BOUNDS, 20, limit_share=0.4)
    r = simulate(steady(0.6 * 20 * RPS), policy, model=MODEL, bounds=BOUNDS)
    assert r.share("rejected") + r.share("deferred") == pytest.approx(1 - 0.4 / 0.6, abs=0.05)
    assert r.slo_attainment("enterprise") == 0.0


def test_priority_scheduling_in_the_engine_puts_the_top_tier_first_in_the_queue_when_configured():
    def ttft(model: ServiceModel, tier: str) -> float:
        r = simulate(steady(1.1 * 20 * RPS), StaticPolicy(BOUNDS, 20), model=model, bounds=BOUNDS)
        return sum(row.ttft_p99_ms[tier] or 0.0 for row in r.rows) / len(r.rows)

    by_tier = ServiceModel(engine_priority=True)
    assert ttft(by_tier, "enterprise") < 0.8 * ttft(by_tier, "free")
    assert ttft(MODEL, "enterprise") == pytest.approx(ttft(MODEL, "free"), rel=0.05)


def test_longer_prompts_at_the_same_rate_need_more_replicas():
    heavy = SCENARIOS["token_heavy"](0.5 * 30 * RPS * 2, 0)
    assert heavy.lengths(100)[0] == DEFAULT_PROMPT and heavy.lengths(1300)[0] == 2.5 * DEFAULT_PROMPT
    r = simulate(heavy, StaticPolicy(BOUNDS, 30), model=MODEL, bounds=BOUNDS)
    before = [row for row in r.rows if row.t < 1200]
    after = [row for row in r.rows if row.t >= 1300]
    assert all(row.met("enterprise") for row in before)
    assert sum(row.met("enterprise") for row in after) < len(after) / 2


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


def test_failed_replicas_are_replaced_with_a_cold_start_of_the_workloads_model():
    w = steady(5 * RPS, 400)
    w.failures = {330: 0.5}
    w.cold_start_s = 40.0
    policy = StaticPolicy(BOUNDS, 10)
    ready = {}
    policy.second = lambda s: ready.__setitem__(int(s.now_s), s.ready)
    simulate(w, policy, model=MODEL, bounds=BOUNDS)
    assert ready[329] == 10 and ready[330] == 5 and ready[369] == 5 and ready[370] == 10


def test_the_fleet_never_exceeds_the_quota_whatever_a_policy_asks():
    policy = StaticPolicy(FleetBounds(replica_rps=RPS, max_replicas=500), 400)
    seen = []
    policy.second = lambda s: seen.append(s.ready)
    simulate(steady(10 * RPS, 60), policy, model=MODEL, bounds=BOUNDS)
    assert max(seen) == BOUNDS.max_replicas


def test_hpa_follows_its_documented_algorithm_on_what_its_metrics_pipeline_shows():
    hpa = HpaPolicy(BOUNDS, "gpu", 0.7)

    def sync(t0: int, busy: float, ready: int) -> int:
        for t in range(t0, t0 + 15):
            hpa.second(sample(t + 1, ready, busy=busy))
        return hpa.plan().replicas

    assert sync(0, 0.75, 2) == 2, "within the 0.1 tolerance: no change"
    assert sync(15, 1.0, 5) == 6, "ceil(5 x 1.0 / 0.7) = 8 wanted, at most +max(4 pods, 100%) of 2 a sync"
    # DCGM's value is collected every 30 s: at the sync of 45 HPA still acts on the collection of 30
    assert sync(30, 0.1, 6) == 9 and hpa.scraped.value == 1.0, "ceil(6 x 1.0 / 0.7) = 9"
    # scale-down waits for the 300 s stabilisation window
    held = [sync(45 + 15 * i, 0.2, 9) for i in range(22)]
    assert set(held[:19]) == {9} and held[-1] < 9


def test_keda_on_the_waiting_queue_scales_on_requests_waiting_per_replica():
    keda = HpaPolicy(BOUNDS, "queue", 5.0)
    for t in range(1, 31):
        keda.second(sample(t, 4, waiting=4 * 20))
    assert keda.plan().replicas == 12, "20 waiting a replica over a target of 5: 16 wanted; 2 -> 6 -> 12"
    assert keda.name == "keda-queue" and "waiting" in keda.knob


def test_kpa_panics_at_twice_the_capacity_and_does_not_scale_down_while_panicking():
    kpa = KpaPolicy(BOUNDS, concurrency=70)
    for t in range(1, 61):
        kpa.second(sample(t, 5, running=5 * 70))
    assert kpa.plan().replicas == 5 and "stable" in kpa.reason
    for t in range(61, 67):  # the 6 s window sees 4x: panic
        kpa.second(sample(t, 5, running=5 * 70 * 4))
    assert "panic" in kpa.reason and kpa.plan().replicas >= 10
    panicked = kpa.plan().replicas
    for t in range(67, 100):  # load falls, but the panic lasts 60 s: no scale-down
        kpa.second(sample(t, panicked, running=50))
    assert kpa.plan().replicas == panicked
    for t in range(100, 200):
        kpa.second(sample(t, panicked, running=50))
    assert kpa.plan().replicas < panicked and "stable" in kpa.reason


def test_admission_in_front_of_a_baseline_publishes_surgegates_decisions_and_keeps_its_replicas():
    inner = StaticPolicy(BOUNDS, 12)
    policy = WithAdmission(BOUNDS, inner)
    r = simulate(steady(2 * 12 * RPS), policy, model=MODEL, bounds=BOUNDS)
    assert policy.name == "static+admission" and policy.plan().replicas == 12
    assert policy.decision is not None and policy.decision.level >= 1
    assert r.slo_attainment("enterprise") > simulate(steady(2 * 12 * RPS), StaticPolicy(BOUNDS, 12), model=MODEL,
                                                    bounds=BOUNDS).slo_attainment("enterprise")


def test_surgegate_scales_ahead_of_a_burst_and_keeps_the_top_tier_within_its_slo():
    peak = 40 * RPS * 0.7
    w = burst(peak_rps=peak, base_rps=peak / 24, hold_s=1200, before_s=600, after_s=300)
    policy = SurgegatePolicy(BOUNDS)
    r = simulate(w, policy, model=MODEL, bounds=BOUNDS)
    assert r.slo_attainment("enterprise") >= 0.999
    assert max(row.ready for row in r.rows) >= 40
    first, _ = r.onset_response()
    assert first is not None and first <= 60
    # the very object the decide agent steps, with capacity counted in tokens
    assert type(policy.controller) is ServiceController
    assert policy.config.replica_rps_for(DEFAULT_PROMPT, DEFAULT_OUTPUT) is None  # BOUNDS gives no token rates


def test_fleet_bounds_follow_the_workloads_lengths_and_quota():
    plain = fleet_bounds(SCENARIOS["burst"](10_000.0, 0), MODEL)
    quota = fleet_bounds(SCENARIOS["gpu_quota"](10_000.0, 0), MODEL)
    assert plain.replica_rps == pytest.approx(RPS)
    assert quota.max_replicas < plain.max_replicas and quota.max_replicas * plain.replica_rps < 10_000
    assert plain.replica_tps is not None
    a, b = plain.replica_tps
    assert 1 / (DEFAULT_PROMPT / a + DEFAULT_OUTPUT / b) == pytest.approx(RPS, rel=0.01)
    beyond, forced = forced_rejection(SCENARIOS["gpu_quota"](10_000.0, 0), quota, MODEL)
    assert 0 < beyond <= forced
    # the burst's ramp outruns a cold start from the 5 minutes before it: forced, though no fleet is too small
    beyond, forced = forced_rejection(SCENARIOS["burst"](10_000.0, 0), plain, MODEL)
    assert beyond == 0 and forced > 0
    # longer prompts need more replicas at the same rate: the bounds follow the busiest window's lengths
    heavy = fleet_bounds(SCENARIOS["token_heavy"](10_000.0, 0), MODEL)
    assert heavy.max_replicas > 2 * fleet_bounds(SCENARIOS["long_tail_shift"](10_000.0, 0), MODEL).max_replicas / 1.5
    assert forced_rejection(SCENARIOS["token_heavy"](10_000.0, 0), heavy, MODEL)[0] == 0


def test_a_run_is_deterministic_for_a_seed():
    w = SCENARIOS["flash_crowd"](20 * RPS, 3)
    a = simulate(w, make_policy("surgegate", w, MODEL, BOUNDS), model=MODEL, bounds=BOUNDS, seed=5)
    b = simulate(w, make_policy("surgegate", w, MODEL, BOUNDS), model=MODEL, bounds=BOUNDS, seed=5)
    assert a.all_rows == b.all_rows


def test_traces_are_scaled_to_the_target_peak_keeping_their_shape_and_their_token_counts(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("timestamp_s,count,input_tokens,output_tokens\n"
                    + "".join(f"{i},{1 + (i % 20 == 0) * 4},{(1 + (i % 20 == 0) * 4) * (500 if i < 300 else 2000)},"
                              f"{(1 + (i % 20 == 0) * 4) * 100}\n" for i in range(600)))
    w = from_trace(path, peak_rps=1000.0)
    assert w.peak_10s() == pytest.approx(1000.0)
    assert not w.synthetic and max(w.rate) / min(w.rate) == pytest.approx(5.0)
    assert w.lengths(10) == (500.0, 100.0) and w.lengths(400) == (2000.0, 100.0)
    plain = tmp_path / "p.csv"
    plain.write_text("timestamp_s,count\n" + "".join(f"{i},3\n" for i in range(60)))
    assert from_trace(plain).lengths(5) == (DEFAULT_PROMPT, DEFAULT_OUTPUT)


def test_the_report_finds_the_cheapest_setting_at_equal_slo_and_says_which_targets_are_met():
    w = Workload("steady", [0.5 * 30 * RPS] * 900, True)
    c = compare(w, ("surgegate", "oracle", "static"), model=MODEL, sweep=True)
    assert isinstance(c, Comparison) and len(c.sweeps["static"]) == 5
    iso = c.iso("static")
    assert iso is not None and iso.slo_attainment("enterprise") >= 0.999
    assert all(r.replica_hours >= iso.replica_hours for r in c.sweeps["static"]
               if r.slo_attainment("enterprise") >= 0.999)
    text = table(c)
    mine, theirs = c.iso("surgegate"), iso
    line = next(x for x in text.splitlines() if x.startswith("- Cost at equal SLO"))
    oracle = c.iso("oracle")
    assert oracle is not None  # a steady load within the fleet: the oracle meets it
    if mine is not None:
        ratio = mine.replica_hours / theirs.replica_hours
        to_oracle = mine.replica_hours / oracle.replica_hours
        assert f"= {ratio:.2f} of the cheapest" in line and f"{to_oracle:.2f} of the oracle's" in line
        assert line.endswith("met." if ratio <= 0.85 and to_oracle <= 1.3 else "missed.")
    att = c.defaults[0].slo_attainment("enterprise")
    line = next(x for x in text.splitlines() if x.startswith("- Top-tier"))
    assert (": met." if att >= 0.999 else ": missed.") in line and "by cause" in line


@pytest.mark.parametrize(("build", "message"), [
    (lambda: SCENARIOS["burst"](-5.0, 0), "base_rps"),
    (lambda: steady_scaled(-1.0), "peak_rps=-1.0"),
    (lambda: FleetBounds(replica_rps=100.0, min_replicas=9, max_replicas=3), "min_replicas=9"),
    (lambda: ServiceModel(tpot_s=(0.1,)), "tpot_s"),
    (lambda: ServiceModel(timeout_s=0), "timeout_s"),
    (lambda: ServiceModel(cache_hit_ratio=1.0), "cache_hit_ratio"),
    (lambda: ServiceModel(deferral="disk"), "deferral"),
    (lambda: make_policy("hpa-cpu", steady(1.0), MODEL, BOUNDS), "policy='hpa-cpu'"),
    (lambda: HpaPolicy(BOUNDS, "gpu", 1.5), "target=1.5"),
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


def test_cache_hits_cost_the_replicas_nothing_and_meet_their_slo():
    cached = ServiceModel(cache_hit_ratio=0.5)
    load = 0.6 * 20 * RPS
    r = simulate(steady(load), StaticPolicy(BOUNDS, 20), model=cached, bounds=BOUNDS)
    plain = simulate(steady(load), StaticPolicy(BOUNDS, 20), model=MODEL, bounds=BOUNDS)
    assert r.mean_utilisation == pytest.approx(plain.mean_utilisation / 2, abs=0.03)
    assert r.goodput_rps == pytest.approx(plain.goodput_rps, rel=0.02)  # the hits are served, within their SLO
    # twice the load on the same fleet: the half the cache answers keeps it within capacity
    over = simulate(steady(2 * load), StaticPolicy(BOUNDS, 20), model=cached, bounds=BOUNDS)
    assert all(over.slo_attainment(t) == 1.0 for t in ("enterprise", "pro", "free"))


def test_surgegate_buys_fewer_replicas_for_what_the_cache_answers():
    # 30% of the requests answered by the cache: demand, capacity and token rates count the misses only
    w = SCENARIOS["flash_crowd"](40 * RPS, 3)
    bounds = fleet_bounds(w, MODEL)
    paid = {}
    for ratio in (0.0, 0.3):
        model = ServiceModel(cache_hit_ratio=ratio)
        r = simulate(w, make_policy("surgegate", w, model, bounds), model=model, bounds=bounds, seed=5)
        assert r.slo_attainment("enterprise") >= 0.99
        paid[ratio] = sum(row.paid for row in r.rows)
    assert paid[0.3] < 0.85 * paid[0.0], paid


class _Level3(StaticPolicy):
    """A fixed fleet behind a decision at level 3 that admits every tier."""

    def plan(self):
        import dataclasses

        from surgegate.schemas.decisions import ThrottleDecision, TierLimit

        open_tier = TierLimit(realtime_rps=1e9, batch_rps=1e9, burst=1e9)
        decision = ThrottleDecision(service="chat", version=1, issued_at=0, valid_until=10**12, level=3,
                                    mode="enforce", tiers={t: open_tier for t in ("enterprise", "pro", "free")},
                                    tenants={}, defer_batch=False, breaker="closed", forecast_upper_rps=0.0,
                                    safe_rps=1e9, reason="level 3")
        return dataclasses.replace(super().plan(), decision=decision)


def test_at_level_3_the_lower_tiers_get_cache_hits_only_and_their_misses_are_refused():
    load = 0.5 * 20 * RPS
    r = simulate(steady(load), _Level3(BOUNDS, 20), model=ServiceModel(cache_hit_ratio=0.25), bounds=BOUNDS)
    assert r.tier_share("rejected", "enterprise") == 0
    for tier in ("pro", "free"):
        assert r.tier_share("rejected", tier) == pytest.approx(0.75, abs=0.02)
    without_cache = simulate(steady(load), _Level3(BOUNDS, 20), model=MODEL, bounds=BOUNDS)
    assert without_cache.share("rejected") == 0  # no cache configured: level 3 means what it did before


def test_the_deferral_lane_drains_at_the_admitted_rate_expires_late_tasks_and_reports_its_backlog():
    lane = ServiceModel(deferral="lane", batch_deadline_s=120.0)
    seen = []

    class Watching(WithAdmission):
        def window(self, obs):
            seen.append(obs.pool)
            super().window(obs)

    # twice the capacity of a fixed fleet: admission defers batch work; the lane keeps it until its deadline
    r = simulate(steady(2 * 12 * RPS), Watching(BOUNDS, StaticPolicy(BOUNDS, 12)), model=lane, bounds=BOUNDS)
    assert r.share("deferred") > 0
    assert max(p.backlog_tasks for p in seen) > 0 and max(p.backlog_required_rps for p in seen) > 0
    assert r.share("timed_out") > 0  # deferred work past its deadline expired rather than ran late
    queue = simulate(steady(2 * 12 * RPS), WithAdmission(BOUNDS, StaticPolicy(BOUNDS, 12)),
                     model=ServiceModel(batch_deadline_s=120.0), bounds=BOUNDS)
    assert r.goodput_rps >= queue.goodput_rps * 0.98  # never worse than the in-memory queue at the same SLO


def test_a_run_without_a_sweep_reports_the_default_settings_only():
    w = steady(0.5 * 20 * RPS, seconds=WARMUP_S + 120)
    text = table(compare(w, ("surgegate",), model=MODEL, sweep=False))
    assert "**Default settings:**" in text and "| surgegate |" in text
    assert "Cost at equal SLO" not in text
