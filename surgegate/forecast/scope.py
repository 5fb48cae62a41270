"""Per-scope forecasting: two series (rate, tokens/s), gaps, zeros and bad values."""

from __future__ import annotations

import math
from collections import Counter
from typing import Literal

from surgegate.checks import check
from surgegate.forecast.base import Forecaster
from surgegate.forecast.baselines import EWMA, DailyChange, LastValue, SeasonalNaive
from surgegate.forecast.daily import DailyProfile
from surgegate.forecast.river_models import HoltWintersForecaster, LagRegressor, SnarimaxForecaster
from surgegate.forecast.selector import OnlineSelector, SeriesForecast
from surgegate.forecast.state import FORMAT, ScopeForecasterState, StateMismatch
from surgegate.schemas.forecasts import Forecast, SeriesBounds

#: Values above this are rejected as absurd (requests/s or tokens/s).
ABSURD = 1e9


def rate_models(step_ms: int, profile: DailyProfile) -> list[Forecaster]:
    """The full model set, used for the request rate."""
    return [
        LastValue(step_ms), EWMA(step_ms, 0.5), EWMA(step_ms, 0.1), SeasonalNaive(step_ms, profile),
        DailyChange(step_ms, profile),
        HoltWintersForecaster(step_ms), SnarimaxForecaster(step_ms), LagRegressor(step_ms, profile),
    ]


def token_models(step_ms: int) -> list[Forecaster]:
    """A cheaper set for tokens/s, which follows the rate closely."""
    return [LastValue(step_ms), EWMA(step_ms, 0.5), EWMA(step_ms, 0.1), HoltWintersForecaster(step_ms)]


class ScopeForecaster:
    """Learns one scope's windows and produces its :class:`Forecast`.

    A window with no traffic is a zero and is learned. A missing window (the
    next one observed starts more than one step later) is a gap: nothing is
    learned for it, and forecasts awaiting it are dropped. NaN, infinite,
    negative or absurd values are rejected, counted by reason, and not learned.

    :meth:`state` is what it has learned (the checkpoint); :meth:`load` takes it
    up in a forecaster built from the settings in force.
    """

    def __init__(self, scope: str, *, step_ms: int, horizon: int = 30, coverage: float = 0.9) -> None:
        check(step_ms > 0, "step_ms", step_ms, "must be > 0")
        self.scope = scope
        self.step_ms = step_ms
        self.horizon = horizon
        self.coverage = coverage
        self.rate_profile = DailyProfile()
        self.rate = OnlineSelector(rate_models(step_ms, self.rate_profile), step_ms=step_ms, horizon=horizon,
                                   coverage=coverage)
        self.tokens = OnlineSelector(token_models(step_ms), step_ms=step_ms,
                                     horizon=horizon, coverage=coverage)
        self.last_t: int | None = None
        self.gaps = 0
        self.rejected: Counter[str] = Counter()
        # windows replayed after a restart: expected, not bad values, so not in ``rejected``
        self.stale = 0

    def state(self) -> ScopeForecasterState:
        """Everything learned, as the checkpoint's record."""
        return ScopeForecasterState(
            format=FORMAT, scope=self.scope, step_ms=self.step_ms, horizon=self.horizon, coverage=self.coverage,
            profile=self.rate_profile.state(), rate=self.rate.state(), tokens=self.tokens.state(), last_t=self.last_t,
            gaps=self.gaps, rejected=dict(self.rejected), stale=self.stale)

    def load(self, state: ScopeForecasterState) -> None:
        """Take up a checkpoint of this scope written with the same step, horizon and coverage;
        :class:`~surgegate.forecast.state.StateMismatch` if it was written for others (it is relearned)."""
        mine = (self.scope, self.step_ms, self.horizon, self.coverage)
        theirs = (state.scope, state.step_ms, state.horizon, state.coverage)
        if mine != theirs:
            raise StateMismatch(f"forecaster state for (scope, step_ms, horizon, coverage) {theirs}, not {mine}")
        self.rate_profile.load(state.profile)
        self.rate.load(state.rate)
        self.tokens.load(state.tokens)
        self.last_t, self.gaps, self.stale = state.last_t, state.gaps, state.stale
        self.rejected = Counter(state.rejected)

    def observe(self, t: int, rate: float, tokens_per_s: float) -> str:
        """Learn the window starting at ``t``; returns ``learned``, ``stale`` or a rejection reason."""
        for value in (rate, tokens_per_s):
            reason = _invalid(value)
            if reason:
                self.rejected[reason] += 1
                return reason
        if self.last_t is not None:
            if t <= self.last_t:
                self.stale += 1
                return "stale"
            if t > self.last_t + self.step_ms:
                self.gaps += 1
                self.rate.forget_pending()
                self.tokens.forget_pending()
        self.rate.learn_one(rate, t)
        self.rate_profile.add(rate, t)
        self.tokens.learn_one(tokens_per_s, t)
        self.last_t = t
        return "learned"

    def forecast(self) -> Forecast:
        """The current forecast of both series."""
        rate, tokens = self.rate.current(), self.tokens.current()
        regime: Literal["normal", "burst"] = "burst" if rate.regime == "burst" else "normal"
        return Forecast(
            scope=self.scope, origin=self.last_t or 0, step_ms=self.step_ms, horizon=self.horizon,
            coverage=self.coverage, rate_rps=_bounds(rate), tokens_per_s=_bounds(tokens), regime=regime,
            weights={k: round(v, 4) for k, v in rate.weights.items()}, gaps=self.gaps,
            rejected=sum(self.rejected.values()), reason=_reason(rate, self.step_ms),
        )


def _invalid(value: float) -> str | None:
    if value != value:
        return "nan"
    if math.isinf(value):
        return "infinite"
    if value < 0:
        return "negative"
    if value > ABSURD:
        return "absurd"
    return None


def _bounds(f: SeriesForecast) -> SeriesBounds:
    return SeriesBounds(point=_milli(f.point), lower=_milli(f.lower), upper=_milli(f.upper))


def _milli(values: list[float]) -> list[float]:
    """Rounded to 0.001 (values are never negative); a third of the cost of ``round(v, 3)``,
    which a forecast would otherwise call 180 times."""
    floor = math.floor
    return [floor(v * 1000.0 + 0.5) / 1000.0 for v in values]


def _reason(f: SeriesForecast, step_ms: int) -> str:
    h = min(6, len(f.point))
    lead = h * step_ms / 1000
    top = max(f.weights.items(), key=lambda kv: kv[1])[0] if f.weights else "none"
    text = (f"{f.point[h - 1]:.1f} rps in {lead:.0f} s (bounds {f.lower[h - 1]:.1f}-{f.upper[h - 1]:.1f}); "
            f"led by {top}")
    if f.regime == "burst":
        text = "burst: load left the bounds; following the last value with widened bounds. " + text
    return text
