"""Forecasters built on river: Holt-Winters, SNARIMAX and a lag/calendar regressor."""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from typing import Any

from river import compose, linear_model, optim, preprocessing, time_series, utils

from surgegate.checks import check
from surgegate.forecast.base import Forecaster
from surgegate.forecast.daily import DAY_MS, DailyProfile
from surgegate.forecast.state import HoltWintersState, LagRegressorState, LinearState, SnarimaxState, StateMismatch

#: Ratios to the level are clipped here, so a near-zero level cannot blow up learning.
MAX_RATIO = 10.0


class HoltWintersForecaster(Forecaster):
    """river's Holt-Winters (level and trend, no in-model season: the daily
    cycle is far longer than a 10 s model can hold; the slow view covers it)."""

    def __init__(self, step_ms: int, alpha: float = 0.3, beta: float | None = 0.05) -> None:
        super().__init__(step_ms)
        check(0.0 < alpha < 1.0, "alpha", alpha, "must be within (0, 1)")
        check(beta is None or 0.0 < beta < 1.0, "beta", beta, "must be within (0, 1) or None")
        self.model = time_series.HoltWinters(alpha=alpha, beta=beta)
        self.name = "holt_winters"
        self._n = 0
        self._first = 0.0

    @classmethod
    def _invalid_params(cls) -> list[dict[str, Any]]:
        return [*super()._invalid_params(), {"alpha": 1.5}, {"beta": 0.0}]

    def _learn(self, y: float, t: int) -> None:
        if self._n == 0:
            self._first = y
        self._n += 1
        self.model.learn_one(y)

    def forecast(self, horizon: int) -> list[float]:
        if self._n < 3:  # river needs a few values to initialise level and trend
            return [self._first] * horizon
        return [max(0.0, v) for v in self.model.forecast(horizon=horizon)]

    def state(self) -> HoltWintersState:
        m = self.model
        return HoltWintersState(t=self.t, n=self._n, first=self._first, first_values=list(m._first_values),
                                level=list(m.level), trend=list(m.trend) if m.trend is not None else [])

    def load(self, state: HoltWintersState) -> None:
        self._expect(state, HoltWintersState)
        m = self.model
        if bool(state.trend) and m.trend is None:
            raise StateMismatch("holt_winters: a state with a trend for a model without one")
        self.t, self._n, self._first = state.t, state.n, state.first
        m._first_values = list(state.first_values)
        m.level.clear()
        m.level.extend(state.level)
        if m.trend is not None:
            m.trend.clear()
            m.trend.extend(state.trend)
        m._initialized = bool(state.level)


class SnarimaxForecaster(Forecaster):
    """river's SNARIMAX on the series, with its own online scaling.

    Its forecast is recursive (one regression per step ahead), so it runs to
    ``max_steps`` windows and holds its last value beyond: that halves its cost
    at the default 30-window horizon, where its far forecasts lose to the
    smoother models anyway.
    """

    name = "snarimax"

    def __init__(self, step_ms: int, p: int = 3, d: int = 0, q: int = 1, learning_rate: float = 0.01,
                 max_steps: int = 12) -> None:
        super().__init__(step_ms)
        check(max_steps >= 1, "max_steps", max_steps, "must be >= 1")
        self.max_steps = max_steps
        check(p >= 0 and q >= 0 and d in (0, 1), "p/d/q", (p, d, q), "need p, q >= 0 and d in {0, 1}")
        regressor = preprocessing.StandardScaler() | linear_model.LinearRegression(
            optimizer=optim.SGD(learning_rate), intercept_lr=learning_rate)
        self.model = time_series.SNARIMAX(p=p, d=d, q=q, regressor=regressor)
        self._regressor = regressor
        self._scale = 0.0

    @classmethod
    def _invalid_params(cls) -> list[dict[str, Any]]:
        return [*super()._invalid_params(), {"max_steps": 0}]

    def _learn(self, y: float, t: int) -> None:
        # SNARIMAX learns faster on a unit-scale series: divide by a slow level.
        self._scale = y if self._scale == 0.0 else 0.99 * self._scale + 0.01 * y
        self.model.learn_one(y / self._scale if self._scale else 0.0)

    def forecast(self, horizon: int) -> list[float]:
        if not self._scale:
            return [0.0] * horizon
        out = [max(0.0, v * self._scale) for v in self.model.forecast(horizon=min(horizon, self.max_steps))]
        return out + [out[-1]] * (horizon - len(out))

    def state(self) -> SnarimaxState:
        m = self.model
        return SnarimaxState(t=self.t, scale=self._scale, y_hist=list(m.y_hist), y_diff=list(m.y_diff),
                             errors=list(m.errors), regressor=linear_state(self._regressor))

    def load(self, state: SnarimaxState) -> None:
        self._expect(state, SnarimaxState)
        m = self.model
        self.t, self._scale = state.t, state.scale
        for name in ("y_hist", "y_diff", "errors"):
            kept = getattr(m, name)
            kept.clear()
            kept.extend(getattr(state, name))
        load_linear(self._regressor, state.regressor)


