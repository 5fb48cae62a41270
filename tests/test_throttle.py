"""The throttle policy on pure objects: escalation, protection, deferral, hysteresis, overrides."""

from __future__ import annotations

import dataclasses

from hypothesis import given, settings
from hypothesis import strategies as st

from surgegate.control.config import ServiceConfig
from surgegate.control.throttle import DecisionInputs, ThrottlePolicy
from surgegate.schemas.aggregates import PoolStats, TrafficStats
from surgegate.schemas.decisions import Override
from surgegate.schemas.forecasts import Forecast, SeriesBounds

W = 10_000
TIERS = ("enterprise", "pro", "free")
# safe capacity at start: 1,000 rps/replica x 10 replicas x 0.85 = 8,500 rps
CONFIG = ServiceConfig(service="chat", replica_rps=1000.0, replicas=10, hysteresis_windows=6, slo_p99_ms=2000.0)


def stats(rt: float, batch: float = 0.0, p99: float = 300.0, failures: float = 0.0,
          queue_wait: float | None = None) -> TrafficStats:
    """A window at ``rt`` realtime and ``batch`` batch rps; queueing is 90% of its p99 unless given."""
    n_rt, n_b = int(rt * 10), int(batch * 10)
    n = n_rt + n_b
    bad = int(n * failures)
    return TrafficStats(requests=n, rate_rps=n / 10, ok=n - bad, error=bad, timeout=0, throttled=0, realtime=n_rt,
                        batch=n_b, latency_p50_ms=p99 / 4, latency_p90_ms=p99 / 2, latency_p99_ms=p99,
                        latency_max_ms=p99 * 2, queue_wait_p99_ms=p99 * 0.9 if queue_wait is None else queue_wait,
                        input_tokens=n * 300, output_tokens=n * 100,
                        tokens_per_s=n * 40.0, over_2s_share=0.0, cache_hits=0)


def inputs(i: int, mix: dict[str, tuple[float, float]], *, p99: float = 300.0, failures: float = 0.0,
           upper: float | None = None, overrides: tuple[Override, ...] = ()) -> DecisionInputs:
    tiers = {t: stats(rt, b, p99, failures) for t, (rt, b) in mix.items()}
    total_rt = sum(rt for rt, _ in mix.values())
    total_b = sum(b for _, b in mix.values())
    forecast = None
    if upper is not None:
        forecast = Forecast(scope="service=chat", origin=i * W, step_ms=W, horizon=3, coverage=0.9,
                            rate_rps=SeriesBounds([upper] * 3, [0.0] * 3, [upper] * 3),
                            tokens_per_s=SeriesBounds([0.0] * 3, [0.0] * 3, [0.0] * 3), regime="normal", weights={})
    return DecisionInputs(window_start=i * W, window_ms=W, service=stats(total_rt, total_b, p99, failures),
                          tiers=tiers, tenants={}, forecast=forecast, overrides=overrides)


def even(total: float, batch_share: float = 0.2) -> dict[str, tuple[float, float]]:
    """``total`` rps split 20/30/50 across tiers, ``batch_share`` of it batch."""
    return {t: (total * s * (1 - batch_share), total * s * batch_share) for t, s in zip(TIERS, (0.2, 0.3, 0.5))}


def test_a_5k_to_120k_step_escalates_within_one_window():
    policy = ThrottlePolicy(CONFIG)
    for i in range(10):
        _, d = policy.decide(inputs(i, even(5_000)))
        assert d.level == 0
    _, d = policy.decide(inputs(10, even(120_000)))
    assert d.level >= 3
    assert "forecast 120,000 rps vs safe" in d.reason


def test_a_forecast_burst_escalates_before_the_load_arrives():
    policy = ThrottlePolicy(CONFIG)
    _, d = policy.decide(inputs(0, even(5_000), upper=120_000))
    assert d.level >= 2 and d.forecast_upper_rps == 120_000


