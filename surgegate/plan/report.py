"""A capacity plan for one service's history of demand, as a markdown section and a PNG (``surgegate plan``)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from surgegate.checks import check
from surgegate.plan.capacity import (
    HOUR_S,
    Mix,
    PeakPlan,
    Prices,
    best_mix,
    mix_cost,
    needs,
    plan_peak,
    shed_shares,
    warm_pool,
)


@dataclasses.dataclass(frozen=True)
class History:
    """A service's demand per window, what one replica serves within the SLO, and who asks.

    ``tier_share``: each tier's share of requests, highest tier first. ``deferrable_share``: the share that
    may wait (batch work), the only work spot capacity carries.
    """

    name: str
    window_s: float
    demand: list[float]
    replica_rps: float
    tier_share: dict[str, float]
    deferrable_share: float
    #: how the history was obtained, for the report
    source: str

    def __post_init__(self) -> None:
        check(len(self.demand) > 0, "demand", len(self.demand), "must hold at least one window")
        check(self.window_s > 0, "window_s", self.window_s, "must be > 0")
        check(self.replica_rps > 0, "replica_rps", self.replica_rps, "must be > 0")
        check(0.0 <= self.deferrable_share <= 1.0, "deferrable_share", self.deferrable_share, "must be within [0, 1]")
        check(abs(sum(self.tier_share.values()) - 1.0) < 1e-6, "tier_share", self.tier_share, "must sum to 1")


@dataclasses.dataclass(frozen=True)
class Plan:
    history: History
    peak: PeakPlan
    prices: Prices
    cold_start_s: float
    coverage: float
    #: the expected demand per window (the history times the forecast's growth) and its needs
    expected: np.ndarray
    need: np.ndarray
    mix: Mix
    all_on_demand: Mix
    #: a fixed fleet bought reserved at the plan's peak: what sizing for the peak costs without a mix
    static_cost_per_hour: float
    warm: int
    plan_replicas: int
    #: capacity bought -> each tier's shed share when demand reaches the plan's peak
    shed: dict[str, dict[str, float]]

    @property
    def expected_replicas(self) -> int:
        """Replicas the expected peak needs."""
        return int(needs([self.peak.expected_rps], self.history.replica_rps)[0])


def make_plan(history: History, *, prices: Prices | None = None, factor: float = 2.0, percentile: float = 0.99,
              cold_start_s: float = 15.0, coverage: float = 0.99) -> Plan:
    """The whole plan of :mod:`surgegate.plan.capacity` for ``history``."""
    prices = prices or Prices()
    peak = plan_peak(history.demand, history.window_s, percentile=percentile, factor=factor)
    expected = np.asarray(history.demand, dtype=float) * peak.growth
    need = needs(expected, history.replica_rps)
    mix = best_mix(need, prices, history.deferrable_share)
    plan_replicas = int(needs([peak.plan_rps], history.replica_rps)[0])
    warm = warm_pool(need, history.window_s, cold_start_s, coverage)
    # demand grown until its percentile is the plan's peak: the surge the headroom is bought for
    surge = expected * factor
    expected_replicas = int(needs([peak.expected_rps], history.replica_rps)[0])
    fleets = {
        f"reserved only ({mix.reserved:,})": mix.reserved,
        f"the expected peak's need ({expected_replicas:,})": expected_replicas,
        f"the plan ({plan_replicas:,})": plan_replicas,
    }
    shed = {label: shed_shares(surge, n * history.replica_rps, history.tier_share) for label, n in fleets.items()}
    return Plan(history, peak, prices, cold_start_s, coverage, expected, need, mix,
                mix_cost(need, 0, prices, 0.0), plan_replicas * prices.reserved, warm, plan_replicas, shed)


def _span(seconds: float) -> str:
    return f"{seconds / HOUR_S:g} h" if seconds >= HOUR_S else f"{seconds / 60:.0f} min"


def _ratio(x: float, base: float) -> str:
    return f"{x / base:.2f}" if base > 0 else "-"


def _rps(x: float) -> str:
    return f"{x:,.0f}" if x >= 100 else f"{x:,.2f}"


def markdown(plan: Plan) -> str:
    """The plan as a report section: the peak and its grounds, the mix and its cost against the plain buys,
    the warm pool, and the shed shares if the plan is not bought."""
    h, p, m, pr = plan.history, plan.peak, plan.mix, plan.prices
    hours = len(h.demand) * h.window_s / HOUR_S
    warm_cost = plan.warm * pr.reserved
    total = m.cost_per_hour + warm_cost
    lines = [
        f"## {h.name}",
        "",
        f"{h.source}; {len(h.demand):,} windows of {h.window_s:g} s ({hours:,.1f} hours). One replica serves "
        f"{h.replica_rps:.2f} requests/s within the SLO. Tiers: "
        + ", ".join(f"{t} {s:.0%}" for t, s in h.tier_share.items())
        + f"; deferrable (batch) {h.deferrable_share:.0%}.",
        "",
        "### The peak to plan for",
        "",
        "| | requests/s | replicas |",
        "|---|---:|---:|",
        f"| history, {p.percentile:.1%} of windows | {_rps(p.history_rps)} | "
        f"{int(needs([p.history_rps], h.replica_rps)[0]):,} |",
        f"| forecast: trend of the {len(p.period_rps)} periods' {p.percentile:.1%} ({_span(p.period_s)} each) "
        f"one period ahead | {_rps(p.forecast_rps)} | {int(needs([p.forecast_rps], h.replica_rps)[0]):,} |",
        f"| **expected peak** (the higher) | {_rps(p.expected_rps)} | {plan.expected_replicas:,} |",
        f"| **plan: {p.factor:g}x the expected peak** | {_rps(p.plan_rps)} | {plan.plan_replicas:,} |",
        "",
        "### The capacity mix",
        "",
        f"Prices per replica-hour: reserved {pr.reserved:g}, on demand {pr.on_demand:g}, spot {pr.spot:g} with "
        f"{pr.spot_interruption:.0%} of its hours reclaimed (held {pr.spot_held:.2f}). Spot carries deferrable "
        f"work only. Priced over the expected demand (the history times {p.growth:.3f}).",
        "",
        "| buy | reserved | spot, most held | on demand, most held | cost per hour | vs all on demand |",
        "|---|---:|---:|---:|---:|---:|",
        f"| **least cost mix** | {m.reserved:,} | {m.spot_peak:,} | {m.on_demand_peak:,} | {m.cost_per_hour:,.1f} | "
        f"{_ratio(m.cost_per_hour, plan.all_on_demand.cost_per_hour)} |",
        f"| all on demand | 0 | 0 | {plan.all_on_demand.on_demand_peak:,} | "
        f"{plan.all_on_demand.cost_per_hour:,.1f} | 1.00 |",
        f"| a fixed fleet at the plan's peak, reserved | {plan.plan_replicas:,} | 0 | 0 | "
        f"{plan.static_cost_per_hour:,.1f} | {_ratio(plan.static_cost_per_hour, plan.all_on_demand.cost_per_hour)} |",
        "",
        f"On-demand headroom from the expected peak's need to the plan's: "
        f"{max(0, plan.plan_replicas - plan.expected_replicas):,} replicas of quota, paid only when used.",
        "",
        f"**Warm pool** for a {plan.cold_start_s:g} s cold start: {plan.warm:,} replicas (the need rose by at most "
        f"that within one cold start in {plan.coverage:.0%} of windows), {warm_cost:,.1f} per hour held reserved. "
        f"Plan total: {total:,.1f} per hour.",
        "",
        "### If the plan is not bought: shed share per tier when demand reaches the plan's peak",
        "",
        "| capacity bought | " + " | ".join(h.tier_share) + " |",
        "|---|" + "---:|" * len(h.tier_share),
    ]
    for label, shares in plan.shed.items():
        lines.append(f"| {label} | " + " | ".join(f"{100 * shares[t]:.2f}%" for t in h.tier_share) + " |")
    return "\n".join(lines) + "\n"


def plot(plan: Plan, path: Path) -> Path:
    """Two panels: the need over time with the reserved, expected and plan lines; the need's duration curve
    with the mix's bands."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    h, m = plan.history, plan.mix
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(12, 6))
    hours = np.arange(len(plan.need)) * h.window_s / HOUR_S
    top.plot(hours, plan.need, lw=0.6, color="tab:gray", label="expected need, replicas")
    for y, colour, label in ((m.reserved, "tab:blue", "reserved"), (plan.expected_replicas, "tab:orange",
                             "expected peak's need"), (plan.plan_replicas, "tab:red", "plan")):
        top.axhline(y, color=colour, lw=0.9, ls="--", label=f"{label} ({y:,})")
    top.set_xlabel("hours")
    top.set_ylabel("replicas")
    top.legend(loc="upper left", fontsize=7, ncol=4)
    curve = np.sort(plan.need)[::-1]
    share = np.arange(1, len(curve) + 1) / len(curve) * 100
    above = np.maximum(0.0, curve - m.reserved)
    spot = np.minimum(above, h.deferrable_share * curve)
    bottom.fill_between(share, 0, np.minimum(curve, m.reserved), color="tab:blue", alpha=0.5, label="reserved")
    bottom.fill_between(share, np.minimum(curve, m.reserved), np.minimum(curve, m.reserved) + spot,
                        color="tab:green", alpha=0.5, label="spot")
    bottom.fill_between(share, np.minimum(curve, m.reserved) + spot, curve, color="tab:orange", alpha=0.5,
                        label="on demand")
    bottom.set_xlabel("% of windows needing at least this")
    bottom.set_ylabel("replicas")
    bottom.legend(loc="upper right", fontsize=7)
    fig.suptitle(f"{h.name}: capacity plan", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path