class LagRegressor(Forecaster):
    """A river linear regression on lag, level, calendar and yesterday features.

    One model serves every horizon (the horizon is a feature). Values are
    divided by a slow level so the same weights fit a quiet and a busy scope.
    It learns each target at a few anchor horizons and forecasts all of them.
    """

    name = "lag_regressor"
    ANCHORS = (1, 6, 30)

    def __init__(self, step_ms: int, profile: DailyProfile, lags: int = 3, learning_rate: float = 0.005) -> None:
        super().__init__(step_ms)
        check(1 <= lags <= 20, "lags", lags, "must be within [1, 20]")
        self.profile = profile
        self.lags = lags
        self.model = preprocessing.StandardScaler() | linear_model.LinearRegression(
            optimizer=optim.SGD(learning_rate), intercept_lr=learning_rate, l2=1e-4, clip_gradient=1.0)
        self._recent: list[float] = []
        self._fast = 0.0
        self._level = 0.0
        # features by origin time, kept until their anchor targets arrive
        # kept as value tuples (not dicts) so a checkpoint stays small
        self._pending: dict[int, dict[int, tuple[tuple[float, ...], float]]] = {}
        self._plans: dict[int, Interpolator] = {}
        self._names = tuple(f"lag{i}" for i in range(lags)) + ("fast", "yday_ratio", "day_sin", "day_cos", "h")

    def _features(self, origin: int, h: int) -> dict[str, float]:
        level = self._level or 1.0
        x = {f"lag{i}": min(v / level, MAX_RATIO) for i, v in enumerate(reversed(self._recent))}
        x["fast"] = min(self._fast / level, MAX_RATIO)
        target_t = origin + h * self.step_ms
        yday = self.profile.yesterday(target_t)
        now_yday = self.profile.yesterday(origin)
        x["yday_ratio"] = min(yday / now_yday, MAX_RATIO) if (yday is not None and now_yday) else 1.0
        phase = 2 * math.pi * (target_t % DAY_MS) / DAY_MS
        x["day_sin"], x["day_cos"] = math.sin(phase), math.cos(phase)
        x["h"] = h / 30.0
        return x

    @classmethod
    def _unit_test_params(cls, step_ms: int) -> dict[str, Any]:
        return {"step_ms": step_ms, "profile": DailyProfile()}

    @classmethod
    def _invalid_params(cls) -> list[dict[str, Any]]:
        return [*super()._invalid_params(), {"lags": 0}, {"lags": 21}]

    def _learn(self, y: float, t: int) -> None:
        for h in self.ANCHORS:
            origin = t - h * self.step_ms
            pending = self._pending.get(origin, {}).pop(h, None)
            if pending is not None:
                values, level_then = pending
                # a near-zero level (a collection gap) must not make a huge target
                self.model.learn_one(dict(zip(self._names, values)), min(y / level_then, MAX_RATIO))
        self._pending = {o: f for o, f in self._pending.items() if f}
        self._recent.append(y)
        del self._recent[:-self.lags]
        self._fast = y if not self._fast else self._fast + 0.5 * (y - self._fast)
        self._level = y if not self._level else self._level + 0.05 * (y - self._level)
        if len(self._recent) == self.lags:
            self._pending[t] = {h: (tuple(self._features(t, h).values()), self._level or 1.0)
                                for h in self.ANCHORS}

    def forecast(self, horizon: int) -> list[float]:
        if self.t is None or len(self._recent) < self.lags:
            return [self._recent[-1] if self._recent else 0.0] * horizon
        level = self._level or 1.0
        anchors = tuple(h for h in self.ANCHORS if h < horizon) + (horizon,)
        at = {h: max(0.0, self.model.predict_one(self._features(self.t, h)) * level) for h in anchors}
        plan = self._plans.get(horizon)
        if plan is None:
            plan = self._plans[horizon] = Interpolator(anchors, horizon)
        return plan(at)

    def state(self) -> LagRegressorState:
        return LagRegressorState(t=self.t, recent=list(self._recent), fast=self._fast, level=self._level,
                                 pending={o: {h: (list(v), lvl) for h, (v, lvl) in f.items()}
                                          for o, f in self._pending.items()},
                                 regressor=linear_state(self.model))

    def load(self, state: LagRegressorState) -> None:
        self._expect(state, LagRegressorState)
        if len(state.recent) > self.lags:
            raise StateMismatch(f"lag_regressor: {len(state.recent)} lags kept for a model of {self.lags}")
        self.t, self._fast, self._level = state.t, state.fast, state.level
        self._recent = list(state.recent)
        self._pending = {o: {h: (tuple(v), lvl) for h, (v, lvl) in f.items()} for o, f in state.pending.items()}
        load_linear(self.model, state.regressor)


