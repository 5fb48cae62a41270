"""Edge gate costs: admit() per call, and how soon a published decision applies.

    python benchmarks/edge_gate.py [--calls 300000] [--runs 5] [--decisions 30]

Part 1 times Admission.admit in-process for the common paths (admitted under a
tier bucket, admitted under tier and tenant buckets, rejected, batch deferred,
shadow); each figure is the median of ``--runs`` runs. Part 2 starts an
embedded broker, publishes ``--decisions`` decisions that alternate a tier
between open and shut, and measures from the producer's acknowledgement until
admit() answers by the new decision.
"""

from __future__ import annotations

import argparse
import statistics
import time

import msgspec
from confluent_kafka import Producer

from surgegate.admission.gate import Admission
from surgegate.devtools.embedded import EmbeddedBroker
from surgegate.edge.gate import EdgeGate
from surgegate.schemas.decisions import TenantLimit, ThrottleDecision, TierLimit
from surgegate.settings import Settings
from surgegate.streams.topics import Topics, create_topics

TIERS = ("enterprise", "pro", "free")


def decision(version: int, free_open: bool = True, *, tenants=None, mode="enforce", defer=False) -> ThrottleDecision:
    now = int(time.time() * 1000)
    tiers = {t: TierLimit(realtime_rps=1e9, batch_rps=1e9, burst=1e9) for t in TIERS}
    if not free_open:
        tiers["free"] = TierLimit(realtime_rps=0, batch_rps=0, burst=1)
    return ThrottleDecision(service="chat", version=version, issued_at=now, valid_until=now + 3_600_000, level=2,
                            mode=mode, tiers=tiers, tenants=tenants or {}, defer_batch=defer, breaker="closed",
                            forecast_upper_rps=1.0, safe_rps=1e9, reason="bench")


def time_admit(calls: int, runs: int) -> None:
    cases = {
        "admit (tier bucket)": (decision(1), ("acme", "pro")),
        "admit (tier + tenant bucket)": (decision(1, tenants={"acme": TenantLimit(rate_rps=1e9, burst=1e9)}),
                                         ("acme", "pro")),
        "reject": (decision(1, free_open=False), ("acme", "free")),
        "defer batch": (decision(1, defer=True), ("acme", "pro", "batch")),
        "shadow (would reject)": (decision(1, free_open=False, mode="shadow"), ("acme", "free")),
    }
    print(f"admit(): {calls:,} calls x {runs} runs, median per call")
    for name, (d, args) in cases.items():
        per_call = []
        for _ in range(runs):
            gate = Admission("chat", TIERS)
            gate.apply(d)
            admit = gate.admit
            t = time.perf_counter()
            for _ in range(calls):
                admit(*args)
            per_call.append((time.perf_counter() - t) / calls * 1e6)
        print(f"  {name:32s} {statistics.median(per_call):6.2f} us  (runs {min(per_call):.2f}-{max(per_call):.2f})")


def time_propagation(n: int) -> None:
    with EmbeddedBroker() as broker:
        settings = Settings(kafka=broker.bootstrap, topic_prefix="bench.", partitions=1)
        create_topics(settings)
        producer = Producer({"bootstrap.servers": settings.kafka, "linger.ms": 0})
        topic = Topics(settings.topic_prefix).throttle
        with EdgeGate(settings, "chat", edge_id="bench", report="off", bootstrap_from_redis=False) as gate:
            delays = []
            for version in range(1, n + 1):
                free_open = version % 2 == 1
                producer.produce(topic, msgspec.json.encode(decision(version, free_open)), key=b"chat")
                producer.flush(10)
                acked = time.perf_counter()
                want = "admit" if free_open else "reject"
                while gate.admit("acme", "free").action != want and time.perf_counter() - acked < 10:
                    time.sleep(0.0005)
                delays.append((time.perf_counter() - acked) * 1000)
            delays.sort()
            print(f"decision published -> admission changed, {n} decisions: median {statistics.median(delays):.1f} ms,"
                  f" p90 {delays[int(0.9 * (n - 1))]:.1f} ms, max {delays[-1]:.1f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=300_000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--decisions", type=int, default=30)
    args = parser.parse_args()
    time_admit(args.calls, args.runs)
    time_propagation(args.decisions)


if __name__ == "__main__":
    main()
