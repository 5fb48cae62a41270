"""Graded degradation with hysteresis, and a per-service circuit breaker.

>>> m = LevelMachine(hysteresis_windows=3)
>>> [m.step(t) for t in (0, 3, 1, 1, 1, 1, 1, 1, 0)]
[0, 3, 3, 3, 2, 2, 2, 1, 1]
>>> m = LevelMachine(hysteresis_windows=1)
>>> [m.step(t, calm_target=c) for t, c in ((2, 2), (0, 2), (0, 1))]  # calm counts below the band only
[2, 2, 1]
"""

from __future__ import annotations

from surgegate.checks import check
from surgegate.schemas.decisions import BreakerState

MAX_LEVEL = 4


class LevelMachine:
    """Escalates at once; steps down one level after ``hysteresis_windows`` calm windows in a row."""

    def __init__(self, hysteresis_windows: int = 6) -> None:
        check(hysteresis_windows >= 1, "hysteresis_windows", hysteresis_windows, "must be >= 1")
        self.hysteresis = hysteresis_windows
        self.level = 0
        self.calm = 0

    def step(self, target: int, calm_target: int | None = None) -> int:
        """Move toward ``target`` (0..4) and return the level in force.

        ``calm_target`` is the level the inputs call for with a safety margin
        (default: ``target``); only when it is below the current level does a
        window count as calm. A margin between the two (a Schmitt trigger)
        keeps noise around a threshold from flapping the level.
        """
        target = max(0, min(MAX_LEVEL, target))
        calm_target = target if calm_target is None else max(target, min(MAX_LEVEL, calm_target))
        if target > self.level:
            self.level, self.calm = target, 0
        elif calm_target < self.level:
            self.calm += 1
            if self.calm >= self.hysteresis:
                self.level, self.calm = self.level - 1, 0
        else:
            self.calm = 0
        return self.level


class CircuitBreaker:
    """Opens on a high error-or-timeout share, probes half-open after a pause.

    >>> b = CircuitBreaker(threshold=0.5, min_requests=10, open_windows=2)
    >>> [b.step(share, 100) for share in (0.9, 0.9, 0.9, 0.0, 0.0)]
    ['open', 'open', 'half_open', 'closed', 'closed']
    """

    def __init__(self, threshold: float = 0.5, min_requests: int = 20, open_windows: int = 3,
                 probe_share: float = 0.05) -> None:
        check(0 < threshold <= 1, "threshold", threshold, "must be within (0, 1]")
        check(0 < probe_share <= 1, "probe_share", probe_share, "must be within (0, 1]")
        self.threshold = threshold
        self.min_requests = min_requests
        self.open_windows = open_windows
        self.probe_share = probe_share
        self.state: BreakerState = "closed"
        #: windows spent open since it opened
        self.opened = 0

    def restore(self, state: str, opened: int) -> None:
        """Take up a checkpointed state and its count of windows open."""
        if state not in ("closed", "open", "half_open"):
            raise ValueError(f"breaker state {state!r}: must be closed, open or half_open")
        self.state, self.opened = state, opened  # type: ignore[assignment]  # checked above

    def step(self, failure_share: float, requests: int) -> BreakerState:
        """Learn one window's failure share and return the state in force."""
        failing = requests >= self.min_requests and failure_share >= self.threshold
        if self.state == "closed":
            if failing:
                self.state, self.opened = "open", 0
        elif self.state == "open":
            self.opened += 1
            if self.opened >= self.open_windows:
                self.state = "half_open"
        elif self.state == "half_open":
            self.state = "open" if failing else "closed"
            self.opened = 0
        return self.state
