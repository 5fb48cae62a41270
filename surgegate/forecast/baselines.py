"""Baseline forecasters: last value, EWMA, seasonal naive (daily)."""

from __future__ import annotations

from surgegate.checks import check
from surgegate.forecast.base import Forecaster
from surgegate.forecast.daily import DailyProfile


class LastValue(Forecaster):
    """Every future window equals the last one (the naive benchmark).

    >>> m = LastValue(step_ms=10_000); m.learn_one(4.0, 0); m.forecast(3)
    [4.0, 4.0, 4.0]
    """

    name = "last_value"

    def __init__(self, step_ms: int) -> None:
        super().__init__(step_ms)
        self.last = 0.0

    def _learn(self, y: float, t: int) -> None:
        self.last = y

    def forecast(self, horizon: int) -> list[float]:
        return [self.last] * horizon


class EWMA(Forecaster):
    """Exponentially weighted mean; flat forecast.

    >>> m = EWMA(step_ms=10_000, alpha=0.5)
    >>> for y in (0.0, 4.0): m.learn_one(y, 0)
    >>> m.forecast(1)
    [2.0]
    """

    def __init__(self, step_ms: int, alpha: float = 0.3) -> None:
        super().__init__(step_ms)
        check(0.0 < alpha <= 1.0, "alpha", alpha, "must be within (0, 1]")
        self.alpha = alpha
        self.level: float | None = None
        self.name = f"ewma_{alpha:g}"

    def _learn(self, y: float, t: int) -> None:
        self.level = y if self.level is None else self.level + self.alpha * (y - self.level)

    def forecast(self, horizon: int) -> list[float]:
        return [self.level or 0.0] * horizon


class SeasonalNaive(Forecaster):
    """The same time yesterday, from the 10-minute slow view.

    Until a day has been seen (or for a slot yesterday did not have) it falls
    back to a slow EWMA of the series.
    """

    name = "seasonal_naive"

    def __init__(self, step_ms: int, profile: DailyProfile, alpha: float = 0.1) -> None:
        super().__init__(step_ms)
        self.profile = profile
        self.level = EWMA(step_ms, alpha)

    def _learn(self, y: float, t: int) -> None:
        self.level.learn_one(y, t)

    def forecast(self, horizon: int) -> list[float]:
        level = self.level.level or 0.0
        if self.t is None:
            return [level] * horizon
        out = []
        for h in range(1, horizon + 1):
            past = self.profile.yesterday(self.t + h * self.step_ms)
            out.append(level if past is None else past)
        return out
