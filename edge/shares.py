"""Edge shares from demand: each edge takes the part of the service's rates that its demand is of all edges'.

A decision's rates are service-wide and each edge applies a share of them. A
share set by hand is right only while the load balancer in front splits
traffic as it assumed: behind an uneven split one edge refuses while another's
budget idles. So every edge reports its recent demand (every request that
reached its gate, refused and deferred ones included, smoothed over a few
seconds) to a Redis hash, each second, and takes as its share its demand over
all edges' fresh reports (Doorman's scheme, with Redis as the place the
demands meet). A share never falls below ``min_share``, so an edge whose
clients are only now arriving admits them before its next report; the shares
may add up to a little over 1 then. Without Redis, or while it is away, the
configured share applies (the fallback).

>>> class FakeRedis(dict):
...     def hset(self, key, field, value): self[field] = value
...     def hgetall(self, key): return dict(self)
>>> r = FakeRedis()
>>> a = DemandShares(r, "k", "a", smoothing=1.0, clock=lambda: 1000.0)
>>> b = DemandShares(r, "k", "b", smoothing=1.0, clock=lambda: 1000.0)
>>> _ = b.update(20.0); a.update(80.0), round(b.update(20.0), 3)
(0.8, 0.2)
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)


class DemandShares:
    """One edge's share of a service, from every edge's reported demand (see the module docstring)."""

    def __init__(self, redis: Any, key: str, edge_id: str, *, stale_s: float = 3.0, smoothing: float = 0.5,
                 min_share: float = 0.02, clock: Callable[[], float] = time.time) -> None:
        if not 0 < smoothing <= 1:
            raise ValueError(f"smoothing={smoothing!r}: must be within (0, 1]")
        if not 0 < min_share <= 1:
            raise ValueError(f"min_share={min_share!r}: must be within (0, 1]")
        self.redis = redis
        self.key = key
        self.edge_id = edge_id
        self.stale_s = stale_s
        self.smoothing = smoothing
        self.min_share = min_share
        self.clock = clock
        self.demand: float | None = None
        self.share: float | None = None
        self.counts = {"updates": 0, "failures": 0}

    def update(self, arrivals_per_s: float) -> float | None:
        """Report this edge's demand of the last second and return its share (None: Redis away, use the
        configured one)."""
        d = max(0.0, arrivals_per_s)
        self.demand = d if self.demand is None else self.demand + self.smoothing * (d - self.demand)
        now = self.clock()
        try:
            self.redis.hset(self.key, self.edge_id, f"{self.demand:.3f}@{now:.3f}")
            reported = self.redis.hgetall(self.key)
        except Exception as exc:
            self.counts["failures"] += 1
            if self.counts["failures"] == 1:
                log.warning("edge %s: edge demands not shared (%s); the configured share applies", self.edge_id,
                            exc)
            self.share = None
            return None
        total, fresh = 0.0, 0
        for raw in reported.values():
            text = raw.decode() if isinstance(raw, bytes) else str(raw)
            demand, _, at = text.partition("@")
            try:
                if now - float(at) <= self.stale_s:
                    total += float(demand)
                    fresh += 1
            except ValueError:
                continue
        self.counts["updates"] += 1
        share = self.demand / total if total > 0 else 1.0 / max(1, fresh)
        self.share = min(1.0, max(self.min_share, share))
        return self.share
