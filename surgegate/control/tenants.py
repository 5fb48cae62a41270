"""What each tenant's history says about it: burstiness, past overuse, token cost.

>>> h = TenantHistory()
>>> for rate in (10, 10, 10, 10):
...     h.learn(rate, tokens_per_request=500, fair_share=20, service_tokens_per_request=500)
>>> round(h.behaviour, 2)
1.0
"""

from __future__ import annotations

import math

ALPHA = 0.1


class TenantHistory:
    """Exponentially weighted tenant statistics and a behaviour score in [0, 1] (1 = well behaved)."""

    __slots__ = ("mean", "var", "overuse", "cost_ratio", "seen")

    def __init__(self) -> None:
        self.mean = 0.0
        self.var = 0.0
        self.overuse = 0.0
        self.cost_ratio = 1.0
        self.seen = 0

    @classmethod
    def of(cls, mean: float, var: float, overuse: float, cost_ratio: float, seen: int) -> TenantHistory:
        """A history with these statistics (a restored checkpoint's)."""
        h = cls()
        h.mean, h.var, h.overuse, h.cost_ratio, h.seen = mean, var, overuse, cost_ratio, seen
        return h

    def learn(self, rate: float, *, tokens_per_request: float, fair_share: float,
              service_tokens_per_request: float) -> None:
        """Learn one window of the tenant's demand."""
        self.seen += 1
        if self.seen == 1:
            self.mean = rate
        else:
            delta = rate - self.mean
            self.mean += ALPHA * delta
            self.var = (1 - ALPHA) * (self.var + ALPHA * delta * delta)
        over = 1.0 if fair_share > 0 and rate > 2 * fair_share else 0.0
        self.overuse += ALPHA * (over - self.overuse)
        if service_tokens_per_request > 0 and rate > 0:
            ratio = tokens_per_request / service_tokens_per_request
            self.cost_ratio += ALPHA * (ratio - self.cost_ratio)

    @property
    def burstiness(self) -> float:
        """Coefficient of variation of the tenant's rate."""
        return math.sqrt(self.var) / self.mean if self.mean > 0 else 0.0

    @property
    def behaviour(self) -> float:
        """1 for a steady, fair, average-cost tenant; lower for bursty, overusing or costly ones."""
        penalty = (0.4 * min(self.burstiness, 1.0) + 0.4 * self.overuse
                   + 0.2 * min(max(self.cost_ratio - 1.0, 0.0), 1.0))
        return max(0.0, 1.0 - penalty)
