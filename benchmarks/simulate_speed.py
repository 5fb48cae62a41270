"""How long the seed burst (5,000 to 120,000 rps, held three hours) takes to simulate.

    python benchmarks/simulate_speed.py [--runs 3]

Prints the wall time per policy (median of ``--runs``) and for all four
together, against the target of under a minute for the whole comparison.
"""

from __future__ import annotations

import argparse
import statistics
import time

from surgegate.sim.policies import FleetBounds
from surgegate.sim.report import POLICIES, make_policy
from surgegate.sim.run import simulate
from surgegate.sim.service import ServiceModel
from surgegate.sim.workload import SCENARIOS


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    model = ServiceModel()
    bounds = FleetBounds(replica_rps=model.replica_rps())
    workload = SCENARIOS["burst"](120_000.0, 0)
    total = 0.0
    print(f"seed burst: {workload.seconds / 3600:.2f} simulated hours, {args.runs} runs each, medians")
    for name in POLICIES:
        times = []
        for _ in range(args.runs):
            started = time.perf_counter()
            simulate(workload, make_policy(name, workload, model, bounds), model=model, bounds=bounds)
            times.append(time.perf_counter() - started)
        total += statistics.median(times)
        print(f"  {name:10s} {statistics.median(times):5.1f} s")
    print(f"all four policies: {total:.1f} s (target: under 60 s)")


if __name__ == "__main__":
    main()
