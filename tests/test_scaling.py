"""The scaling policy: ahead of a forecast burst, cooldown, bounds, no flapping, throttled demand."""

from __future__ import annotations

import dataclasses
import math

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from surgegate.control.scaling import PoolConfig, ScalingInputs, ScalingPolicy
from surgegate.schemas.decisions import ScalingDecision

W = 10_000
CFG = PoolConfig(pool="gpu-a", replica_rps=100.0)  # 70 rps per replica at the 70% target


def run(policy: ScalingPolicy, loads: list[float], *, oracle: bool = True, ready=None,
        deferred: int = 0) -> list[ScalingDecision]:
    """Decide every window; the forecast's upper bound is the true load ahead + 10% (an oracle)."""
    out = []
    for w, load in enumerate(loads):
        upper = tuple(1.1 * loads[min(w + h, len(loads) - 1)] for h in range(1, 31)) if oracle else ()
        d = policy.decide(ScalingInputs(
            window_start=w * W, window_ms=W, demand_rps=load, upper_rps=upper, deferred=deferred,
            ready_replicas=ready(w, out) if ready else (out[-1].desired_replicas if out else CFG.min_replicas)))
        out.append(d)
    return out


def test_a_forecast_burst_is_scaled_for_ahead_of_the_load_by_at_least_the_lead_time():
    policy = ScalingPolicy(CFG)
    burst_at = 40
    loads = [300.0] * burst_at + [3000.0] * 40  # 10x: 43 replicas at 70 rps each
    decisions = run(policy, loads)
    lead = policy.lead_windows(W)
    enough = next(w for w, d in enumerate(decisions) if d.desired_replicas * 70 >= 3000)
    assert enough <= burst_at - lead, f"replicas for the burst asked at window {enough}, lead {lead} windows"
    d = decisions[enough]
    assert d.reason.startswith(f"scale {d.previous_replicas} -> {d.desired_replicas}: forecast 3,300 rps within")
    # no step limit: the whole need (the point forecast, upper_rps where no point is given) at once
    assert d.desired_replicas == math.ceil(3300 / 70 - 1e-9)


def test_scale_down_waits_for_the_cooldown_then_steps_down():
    cfg = PoolConfig(pool="gpu-a", replica_rps=100.0, cooldown_s=300.0)
    decisions = run(ScalingPolicy(cfg), [2000.0] * 20 + [300.0] * 80, oracle=False)
    high = decisions[19].desired_replicas
    assert high == math.ceil(2000 / 70)
    held = [d.desired_replicas for d in decisions[20:20 + 29]]
    assert held == [high] * 29, "no scale-down within 300 s of the last high recommendation"
    assert "cooldown" in decisions[25].reason
    after = [d.desired_replicas for d in decisions[50:]]
    assert after[0] < high and after[-1] == max(CFG.min_replicas, math.ceil(300 * 1.05 / 70))
    assert all(a - b <= max(1, math.floor(a * 0.2)) for a, b in zip(after, after[1:]))


@settings(max_examples=80, deadline=None)
@given(loads=st.lists(st.floats(0, 50_000), min_size=1, max_size=60),
       min_r=st.integers(0, 10), extra=st.integers(0, 60))
def test_replicas_stay_within_min_and_max(loads, min_r, extra):
    cfg = PoolConfig(pool="p", replica_rps=50.0, min_replicas=min_r, max_replicas=max(1, min_r + extra))
    for d in run(ScalingPolicy(cfg), loads):
        assert cfg.min_replicas <= d.desired_replicas <= cfg.max_replicas
        assert d.mix.reserved + d.mix.on_demand + d.mix.spot == d.desired_replicas


@settings(max_examples=60, deadline=None)
@given(base=st.floats(100, 3000), noise=st.lists(st.floats(-0.02, 0.02), min_size=120, max_size=120))
def test_a_steady_noisy_load_does_not_flap_between_two_sizes(base, noise):
    loads = [base * (1 + n) for n in noise]
    sizes = [d.desired_replicas for d in run(ScalingPolicy(CFG), loads, oracle=False)]
    changes = [s for s, prev in zip(sizes[1:], sizes) if s != prev]
    moves = [b - a for a, b in zip([sizes[0]] + changes, changes)]
    # after the ramp, no move reverses the one before it
    reversals = sum(1 for a, b in zip(moves, moves[1:]) if (a > 0) != (b > 0))
    assert reversals <= 1, sizes


