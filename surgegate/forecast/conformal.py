"""Conformal interval widths learned online from recent residuals."""

from __future__ import annotations

import bisect
import math
from array import array

from surgegate.checks import check
from surgegate.forecast.state import QuantileState

#: Residuals a quantile needs before its width is trusted (and adapted).
MIN_RESIDUALS = 10
#: Step of adaptive conformal inference (Gibbs and Candes, 2021): how fast the
#: quantile level moves when the bounds miss more or less often than they should.
ADAPT_STEP = 0.005


class RollingQuantile:
    """The (1 - alpha) quantile of the last ``window`` absolute residuals (split conformal
    on a rolling calibration set), with the finite-sample correction.

    The level is adapted online (adaptive conformal inference): each residual
    outside the current width raises it by ``ADAPT_STEP * coverage``, each one
    inside lowers it by ``ADAPT_STEP * (1 - coverage)``, so over time the
    bounds miss ``1 - coverage`` of the values even when the series drifts and
    the residuals are not exchangeable.

    >>> q = RollingQuantile(coverage=0.9, window=10)
    >>> for r in range(1, 11):
    ...     q.update(float(r))
    >>> q.width
    10.0
    """

    __slots__ = ("coverage", "window", "ring", "ordered", "_next", "width", "level")

    def __init__(self, coverage: float = 0.9, window: int = 300) -> None:
        check(0.5 <= coverage < 1.0, "coverage", coverage, "must be within [0.5, 1)")
        check(window >= 10, "window", window, "must be >= 10")
        self.coverage = coverage
        self.window = window
        # float32 halves a checkpoint; residuals need no more precision
        self.ring = array("f")
        self.ordered = array("f")
        self._next = 0
        self.width = 0.0
        self.level = coverage

    @property
    def ready(self) -> bool:
        """Whether enough residuals were seen for the width to be trusted."""
        return len(self.ring) >= MIN_RESIDUALS

    def update(self, residual: float) -> None:
        """Learn from one residual (actual - forecast)."""
        r = array("f", [abs(residual)])[0]  # as stored, so removal finds it again
        if self.ready:  # with too few residuals the width is not yet worth judging
            missed = 1.0 if r > self.width else 0.0
            self.level = min(1.0, max(0.5, self.level + ADAPT_STEP * (missed - (1.0 - self.coverage))))
        if len(self.ring) < self.window:
            self.ring.append(r)
        else:
            old = self.ring[self._next]
            del self.ordered[bisect.bisect_left(self.ordered, old)]
            self.ring[self._next] = r
            self._next = (self._next + 1) % self.window
        bisect.insort(self.ordered, r)
        n = len(self.ordered)
        self.width = self.ordered[min(n - 1, math.ceil((n + 1) * self.level) - 1)]

    def state(self) -> QuantileState:
        """The residuals in the ring's order, where the next one goes, the width and the adapted level."""
        return QuantileState(ring=list(self.ring), next=self._next, width=self.width, level=self.level)

    def load(self, state: QuantileState) -> None:
        """Take up ``state`` (from :meth:`state`)."""
        self.ring = array("f", state.ring[-self.window:])
        self.ordered = array("f", sorted(self.ring))
        self._next = state.next % self.window if len(self.ring) == self.window else 0
        self.width, self.level = state.width, state.level
