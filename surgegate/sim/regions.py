"""Two regions of one service stepped together, with spill-over between them or without.

Each region has its own workload, fleet, GPU quota and surgegate policy. With spill-over, at the end of every
window :func:`~surgegate.control.spill.spill_over` reads each region's demand of that window (what arrived at
its edges, before any spill) and its safe capacity (ready replicas times one replica's rate within the SLO),
and for the next window a region over its capacity sends part of its lower tiers to the other, whose gate
admits them as its own traffic; they are served and scored there. The detour's latency is a setting shown in
each spill's reason; it is small beside the lower tiers' TTFT allowance (2-4 s) and is not added to their TTFT.

Scenarios (synthetic, named so): ``time_zones``, a daily cycle in each region eight hours apart, each under a
GPU quota of 75% of its own peak's need; ``same_peaks``, the same cycle at the same hours; ``burst``, a flash
crowd in one region while the other carries a steady 40% of its peak.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from surgegate.control.spill import RegionDemand, Spill, away_shares, demand_by_tier, spill_over
from surgegate.settings import DEFAULT_WINDOW_S
from surgegate.sim.report import make_policy
from surgegate.sim.result import Result
from surgegate.sim.run import Run, fleet_bounds
from surgegate.sim.service import TIER_ORDER, ServiceModel
from surgegate.sim.workload import Workload, daily, flash_crowd

#: the GPU quota of each region in the daily scenarios, as a share of its own peak's need
QUOTA_SHARE = 0.75
#: hours between the regions' daily peaks in ``time_zones``
SHIFT_H = 8


@dataclasses.dataclass
class RegionsResult:
    scenario: str
    spill: bool
    results: dict[str, Result]
    #: the last spills decided, for their reasons
    spills: list[Spill]

    def spilled_share(self, region: str) -> float:
        r = self.results[region]
        demand = sum(row.demand for row in r.rows) * r.window_s + sum(sum(row.spilled.values()) for row in r.rows)
        return sum(sum(row.spilled.values()) for row in r.rows) / demand if demand else 0.0


def simulate_regions(name: str, workloads: dict[str, Workload], *, spill: bool, model: ServiceModel | None = None,
                     seed: int = 0, window_s: int = DEFAULT_WINDOW_S, detour_ms: float = 80.0) -> RegionsResult:
    """Step every region's workload together, each with its own surgegate policy; spill-over between them when
    ``spill``."""
    model = model or ServiceModel()
    seconds = min(w.seconds for w in workloads.values())
    runs = {}
    for i, (region, w) in enumerate(workloads.items()):
        bounds = fleet_bounds(w, model, window_s=window_s)
        runs[region] = Run(w, make_policy("surgegate", w, model, bounds, window_s=window_s), model=model,
                           bounds=bounds, seed=seed + i, window_s=window_s)
    away: dict[str, dict[str, float]] = {r: {} for r in runs}
    spills: list[Spill] = []
    others = {r: [o for o in runs if o != r] for r in runs}
    for t in range(seconds):
        leaving = {r: run.leaving(t, away[r]) for r, run in runs.items()}
        for region, run in runs.items():
            incoming: dict = {}
            for other in others[region]:
                for cls, n in leaving[other].items():  # two regions: what leaves one arrives at the other
                    incoming[cls] = incoming.get(cls, 0.0) + n
            run.second(t, away[region], incoming)
        if spill and t % window_s == window_s - 1:
            loads = []
            for region, run in runs.items():
                rate = sum(run.workload.rate[t - window_s + 1:t + 1]) / window_s
                loads.append(RegionDemand(region, demand_by_tier(rate, run.workload.mix, TIER_ORDER),
                                        run.fleet.ready * run.bounds.replica_rps))
            decided = spill_over(loads, detour_ms=detour_ms)
            spills = decided or spills
            away = {r: away_shares(decided, r) for r in runs}
    return RegionsResult(name, spill, {r: run.result() for r, run in runs.items()}, spills)


def _shifted(w: Workload, hours: float, name: str) -> Workload:
    k = int(hours * 3600) % w.seconds
    return dataclasses.replace(w, name=name, rate=w.rate[k:] + w.rate[:k])


#: scenario -> builder(peak_rps, seed) of its regions' workloads
SCENARIOS: dict[str, Callable[[float, int], dict[str, Workload]]] = {
    "time_zones": lambda peak, seed: {
        "A": dataclasses.replace(daily(peak, seed=seed), name="A", quota_share=QUOTA_SHARE),
        "B": dataclasses.replace(_shifted(daily(peak, seed=seed + 1), SHIFT_H, "B"), quota_share=QUOTA_SHARE)},
    "same_peaks": lambda peak, seed: {
        "A": dataclasses.replace(daily(peak, seed=seed), name="A", quota_share=QUOTA_SHARE),
        "B": dataclasses.replace(daily(peak, seed=seed + 1), name="B", quota_share=QUOTA_SHARE)},
    "burst": lambda peak, seed: {
        "A": dataclasses.replace(flash_crowd(peak, peak / 12, seed=seed), name="A"),
        "B": Workload("B", [0.4 * peak] * 3600, True)},
}


def _pct(x: float) -> str:
    return f"{100 * x:.2f}%"


def markdown(pairs: list[tuple[RegionsResult, RegionsResult]]) -> str:
    """Per scenario and region: each tier's SLO attainment, replica-hours and the share spilled, without and with
    spill-over, and the last spill's reason."""
    lines = ["# Two regions: spill-over against none", "",
             "`surgegate simulate --regions` (see docs/simulator.md). Each region runs its own surgegate policy "
             "on its own fleet; with spill-over, a region over its safe capacity sends part of its lower tiers to "
             "the other region's headroom for the next window, never the top tier. Attainment: windows in which "
             "the tier met its SLO (rejections are misses).", ""]
    for off, on in pairs:
        lines += [f"## {off.scenario}", "",
                  "| region | spill-over | " + " | ".join(f"{t} SLO" for t in TIER_ORDER)
                  + " | replica-hours | sent away |",
                  "|---|---|" + "---:|" * (len(TIER_ORDER) + 2)]
        for region in off.results:
            for run in (off, on):
                r = run.results[region]
                lines.append(f"| {region} | {'yes' if run.spill else 'no'} | "
                             + " | ".join(_pct(r.slo_attainment(t)) for t in TIER_ORDER)
                             + f" | {r.replica_hours:,.0f} | {_pct(run.spilled_share(region))} |")
        for run in (off, on):
            total = sum(r.replica_hours for r in run.results.values())
            lines.append(f"| both (the lower) | {'yes' if run.spill else 'no'} | "
                         + " | ".join(_pct(min(r.slo_attainment(t) for r in run.results.values()))
                                      for t in TIER_ORDER) + f" | {total:,.0f} | |")
        if on.spills:
            lines += ["", f"A spill's reason: {on.spills[-1].reason}."]
        lines.append("")
    return "\n".join(lines)