def test_batch_is_deferred_before_any_realtime_is_rejected():
    policy = ThrottlePolicy(CONFIG)
    mix = even(10_000, batch_share=0.3)  # realtime 7,000 fits in 8,500; with batch 10,000 does not
    _, d = policy.decide(inputs(0, mix))
    assert d.level == 1 and d.defer_batch
    for tier, (rt, _) in mix.items():
        assert d.tiers[tier].realtime_rps >= rt
    assert sum(t.batch_rps for t in d.tiers.values()) <= 8_500 - 7_000 + 1e-6


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.floats(0, 20_000), st.floats(0, 20_000), st.floats(0, 20_000), st.floats(0, 5_000)),
                min_size=1, max_size=12))
def test_top_tier_realtime_is_never_throttled_while_capacity_covers_it(windows):
    policy = ThrottlePolicy(CONFIG)
    for i, (ent, pro, free, batch) in enumerate(windows):
        mix = {"enterprise": (ent, batch / 3), "pro": (pro, batch / 3), "free": (free, batch / 3)}
        _, d = policy.decide(inputs(i, mix))
        demand = int(ent * 10) / 10  # as observed in a 10 s window
        if demand <= d.safe_rps:
            assert d.tiers["enterprise"].realtime_rps >= demand - 1e-6


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.floats(0, 50_000), st.floats(50, 5_000), st.floats(0, 1)), min_size=1, max_size=15))
def test_rates_stay_within_zero_and_safe_capacity_the_top_tiers_realtime_within_the_ready_fleet(windows):
    policy = ThrottlePolicy(CONFIG)
    for i, (total, p99, failures) in enumerate(windows):
        t, d = policy.decide(inputs(i, even(total), p99=p99, failures=failures))
        assert 0 <= d.level <= 4
        for tier, limit in d.tiers.items():
            # the top tier's realtime requests may use the whole ready fleet's measured rate, the rest the safe share
            ceiling = max(d.safe_rps, t.replica_rps * t.ready_replicas) if tier == CONFIG.tiers[0] else d.safe_rps
            assert 0 <= limit.realtime_rps <= ceiling + 1e-6
            assert 0 <= limit.batch_rps <= d.safe_rps + 1e-6


@settings(max_examples=150, deadline=None)
@given(st.lists(st.floats(1_000, 50_000), min_size=2, max_size=12), st.floats(2_500, 10_000))
def test_rates_never_rise_while_the_slo_is_breached(totals, p99):
    policy = ThrottlePolicy(CONFIG)
    policy.decide(inputs(0, even(5_000)))
    previous = None
    for i, total in enumerate(totals, start=1):
        _, d = policy.decide(inputs(i, even(total), p99=p99))  # p99 above the 2,000 ms SLO
        rates = {t: (lim.realtime_rps, lim.batch_rps) for t, lim in d.tiers.items()}
        if previous is not None:
            for t, (rt, b) in rates.items():
                assert rt <= previous[t][0] + 1e-6 and b <= previous[t][1] + 1e-6
        previous = rates


@settings(max_examples=100, deadline=None)
@given(st.lists(st.floats(-0.04, 0.04), min_size=60, max_size=60), st.integers(0, 2**16))
def test_noise_around_the_threshold_does_not_flap(noise, _seed):
    policy = ThrottlePolicy(CONFIG)
    levels = []
    for i, e in enumerate(noise):
        _, d = policy.decide(inputs(i, even(8_500 * (1 + e), batch_share=0.0)))
        levels.append(d.level)
    changes = sum(a != b for a, b in zip(levels, levels[1:]))
    assert changes <= 2, levels


def test_a_healthy_service_returns_to_level_0_after_the_hysteresis_period():
    policy = ThrottlePolicy(CONFIG)
    _, d = policy.decide(inputs(0, even(120_000)))
    burst_level = d.level
    assert burst_level >= 3
    levels = [policy.decide(inputs(i, even(2_000)))[1].level for i in range(1, 1 + 6 * burst_level + 1)]
    assert levels[:5] == [burst_level] * 5, "no step down before the hysteresis period"
    assert levels[-1] == 0
    assert all(a >= b for a, b in zip(levels, levels[1:])), "steps down one level at a time, never up"


