"""Baseline forecasters: last value, EWMA, seasonal naive (daily)."""

from __future__ import annotations

from typing import Any

from surgegate.checks import check
from surgegate.forecast.base import Forecaster
from surgegate.forecast.daily import SLOT_MS, DailyProfile
from surgegate.forecast.state import DailyChangeState, EWMAState, LastValueState, SeasonalNaiveState


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

    def state(self) -> LastValueState:
        return LastValueState(t=self.t, last=self.last)

    def load(self, state: LastValueState) -> None:
        self._expect(state, LastValueState)
        self.t, self.last = state.t, state.last


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

    @classmethod
    def _invalid_params(cls) -> list[dict[str, Any]]:
        return [*super()._invalid_params(), {"alpha": 0.0}, {"alpha": 1.5}]

    def _learn(self, y: float, t: int) -> None:
        self.level = y if self.level is None else self.level + self.alpha * (y - self.level)

    def forecast(self, horizon: int) -> list[float]:
        return [self.level or 0.0] * horizon

    def state(self) -> EWMAState:
        return EWMAState(t=self.t, level=self.level)

    def load(self, state: EWMAState) -> None:
        self._expect(state, EWMAState)
        self.t, self.level = state.t, state.level


class SeasonalNaive(Forecaster):
    """The same time yesterday, from the 10-minute slow view.

    Until a day has been seen (or for a slot yesterday did not have) it falls
    back to a slow EWMA of the series.
    """

    name = "seasonal_naive"

    def __init__(self, step_ms: int, profile: DailyProfile, alpha: float = 0.1) -> None:
        super().__init__(step_ms)
        check(0.0 < alpha <= 1.0, "alpha", alpha, "must be within (0, 1]")
        self.profile = profile
        self.level = EWMA(step_ms, alpha)

    @classmethod
    def _unit_test_params(cls, step_ms: int) -> dict[str, Any]:
        return {"step_ms": step_ms, "profile": DailyProfile()}

    @classmethod
    def _invalid_params(cls) -> list[dict[str, Any]]:
        return [*super()._invalid_params(), {"alpha": 0.0}]

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

    def state(self) -> SeasonalNaiveState:
        return SeasonalNaiveState(t=self.t, level=self.level.state())

    def load(self, state: SeasonalNaiveState) -> None:
        self._expect(state, SeasonalNaiveState)
        self.t = state.t
        self.level.load(state.level)


class DailyChange(Forecaster):
    """The last value plus the typical day's change from now to each future window.

    Where the daily cycle repeats but its level drifts from day to day, the
    last value holds the level and the typical day (the slow view's mean over
    the last two weeks) says where the hour is heading. Until a day is known the
    change is zero: it is the last value.
    """

    name = "daily_change"

    def __init__(self, step_ms: int, profile: DailyProfile) -> None:
        super().__init__(step_ms)
        self.profile = profile
        self.last = 0.0

    @classmethod
    def _unit_test_params(cls, step_ms: int) -> dict[str, Any]:
        return {"step_ms": step_ms, "profile": DailyProfile()}

    def _learn(self, y: float, t: int) -> None:
        self.last = y

    def forecast(self, horizon: int) -> list[float]:
        now = self.profile.typical(self.t) if self.t is not None else None
        if now is None:
            return [self.last] * horizon
        by_slot: dict[int, float] = {}  # at 10 s windows, 30 horizons span two or three slots
        out = []
        origin = self.t
        assert origin is not None  # a typical value was found for it
        for h in range(1, horizon + 1):
            t = origin + h * self.step_ms
            slot = t // SLOT_MS
            change = by_slot.get(slot)
            if change is None:
                later = self.profile.typical(t)
                change = by_slot[slot] = 0.0 if later is None else later - now
            out.append(max(0.0, self.last + change))
        return out

    def state(self) -> DailyChangeState:
        return DailyChangeState(t=self.t, last=self.last)

    def load(self, state: DailyChangeState) -> None:
        self._expect(state, DailyChangeState)
        self.t, self.last = state.t, state.last
