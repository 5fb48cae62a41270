"""Capacity planning: the mix is the optimum, the peak and warm pool follow their definitions, the report is
written from a trace and from a service's published windows."""

from __future__ import annotations

import subprocess
import sys
import time

import msgspec
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from surgegate.control.config import ServiceConfig
from surgegate.plan.capacity import Prices, best_mix, mix_cost, plan_peak, shed_shares, warm_pool
from surgegate.plan.history import from_windows
from surgegate.plan.report import History, make_plan, markdown
from surgegate.schemas.aggregates import TrafficStats, WindowStats

HAND = np.array([4, 4, 4, 4, 2, 2, 2, 2, 0, 0])
PRICES = Prices(reserved=2.0, on_demand=4.0, spot=1.4, spot_interruption=0.0)


def test_the_mix_solved_by_hand_without_spot():
    # levels 1-2 are needed 80% of the hours: reserved (2) beats on demand (4 x 0.8 = 3.2);
    # levels 3-4 only 40%: on demand (4 x 0.4 = 1.6) beats reserved (2)
    m = best_mix(HAND, PRICES, spot_share=0.0)
    assert (m.reserved, m.spot_peak, m.on_demand_peak) == (2, 0, 2)
    assert m.cost_per_hour == pytest.approx(2 * 2 + 4 * 2 * 0.4)


def test_the_mix_solved_by_hand_with_spot_for_half_of_each_window():
    # reserved 0: 0.4 x (2 spot + 2 on demand at need 4) + 0.4 x (1 + 1 at need 2) = 0.4 x 10.8 + 0.4 x 5.4 = 6.48
    # reserved 1: 2 + 0.4 x (2 x 1.4 + 1 x 4) + 0.4 x (1 x 1.4)                     = 5.28
    # reserved 2: 4 + 0.4 x (2 x 1.4)                                              = 5.12  <- least
    # reserved 3: 6 + 0.4 x (1 x 1.4)                                              = 6.56
    m = best_mix(HAND, PRICES, spot_share=0.5)
    assert (m.reserved, m.spot_peak, m.on_demand_peak) == (2, 2, 0)
    assert m.cost_per_hour == pytest.approx(5.12)
    assert [round(mix_cost(HAND, r, PRICES, 0.5).cost_per_hour, 2) for r in range(4)] == [6.48, 5.28, 5.12, 6.56]


def test_reclaimed_spot_is_held_again_and_priced_so():
    m = mix_cost(HAND, 2, Prices(2.0, 4.0, 1.4, spot_interruption=0.3), 0.5)
    assert m.spot_peak == 3  # 2 / 0.7 = 2.86 held
    assert m.cost_per_hour == pytest.approx(4 + 0.4 * 2 / 0.7 * 1.4)


@given(st.lists(st.integers(0, 40), min_size=1, max_size=60), st.floats(0.0, 1.0),
       st.floats(0.1, 10), st.floats(0.1, 10), st.floats(0.1, 10), st.floats(0.0, 0.9))
def test_the_mix_returned_costs_no_more_than_any_reserved_count(need, share, reserved, on_demand, spot, lost):
    prices = Prices(reserved, on_demand, spot, lost)
    n = np.array(need, dtype=float)
    best = best_mix(n, prices, share)
    every = [mix_cost(n, r, prices, share).cost_per_hour for r in range(max(need) + 2)]
    assert best.cost_per_hour == pytest.approx(min(every), rel=1e-9, abs=1e-9)


