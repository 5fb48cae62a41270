"""Forecast: what the forecast agent publishes to sg.forecasts after every window."""

from __future__ import annotations

from typing import Literal

import msgspec

from surgegate.schemas.fields import Count, EpochMs, Fraction


class SeriesBounds(msgspec.Struct, frozen=True):
    """Point forecast and bounds for horizons 1..H (index 0 is the next window)."""

    point: list[float]
    lower: list[float]
    upper: list[float]


class Forecast(msgspec.Struct, frozen=True, tag_field="schema", tag="sg.Forecast/1"):
    """Request rate (rps) and tokens/s for the next ``horizon`` windows of one scope.

    ``origin`` is the start of the last window learned; horizon h covers the
    window starting at ``origin + h * step_ms``. The bounds aim to hold the
    actual value with probability ``coverage``. ``regime`` is ``burst`` while
    the load has left the bounds and a fast-reacting forecast is used.
    ``weights`` are the models' weights at horizon 6.
    """

    scope: str
    origin: EpochMs
    step_ms: int
    horizon: int
    coverage: Fraction
    rate_rps: SeriesBounds
    tokens_per_s: SeriesBounds
    regime: Literal["normal", "burst"]
    weights: dict[str, float]
    gaps: Count = 0
    rejected: Count = 0
    reason: str = ""

    def upper_after(self, window_start: int) -> list[float]:
        """Upper bounds (rps) for the windows after the one starting at ``window_start``.

        A forecast at hand may have been issued a window or more before it.
        """
        first = max(0, (window_start - self.origin) // self.step_ms)
        return self.rate_rps.upper[first:]

    def point_after(self, window_start: int) -> list[float]:
        """Point forecasts (rps) for the windows after the one starting at ``window_start``."""
        first = max(0, (window_start - self.origin) // self.step_ms)
        return self.rate_rps.point[first:]
