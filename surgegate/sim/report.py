"""Compare policies on workloads: a markdown table and one PNG per workload."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

from surgegate.settings import DEFAULT_WINDOW_S
from surgegate.sim.policies import FleetBounds, HpaPolicy, KpaPolicy, Policy, StaticPolicy, SurgegatePolicy
from surgegate.sim.run import Result, simulate
from surgegate.sim.service import TIER_ORDER, ServiceModel
from surgegate.sim.workload import Workload

POLICIES = ("surgegate", "hpa", "kpa", "static")


def make_policy(name: str, workload: Workload, model: ServiceModel, bounds: FleetBounds, *,
                window_s: int = DEFAULT_WINDOW_S) -> Policy:
    """A fresh policy; the static fleet is provisioned for the workload's peak at the target utilisation."""
    if name == "surgegate":
        return SurgegatePolicy(bounds, slo_p99_ms=model.slo_p99_ms, window_s=window_s)
    if name == "hpa":
        return HpaPolicy(bounds)
    if name == "kpa":
        return KpaPolicy(bounds, model.concurrency)
    if name == "static":
        peak = workload.peak_10s()
        return StaticPolicy(bounds, max(bounds.min_replicas,
                                        math.ceil(peak / (bounds.replica_rps * bounds.target_utilisation))))
    raise ValueError(f"policy={name!r}: one of {', '.join(POLICIES)}")


def run_all(workload: Workload, policies: tuple[str, ...], *, model: ServiceModel, bounds: FleetBounds,
            seed: int, window_s: int = DEFAULT_WINDOW_S,
            progress: Callable[[str, int, int], None] | None = None) -> list[Result]:
    """Each policy on ``workload``, one after the other."""
    out = []
    for name in policies:
        policy = make_policy(name, workload, model, bounds, window_s=window_s)

        def tick(done: int, total: int, name: str = name) -> None:
            if progress is not None:
                progress(f"{workload.name}/{name}", done, total)

        out.append(simulate(workload, policy, model=model, bounds=bounds, seed=seed, window_s=window_s,
                            progress=tick))
    return out


def _pct(x: float | None, digits: int = 1) -> str:
    return "n/a" if x is None or math.isnan(x) else f"{100 * x:.{digits}f}%"


def _s(x: float | None) -> str:
    return "never" if x is None else f"{x:.0f} s"


def table(workload: Workload, results: list[Result]) -> str:
    """Markdown: one row per policy, then how surgegate fares against the targets."""
    kind = "synthetic" if workload.synthetic else "real trace, scaled"
    lines = [
        f"### {workload.name} ({kind}; {workload.seconds / 3600:.1f} h, busiest 10 s at "
        f"{workload.peak_10s():,.0f} rps)", "",
        "| policy | realtime SLO attainment enterprise / pro / free | goodput rps | rejected (e / p / f) | "
        "deferred (e / p / f) | timed out | mean util | steady util | replica-hours | cost $ | first reaction | "
        "SLO recovered |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        first, recovered = r.onset_response()
        att = " / ".join(_pct(r.slo_attainment(t), 2) for t in TIER_ORDER)
        shed = {what: " / ".join(_pct(r.tier_share(what, t), 1) for t in TIER_ORDER)
                for what in ("rejected", "deferred")}
        lines.append(
            f"| {r.policy} | {att} | {r.goodput_rps:,.0f} | {_pct(r.share('rejected'), 2)} ({shed['rejected']}) | "
            f"{_pct(r.share('deferred'), 2)} ({shed['deferred']}) | {_pct(r.share('timed_out'), 2)} | "
            f"{_pct(r.mean_utilisation)} | "
            f"{_pct(r.steady_utilisation())} | {r.replica_hours:,.1f} | {r.cost():,.0f} | "
            f"{_s(first) if r.onset_s is not None else 'n/a'} | {_s(recovered) if r.onset_s is not None else 'n/a'} |")
    lines += ["", *verdicts(results), ""]
    return "\n".join(lines)


def verdicts(results: list[Result]) -> list[str]:
    """surgegate against the targets, each met or missed with its figures."""
    by = {r.policy: r for r in results}
    sg = by.get("surgegate")
    if sg is None:
        return []
    out = []
    top = sg.slo_attainment(TIER_ORDER[0])
    out.append(f"- Top-tier realtime SLO attainment {_pct(top, 2)} (target >= 99.9%): "
               f"{'met' if top >= 0.999 else 'missed'}.")
    hpa = by.get("hpa")
    if hpa is not None:
        ratio = sg.replica_hours / hpa.replica_hours if hpa.replica_hours else math.nan
        equal = top >= hpa.slo_attainment(TIER_ORDER[0])
        out.append(f"- Replica-hours {sg.replica_hours:,.1f} = {_pct(ratio)} of HPA's {hpa.replica_hours:,.1f} "
                   f"at {'equal or better' if equal else 'worse'} top-tier attainment (target <= 80%): "
                   f"{'met' if ratio <= 0.8 and equal else 'missed'}.")
    steady = sg.steady_utilisation()
    out.append(f"- Steady-state utilisation {_pct(steady)} (target 65-75%): "
               f"{'met' if 0.65 <= steady <= 0.75 else 'missed'}.")
    static = by.get("static")
    if static is not None:
        out.append(f"- The static fleet's mean utilisation: {_pct(static.mean_utilisation)} "
                   f"(expected under 40% where load varies).")
    return out


def plot(workload: Workload, results: list[Result], path: Path) -> Path:
    """Load, capacity, admitted rate, replicas and level over time; one panel per policy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(results), 1, figsize=(12, 2.6 * len(results)), sharex=True, squeeze=False)
    for ax, r in zip(axes[:, 0], results):
        hours = [row.t / 3600 for row in r.rows]
        ax.plot(hours, [row.demand for row in r.rows], lw=0.8, color="tab:gray", label="demand rps")
        ax.plot(hours, [row.admitted for row in r.rows], lw=0.8, color="tab:blue", label="admitted rps")
        ax.plot(hours, [row.capacity_rps for row in r.rows], lw=0.8, color="tab:green", label="capacity rps")
        ax.set_ylabel("rps")
        ax.set_title(f"{r.policy}: {r.replica_hours:,.0f} replica-hours, top-tier SLO "
                     f"{_pct(r.slo_attainment(TIER_ORDER[0]), 2)}", fontsize=9)
        twin = ax.twinx()
        twin.plot(hours, [row.ready for row in r.rows], lw=0.8, color="tab:orange", label="ready replicas")
        twin.step(hours, [row.level * 5 for row in r.rows], lw=0.8, color="tab:red", where="post",
                  label="level x 5")
        twin.set_ylabel("replicas / level x 5")
        lines = ax.get_legend_handles_labels()
        more = twin.get_legend_handles_labels()
        ax.legend(lines[0] + more[0], lines[1] + more[1], loc="upper left", fontsize=7, ncol=5)
    axes[-1, 0].set_xlabel("hours")
    fig.suptitle(f"{workload.name}: policies compared", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
