"""Ingest throughput of one worker process through the real (embedded) broker.

Prints, for one ingest consumer process: RequestEvents ingested per second,
RequestSummaries ingested per second and the requests they cover per second,
the pure decode+aggregate cost per event without the broker, and peak memory.

    python benchmarks/ingest_throughput.py [--events 1000000] [--summaries 100000]

Uses SURGEGATE_KAFKA if set, else starts an embedded broker on a free port.
The load is produced by a separate process so the figures are the consumer's own.
"""

from __future__ import annotations

import argparse
import os
import random
import resource
import subprocess
import sys
import threading
import time

import msgspec

from surgegate.devtools.embedded import EmbeddedBroker
from surgegate.schemas.aggregates import SourceRange
from surgegate.schemas.telemetry import RequestEvent
from surgegate.settings import Settings
from surgegate.streams.ingest import IngestWorker
from surgegate.streams.topics import Topics, create_topics
from surgegate.telemetry.summaries import summarize
from surgegate.telemetry.validation import TelemetryValidator
from surgegate.telemetry.windowing import PartialAggregator

T0 = 1_767_225_600_000


def make_events(n: int, seed: int = 0) -> list[RequestEvent]:
    rng = random.Random(seed)
    span = max(n // 20, 1)  # ~20k events per second of event time: many windows, many cells
    return [
        RequestEvent(ts=T0 + (i * 1000) // 20_000 + rng.randrange(50), service=f"svc-{rng.randrange(4)}",
                     tenant=f"tenant-{rng.randrange(50)}", tier=rng.choice(("free", "pro", "enterprise")),
                     edge_id=f"edge-{rng.randrange(16)}", latency_ms=rng.lognormvariate(4.5, 1.0),
                     queue_ms=rng.uniform(0, 30), status="ok" if rng.random() < 0.97 else "error",
                     request_type="realtime" if rng.random() < 0.8 else "batch",
                     input_tokens=rng.randrange(1000), output_tokens=rng.randrange(500), cache_hit=rng.random() < 0.1)
        for i in range(n)
    ] if span else []


def produce(bootstrap: str, prefix: str, kind: str, n: int) -> None:
    """Child process: encode and send the load, print what it sent."""
    from confluent_kafka import Producer

    events = make_events(n)
    records = summarize(events) if kind == "summaries" else events
    payloads = [(msgspec.json.encode(r), r.edge_id.encode()) for r in records]
    p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 20, "batch.num.messages": 10000,
                  "queue.buffering.max.messages": 1_000_000, "compression.type": "none"})
    topic = prefix + "requests"
    t = time.perf_counter()
    for value, key in payloads:
        while True:
            try:
                p.produce(topic, value, key=key)
                break
            except BufferError:
                p.poll(0.01)
    p.flush()
    covered = sum(getattr(r, "requests", 1) for r in records)
    print(f"{len(records)} {covered} {time.perf_counter() - t:.3f}", flush=True)


def consume(settings: Settings, records: int) -> tuple[float, dict]:
    worker = IngestWorker(settings, member_id=f"bench-{time.time_ns()}", redis_url="")
    thread = threading.Thread(target=worker.run)
    thread.start()
    start = None
    while True:
        done = worker.counters["events"] + worker.counters["dead_letters"]
        if start is None and done:
            start = time.perf_counter() - 0.0
        if done >= records:
            elapsed = time.perf_counter() - start
            break
        time.sleep(0.005)
    worker.stop()
    thread.join()
    return elapsed, dict(worker.counters)


def run_load(settings: Settings, kind: str, n: int) -> tuple[int, int, float]:
    out = subprocess.run([sys.executable, __file__, "--produce", kind, "--kafka", settings.kafka,
                          "--prefix", settings.topic_prefix, "--events", str(n)],
                         check=True, capture_output=True, text=True).stdout.split()
    return int(out[0]), int(out[1]), float(out[2])


def pure_cost(n: int = 200_000) -> float:
    events = make_events(n)
    raw = [msgspec.json.encode(e) for e in events]
    v = TelemetryValidator(window_ms=10_000, max_future_ms=300_000)
    agg = PartialAggregator(10_000)
    now = T0 + 10**9
    t = time.perf_counter()
    for r in raw:
        agg.add(v.decode(r, now))
    agg.drain(SourceRange("x", 0, 0, n - 1))
    return (time.perf_counter() - t) / n * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--summaries-from", type=int, default=2_000_000,
                    help="requests folded into per-second RequestSummaries for the summary run")
    ap.add_argument("--kafka")
    ap.add_argument("--prefix", default="bench.")
    ap.add_argument("--produce", choices=["events", "summaries"])
    args = ap.parse_args()
    if args.produce:
        produce(args.kafka, args.prefix, args.produce, args.events)
        return
    broker = None
    kafka = args.kafka or os.environ.get("SURGEGATE_KAFKA")
    if not kafka:
        broker = EmbeddedBroker().start()
        kafka = broker.bootstrap
    try:
        print(f"pure decode + aggregate: {pure_cost():.2f} us/event (no broker)")
        for kind, n in (("events", args.events), ("summaries", args.summaries_from)):
            prefix = f"{args.prefix}{kind}.{time.time_ns()}."
            settings = Settings(kafka=kafka, topic_prefix=prefix, partitions=4, flush_interval_s=1.0)
            create_topics(settings)
            records, covered, produce_s = run_load(settings, kind, n)
            elapsed, counters = consume(settings, records)
            line = (f"{kind}: {records} records through {Topics(prefix).requests} ({settings.partitions} partitions), "
                    f"ingested in {elapsed:.2f} s = {records / elapsed:,.0f} records/s")
            if kind == "summaries":
                line += f", covering {covered / elapsed:,.0f} requests/s"
            print(line + f"  [producer: {records / produce_s:,.0f}/s; dead letters {counters.get('dead_letters', 0)}]")
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"peak memory of the ingest process: {peak_mb:.0f} MiB")
    finally:
        if broker is not None:
            broker.stop()


if __name__ == "__main__":
    main()
