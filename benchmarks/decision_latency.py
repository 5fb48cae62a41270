"""Time from a window's close to each service's decision, on one core, in process.

    python benchmarks/decision_latency.py [--scopes 1000 10000] [--windows 4]

For each scope count, the scopes are services with three tiers and six tenants
each (10 scopes per service). After each window closes, services are decided
in the order the merge stage publishes their windows (sorted by scope), each
with the forecast issued after the previous window, as the decide agent does;
then every scope's forecast is stepped for the next window, as the forecast
agent does. Each service's pool is scaled right after its throttle decision, as
the decide agent does. Prints the per-decision costs (throttle, scale), the close-to-decision latency (p50,
p99) of the last window, and how long the forecast step of all scopes takes
(the forecast agent's load per window). Kafka and Faust hops are not included,
and the forecast agent is assumed not to share the decide agent's core.
"""

from __future__ import annotations

import argparse
import math
import random
import statistics
import time

from surgegate.control.config import ServiceConfig
from surgegate.control.scaling import ScalingInputs, ScalingPolicy
from surgegate.control.throttle import DecisionInputs, ThrottlePolicy
from surgegate.forecast.scope import ScopeForecaster
from surgegate.schemas.aggregates import TrafficStats

W = 10_000


def traffic(rate: float) -> TrafficStats:
    n = int(rate * 10)
    return TrafficStats(requests=n, rate_rps=n / 10, ok=n, error=0, timeout=0, throttled=0, realtime=int(n * 0.8),
                        batch=n - int(n * 0.8), latency_p50_ms=80, latency_p90_ms=150, latency_p99_ms=600,
                        latency_max_ms=1500, queue_wait_p99_ms=10, input_tokens=n * 300, output_tokens=n * 100,
                        tokens_per_s=n * 40.0, over_2s_share=0.01, cache_hits=0)


def run(scopes: int, windows: int) -> None:
    rng = random.Random(0)
    services = max(1, scopes // 10)
    names = []
    for s in range(services):
        svc = f"svc{s:05d}"
        names.append((f"service={svc}", svc, None))
        names += [(f"service={svc},tier={t}", svc, t) for t in ("enterprise", "pro", "free")]
        names += [(f"service={svc},tenant=t{k}", svc, None) for k in range(6)]
    names.sort()
    forecasters = {scope: ScopeForecaster(scope, step_ms=W) for scope, _, _ in names}
    policies = {f"svc{s:05d}": ThrottlePolicy(ServiceConfig(service=f"svc{s:05d}", replica_rps=100.0))
                for s in range(services)}
    scalers = {svc: ScalingPolicy(p.config.pool_config()) for svc, p in policies.items()}
    level = {scope: rng.uniform(10, 1000) for scope, _, _ in names}
    latencies: list[float] = []
    costs: list[float] = []
    scale_costs: list[float] = []
    previous: dict[str, object] = {}
    forecast_s = 0.0
    for w in range(windows):
        t = w * W
        latencies.clear()
        rates = {scope: max(0.0, rng.gauss(level[scope], math.sqrt(level[scope]))) for scope, _, _ in names}
        closed = time.perf_counter()
        for scope, svc, _tier in names:
            if scope == f"service={svc}":
                started = time.perf_counter()
                stats = traffic(rates[scope])
                forecast = previous.get(scope)
                scaler = scalers[svc]
                policies[svc].decide(DecisionInputs(window_start=t, window_ms=W, service=stats, tiers={}, tenants={},
                                                    forecast=forecast, starting=scaler.starting(5)))
                decided = time.perf_counter()
                scaler.decide(ScalingInputs(window_start=t, window_ms=W, demand_rps=stats.rate_rps, ready_replicas=5,
                                            batch_rps=stats.batch / 10, deferred=stats.deferred,
                                            upper_rps=tuple(forecast.upper_after(t)) if forecast else ()))
                done = time.perf_counter()
                costs.append((decided - started) * 1e6)
                scale_costs.append((done - decided) * 1e6)
                latencies.append((done - closed) * 1000)
        started = time.perf_counter()
        for scope, _, _ in names:
            fc = forecasters[scope]
            fc.observe(t, rates[scope], rates[scope] * 400)
            previous[scope] = fc.forecast()
        forecast_s = time.perf_counter() - started
    q = statistics.quantiles(latencies, n=100) if len(latencies) > 1 else latencies * 99
    print(f"{scopes:>6} scopes, {services} services: decide {statistics.median(costs):.0f} us per decision, "
          f"scale {statistics.median(scale_costs):.0f} us; "
          f"close-to-decision p50 {statistics.median(latencies):,.0f} ms, p99 {q[98]:,.0f} ms "
          f"(target p99 250 ms); forecast step of all scopes {forecast_s:,.1f} s per window")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--scopes", type=int, nargs="+", default=[1000, 10000])
    ap.add_argument("--windows", type=int, default=4)
    args = ap.parse_args()
    for n in args.scopes:
        run(n, args.windows)


if __name__ == "__main__":
    main()
