"""Histories to plan from: a trace file, scaled as the simulator scales traces, or the windows a service's
pipeline published (``sg.windows``)."""

from __future__ import annotations

import collections
from collections.abc import Iterable
from pathlib import Path

import msgspec

from surgegate.control.config import ServiceConfig
from surgegate.plan.report import History
from surgegate.schemas.aggregates import WindowStats
from surgegate.sim.service import TIER_ORDER, ServiceModel
from surgegate.sim.workload import DEFAULT_MIX, Workload, from_trace


def from_trace_file(path: Path, *, window_s: float, peak_rps: float | None, hours: float | None = None,
                    model: ServiceModel | None = None) -> History:
    """A trace's demand per window (its busiest 10 s scaled to ``peak_rps``, or as recorded when None); one
    replica is the simulator's at the trace's mean lengths; tiers and batch work as the simulator's mix."""
    w = from_trace(path, peak_rps if peak_rps is not None else _recorded_peak(path, hours), hours=hours)
    step = max(1, round(window_s))
    demand = [sum(w.rate[i:i + step]) / len(w.rate[i:i + step]) for i in range(0, w.seconds, step)]
    prompt, output = w.mean_lengths()
    model = model or ServiceModel()
    tiers = {t: sum(s for (tier, _), s in DEFAULT_MIX.items() if tier == t) for t in TIER_ORDER}
    batch = sum(s for (_, kind), s in DEFAULT_MIX.items() if kind == "batch")
    scale = "as recorded" if peak_rps is None else f"scaled so its busiest 10 s is {peak_rps:,.0f} requests/s"
    return History(w.name, float(step), demand, model.replica_rps(prompt, output), tiers, batch,
                   f"Trace `{path.name}`, {scale}; prompts {prompt:,.0f} and outputs {output:,.0f} tokens on average")


def _recorded_peak(path: Path, hours: float | None) -> float:
    """The busiest 10 s window of a trace as recorded."""
    from surgegate.telemetry.traces import read_trace, to_windows

    rate, _ = to_windows(read_trace(path), 1000)
    if hours is not None:
        rate = rate[: int(hours * 3600)]
    return Workload(path.name, rate, synthetic=False).peak_10s()


def from_windows(values: Iterable[bytes], service: str, config: ServiceConfig, *, window_s: float) -> History:
    """The service's published windows (``sg.windows`` values, any order, duplicates once): demand per window,
    gaps as zeros; tier shares and the batch share from its tier scopes; one replica from the service's
    settings at the windows' mean lengths."""
    decoder = msgspec.json.Decoder(WindowStats)
    total: dict[int, WindowStats] = {}
    by_tier: collections.Counter[str] = collections.Counter()
    seen: set[tuple[str, int]] = set()
    for raw in values:
        try:
            w = decoder.decode(raw)
        except msgspec.DecodeError:
            continue  # another type on the topic
        if w.kind != "traffic" or w.service != service or w.traffic is None or w.tenant is not None \
                or w.identity in seen:
            continue
        seen.add(w.identity)
        if w.tier is None:
            total[w.window_start] = w
        else:
            by_tier[w.tier] += w.traffic.requests
    if not total:
        raise ValueError(f"service {service!r}: no windows in the history read")
    step_ms = int(window_s * 1000)
    starts = sorted(total)
    demand = []
    for start in range(starts[0], starts[-1] + step_ms, step_ms):
        t = total[start].traffic if start in total else None
        demand.append(0.0 if t is None else (t.demand_rps if t.demand_rps is not None else t.rate_rps))
    traffic = [w.traffic for w in total.values() if w.traffic is not None]
    requests = sum(t.requests for t in traffic) or 1
    prompt = sum(t.input_tokens for t in traffic) / requests
    output = sum(t.output_tokens for t in traffic) / requests
    per = config.replica_rps_for(prompt, output) or config.replica_rps
    counted = sum(by_tier.values())
    order = sorted(by_tier, key=config.tier_rank)
    tiers = {t: by_tier[t] / counted for t in order} if counted else {config.tiers[0]: 1.0}
    batch = sum(t.batch for t in traffic) / requests
    return History(service, window_s, demand, per, tiers, batch,
                   f"Service `{service}`'s windows from the pipeline, {len(total):,} published")
