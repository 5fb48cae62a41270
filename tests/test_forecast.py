"""Forecasters: one contract suite over every model, then the selector and per-scope rules."""

from __future__ import annotations

import math
import pickle
import random

import pytest

from surgegate.forecast.baselines import EWMA, LastValue, SeasonalNaive
from surgegate.forecast.daily import DailyProfile
from surgegate.forecast.river_models import HoltWintersForecaster, LagRegressor, SnarimaxForecaster
from surgegate.forecast.scope import ScopeForecaster, rate_models
from surgegate.forecast.selector import OnlineSelector

STEP = 10_000
FACTORIES = {
    "last_value": lambda: LastValue(STEP),
    "ewma": lambda: EWMA(STEP, 0.3),
    "seasonal_naive": lambda: SeasonalNaive(STEP, DailyProfile()),
    "holt_winters": lambda: HoltWintersForecaster(STEP),
    "snarimax": lambda: SnarimaxForecaster(STEP),
    "lag_regressor": lambda: LagRegressor(STEP, DailyProfile()),
    "selector": lambda: OnlineSelector(rate_models(STEP, DailyProfile()), step_ms=STEP, horizon=30),
}


def noisy(level: float, n: int, seed: int = 0) -> list[float]:
    rng = random.Random(seed)
    return [max(0.0, rng.gauss(level, math.sqrt(level))) for _ in range(n)]


@pytest.fixture(params=sorted(FACTORIES), ids=str)
def make(request):
    return FACTORIES[request.param]


def test_forecasts_have_the_horizon_asked_and_are_never_negative(make):
    model = make()
    assert len(model.forecast(30)) == 30
    for i, y in enumerate([0.0, 1.0, 0.0, 50.0, 0.0] * 20):
        model.learn_one(y, i * STEP)
        out = model.forecast(12)
        assert len(out) == 12 and all(v >= 0.0 and math.isfinite(v) for v in out)


def test_a_steady_series_is_forecast_near_its_level(make):
    model = make()
    for i, y in enumerate(noisy(100.0, 400)):
        model.learn_one(y, i * STEP)
    assert model.forecast(6)[5] == pytest.approx(100.0, rel=0.2)


def test_a_pickled_model_forecasts_exactly_as_the_original(make):
    model = make()
    series = noisy(40.0, 150, seed=3)
    for i, y in enumerate(series[:100]):
        model.learn_one(y, i * STEP)
    copy = pickle.loads(pickle.dumps(model))
    for i, y in enumerate(series[100:], start=100):
        model.learn_one(y, i * STEP)
        copy.learn_one(y, i * STEP)
    assert copy.forecast(30) == model.forecast(30)


@pytest.mark.parametrize(("build", "names"), [
    (lambda: EWMA(STEP, 0.0), "alpha=0.0"),
    (lambda: LastValue(0), "step_ms=0"),
    (lambda: HoltWintersForecaster(STEP, alpha=1.5), "alpha=1.5"),
    (lambda: LagRegressor(STEP, DailyProfile(), lags=0), "lags=0"),
    (lambda: OnlineSelector([], step_ms=STEP), "models=0"),
    (lambda: OnlineSelector([LastValue(STEP)], step_ms=STEP, horizon=0), "horizon=0"),
])
def test_bad_hyperparameters_are_refused_naming_the_bound(build, names):
    with pytest.raises(ValueError, match=names):
        build()


def test_a_step_burst_enters_and_then_leaves_the_burst_regime():
    fc = ScopeForecaster("service=chat")
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
    fc = ScopeForecaster("service=chat")
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
    fc = ScopeForecaster("service=chat")
    for i in range(20):
        fc.observe(i * STEP, 30.0, 300.0)
    before = fc.forecast()
    assert fc.observe(20 * STEP, value, 300.0) == reason
    assert fc.rejected[reason] == 1
    after = fc.forecast()
    assert after.rate_rps == before.rate_rps and after.rejected == 1


def test_bounds_hold_about_the_nominal_share_on_a_noisy_series():
    fc = ScopeForecaster("service=chat")
    series = noisy(80.0, 1500, seed=9)
    inside = []
    for i, y in enumerate(series):
        if i > 300:
            f = fc.forecast()
            inside.append(f.rate_rps.lower[0] <= y <= f.rate_rps.upper[0])
        fc.observe(i * STEP, y, y * 10)
    assert 0.85 <= sum(inside) / len(inside) <= 0.95
