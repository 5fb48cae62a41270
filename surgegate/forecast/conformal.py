"""Conformal interval widths learned online from recent residuals.

A :class:`QuantileTracker` follows the (1 - alpha) quantile of absolute
residuals by the update ``q += eta * (miss - alpha)`` (conformal quantile
tracking, as in "Conformal PID Control", Angelopoulos, Candes and Tibshirani,
2023): each miss widens the interval a little, each hit narrows it by
alpha/(1 - alpha) as much, so the long-run share of misses goes to alpha
whatever the series. ``eta`` is a fraction of the recent residual scale, so the
tracker is unit-free.

>>> q = QuantileTracker(coverage=0.9)
>>> for r in [1.0, -2.0, 0.5] * 200:
...     q.update(r)
>>> 1.0 <= q.width <= 2.5
True
"""

from __future__ import annotations

import bisect
import math
from array import array

from surgegate.forecast.base import check


class QuantileTracker:
    """Online (1 - alpha) quantile of |residual|: the half-width of an interval."""

    __slots__ = ("alpha", "rate", "width", "scale", "seen")

    def __init__(self, coverage: float = 0.9, rate: float = 0.1) -> None:
        check(0.5 <= coverage < 1.0, "coverage", coverage, "must be within [0.5, 1)")
        check(0.0 < rate <= 1.0, "rate", rate, "must be within (0, 1]")
        self.alpha = 1.0 - coverage
        self.rate = rate
        self.width = 0.0
        self.scale = 0.0
        self.seen = 0

    def update(self, residual: float) -> None:
        """Learn from one residual (actual - forecast)."""
        r = abs(residual)
        self.seen += 1
        if self.seen == 1:
            self.width = self.scale = r
            return
        self.scale += 0.05 * (r - self.scale)
        miss = 1.0 if r > self.width else 0.0
        self.width = max(0.0, self.width + self.rate * max(self.scale, 1e-9) * (miss - self.alpha) / self.alpha)


class RollingQuantile:
    """The (1 - alpha) quantile of the last ``window`` absolute residuals (split conformal
    on a rolling calibration set), with the finite-sample correction.

    >>> q = RollingQuantile(coverage=0.9, window=10)
    >>> for r in range(1, 11):
    ...     q.update(float(r))
    >>> q.width
    10.0
    """

    __slots__ = ("coverage", "window", "ring", "ordered", "_next", "width")

    def __init__(self, coverage: float = 0.9, window: int = 300) -> None:
        check(0.5 <= coverage < 1.0, "coverage", coverage, "must be within [0.5, 1)")
        check(window >= 10, "window", window, "must be >= 10")
        self.coverage = coverage
        self.window = window
        self.ring = array("d")
        self.ordered = array("d")
        self._next = 0
        self.width = 0.0

    def update(self, residual: float) -> None:
        """Learn from one residual (actual - forecast)."""
        r = abs(residual)
        if len(self.ring) < self.window:
            self.ring.append(r)
        else:
            old = self.ring[self._next]
            del self.ordered[bisect.bisect_left(self.ordered, old)]
            self.ring[self._next] = r
            self._next = (self._next + 1) % self.window
        bisect.insort(self.ordered, r)
        n = len(self.ordered)
        self.width = self.ordered[min(n - 1, math.ceil((n + 1) * self.coverage) - 1)]