def test_the_expected_peak_is_the_trend_of_the_periods_peaks_when_it_rises():
    # six periods of 100 windows whose highest window rises by 10 each period: the next period's is 160
    demand = [50.0 + (100 + 10 * (i // 100) - 50.0) * (i % 100 == 99) for i in range(600)]
    p = plan_peak(demand, 10.0, percentile=1.0, factor=2.5)
    assert p.period_rps == [100.0, 110.0, 120.0, 130.0, 140.0, 150.0]
    assert p.forecast_rps == pytest.approx(160.0)
    assert p.expected_rps == pytest.approx(160.0) and p.plan_rps == pytest.approx(400.0)
    assert p.growth == pytest.approx(160 / 150)


def test_a_falling_trend_never_plans_below_the_history():
    demand = [200.0 - i / 10 for i in range(600)]
    p = plan_peak(demand, 10.0, percentile=1.0)
    assert p.forecast_rps < p.history_rps == 200.0 == p.expected_rps


def test_the_warm_pool_covers_the_rise_within_one_cold_start():
    need = np.array([10] * 20 + [30] * 20 + [10] * 20 + [16] * 20, dtype=float)
    assert warm_pool(need, 10.0, 15.0, coverage=1.0) == 20  # the 10 -> 30 step comes within two windows
    # of 80 windows, 2 see the big step ahead and 2 the small one: 95% see no rise, 97.5% one of at most 6
    assert [warm_pool(need, 10.0, 15.0, coverage=c) for c in (0.95, 0.97, 0.975, 0.98)] == [0, 6, 6, 20]
    assert warm_pool(np.array([5.0] * 10), 10.0, 60.0) == 0


def test_the_lowest_tier_is_shed_first():
    shares = shed_shares(np.array([100.0, 50.0]), 60.0, {"enterprise": 0.2, "pro": 0.3, "free": 0.5})
    # 100 rps: 20 + 30 served, 10 of free's 50; 50 rps: all served. free: 40 of 75 shed
    assert shares == pytest.approx({"enterprise": 0.0, "pro": 0.0, "free": 40 / 75})


def test_the_plan_report_states_each_figure_it_rests_on():
    history = History("hand", 10.0, [float(x) for x in HAND * 10], 10.0, {"enterprise": 0.2, "free": 0.8}, 0.5,
                      "a hand-made history")
    plan = make_plan(history, prices=PRICES, factor=2.0, percentile=1.0)
    assert (plan.expected_replicas, plan.plan_replicas, plan.mix.reserved) == (4, 8, 2)
    text = markdown(plan)
    for figure in ("| **plan: 2x the expected peak** | 80.00 | 8 |", "| **least cost mix** | 2 | 2 | 0 | 5.1 |",
                   "| the plan (8) | 0.00% | 0.00% |"):
        assert figure in text


def _window(start: int, rps: float, tier: str | None = None, requests: int = 100) -> bytes:
    stats = TrafficStats(requests=requests, rate_rps=rps, ok=requests, error=0, timeout=0, throttled=0,
                         realtime=requests // 2, batch=requests // 2, latency_p50_ms=1, latency_p90_ms=1,
                         latency_p99_ms=1, latency_max_ms=1, queue_wait_p99_ms=0, input_tokens=1000 * requests,
                         output_tokens=200 * requests, tokens_per_s=1, over_2s_share=0, cache_hits=0,
                         demand_rps=rps)
    scope = "chat" if tier is None else f"chat/{tier}"
    return msgspec.json.encode(WindowStats(scope=scope, kind="traffic", window_start=start,
                                           window_end=start + 10_000, service="chat", tier=tier, traffic=stats))


def test_a_service_s_windows_become_its_history_gaps_as_zeros_duplicates_once():
    values = [_window(0, 5.0), _window(0, 5.0), _window(20_000, 7.0), b'{"schema":"sg.Other/1"}',
              _window(0, 5.0, "free", 30), _window(0, 5.0, "enterprise", 10), _window(0, 5.0, "enterprise", 10)]
    config = ServiceConfig("chat", replica_prompt_tps=10_000.0, replica_output_tps=2_000.0)
    h = from_windows(values, "chat", config, window_s=10.0)
    assert h.demand == [5.0, 0.0, 7.0]
    assert h.tier_share == pytest.approx({"enterprise": 0.25, "free": 0.75})
    assert h.replica_rps == pytest.approx(5.0) and h.deferrable_share == pytest.approx(0.5)
    with pytest.raises(ValueError, match="no windows"):
        from_windows(values, "other", config, window_s=10.0)


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "surgegate.cli", "plan", *args], capture_output=True, text=True,
                          timeout=120)


def test_plan_writes_its_report_and_plot_from_a_trace(tmp_path):
    trace = tmp_path / "t.csv"
    trace.write_text("timestamp_s,count\n" + "".join(f"{s},{5 + 20 * (s % 600 > 580)}\n" for s in range(7200)))
    result = _cli("--trace", str(trace), "--out", str(tmp_path / "out"), "--peak", "1000")
    assert result.returncode == 0, result.stderr
    report = (tmp_path / "out" / "plan.md").read_text()
    assert "## t" in report and "least cost mix" in report and "(1 h each)" in report
    assert (tmp_path / "out" / "plan-t.png").stat().st_size > 10_000


@pytest.mark.parametrize(("args", "says"), [
    ((), "--trace FILE"), (("--trace", "nowhere.csv"), "no such file"),
    (("--trace", "x", "--factor", "0.5"), "--factor=0.5: must be >= 1"),
    (("--trace", "x", "--spot-interruption", "1"), "spot_interruption"),
    (("--trace", "x", "--hours", "0"), "--hours=0.0: must be > 0"),
    (("--trace", "x", "--price-spot", "-1"), "spot=-1.0: must be >= 0"),
])
def test_plan_names_what_is_wrong(args, says):
    result = _cli(*args)
    assert result.returncode != 0 and says in result.stderr and "Traceback" not in result.stderr


def test_plan_reads_a_service_s_windows_from_the_broker(settings, tmp_path):
    from confluent_kafka import Producer

    from surgegate.streams.topics import Topics

    now = int(time.time() * 1000) // 10_000 * 10_000
    producer = Producer({"bootstrap.servers": settings.kafka})
    for i in range(30):
        producer.produce(Topics(settings.topic_prefix).windows, _window(now - 300_000 + 10_000 * i, 6.0 + i),
                         key=b"chat", timestamp=now - 300_000 + 10_000 * i)
    assert producer.flush(10) == 0
    result = _cli("--service", "chat", "--kafka", settings.kafka, "--prefix", settings.topic_prefix, "--since", "1",
                  "--out", str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert "30 published" in (tmp_path / "plan.md").read_text()
