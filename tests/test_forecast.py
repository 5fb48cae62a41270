"""Forecasters: one contract suite over every model, then the selector and per-scope rules."""

from __future__ import annotations

import math
import random

import pytest

from surgegate.cli import main
from surgegate.forecast.baselines import EWMA, DailyChange, LastValue
from surgegate.forecast.conformal import RollingQuantile
from surgegate.forecast.daily import DailyProfile
from surgegate.forecast.evaluation import evaluate_trace
from surgegate.forecast.scope import ScopeForecaster
from surgegate.forecast.selector import OnlineSelector
from surgegate.telemetry.traces import missing_windows, read_trace

STEP = 10_000
def noisy(level: float, n: int, seed: int = 0) -> list[float]:
    rng = random.Random(seed)
    return [max(0.0, rng.gauss(level, math.sqrt(level))) for _ in range(n)]



def test_a_step_burst_enters_and_then_leaves_the_burst_regime():
    fc = ScopeForecaster("service=chat", step_ms=STEP)
    series = noisy(5_000 / 100, 200, 1) + noisy(120_000 / 100, 120, 2) + noisy(5_000 / 100, 200, 3)
    regimes = []
    for i, y in enumerate(series):
        fc.observe(i * STEP, y, y * 300)
        regimes.append(fc.forecast().regime)
    onset = regimes.index("burst", 200)
    assert 200 < onset <= 200 + 3, "burst regime must start within k=3 windows of the step"
    assert "burst" in fc.forecast().reason or regimes[-1] == "normal"
    assert "normal" in regimes[onset:320], "the regime must end once the new level is inside the bounds"
    assert regimes[-1] == "normal"
    assert regimes[:200].count("burst") == 0


def test_a_quiet_window_is_a_zero_and_a_missing_window_is_a_gap():
    fc = ScopeForecaster("service=chat", step_ms=STEP)
    for i in range(10):
        fc.observe(i * STEP, 20.0, 100.0)
    assert fc.observe(10 * STEP, 0.0, 0.0) == "learned"
    assert fc.rate.model_forecasts["last_value"][0] == 0.0
    assert fc.observe(15 * STEP, 20.0, 100.0) == "learned"
    assert fc.gaps == 1
    assert fc.forecast().gaps == 1


@pytest.mark.parametrize(("value", "reason"), [(float("nan"), "nan"), (-1.0, "negative"),
                                               (float("inf"), "infinite"), (1e12, "absurd")])
def test_bad_values_are_rejected_counted_and_not_learned(value, reason):
    fc = ScopeForecaster("service=chat", step_ms=STEP)
    for i in range(20):
        fc.observe(i * STEP, 30.0, 300.0)
    before = fc.forecast()
    assert fc.observe(20 * STEP, value, 300.0) == reason
    assert fc.rejected[reason] == 1
    after = fc.forecast()
    assert after.rate_rps == before.rate_rps and after.rejected == 1


def test_bounds_hold_about_the_nominal_share_on_a_noisy_series():
    fc = ScopeForecaster("service=chat", step_ms=STEP)
    series = noisy(80.0, 1500, seed=9)
    inside = []
    for i, y in enumerate(series):
        if i > 300:
            f = fc.forecast()
            inside.append(f.rate_rps.lower[0] <= y <= f.rate_rps.upper[0])
        fc.observe(i * STEP, y, y * 10)
    assert 0.85 <= sum(inside) / len(inside) <= 0.95


