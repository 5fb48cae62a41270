"""The forecaster contract (after river's ``learn_one(y)`` / ``forecast(horizon)``)."""

from __future__ import annotations

import abc
from typing import Any

from surgegate.checks import check
from surgegate.forecast.state import StateMismatch


class Forecaster(abc.ABC):
    """Learns a series one value at a time and forecasts the next windows.

    ``learn_one(y, t)`` takes the value of the window starting at ``t`` (epoch
    ms); windows are ``step_ms`` apart. ``forecast(horizon)`` returns the next
    ``horizon`` values after the last window learned, never negative.
    """

    #: Short name used in reports and in a Forecast's weights.
    name: str = "forecaster"

    def __init__(self, step_ms: int) -> None:
        check(step_ms > 0, "step_ms", step_ms, "must be > 0")
        self.step_ms = step_ms
        self.t: int | None = None

    def learn_one(self, y: float, t: int) -> None:
        """Learn the value ``y`` of the window starting at ``t``."""
        self._learn(y, t)
        self.t = t

    @abc.abstractmethod
    def _learn(self, y: float, t: int) -> None:
        """Model-specific learning."""

    @abc.abstractmethod
    def forecast(self, horizon: int) -> list[float]:
        """Point forecasts for the next ``horizon`` windows."""

    @abc.abstractmethod
    def state(self) -> Any:
        """What the model has learned, as its typed record (:mod:`surgegate.forecast.state`)."""

    @abc.abstractmethod
    def load(self, state: Any) -> None:
        """Take up ``state`` (from :meth:`state`) and go on exactly as the model that wrote it;
        :class:`~surgegate.forecast.state.StateMismatch` if it is another model's."""

    def _expect(self, state: Any, kind: type) -> None:
        if not isinstance(state, kind):
            raise StateMismatch(f"{self.name}: a {type(state).__name__} cannot be loaded into {type(self).__name__}")

    # ------------------------------------------------- for the contract suite (river's habit)

    @classmethod
    def _unit_test_params(cls, step_ms: int) -> dict[str, Any]:
        """Keyword arguments of a valid instance; the contract suite builds every subclass from them."""
        return {"step_ms": step_ms}

    @classmethod
    def _invalid_params(cls) -> list[dict[str, Any]]:
        """Hyperparameters the constructor must refuse, each with an error naming it."""
        return [{"step_ms": 0}]
