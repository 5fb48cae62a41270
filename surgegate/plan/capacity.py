"""Capacity planning from a history of demand (pure): the peak to plan for, the cheapest capacity mix, the warm
pool, and what goes unserved when the plan is not bought.

The history is a demand rate per window (requests/s) and one replica's rate within the SLO; a window needs
``ceil(demand / replica_rps)`` replicas.

- **The peak to plan for** is ``factor`` times the expected peak (2-3x, the usual rule). The expected peak
  is the higher of the history's ``percentile`` window rate and a forecast: the same percentile within each
  period of the history (a day when it holds two days or more, else an hour, else a sixth of it), its
  least-squares trend carried one period ahead.
- **The mix** that serves the expected demand at least cost. ``reserved`` replicas are paid every hour;
  above them a window's need is bought per hour, on spot at most the deferrable share of the window's need
  (a reclaimed spot replica must never cost a realtime request), the rest on demand. Spot is held
  ``1 / (1 - interruption)`` times over to replace what is reclaimed. The cost is convex in ``reserved``, and
  every ``reserved`` from none to the highest need is priced (sorted needs and prefix sums, one binary search
  each), so the mix returned is the optimum, not a local one. Capacity from the expected peak's need to the
  plan's is on-demand headroom: a quota to hold, paid only when used.
- **The warm pool** for a stated cold start: the ``coverage`` quantile of how far the need rises within one
  cold start (replicas asked for now serve after it; the rise must come warm).
- **Shed shares per tier**: requests a fleet of a given size cannot serve, the lowest tier shed first.

>>> need = np.array([4, 4, 4, 4, 2, 2, 2, 2, 0, 0])
>>> m = best_mix(need, Prices(reserved=2, on_demand=4, spot=1.4, spot_interruption=0), spot_share=0.0)
>>> m.reserved, round(m.cost_per_hour, 2)     # levels needed 80% of the time are reserved, 40% bought on demand
(2, 7.2)
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence

import numpy as np

from surgegate.checks import check

DAY_S, HOUR_S = 86_400, 3_600
#: periods a short history is cut into for the trend of its peaks
MIN_PERIODS = 6


@dataclasses.dataclass(frozen=True)
class Prices:
    """Per replica-hour. ``spot_interruption``: the share of spot replica-hours reclaimed (a cloud's
    interruption frequency); what is reclaimed is held again to keep the capacity."""

    reserved: float = 2.0
    on_demand: float = 4.0
    spot: float = 1.4
    spot_interruption: float = 0.05

    def __post_init__(self) -> None:
        for name in ("reserved", "on_demand", "spot"):
            check(getattr(self, name) >= 0, name, getattr(self, name), "must be >= 0")
        check(0 <= self.spot_interruption < 1, "spot_interruption", self.spot_interruption, "must be within [0, 1)")

    @property
    def spot_held(self) -> float:
        """What a replica-hour of spot capacity costs once reclaims are replaced."""
        return self.spot / (1 - self.spot_interruption)


@dataclasses.dataclass(frozen=True)
class PeakPlan:
    """The peak to plan for and what it rests on (rates in requests/s)."""

    percentile: float
    history_rps: float
    period_s: float
    period_rps: list[float]
    forecast_rps: float
    expected_rps: float
    factor: float

    @property
    def plan_rps(self) -> float:
        return self.factor * self.expected_rps

    @property
    def growth(self) -> float:
        """Expected demand over the history's: the forecast's rise, never below 1."""
        return self.expected_rps / self.history_rps if self.history_rps > 0 else 1.0


def period_of(seconds: float) -> float:
    """A day when the history holds two or more, else an hour when it holds two, else a sixth of it."""
    if seconds >= 2 * DAY_S:
        return DAY_S
    if seconds >= 2 * HOUR_S:
        return HOUR_S
    return seconds / MIN_PERIODS


def plan_peak(demand: Sequence[float], window_s: float, *, percentile: float = 0.99,
              factor: float = 2.0) -> PeakPlan:
    """The expected peak (the history's ``percentile`` or its trend one period ahead) and ``factor`` times it."""
    check(len(demand) > 0, "demand", len(demand), "must hold at least one window")
    check(window_s > 0, "window_s", window_s, "must be > 0")
    check(0.5 <= percentile <= 1.0, "percentile", percentile, "must be within [0.5, 1]")
    check(factor >= 1.0, "factor", factor, "must be >= 1")
    rates = np.asarray(demand, dtype=float)
    history = float(np.quantile(rates, percentile))
    period_s = period_of(len(rates) * window_s)
    per = max(1, round(period_s / window_s))
    blocks = [rates[i:i + per] for i in range(0, len(rates), per)]
    if len(blocks) > 1 and len(blocks[-1]) < per / 2:  # a last stub of a period is not a period's peak
        blocks = blocks[:-1]
    peaks = [float(np.quantile(b, percentile)) for b in blocks]
    if len(peaks) >= 2:
        slope, intercept = np.polyfit(np.arange(len(peaks), dtype=float), np.asarray(peaks), 1)
        forecast = max(0.0, float(intercept + slope * len(peaks)))
    else:
        forecast = peaks[0]
    return PeakPlan(percentile, history, per * window_s, peaks, forecast, max(history, forecast), factor)


def needs(demand: Sequence[float] | np.ndarray, replica_rps: float) -> np.ndarray:
    """Replicas each window needs: its demand over one replica's rate within the SLO, rounded up."""
    check(replica_rps > 0, "replica_rps", replica_rps, "must be > 0")
    return np.ceil(np.asarray(demand, dtype=float) / replica_rps - 1e-9).clip(min=0)


@dataclasses.dataclass(frozen=True)
class Mix:
    """A capacity mix and its expected cost per hour over the demand it was priced on."""

    reserved: int
    #: the most spot and on-demand replicas any window holds
    spot_peak: int
    on_demand_peak: int
    #: mean replicas per hour on spot (held, reclaims replaced) and on demand
    spot_mean: float
    on_demand_mean: float
    cost_per_hour: float


def mix_cost(need: np.ndarray, reserved: int, prices: Prices, spot_share: float) -> Mix:
    """The mix with ``reserved`` replicas priced window by window (the definition :func:`best_mix` optimises)."""
    check(0.0 <= spot_share <= 1.0, "spot_share", spot_share, "must be within [0, 1]")
    n = np.asarray(need, dtype=float)
    above = np.maximum(0.0, n - reserved)
    spot = np.minimum(above, spot_share * n)
    on_demand = above - spot
    spot_held = spot / (1 - prices.spot_interruption)
    cost = reserved * prices.reserved + float(np.mean(spot_held)) * prices.spot + float(np.mean(on_demand)) * \
        prices.on_demand
    return Mix(reserved, math.ceil(float(spot_held.max(initial=0.0)) - 1e-9),
               math.ceil(float(on_demand.max(initial=0.0)) - 1e-9), float(np.mean(spot_held)),
               float(np.mean(on_demand)), cost)


def best_mix(need: np.ndarray, prices: Prices, spot_share: float) -> Mix:
    """The mix of least expected cost over ``need`` (replicas per window), every reserved count priced."""
    check(0.0 <= spot_share <= 1.0, "spot_share", spot_share, "must be within [0, 1]")
    n = np.sort(np.asarray(need, dtype=float))
    if len(n) == 0:
        return mix_cost(n, 0, prices, spot_share)
    count = len(n)
    prefix = np.concatenate(([0.0], np.cumsum(n)))
    r = np.arange(int(n[-1]) + 1, dtype=float)
    # windows above r need more than the reserved; up to r / (1 - share) all of it fits on spot
    first = np.searchsorted(n, r, side="right")
    cap = np.searchsorted(n, r / (1.0 - spot_share), side="right") if spot_share < 1.0 else np.full_like(first, count)
    above = (prefix[count] - prefix[first]) - r * (count - first)
    spot = (prefix[cap] - prefix[first]) - r * (cap - first) + spot_share * (prefix[count] - prefix[cap])
    cost = r * prices.reserved + (spot * prices.spot_held + (above - spot) * prices.on_demand) / count
    return mix_cost(need, int(np.argmin(cost)), prices, spot_share)


def warm_pool(need: np.ndarray, window_s: float, cold_start_s: float, coverage: float = 0.99) -> int:
    """Replicas to hold loaded and idle: the ``coverage`` quantile of the need's rise within one cold start."""
    check(cold_start_s > 0, "cold_start_s", cold_start_s, "must be > 0")
    check(0.5 <= coverage <= 1.0, "coverage", coverage, "must be within [0.5, 1]")
    n = np.asarray(need, dtype=float)
    ahead = max(1, math.ceil(cold_start_s / window_s))
    if len(n) < 2:
        return 0
    padded = np.concatenate((n, np.full(ahead, n[-1])))
    highest = np.lib.stride_tricks.sliding_window_view(padded[1:], ahead).max(axis=1)[: len(n)]
    rise = np.maximum(0.0, highest - n)
    # the least pool that covers the rise of at least ``coverage`` of the windows
    return math.ceil(float(np.quantile(rise, coverage, method="inverted_cdf")) - 1e-9)


def shed_shares(demand: np.ndarray, capacity_rps: float, tier_share: Mapping[str, float]) -> dict[str, float]:
    """Each tier's share of requests a fleet of ``capacity_rps`` leaves unserved; tiers highest first, the
    lowest shed first."""
    check(capacity_rps >= 0, "capacity_rps", capacity_rps, "must be >= 0")
    d = np.asarray(demand, dtype=float)
    left = np.full_like(d, capacity_rps)
    out = {}
    for tier, share in tier_share.items():
        want = d * share
        served = np.minimum(want, left)
        left = left - served
        total = float(want.sum())
        out[tier] = float((want - served).sum()) / total if total > 0 else 0.0
    return out