def test_the_circuit_breaker_opens_on_errors_and_probes_half_open():
    policy = ThrottlePolicy(CONFIG)
    states = [policy.decide(inputs(i, even(2_000), failures=0.8))[1].breaker for i in range(4)]
    assert states[0] == "open" and "half_open" in states
    _, d = policy.decide(inputs(4, even(2_000)))
    assert d.breaker in ("closed", "half_open")


def test_an_operator_pin_applies_shows_in_the_reason_and_expires():
    pin = Override(id="ovr-1", service="chat", created_at=0, expires_at=5 * W, author="sre-on-call",
                   reason="incident 42", level=2)
    policy = ThrottlePolicy(CONFIG)
    _, d = policy.decide(inputs(0, even(1_000), overrides=(pin,)))
    assert d.level == 2 and d.override == "ovr-1"
    assert "override ovr-1 by sre-on-call pins level 2" in d.reason
    _, d = policy.decide(inputs(6, even(1_000), overrides=(pin,)))
    assert d.override is None and d.level == 0


def test_same_inputs_give_the_same_decisions():
    seq = [inputs(i, even(x)) for i, x in enumerate([5_000, 30_000, 30_000, 9_000, 2_000])]
    a, b = ThrottlePolicy(CONFIG), ThrottlePolicy(CONFIG)
    assert [a.decide(x) for x in seq] == [b.decide(x) for x in seq]
    # the version is the window start: monotonic whatever the window length
    assert [d.version for _, d in (ThrottlePolicy(CONFIG).decide(x) for x in seq)] == [i * W for i in range(5)]


def test_a_noisy_tenant_gets_its_own_limit_and_a_steady_one_does_not():
    policy = ThrottlePolicy(CONFIG)
    heavy, light = stats(9_000), stats(300)
    mix = even(20_000)
    base = inputs(0, mix)
    _, d = policy.decide(DecisionInputs(window_start=0, window_ms=W, service=base.service, tiers=base.tiers,
                                        tenants={"hog": heavy, "steady": light}))
    assert d.level >= 2
    assert "hog" in d.tenants and "steady" not in d.tenants
    assert 0 < d.tenants["hog"].rate_rps < 9_000


def test_a_window_without_tier_data_keeps_the_last_tier_mix():
    policy = ThrottlePolicy(CONFIG)
    policy.decide(inputs(0, even(20_000)))
    x = inputs(1, even(20_000))
    _, d = policy.decide(DecisionInputs(window_start=x.window_start, window_ms=W, service=x.service, tiers={},
                                        tenants={}))
    assert set(d.tiers) == set(TIERS)
    assert d.tiers["free"].realtime_rps < d.tiers["enterprise"].realtime_rps + d.tiers["pro"].realtime_rps


def test_replicas_starting_within_the_lookahead_count_against_a_forecast_rise():
    import dataclasses

    rise = inputs(0, even(5_000), upper=14_000)  # 14,000 rps ahead vs 8,500 safe with 10 replicas
    _, alone = ThrottlePolicy(CONFIG).decide(rise)
    assert alone.level >= 1
    # the scaling policy has 10 more replicas starting, ready within the lookahead
    coming = dataclasses.replace(rise, starting=((2 * W, 10),))
    _, helped = ThrottlePolicy(CONFIG).decide(coming)
    assert helped.level == 0, helped.reason
    assert "10 replicas starting, ready in 10 s" in helped.reason
    # replicas that come after the lookahead do not help the decision now
    late = dataclasses.replace(rise, starting=((40 * W, 10),))
    assert ThrottlePolicy(CONFIG).decide(late)[1].level == alone.level
    # and what is already here is never discounted: observed load meets today's capacity
    now = dataclasses.replace(inputs(0, even(14_000), upper=14_000), starting=((2 * W, 10),))
    assert ThrottlePolicy(CONFIG).decide(now)[1].level >= 1


