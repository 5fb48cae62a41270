"""Sharing safe capacity among priority classes and, within a class, among tenants.

0. The protected class (the top tier's realtime traffic) first gets its whole
   demand, up to all of the capacity: it is never throttled while capacity
   covers it.
1. Every other class gets its demand up to its reserved floor.
2. What is left, unused reservations included (they are borrowed, not wasted),
   goes to classes in priority order, each up to its demand.
3. Within a class, tenants share its rate max-min fairly in tokens, not
   requests: a tenant with expensive requests gets fewer of them.

>>> classes = [ClassDemand("enterprise/realtime", 30, priority=0.8, floor=50),
...            ClassDemand("free/realtime", 200, priority=0.3, floor=10)]
>>> allocate(100, classes)
{'enterprise/realtime': 30.0, 'free/realtime': 70.0}
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping


@dataclasses.dataclass(frozen=True)
class ClassDemand:
    """A priority class: its demand (rps), priority score and reserved floor (rps)."""

    name: str
    demand: float
    priority: float
    floor: float = 0.0


def allocate(capacity: float, classes: list[ClassDemand], protected: str | None = None) -> dict[str, float]:
    """Admitted rate per class; never above demand, never above capacity in total."""
    capacity = max(0.0, capacity)
    first = {c.name: min(max(c.demand, 0.0), capacity) for c in classes if c.name == protected}
    room = capacity - sum(first.values())
    granted = {c.name: min(max(c.demand, 0.0), c.floor) for c in classes if c.name != protected}
    scale = min(1.0, room / sum(granted.values())) if sum(granted.values()) > 0 else 1.0
    granted = {k: v * scale for k, v in granted.items()}  # floors oversubscribed: shrink them evenly
    granted.update(first)
    left = capacity - sum(granted.values())
    for c in sorted(classes, key=lambda c: (-c.priority, c.name)):
        extra = min(left, max(c.demand, 0.0) - granted[c.name])
        if extra > 0:
            granted[c.name] += extra
            left -= extra
    return {k: round(v, 6) for k, v in granted.items()}


def share_by_tokens(rate: float, demands: Mapping[str, tuple[float, float]],
                    weights: Mapping[str, float] | None = None) -> dict[str, float]:
    """Split a class's ``rate`` (rps) among tenants max-min fairly in tokens/s.

    ``demands`` maps tenant -> (demand rps, tokens per request); ``weights``
    (default 1) scale a tenant's fair share, e.g. by its behaviour score. The
    class's token budget (its rate at the demand-weighted mean cost) is what is
    conserved, so a cheap tenant may get more requests than a costly one.

    >>> share_by_tokens(10, {"cheap": (10, 100), "costly": (10, 900)})
    {'cheap': 10.0, 'costly': 4.444444}
    """
    if not demands:
        return {}
    weights = weights or {}
    cost = {t: max(tpr, 1.0) for t, (_, tpr) in demands.items()}
    want = {t: max(d, 0.0) * cost[t] for t, (d, _) in demands.items()}  # token demand
    budget = max(0.0, rate) * _mean_cost(demands, cost)
    share: dict[str, float] = {t: 0.0 for t in demands}
    active = {t for t, w in want.items() if w > 0}
    while active and budget > 1e-12:
        total_w = sum(weights.get(t, 1.0) for t in active)
        step = {t: budget * weights.get(t, 1.0) / total_w for t in active}
        done = {t for t in active if share[t] + step[t] >= want[t]}
        if not done:
            for t in active:
                share[t] += step[t]
            budget = 0.0
            break
        for t in done:
            budget -= want[t] - share[t]
            share[t] = want[t]
        active -= done
    return {t: round(share[t] / cost[t], 6) for t in demands}


def _mean_cost(demands: Mapping[str, tuple[float, float]], cost: Mapping[str, float]) -> float:
    total = sum(max(d, 0.0) for d, _ in demands.values())
    if total <= 0:
        return sum(cost.values()) / len(cost)
    return sum(max(d, 0.0) * cost[t] for t, (d, _) in demands.items()) / total