def test_daily_change_expects_the_typical_days_rise_from_the_current_level():
    step = 600_000  # 10-minute windows: 144 a day
    profile = DailyProfile()
    model = DailyChange(step, profile)
    day = 144

    def value(i: int) -> float:  # a daily cycle whose level drifts up 10% a day
        return (100 + 10 * (i // day)) * (1.5 + math.sin(2 * math.pi * (i % day) / day))

    for i in range(3 * day + 20):
        model.learn_one(value(i), i * step)
        profile.add(value(i), i * step)
    i = 3 * day + 19
    ahead = model.forecast(6)[5]
    assert abs(ahead - value(i + 6)) < 0.5 * abs(value(i) - value(i + 6))
    assert model.forecast(6)[0] != value(i)  # not the last value: the rise is expected


def test_the_selector_moves_its_weight_to_the_model_that_keeps_being_right():
    exact, off = LastValue(STEP), EWMA(STEP, 0.05)
    selector = OnlineSelector([exact, off], step_ms=STEP, horizon=6)
    for i in range(200):  # a steady climb: the last value is one step behind, the slow mean far behind
        selector.learn_one(10.0 + i, i * STEP)
    weights = selector.current().weights
    assert weights["last_value"] > 0.9 > weights["ewma_0.05"]


def test_far_horizons_have_bounds_before_their_own_residuals_arrive():
    fc = ScopeForecaster("service=chat", step_ms=STEP)
    for i, y in enumerate(noisy(80.0, 20, seed=3)):
        fc.observe(i * STEP, y, y * 10)
    f = fc.forecast().rate_rps
    # 20 windows in, no 30-window forecast has been scored: its width is borrowed, and wider
    assert f.upper[29] - f.point[29] > f.upper[0] - f.point[0] > 0


def test_adaptive_conformal_keeps_the_miss_rate_while_the_noise_grows():
    rng = random.Random(4)
    adaptive = RollingQuantile(0.9, window=300)
    missed = 0
    n = 3000
    for i in range(n):
        r = rng.gauss(0.0, 1.0 + i / 300)  # the noise grows tenfold: old residuals understate it
        missed += i >= 300 and abs(r) > adaptive.width
        adaptive.update(r)
    assert 0.08 <= missed / (n - 300) <= 0.12
    assert adaptive.level > 0.9  # it had to ask for a higher quantile to keep up


def test_collection_gaps_in_a_rate_trace_are_missing_windows_not_zeros(tmp_path):
    rates = [1000.0 + 100 * math.sin(i / 10) for i in range(200)]
    rates[120] = 0.0  # the collection failed for ten minutes
    rate_trace = tmp_path / "rates.csv"
    rate_trace.write_text("timestamp_s,window_s,rate_rps,count\n"
                          + "".join(f"{600 * i},600,{r},{r * 600}\n" for i, r in enumerate(rates)))
    bins = read_trace(rate_trace)
    assert missing_windows(bins, 600_000) == [i == 120 for i in range(200)]
    report = evaluate_trace(rate_trace)
    assert report.gaps == 1 and report.actual[120] is None
    as_zeros = evaluate_trace(rate_trace, gaps_as_zeros=True)
    # nothing is forecast from the missing window; forecasting resumes from the next one
    assert report.selector_h[1][121] is None and report.selector_h[1][122] is not None
    as_zeros = evaluate_trace(rate_trace, gaps_as_zeros=True)
    assert as_zeros.gaps == 0 and as_zeros.actual[120] == 0.0 and as_zeros.selector_h[1][121] is not None
    # in a per-second count trace a zero is a quiet second, not missing data
    count_trace = tmp_path / "counts.csv"
    count_trace.write_text("timestamp_s,count\n" + "".join(f"{i},{i % 3}\n" for i in range(100)))
    assert not any(missing_windows(read_trace(count_trace), 10_000))


def test_eval_forecast_writes_the_tables_and_a_plot(tmp_path):
    trace = tmp_path / "burst.csv"
    trace.write_text("timestamp_s,count\n" + "".join(f"{i},{5 + 20 * (i > 3000)}\n" for i in range(4000)))
    out = tmp_path / "report"
    main(["eval-forecast", str(trace), "--out", str(out)])
    text = (out / "forecast-eval.md").read_text()
    assert "| selector |" in text and "| last_value |" in text and "coverage of the 90% bounds" in text
    assert (out / "forecast-burst.png").stat().st_size > 10_000


def test_eval_forecast_refuses_a_trace_too_short_to_score(tmp_path, capsys):
    trace = tmp_path / "short.csv"
    trace.write_text("timestamp_s,count\n" + "".join(f"{i},3\n" for i in range(200)))  # 20 windows of 10 s
    assert main(["eval-forecast", str(trace), "--out", str(tmp_path / "out")]) == 2
    assert "short: 20 windows with data; scoring 30 windows ahead after a 30-window warm-up needs at least 61" \
        in capsys.readouterr().err


@pytest.mark.parametrize(("rows", "message"), [
    ("0,1\n1,nan\n", "bad.csv:3: count=nan must be a finite number >= 0"),
    ("0,-4\n", "bad.csv:2: count=-4.0 must be a finite number >= 0"),
    ("0,1\n1\n", "bad.csv:3: no value for count"),
    ("0,x\n", "bad.csv:2: could not convert string to float: 'x'"),
])
def test_a_bad_trace_row_is_refused_naming_its_line(tmp_path, rows, message):
    trace = tmp_path / "bad.csv"
    trace.write_text("timestamp_s,count\n" + rows)
    with pytest.raises(ValueError, match=message.replace(".", r"\.").replace("'", ".")):
        read_trace(trace)