def test_a_breach_that_load_does_not_explain_is_not_throttled_for():
    import dataclasses

    from surgegate.schemas.aggregates import PoolStats

    # p99 12 s against a 2 s SLO, but only 20 ms of it is queueing: the requests themselves got slower
    slow = dataclasses.replace(inputs(0, even(5_000)), service=stats(4_000, 1_000, p99=12_000.0, queue_wait=20.0))
    policy = ThrottlePolicy(CONFIG)
    threshold, d = policy.decide(slow)
    assert d.level == 0 and threshold.gradient == 1.0 and "service time, not load" in threshold.reason
    # the same p99 with a busy queue is a load problem
    _, loaded = ThrottlePolicy(CONFIG).decide(
        dataclasses.replace(slow, service=stats(4_000, 1_000, p99=12_000.0, queue_wait=11_000.0)))
    assert loaded.level >= 1 and "breaches the SLO" in loaded.reason
    # without queue waits, the fleet's utilisation tells: well below target, it is not load
    pool = PoolStats(samples=10, utilisation_mean=0.4, utilisation_max=0.5, kv_cache_mean=0, kv_cache_max=0,
                     queue_depth=0, queue_depth_max=0, running_requests=0, tokens_per_s=0, workers=10,
                     ready_replicas=10, cold_starting_replicas=0)
    quiet = dataclasses.replace(slow, service=stats(4_000, 1_000, p99=12_000.0, queue_wait=0.0), pool=pool)
    assert ThrottlePolicy(CONFIG).decide(quiet)[1].level == 0


def _pool(kv: float, queue: int) -> PoolStats:
    return PoolStats(samples=10, utilisation_mean=0.9, utilisation_max=1.0, kv_cache_mean=kv, kv_cache_max=kv,
                     queue_depth=queue, queue_depth_max=queue, running_requests=200, tokens_per_s=8000.0, workers=10,
                     ready_replicas=10, cold_starting_replicas=0)


def test_a_full_kv_cache_with_a_growing_queue_is_saturation_whatever_the_request_rate():
    policy = ThrottlePolicy(CONFIG)
    low = even(2_000)  # a quarter of safe capacity by request rate
    for i, (kv, queue) in enumerate([(0.5, 0), (0.97, 20), (0.98, 35)]):
        x = inputs(i, low)
        _, d = policy.decide(dataclasses.replace(x, pool=_pool(kv, queue)))
    assert d.level >= 1 and "servers saturated (KV cache 98% full with 35 requests waiting)" in d.reason
    calm = ThrottlePolicy(CONFIG)
    for i, (kv, queue) in enumerate([(0.5, 0), (0.6, 30), (0.97, 5)]):  # the queue drains: not saturated
        _, d = calm.decide(dataclasses.replace(inputs(i, low), pool=_pool(kv, queue)))
    assert d.level == 0 and "saturated" not in d.reason


def test_ttft_over_its_slo_is_saturation_evidence():
    config = dataclasses.replace(CONFIG, ttft_slo_ms=1500.0)
    policy = ThrottlePolicy(config)
    x = inputs(0, even(2_000))
    slow_first_token = dataclasses.replace(x, service=x.service.__replace__(ttft_p50_ms=900.0, ttft_p99_ms=3000.0))
    _, d = policy.decide(slow_first_token)
    assert d.level >= 1 and "TTFT p99 3,000 ms vs SLO 1,500 ms" in d.reason
    _, fine = ThrottlePolicy(config).decide(
        dataclasses.replace(x, service=x.service.__replace__(ttft_p50_ms=300.0, ttft_p99_ms=900.0)))
    assert fine.level == 0


def test_a_tier_missing_from_one_window_is_admitted_as_the_level_admission_follows_not_shut_out():
    # a burst holds the level at 4 (hysteresis) while the load falls back to level 2's; in one window the pro
    # tier's window is not in yet: pro keeps its reserved floor, and is never below the lowest tier
    policy = ThrottlePolicy(CONFIG)
    policy.decide(inputs(0, even(120_000)))
    _, d = policy.decide(inputs(1, even(12_000)))
    assert d.level == 4 and "lowest tier throttled" in d.reason
    partial = inputs(2, {t: v for t, v in even(12_000).items() if t != "pro"})
    _, d = policy.decide(dataclasses.replace(partial, service=inputs(2, even(12_000)).service))
    assert d.level == 4
    floor = CONFIG.floor_share["pro"] * d.safe_rps
    assert d.tiers["pro"].realtime_rps >= floor > 0
    assert d.tiers["pro"].realtime_rps >= min(d.tiers["free"].realtime_rps, floor)
