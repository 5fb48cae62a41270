"""How long the seed burst (5,000 to 120,000 rps, held three hours) takes to simulate, per policy.

    python benchmarks/simulate_speed.py [--runs 3]

Every policy at its default settings on the LLM fluid model, one core.
Prints the wall time per policy (median of ``--runs``), simulated seconds per
wall second, and all of them together against the target of under a minute.
"""

from __future__ import annotations

import argparse
import statistics
import time

from surgegate.sim.report import POLICIES, make_policy
from surgegate.sim.run import fleet_bounds, simulate
from surgegate.sim.service import ServiceModel
from surgegate.sim.workload import SCENARIOS


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    model = ServiceModel()
    workload = SCENARIOS["burst"](120_000.0, 0)
    bounds = fleet_bounds(workload, model)
    total = 0.0
    print(f"seed burst: {workload.seconds / 3600:.2f} simulated hours, {args.runs} runs each, medians")
    for name in POLICIES:
        times = []
        for _ in range(args.runs):
            started = time.perf_counter()
            simulate(workload, make_policy(name, workload, model, bounds), model=model, bounds=bounds)
            times.append(time.perf_counter() - started)
        median = statistics.median(times)
        total += median
        print(f"  {name:22s} {median:5.1f} s  {workload.seconds / median:9,.0f} simulated s per s")
    print(f"all {len(POLICIES)} policies: {total:.1f} s (target: under 60 s)")


if __name__ == "__main__":
    main()