def test_throttled_and_deferred_demand_raise_the_target():
    # the same admitted load; in one case throttling hid 1,500 rps more and 6,000 requests were deferred
    admitted = run(ScalingPolicy(CFG), [1000.0] * 5, oracle=False)[-1].desired_replicas
    policy = ScalingPolicy(CFG)
    with_throttled = run(policy, [2500.0] * 5, oracle=False, deferred=6000)[-1]
    assert with_throttled.desired_replicas > admitted
    assert with_throttled.desired_replicas == math.ceil((2500 + 6000 / 60) / 70)
    assert "deferred backlog 100 rps" in with_throttled.reason


def test_a_backlog_due_soon_is_planned_for_by_its_deadlines_and_named():
    # 1,000 rps of demand, and a deferral lane whose drainers need 400 rps to start every task by its deadline
    base = ScalingInputs(window_start=0, window_ms=W, demand_rps=1000.0, ready_replicas=15)
    plain = ScalingPolicy(CFG).decide(base)
    due = ScalingPolicy(CFG).decide(dataclasses.replace(base, backlog_required_rps=400.0))
    assert plain.desired_replicas == math.ceil(1000 / 70)
    assert due.desired_replicas == math.ceil(1400 / 70)
    assert "deferred backlog 400 rps to meet its deadlines" in due.reason
    # what the window deferred counts instead when it asks more: never both
    both = ScalingPolicy(CFG).decide(dataclasses.replace(base, backlog_required_rps=50.0, deferred=6000))
    assert both.desired_replicas == math.ceil((1000 + 6000 / 60) / 70)


def test_zero_traffic_holds_the_minimum_and_warm_pool():
    decisions = run(ScalingPolicy(CFG), [0.0] * 40)
    assert {d.desired_replicas for d in decisions} == {CFG.min_replicas}
    assert all(d.warm_pool == CFG.warm_min for d in decisions)
    assert decisions[-1].reason.startswith("hold 5: demand 0 rps")


def test_capacity_follows_the_expected_load_and_the_warm_pool_covers_the_upper_bound_beyond_it():
    policy = ScalingPolicy(CFG)
    d = policy.decide(ScalingInputs(window_start=0, window_ms=W, demand_rps=350.0, ready_replicas=10,
                                    point_rps=(700.0, 1050.0, 1050.0, 1050.0),
                                    upper_rps=(900.0, 1400.0, 1400.0, 1400.0)))
    # the point forecast needs 15 replicas at 70 rps each; the upper bound 20: five more are kept warm
    assert (d.desired_replicas, d.warm_pool) == (15, 5)
    assert d.forecast_upper_rps == 1400.0 and "forecast 1,050 rps" in d.reason


def test_scale_down_follows_the_point_forecast_without_waiting_out_a_fixed_window():
    policy = ScalingPolicy(CFG)
    run(policy, [2100.0] * 6)  # 30 replicas and more
    falling = [policy.decide(ScalingInputs(window_start=(6 + i) * W, window_ms=W, demand_rps=700.0,
                                           ready_replicas=30, point_rps=(700.0,) * 6, upper_rps=(800.0,) * 6))
               for i in range(60)]
    # the cooldown (60 s) holds the last high recommendation, then it steps down, at most 20% a window and no
    # faster than the burst envelope's level falls (about 20 windows), to the 11 the point forecast needs
    sizes = [d.desired_replicas for d in falling]
    assert sizes[-1] == math.ceil(700 * 1.05 / 70) and len(set(sizes[:5])) == 1 and sizes[7] < sizes[0]


def test_the_lead_time_is_learned_from_how_long_replicas_took():
    policy = ScalingPolicy(PoolConfig(pool="gpu-a", replica_rps=100.0, cold_start_s=15.0))
    # replicas take 60 s (6 windows) to become ready after each scale-up
    loads = [300.0] * 5 + [1500.0] * 20 + [300.0] * 40 + [1500.0] * 20

    def ready(w, out):
        old = [d for d in out if d.version <= (w - 6) * W]
        return old[-1].desired_replicas if old else CFG.min_replicas

    run(policy, loads, oracle=False, ready=ready)
    assert policy.lead_s > 30.0


def test_at_max_the_rest_overflows_to_the_secondary_pool_and_the_cost_is_stated():
    cfg = PoolConfig(pool="gpu-a", replica_rps=100.0, max_replicas=10, secondary_pool="cloud-b", secondary_max=8,
                     reserved_replicas=5, price_reserved=2.0, price_on_demand=4.0, price_spot=1.0,
                     secondary_price=6.0)
    policy = ScalingPolicy(cfg)
    d = None
    for w in range(4):
        d = policy.decide(ScalingInputs(window_start=w * W, window_ms=W, demand_rps=1400.0, batch_rps=140.0,
                                        ready_replicas=10))
    assert d.desired_replicas == 10 and d.overflow is not None
    assert (d.overflow.pool, d.overflow.replicas) == ("cloud-b", 8)  # 20 needed: 10 over, 8 allowed
    assert d.mix.reserved == 5 and d.mix.spot == 2 and d.mix.on_demand == 3
    assert d.cost_per_hour == 5 * 2.0 + 3 * 4.0 + 2 * 1.0 + 8 * 6.0
    assert "at max 10" in d.reason and "overflow 8 on cloud-b" in d.reason
    msgspec.json.decode(msgspec.json.encode(d), type=ScalingDecision)


