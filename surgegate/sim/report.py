"""Compare policies on workloads: each at its default and swept over its main knob, to cost at equal SLO.

For every policy the sweep runs its knob over :data:`SWEEPS` and keeps the
fewest replica-hours at which the top tier met its realtime SLO in at least
:data:`ISO_SLO` of the windows (the *iso-SLO cost*). The report puts that
next to the default settings' table, with one plot per workload of the whole
sweep (replica-hours against top-tier attainment).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable
from pathlib import Path

from surgegate.settings import DEFAULT_WINDOW_S
from surgegate.sim.policies import (
    FleetBounds,
    HpaPolicy,
    KpaPolicy,
    OraclePolicy,
    Policy,
    StaticPolicy,
    SurgegatePolicy,
    WithAdmission,
)
from surgegate.sim.result import Result
from surgegate.sim.run import cold_start, fleet_bounds, simulate
from surgegate.sim.service import TIER_ORDER, ServiceModel
from surgegate.sim.workload import Workload

#: Every policy compared; ``+admission``: the baseline behind surgegate's tier-aware admission; ``oracle``: the
#: clairvoyant limit.
POLICIES = ("surgegate", "oracle", "hpa-gpu", "keda-queue", "kpa", "static",
            "hpa-gpu+admission", "keda-queue+admission", "kpa+admission", "static+admission")
BASELINES = ("hpa-gpu", "keda-queue", "kpa", "static")
#: top-tier attainment a setting must reach to count at equal SLO
ISO_SLO = 0.999
#: each policy's knob values; kpa in shares of a replica's in-flight requests at capacity, static in
#: shares of the peak's need, the others as they are configured
SWEEPS: dict[str, tuple[float, ...]] = {
    "surgegate": (0.5, 0.7, 0.8, 0.85, 0.9),
    "hpa-gpu": (0.5, 0.7, 0.9, 0.95, 0.99),
    "keda-queue": (0.5, 2.0, 5.0, 10.0, 20.0),
    "kpa": (0.3, 0.45, 0.6, 0.75, 0.9),
    "static": (0.8, 0.9, 1.0, 1.1, 1.25),
    "oracle": (0.6, 0.7, 0.8, 0.9, 1.0),
}
#: the knob value a policy ships with (the "default settings" table)
DEFAULTS: dict[str, float] = {"surgegate": 0.8, "hpa-gpu": 0.7, "keda-queue": 5.0, "kpa": 0.7, "static": 1.0,
                               "oracle": 0.9}


def make_policy(name: str, workload: Workload, model: ServiceModel, bounds: FleetBounds, *,
                knob: float | None = None, window_s: int = DEFAULT_WINDOW_S) -> Policy:
    """A fresh policy at ``knob`` (None: its default)."""
    base, _, admission = name.partition("+")
    if base not in SWEEPS or admission not in ("", "admission"):
        raise ValueError(f"policy={name!r}: one of {', '.join(POLICIES)}")
    value = DEFAULTS[base] if knob is None else knob
    policy: Policy
    if base == "surgegate":
        if admission:
            raise ValueError("policy='surgegate+admission': surgegate has its admission already")
        return SurgegatePolicy(bounds, window_s=window_s, target_utilisation=value)
    if base == "oracle":
        if admission:
            raise ValueError("policy='oracle+admission': the oracle never needs to refuse")
        rates: dict[tuple[float, float], float] = {}
        per = []
        for t in range(workload.seconds):
            key = workload.lengths(t)
            if key not in rates:
                rates[key] = model.replica_rps(*key)
            per.append(rates[key])
        return OraclePolicy(bounds, workload.rate, per, cold_start_s=cold_start(workload, model),
                            target_utilisation=value)
    if base == "hpa-gpu":
        policy = HpaPolicy(bounds, "gpu", value)
    elif base == "keda-queue":
        policy = HpaPolicy(bounds, "queue", value)
    elif base == "kpa":
        policy = KpaPolicy(bounds, value * bounds.replica_concurrency)
        policy.knob, policy.knob_value = "share of a replica's in-flight requests at capacity", value
    else:
        need = workload.peak_10s() / bounds.replica_rps
        policy = StaticPolicy(bounds, max(1, math.ceil(value * need)))
        policy.knob, policy.knob_value = "share of the peak's need", value
    return WithAdmission(bounds, policy) if admission else policy


@dataclasses.dataclass
class Comparison:
    """One workload: the default settings' runs and every policy's sweep."""

    workload: Workload
    bounds: FleetBounds
    model: ServiceModel
    defaults: list[Result]
    sweeps: dict[str, list[Result]]
    seed: int = 0

    def default(self, policy: str) -> Result | None:
        return next((r for r in self.defaults if r.policy == policy), None)

    def iso(self, policy: str) -> Result | None:
        """The cheapest run of ``policy``'s sweep that met the top tier's SLO in ISO_SLO of windows."""
        ok = [r for r in self.sweeps.get(policy, []) if r.slo_attainment(TIER_ORDER[0]) >= ISO_SLO]
        return min(ok, key=lambda r: r.replica_hours) if ok else None


Task = tuple[Workload, str, float | None, ServiceModel, FleetBounds, int, int]


def _run(task: Task) -> Result:
    workload, name, knob, model, bounds, seed, window_s = task
    policy = make_policy(name, workload, model, bounds, knob=knob, window_s=window_s)
    result = simulate(workload, policy, model=model, bounds=bounds, seed=seed, window_s=window_s)
    result.policy = name
    return result


def compare(workload: Workload, policies: Iterable[str], *, model: ServiceModel, seed: int = 0,
            window_s: int = DEFAULT_WINDOW_S, sweep: bool = True,
            mapper: Callable[[Callable[[Task], Result], list[Task]], Iterable[Result]] = map) -> Comparison:
    """Every policy at its default and, with ``sweep``, over its knob. ``mapper`` may run them in parallel."""
    bounds = fleet_bounds(workload, model, window_s=window_s)
    policies = tuple(policies)
    # a sweep that holds a policy's default runs it once, as a point of the sweep
    knobs = {p: (SWEEPS[p.split("+")[0]] if sweep else ()) for p in policies}
    own = [p for p in policies if DEFAULTS[p.split("+")[0]] not in knobs[p]]
    tasks: list[Task] = [(workload, p, None, model, bounds, seed, window_s) for p in own]
    tasks += [(workload, p, v, model, bounds, seed, window_s) for p in policies for v in knobs[p]]
    results = list(mapper(_run, tasks))
    sweeps: dict[str, list[Result]] = {p: [] for p in policies}
    by_default: dict[str, Result] = {}
    for task, result in zip(tasks, results):
        name, knob = task[1], task[2]
        if knob is None:
            by_default[name] = result
            continue
        sweeps[name].append(result)
        if knob == DEFAULTS[name.split("+")[0]]:
            by_default[name] = result
    return Comparison(workload, bounds, model, [by_default[p] for p in policies],
                      sweeps if sweep else {p: [] for p in policies}, seed)


def run_all(workload: Workload, policies: tuple[str, ...], *, model: ServiceModel, seed: int = 0,
            window_s: int = DEFAULT_WINDOW_S) -> list[Result]:
    """Each policy at its default settings on ``workload``."""
    return compare(workload, policies, model=model, seed=seed, window_s=window_s, sweep=False).defaults


def _pct(x: float | None, digits: int = 1) -> str:
    return "n/a" if x is None or math.isnan(x) else f"{100 * x:.{digits}f}%"


def _s(x: float | None) -> str:
    return "never" if x is None else f"{x:.0f} s"


#: a fleet that reacts sizes itself for the busiest window of this long before, one lead time ago
REACTIVE_MEMORY_S = 300


def window_capacity(workload: Workload, bounds: FleetBounds, model: ServiceModel,
                    window_s: int = DEFAULT_WINDOW_S) -> list[tuple[int, float, float, float]]:
    """Per window: (start s, demand rps, the largest fleet's capacity, the capacity a fleet could have had).

    What a fleet *could have had* is what no causal policy can be blamed for missing: a fleet sized, one lead
    time (the cold start and a window) before, for the busiest window of the :data:`REACTIVE_MEMORY_S` before
    that, at each window's own request lengths, within the bounds. Demand above it is a burst beyond the
    service's recent history arriving faster than a replica starts; demand above the largest fleet is beyond
    any fleet.
    """
    rates: dict[tuple[int, int], float] = {}
    rows = []
    for i in range(0, workload.seconds, window_s):
        chunk = workload.rate[i:i + window_s]
        key = (round(workload.lengths(i)[0]), round(workload.lengths(i)[1]))
        if key not in rates:
            rates[key] = model.replica_rps(*key)
        rows.append((i, sum(chunk) / len(chunk), bounds.max_replicas * rates[key], rates[key]))
    lead = max(1, math.ceil(bounds.cold_start_s / window_s)) + 1
    memory = max(1, REACTIVE_MEMORY_S // window_s)
    out = []
    for n, (start, demand, largest, per) in enumerate(rows):
        seen = [d for _, d, _, _ in rows[max(0, n - lead - memory):max(0, n - lead + 1)]]
        reachable = min(largest, max(max(seen, default=0.0), bounds.min_replicas * per))
        out.append((start, demand, largest, reachable))
    return out


def forced_rejection(workload: Workload, bounds: FleetBounds, model: ServiceModel,
                     window_s: int = DEFAULT_WINDOW_S) -> tuple[float, float]:
    """(beyond any fleet, beyond any fleet or a cold start): shares of requests above the largest fleet's
    capacity, and above what a fleet could have had (see :func:`window_capacity`)."""
    beyond = short = total = 0.0
    for _, demand, largest, reachable in window_capacity(workload, bounds, model, window_s):
        beyond += max(0.0, demand - largest)
        short += max(0.0, demand - reachable)
        total += demand
    return (beyond / total, short / total) if total else (0.0, 0.0)


def miss_causes(comparison: Comparison, result: Result) -> dict[str, int]:
    """Why each scored window in which ``result``'s top tier missed its SLO did: counts by cause."""
    top = TIER_ORDER[0]
    oracle = comparison.default("oracle")
    oracle_met = {r.t: r.met(top) for r in oracle.rows} if oracle is not None else {}
    capacity = {start: (demand, largest, reachable) for start, demand, largest, reachable in
                window_capacity(comparison.workload, comparison.bounds, comparison.model, result.window_s)}
    causes: dict[str, int] = {}
    for row in result.rows:
        if row.met(top) or row.demand_by_tier.get(top, 0) <= 0:
            continue
        demand, largest, reachable = capacity.get(row.t, (row.demand, math.inf, math.inf))
        if demand > largest:
            cause = "demand above the largest fleet"
        elif not oracle_met.get(row.t, True):
            cause = "no fleet met it (the oracle missed it too)"
        elif demand > reachable:
            cause = "a burst beyond the last 5 minutes' peak, faster than a cold start"
        elif row.capacity_rps >= row.demand:
            cause = "capacity was ready: latency within a spike (queueing, prefill)"
        else:
            cause = "too little capacity held for a foreseeable load"
        causes[cause] = causes.get(cause, 0) + 1
    return causes


def table(comparison: Comparison) -> str:
    """Markdown: the iso-SLO table, the default settings' table, and the verdicts."""
    w, bounds = comparison.workload, comparison.bounds
    kind = "synthetic" if w.synthetic else "real trace, scaled"
    prompt, output = w.mean_lengths()
    lines = [
        f"### {w.name} ({kind}; {w.seconds / 3600:.1f} h, busiest 10 s at {w.peak_10s():,.0f} rps, "
        f"{prompt:,.0f} prompt / {output:,.0f} output tokens)", "",
        f"Replicas {bounds.min_replicas:,}-{bounds.max_replicas:,}"
        f"{' (the GPU quota)' if w.quota_share is not None else ''}, {bounds.replica_rps:.2f} rps each within "
        f"the SLO, cold start {bounds.cold_start_s:.0f} s; top-tier TTFT target {bounds.ttft_slo_ms / 1000:.2f} s.",
        "",
    ]
    if any(comparison.sweeps.values()):  # without a sweep (one run per policy) there is no cost at equal SLO
        lines += ["**Cost at equal SLO** (the fewest replica-hours at which the top tier met its SLO in "
                  f"{_pct(ISO_SLO)} of windows, over each policy's sweep):", "",
                  "| policy | knob | value | replica-hours | SLO attainment e / p / f | goodput rps | rejected |",
                  "|---|---|---|---|---|---|---|"]
        for name, runs in comparison.sweeps.items():
            iso = comparison.iso(name)
            if iso is None:
                best = max(runs, key=lambda r: r.slo_attainment(TIER_ORDER[0]))
                reached = _pct(best.slo_attainment(TIER_ORDER[0]), 2)
                lines.append(f"| {name} | {best.knob} | never reached (best {reached} at {best.knob_text}) "
                             f"| - | - | - | - |")
                continue
            att = " / ".join(_pct(iso.slo_attainment(t), 2) for t in TIER_ORDER)
            lines.append(f"| {name} | {iso.knob} | {iso.knob_text} | {iso.replica_hours:,.0f} | {att} | "
                         f"{iso.goodput_rps:,.0f} | {_pct(iso.share('rejected'), 2)} |")
        lines.append("")
    lines += [
        "**Default settings:**", "",
        "| policy | SLO attainment e / p / f | goodput rps | rejected (e / p / f) | deferred | timed out | "
        "mean util | replica-hours | cost $ | first reaction | SLO recovered |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in comparison.defaults:
        first, recovered = r.onset_response()
        att = " / ".join(_pct(r.slo_attainment(t), 2) for t in TIER_ORDER)
        shed = " / ".join(_pct(r.tier_share("rejected", t), 1) for t in TIER_ORDER)
        lines.append(
            f"| {r.policy} | {att} | {r.goodput_rps:,.0f} | {_pct(r.share('rejected'), 2)} ({shed}) | "
            f"{_pct(r.share('deferred'), 2)} | {_pct(r.share('timed_out'), 2)} | {_pct(r.mean_utilisation)} | "
            f"{r.replica_hours:,.0f} | {r.cost():,.0f} | "
            f"{_s(first) if r.onset_s is not None else 'n/a'} | {_s(recovered) if r.onset_s is not None else 'n/a'} |")
    lines += ["", *verdicts(comparison), ""]
    return "\n".join(lines)


#: targets: surgegate's cost at equal SLO at most this share of the cheapest tuned baseline's, and of the oracle's
BASELINE_RATIO, ORACLE_RATIO = 0.85, 1.3


@dataclasses.dataclass
class Verdict:
    """surgegate against the targets on one workload and seed."""

    seed: int
    attainment: float
    iso: Result | None
    cheapest: tuple[str, Result] | None
    oracle: Result | None
    rejected: float
    forced: float
    beyond_fleet: float
    misses: dict[str, int]
    #: whether the oracle was swept (its iso cost is ``oracle``: None where it never reached the SLO)
    oracle_run: bool = True

    @property
    def baseline_ratio(self) -> float | None:
        if self.iso is None or self.cheapest is None:
            return None
        return self.iso.replica_hours / self.cheapest[1].replica_hours

    @property
    def oracle_ratio(self) -> float | None:
        if self.iso is None or self.oracle is None:
            return None
        return self.iso.replica_hours / self.oracle.replica_hours

    @property
    def slo_met(self) -> bool:
        return self.attainment >= ISO_SLO

    @property
    def oracle_reached(self) -> bool:
        """Whether the oracle reached the SLO in its sweep (True where it was not run: nothing excuses a miss)."""
        return self.oracle is not None or not self.oracle_run

    @property
    def cost_met(self) -> bool | None:
        """None without a sweep: no cost at equal SLO."""
        if self.iso is None:
            return False if self.oracle is not None else None
        b, o = self.baseline_ratio, self.oracle_ratio
        return (b is None or b <= BASELINE_RATIO) and (o is None or o <= ORACLE_RATIO)

    @property
    def shed_met(self) -> bool:
        return self.rejected <= self.forced + 0.001


def verdict(comparison: Comparison) -> Verdict | None:
    """surgegate's figures against the targets (None: surgegate was not run)."""
    sg = comparison.default("surgegate")
    if sg is None:
        return None
    rivals = [(name, comparison.iso(name)) for name in BASELINES if name in comparison.sweeps]
    reached = [(name, r) for name, r in rivals if r is not None]
    beyond, forced = forced_rejection(comparison.workload, comparison.bounds, comparison.model, sg.window_s)
    return Verdict(seed=comparison.seed, attainment=sg.slo_attainment(TIER_ORDER[0]), iso=comparison.iso("surgegate"),
                   cheapest=min(reached, key=lambda nr: nr[1].replica_hours) if reached else None,
                   oracle=comparison.iso("oracle"), rejected=sg.share("rejected"), forced=forced,
                   beyond_fleet=beyond, misses=miss_causes(comparison, sg),
                   oracle_run=bool(comparison.sweeps.get("oracle")))


def _misses(v: Verdict) -> str:
    return "; ".join(f"{n} x {cause}" for cause, n in sorted(v.misses.items(), key=lambda kv: -kv[1])) or "none"


def verdicts(comparison: Comparison) -> list[str]:
    """surgegate against the targets, each met or missed with its figures."""
    v = verdict(comparison)
    if v is None:
        return []
    top = TIER_ORDER[0]
    oracle_can = "" if v.oracle_reached else " (the oracle did not reach it in its sweep either)"
    out = [f"- Top-tier realtime SLO attainment at the default settings {_pct(v.attainment, 2)} (target >= 99.9%): "
           f"{'met' if v.slo_met else 'missed'}{oracle_can}. Windows missed, by cause: {_misses(v)}."]
    if any(comparison.sweeps.values()):
        if v.iso is None:
            out.append("- Cost at equal SLO: surgegate never reached 99.9% of windows for the top tier in its sweep: "
                       + ("missed." if v.oracle_reached else "no policy can be held to it (nor did the oracle)."))
        else:
            if v.cheapest is not None:
                name, cheapest = v.cheapest
                baseline = (f"{v.baseline_ratio:.2f} of the cheapest tuned baseline's ({name}, "
                            f"{cheapest.replica_hours:,.0f}; target <= {BASELINE_RATIO})")
            else:
                baseline = "no baseline reached 99.9% in its sweep"
            if v.oracle is not None:
                oracle = (f"{v.oracle_ratio:.2f} of the oracle's ({v.oracle.replica_hours:,.0f}; "
                          f"target <= {ORACLE_RATIO})")
            else:
                oracle = "the oracle did not reach 99.9% in its sweep" if v.oracle_run else "no oracle run"
            out.append(f"- Cost at equal SLO: surgegate {v.iso.replica_hours:,.0f} replica-hours = {baseline}; "
                       f"{oracle}: {'met' if v.cost_met else 'missed'}.")
    out.append(f"- Rejected {_pct(v.rejected, 2)} of requests; forced {_pct(v.forced, 2)} (demand above what a fleet "
               f"could have had one cold start earlier, {_pct(v.beyond_fleet, 2)} above the largest fleet) "
               f"(target: no more than forced, 0.1 points of slack): {'met' if v.shed_met else 'missed'}.")
    if comparison.workload.quota_share is not None:
        others = ", ".join(f"{r.policy} {_pct(r.slo_attainment(top), 2)}" for r in comparison.defaults
                           if r.policy != "surgegate")
        out.append(f"- GPU quota below peak: top tier {_pct(v.attainment, 2)} under surgegate; {others}.")
    return out


def seeds_table(name: str, verdicts_by_seed: list[Verdict]) -> str:
    """Markdown: surgegate against the targets on every seed of one workload, and whether each held on all."""
    lines = [f"**{name} over {len(verdicts_by_seed)} seeds** (surgegate at its defaults; cost at equal SLO from "
             f"each seed's sweep):", "",
             "| seed | top-tier SLO | cost at equal SLO | / cheapest baseline | / oracle | rejected / forced | "
             "windows missed, by cause |", "|---|---|---|---|---|---|---|"]
    for v in verdicts_by_seed:
        lines.append(
            f"| {v.seed} | {_pct(v.attainment, 2)} | "
            f"{f'{v.iso.replica_hours:,.0f}' if v.iso is not None else 'never reached'} | "
            f"{f'{v.baseline_ratio:.2f} ({v.cheapest[0]})' if v.baseline_ratio is not None and v.cheapest else '-'} | "
            f"{f'{v.oracle_ratio:.2f}' if v.oracle_ratio is not None else '-'} | "
            f"{_pct(v.rejected, 2)} / {_pct(v.forced, 2)} | {_misses(v)} |")
    slo = all(v.slo_met or not v.oracle_reached for v in verdicts_by_seed)
    cost = [v.cost_met for v in verdicts_by_seed if v.cost_met is not None]
    shed = all(v.shed_met for v in verdicts_by_seed)
    lines += ["", f"- On every seed: top-tier SLO at defaults wherever the oracle reached it: "
                  f"{'met' if slo else 'missed'}; cost targets: "
                  f"{('met' if all(cost) else 'missed') if cost else 'n/a'}; lower tiers shed only when forced: "
                  f"{'met' if shed else 'missed'}.", ""]
    return "\n".join(lines)


def plot(comparison: Comparison, path: Path) -> Path:
    """Two panels: the default runs over time (surgegate and the cheapest baselines), and the sweep."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [r for r in comparison.defaults if "+" not in r.policy]
    fig, axes = plt.subplots(len(shown) + 1, 1, figsize=(12, 2.4 * (len(shown) + 1)), squeeze=False)
    for ax, r in zip(axes[:-1, 0], shown):
        hours = [row.t / 3600 for row in r.all_rows]
        ax.plot(hours, [row.demand for row in r.all_rows], lw=0.8, color="tab:gray", label="demand rps")
        ax.plot(hours, [row.admitted for row in r.all_rows], lw=0.8, color="tab:blue", label="admitted rps")
        ax.plot(hours, [row.capacity_rps for row in r.all_rows], lw=0.8, color="tab:green",
                label="capacity rps (ready x rate within SLO)")
        missed = [row.t / 3600 for row in r.all_rows if not row.met(TIER_ORDER[0]) and row.demand_by_tier.get(
            TIER_ORDER[0], 0) > 0]
        ax.plot(missed, [0] * len(missed), "|", color="tab:red", ms=10, label="top tier missed")
        ax.set_ylabel("rps")
        ax.set_title(f"{r.policy} (default): {r.replica_hours:,.0f} replica-hours, top-tier SLO "
                     f"{_pct(r.slo_attainment(TIER_ORDER[0]), 2)}", fontsize=9)
        ax.legend(loc="upper left", fontsize=7, ncol=4)
    ax = axes[-1, 0]
    for name, runs in comparison.sweeps.items():
        pts = sorted((r.replica_hours, 100 * r.slo_attainment(TIER_ORDER[0])) for r in runs)
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", lw=1, ms=3,
                    ls="-" if "+" not in name else ":", label=name)
    ax.axhline(100 * ISO_SLO, color="black", lw=0.6, ls="--")
    ax.set_xlabel("replica-hours")
    ax.set_ylabel("top-tier windows in SLO, %")
    ax.set_ylim(max(0.0, ax.get_ylim()[0]), 100.5)
    ax.set_title("each policy swept over its knob", fontsize=9)
    ax.legend(fontsize=7, ncol=3)
    fig.suptitle(f"{comparison.workload.name}: policies compared", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def report_header(model: ServiceModel, seeds: Iterable[int]) -> str:
    """The comparison report's opening: the replica, the cold start, scheduling and the SLOs every table uses."""
    p = model.profile
    seeds = list(seeds)
    runs = (f"seed {seeds[0]}" if len(seeds) == 1 else
            f"seeds {seeds[0]}-{seeds[-1]}: each workload's tables and plot are seed {seeds[0]}'s, the last table "
            f"every seed's verdicts; a synthetic workload is drawn again for each seed")
    return (f"# Policies compared on the simulated LLM service\n\n"
            f"`surgegate simulate --compare` ({runs}). The oracle knows the demand ahead and starts each replica "
            f"exactly one cold start before it is needed: the cost no causal policy can beat. "
            f"Replicas: Llama-3-8B on one A100 80GB "
            f"({p.prefill_tokens_per_s:,.0f} prefill tokens/s, {1000 * p.decode_step_s:.1f} ms decode step, "
            f"{p.kv_cache_tokens:,} tokens of KV cache, {p.max_num_seqs} sequences); cold start "
            f"{model.cold_start_s:.0f} s unless the scenario says otherwise, {model.warm_start_s:.1f} s from the "
            f"warm pool; engine scheduling {'by tier' if model.engine_priority else 'first come, first served'}; "
            f"response cache hit ratio {model.cache_hit_ratio:.0%}; deferred batch work in "
            f"{'the durable deferral lane' if model.deferral == 'lane' else 'an in-memory queue at each edge'}. "
            f"SLOs per tier (enterprise / pro / free): TTFT within "
            f"{' / '.join(f'{x:g}' for x in model.ttft_allowance_s)} s plus the prefill of a 99th-percentile "
            f"prompt, TPOT within {' / '.join(f'{1000 * x:.0f}' for x in model.tpot_s)} ms; a window meets a "
            f"tier's SLO when at most 1% of its realtime requests missed (rejected and timed-out ones "
            f"included). See docs/simulator.md.\n\n")
