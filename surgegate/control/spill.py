"""Spill-over between regions (pure): a region whose demand exceeds its safe capacity sends part of its lower
tiers' traffic to a region with headroom, before it sheds any.

Each region reports the demand arriving at its edges per tier (before any spill), raised to its forecast when
the forecast is higher (:func:`ahead`), and its safe capacity (what its ready replicas serve within the SLO).
A region's headroom is its safe capacity less its own demand, every tier of it, so another region's overflow
never takes the capacity its own top tier needs. An overloaded region's excess goes to the regions with the
most headroom first, from its lowest tier up; the top tier is never sent away (it keeps its reserved capacity
at home and never pays the detour).

>>> a = RegionDemand("eu", {"enterprise": 20.0, "pro": 30.0, "free": 50.0}, safe_rps=80.0)
>>> b = RegionDemand("us", {"enterprise": 10.0, "pro": 10.0, "free": 10.0}, safe_rps=60.0)
>>> [(s.source, s.target, s.share) for s in spill_over([a, b], detour_ms=80.0)]
[('eu', 'us', {'free': 0.4})]
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

from surgegate.checks import check


@dataclasses.dataclass(frozen=True)
class RegionDemand:
    """One region's window: demand per tier (requests/s, highest tier first) and its safe capacity."""

    region: str
    demand_by_tier: Mapping[str, float]
    safe_rps: float

    @property
    def demand(self) -> float:
        return sum(self.demand_by_tier.values())


@dataclasses.dataclass(frozen=True)
class Spill:
    """Send ``share`` of each named tier's traffic from ``source`` to ``target``."""

    source: str
    target: str
    share: dict[str, float]
    rps: float
    reason: str


def spill_over(regions: Sequence[RegionDemand], *, detour_ms: float = 0.0) -> list[Spill]:
    """The spills that move every overloaded region's excess into other regions' headroom, as far as it goes."""
    check(detour_ms >= 0, "detour_ms", detour_ms, "must be >= 0")
    headroom = {r.region: max(0.0, r.safe_rps - r.demand) for r in regions}
    spills = []
    for src in sorted(regions, key=lambda r: r.safe_rps - r.demand):
        excess = src.demand - src.safe_rps
        if excess <= 0:
            continue
        tiers = list(src.demand_by_tier)
        movable = {t: src.demand_by_tier[t] for t in reversed(tiers[1:])}  # lowest first, never the top tier
        for dst in sorted((r for r in regions if r.region != src.region), key=lambda r: -headroom[r.region]):
            room = min(excess, headroom[dst.region], sum(movable.values()))
            if room <= 1e-9:
                continue
            share, left = {}, room
            for tier, rps in movable.items():
                take = min(left, rps)
                if take > 1e-9:
                    share[tier] = round(take / src.demand_by_tier[tier], 6)
                    movable[tier] = rps - take
                    left -= take
            headroom[dst.region] -= room
            excess -= room
            spills.append(Spill(src.region, dst.region, share, room, (
                f"{src.region}: {src.demand:,.1f} rps expected over its safe {src.safe_rps:,.1f}; {dst.region} has "
                f"{room + headroom[dst.region]:,.1f} rps of headroom after its own {dst.demand:,.1f}; send "
                + ", ".join(f"{t} {s:.0%}" for t, s in share.items())
                + f" ({room:,.1f} rps, {detour_ms:g} ms detour); the top tier stays")))
    return spills


def ahead(demand_by_tier: Mapping[str, float], forecast_rps: float) -> dict[str, float]:
    """Demand as the forecast expects it: every tier raised in proportion when the forecast's upper bound is
    above the demand now, never lowered (a spill decided on the forecast starts before the overload does).

    >>> ahead({"enterprise": 10.0, "free": 30.0}, 60.0)
    {'enterprise': 15.0, 'free': 45.0}
    >>> ahead({"enterprise": 10.0, "free": 30.0}, 20.0)
    {'enterprise': 10.0, 'free': 30.0}
    """
    now = sum(demand_by_tier.values())
    scale = forecast_rps / now if now > 0 and forecast_rps > now else 1.0
    return {t: d * scale for t, d in demand_by_tier.items()}


def away_shares(spills: Sequence[Spill], region: str) -> dict[str, float]:
    """The share of each tier ``region`` sends away, over every target."""
    out: dict[str, float] = {}
    for s in spills:
        if s.source == region:
            for tier, share in s.share.items():
                out[tier] = min(1.0, out.get(tier, 0.0) + share)
    return out


def demand_by_tier(rate_rps: float, mix: Mapping[tuple[str, Any], float], tiers: Sequence[str]) -> dict[str, float]:
    """A rate split by tier (``mix``: shares per (tier, request type)), highest tier first."""
    return {t: rate_rps * sum(s for (tier, _), s in mix.items() if tier == t) for t in tiers}