def test_a_bad_pool_setting_is_refused_by_name():
    with pytest.raises(ValueError, match=r"pools\.gpu-a\.min_replicas"):
        PoolConfig(pool="gpu-a", replica_rps=10.0, min_replicas=60, max_replicas=50)


def _decision(version: int, replicas: int, pool: str = "gpu-a") -> ScalingDecision:
    policy = ScalingPolicy(PoolConfig(pool=pool, replica_rps=100.0, min_replicas=replicas, max_replicas=replicas))
    d = policy.decide(ScalingInputs(window_start=version * W, window_ms=W, demand_rps=0.0, ready_replicas=1))
    return d


def test_the_subscriber_keeps_its_pools_newest_version_and_calls_the_scaler_on_changes(tmp_path):
    from surgegate.gpu.scaler import CommandScaler, ScalingSubscriber
    from surgegate.settings import Settings

    out = tmp_path / "scaled"
    scaler = CommandScaler(["sh", "-c", f'echo "$SG_POOL $SG_DESIRED_REPLICAS $SG_VERSION" >> {out}'],
                           keep_warm_command=["sh", "-c", f'echo "warm $SG_WARM_POOL" >> {out}'])
    sub = ScalingSubscriber(Settings(kafka="127.0.0.1:1"), "gpu-a", scaler)
    enc = msgspec.json.encode
    assert sub.offer(enc(_decision(3, 7)))
    assert not sub.offer(enc(_decision(2, 9))), "an older version is ignored"
    assert not sub.offer(enc(_decision(4, 7))), "same size: nothing to do"
    assert not sub.offer(enc(_decision(5, 9, pool="gpu-b")))
    assert not sub.offer(b'{"schema": "sg.ScalingDecision/1", "pool": 3}')
    assert sub.offer(enc(_decision(6, 12)))
    assert sub.keep_warm()
    assert out.read_text().splitlines() == [f"gpu-a 7 {3 * W}", f"gpu-a 12 {6 * W}", f"warm {sub.decision.warm_pool}"]
    assert sub.counts == {"records": 6, "applied": 2, "stale_versions": 1, "other_pools": 1, "bad_records": 1,
                          "scaler_errors": 0, "keep_warm": 1}
    failing = ScalingSubscriber(Settings(kafka="127.0.0.1:1"), "gpu-a", CommandScaler(["sh", "-c", "exit 3"]))
    assert not failing.offer(enc(_decision(1, 5)))
    assert failing.counts["scaler_errors"] == 1 and "exited 3" in failing.last_error


def test_the_policy_reports_replicas_it_started_until_they_are_ready():
    policy = ScalingPolicy(CFG)
    d = policy.decide(ScalingInputs(window_start=0, window_ms=W, demand_rps=1400.0, ready_replicas=5))
    assert policy.starting(ready_replicas=5) == ((15_000, d.desired_replicas - 5),)  # asked at 0, cold start 15 s
    assert policy.starting(ready_replicas=d.desired_replicas) == ()


def test_ttft_over_its_slo_with_nothing_waiting_holds_more_capacity_and_says_so():
    policy = ScalingPolicy(CFG)

    def step(w: int, over: float | None) -> ScalingDecision:
        return policy.decide(ScalingInputs(window_start=w * W, window_ms=W, demand_rps=1_400.0, ready_replicas=20,
                                           point_rps=(1_400.0,) * 6, upper_rps=(1_400.0,) * 6, ttft_over_ms=over))

    assert step(0, None).desired_replicas == 20  # 1,400 rps at 70 a replica
    breached = [step(1 + i, 300.0) for i in range(3)]
    assert [d.desired_replicas for d in breached] == [22, 25, 27], "10% more capacity a breached window"
    assert "TTFT p99 over its SLO by 300 ms with nothing waiting" in breached[-1].reason
    relaxed = [step(10 + i, None) for i in range(120)]
    assert relaxed[-1].desired_replicas == math.ceil(1_400 * 1.05 / 70) and policy.ttft_headroom == 1.0, \
        "it relaxes as windows meet the SLO (to the scale-down headroom)"