def linear_state(pipeline: compose.Pipeline) -> LinearState:
    """What a ``StandardScaler | LinearRegression`` pipeline has learned: the scaler's running mean and variance
    per feature and the regression's weights (its optimiser's rates are constants, nothing learned)."""
    scaler, regression = pipeline.steps.values()
    return LinearState(counts=dict(scaler.counts), means=dict(scaler.means), variances=dict(scaler.vars),
                       weights=dict(regression.weights), intercept=float(regression.intercept))


def load_linear(pipeline: compose.Pipeline, state: LinearState) -> None:
    """Put ``state`` (from :func:`linear_state`) into a fresh pipeline of the same make."""
    scaler, regression = pipeline.steps.values()
    scaler.counts = Counter(state.counts)
    scaler.means = defaultdict(float, state.means)
    scaler.vars = defaultdict(float, state.variances)
    regression._weights = utils.VectorDict(dict(state.weights))
    regression.intercept = state.intercept


class Interpolator:
    """Linear interpolation between anchor horizons, planned once.

    >>> Interpolator((1, 3), 4)({1: 1.0, 3: 3.0})
    [1.0, 2.0, 3.0, 3.0]
    """

    def __init__(self, anchors: tuple[int, ...], horizon: int) -> None:
        anchors = tuple(sorted(anchors))
        self.horizon = horizon
        self.plan: list[tuple[int, int, float]] = []
        for h in range(1, horizon + 1):
            if h <= anchors[0]:
                self.plan.append((anchors[0], anchors[0], 0.0))
            elif h >= anchors[-1]:
                self.plan.append((anchors[-1], anchors[-1], 0.0))
            else:
                hi = next(a for a in anchors if a >= h)
                lo = max(a for a in anchors if a <= h)
                self.plan.append((lo, hi, 0.0 if hi == lo else (h - lo) / (hi - lo)))

    def __call__(self, at: dict[int, float]) -> list[float]:
        """Values for horizons 1..horizon from values at the anchors."""
        return [at[lo] + (at[hi] - at[lo]) * w for lo, hi, w in self.plan]
