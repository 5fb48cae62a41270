"""How far a service's demand can rise before new capacity arrives, learned online (pure).

A replica asked for now serves only after the lead time (a cold start, and the
decision's own window). Whatever the demand does within it must be met by the
capacity already there, so the scaling policy holds capacity for the rise a
service's bursts bring, not for its mean. For each window it learns, from the
windows that followed it, the ratio

    rise = highest demand over the next ``horizon`` windows / base now,

``base`` being the demand now or a slow level of it (whichever is higher, so a
quiet window of a bursty service is not taken for its whole level), and keeps
the last ``memory`` of them. :meth:`BurstEnvelope.envelope` is the demand to
hold capacity for: base now times the ``coverage`` quantile of the rises seen
(with the finite-sample correction: until enough rises are seen it is the
highest of them). ``coverage`` is the stated risk: the share of windows whose
rise within the lead time the held capacity covers. Near 1 it holds for the
worst burst seen, as a fleet sized for the peak does; lower, it holds less and
pays less.

>>> e = BurstEnvelope(horizon=2, coverage=0.9, min_rises=1)
>>> for y in (100, 100, 400, 100, 100, 100):
...     e.learn(y)
>>> e.factor(), e.envelope(200.0)   # a 4x rise within two windows was seen, never above the highest load
(4.0, 400.0)
"""

from __future__ import annotations

import bisect
import collections
import math

from surgegate.checks import check
from surgegate.control.state import BurstState

#: How fast the level follows the load (a window's weight): about 20 windows, 3 minutes of 10 s windows.
LEVEL_ALPHA = 0.05
#: A base below this share of the slow level is lifted to it: quiet windows of a bursty service.
LEVEL_FLOOR = 1.0


class BurstEnvelope:
    """The ``coverage`` quantile of demand's rise over the next ``horizon`` windows (see the module docstring).

    ``min_rises``: rises needed before the envelope is trusted (until then :meth:`factor` is None and the
    scaling policy holds only what it forecasts). ``max_factor`` caps one rise, so a service that was idle
    (a base near zero) cannot ask for the whole fleet on its first request.
    """

    def __init__(self, *, horizon: int, coverage: float = 0.99, memory: int = 8640, min_rises: int = 6,
                 max_factor: float = 50.0, level_alpha: float = LEVEL_ALPHA) -> None:
        check(1 <= horizon <= 360, "horizon", horizon, "must be within [1, 360] windows")
        check(0.5 <= coverage <= 1.0, "coverage", coverage, "must be within [0.5, 1]")
        check(memory >= 10, "memory", memory, "must be >= 10")
        check(min_rises >= 1, "min_rises", min_rises, "must be >= 1")
        check(max_factor >= 1.0, "max_factor", max_factor, "must be >= 1")
        check(0.0 < level_alpha < 1.0, "level_alpha", level_alpha, "must be within (0, 1)")
        self.horizon = horizon
        self.coverage = coverage
        self.memory = memory
        self.min_rises = min_rises
        self.max_factor = max_factor
        self.level_alpha = level_alpha
        self.level = 0.0
        #: windows still within the horizon of a later one: [base then, highest demand since]
        self._open: collections.deque[list[float]] = collections.deque()
        #: finished rises, in arrival order and sorted
        self._ring: collections.deque[float] = collections.deque()
        self._sorted: list[float] = []
        #: windows learned, and the loads that may still be the highest within the memory: (window, load),
        #: loads falling (a monotonic deque: the first is the highest)
        self.seen = 0
        self._highs: collections.deque[tuple[int, float]] = collections.deque()

    def base(self, demand: float) -> float:
        """The base a rise is measured from: the demand, or the slow level if higher."""
        return max(demand, LEVEL_FLOOR * self.level)

    def learn(self, demand: float) -> None:
        """Learn one window's demand (requests/s, throttled ones included)."""
        demand = max(0.0, float(demand))
        for origin in self._open:
            if demand > origin[1]:
                origin[1] = demand
        if len(self._open) == self.horizon:
            base, peak = self._open.popleft()
            if base > 0:
                self._add(min(self.max_factor, max(1.0, peak / base)))
        self.level = demand if self.level == 0.0 else self.level + self.level_alpha * (demand - self.level)
        self._open.append([self.base(demand), 0.0])
        highs = self._highs
        while highs and highs[-1][1] <= demand:
            highs.pop()
        highs.append((self.seen, demand))
        while highs[0][0] <= self.seen - self.memory:
            highs.popleft()
        self.seen += 1

    @property
    def highest(self) -> float:
        """The highest load within the memory."""
        return self._highs[0][1] if self._highs else 0.0

    def _add(self, rise: float) -> None:
        self._ring.append(rise)
        bisect.insort(self._sorted, rise)
        if len(self._ring) > self.memory:
            old = self._ring.popleft()
            del self._sorted[bisect.bisect_left(self._sorted, old)]

    @property
    def rises(self) -> int:
        """Rises learned (kept)."""
        return len(self._sorted)

    def factor(self, coverage: float | None = None) -> float | None:
        """The ``coverage`` quantile of the rises kept (the highest until enough are seen), or None before
        ``min_rises``."""
        n = len(self._sorted)
        if n < self.min_rises:
            return None
        q = self.coverage if coverage is None else coverage
        return self._sorted[min(n - 1, max(0, math.ceil((n + 1) * q) - 1))]

    def envelope(self, demand: float) -> float | None:
        """The demand to hold capacity for, over the horizon, from a window of ``demand``; None until trusted."""
        f = self.factor()
        return None if f is None else min(f * self.base(demand), max(demand, self.highest))

    # ------------------------------------------------------------ state (the decide agent's checkpoint)

    def state(self) -> BurstState:
        """What it has learned: the slow level, the windows within the horizon, the rises in arrival order."""
        return BurstState(horizon=self.horizon, level=self.level, open=[(b, p) for b, p in self._open],
                          rises=list(self._ring), seen=self.seen, highs=list(self._highs))

    def load(self, state: BurstState) -> None:
        """Take up :meth:`state`. Rises learned over another horizon (a changed cold start) are not this one's:
        only the level is kept."""
        self.level = state.level
        self.seen, self._highs = state.seen, collections.deque(state.highs)
        if state.horizon != self.horizon:
            return
        self._open = collections.deque([[b, p] for b, p in state.open[-self.horizon:]])
        self._ring = collections.deque(state.rises[-self.memory:])
        self._sorted = sorted(self._ring)
