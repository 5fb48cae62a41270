"""The pipeline's commands: up, worker, topics, replay, chaos."""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import threading
import time
from pathlib import Path
from typing import Any

from surgegate.cli.common import (
    Parsers,
    exit_on_death,
    log,
    logging_as_configured,
    need_kafka,
    progress_bar,
    settings_of,
    supervised,
)
from surgegate.cli.live import add_plan_options
from surgegate.errors import SurgegateError
from surgegate.settings import Settings


#: the demo's service: its replicas are local `surgegate fake-llm` processes of about 10 requests a second each
#: within a 1 s time to first token (see surgegate.devtools.live.ReplicaSpec)
def demo_services(replica_rps: float = 10, min_replicas: int = 2, max_replicas: int = 16, cold_start_s: float = 15,
                  ttft_slo_ms: float = 1000, window_s: float = 10) -> str:
    """``SURGEGATE_SERVICES`` for the demo's service ``chat`` on pool ``gpu-a``; a decision's lease is 3 windows, and
    at least 10 s on short windows (they compress time, not the pipeline's own latency)."""
    return json.dumps({"chat": {"pool": "gpu-a", "replica_rps": replica_rps, "replicas": min_replicas,
                                "ttft_slo_ms": ttft_slo_ms, "lease_windows": max(3, math.ceil(10 / window_s)),
                                "scaling": {"min_replicas": min_replicas, "max_replicas": max_replicas,
                                            "cold_start_s": cold_start_s}}})


DEMO_SERVICES = demo_services()


def run_worker(settings: Settings, *, ingest: bool = True, metrics_port: int = 0,
               metrics_host: str = "127.0.0.1") -> None:
    """Run the Faust agents and, in threads, an ingest consumer and the topic keeper, until stopped; with
    ``metrics_port``, this process's counters on its ``/metrics``."""
    import faust

    from surgegate.agents.app import create_app
    from surgegate.streams.ingest import IngestWorker
    from surgegate.streams.kafka import end_offsets_trusted
    from surgegate.streams.store import Keys, StateMirror
    from surgegate.streams.topics import keep_topics

    mirror = StateMirror(settings.redis_target(), Keys.for_topic_prefix(settings.topic_prefix),
                         window_s=settings.window_s) if settings.redis else None
    one_record_batches = not end_offsets_trusted(settings)
    if one_record_batches:
        log.info("the broker reports a partition's end wrongly after multi-record batches (the embedded broker): "
                 "the agents send one record per batch, so a restarted worker restores all its state")
    app = create_app(settings, mirror=mirror, one_record_batches=one_record_batches)
    ingest_worker = IngestWorker(settings) if ingest else None
    stop_keeper = threading.Event()
    changelogs = tuple(table.changelog_topic.get_topic_name() for table in app.tables.values())
    # A worker without one of its threads only looks healthy: it ends, so a supervisor restarts it. Crash-only
    # is safe here: offsets are committed only after what they cover was published.
    supervised("topic-keeper", lambda: keep_topics(settings, stop_keeper, changelogs=changelogs),
               exit_on_death("worker", "topic keeper"))
    thread = (supervised("ingest", ingest_worker.run, exit_on_death("worker", "ingest consumer"))
              if ingest_worker is not None else None)
    if metrics_port:
        serve_worker_metrics(metrics_port, ingest_worker, metrics_host)
    # levels as configure_logging set them (Faust's own lines only with --verbose); Faust's start-up spinner,
    # the one user of a worker's loglevel here, would put its own level on the root handler (and the root
    # logger at debug, so every library's debug records are made) and write terminal escapes into the log
    worker = faust.Worker(app, quiet=True, redirect_stdouts=False, logging_config=logging_as_configured())
    worker.spinner = None
    try:
        worker.execute_from_commandline()
    finally:
        stop_keeper.set()
        if ingest_worker is not None and thread is not None:
            ingest_worker.stop()
            thread.join(30)


def serve_worker_metrics(port: int, ingest_worker: Any, host: str = "127.0.0.1") -> None:
    """This worker's own counters (its agents', its ingest consumer's) on ``port``'s ``/metrics``, under
    ``surgegate_worker_`` names (the API has the whole pipeline's under the plain ones)."""
    from collections import Counter

    from prometheus_client import CollectorRegistry, start_http_server

    from surgegate.agents.counters import LIVE
    from surgegate.api.metrics import WorkerFamilies

    def counts() -> Counter[str]:
        total: Counter[str] = Counter()
        for counters in list(LIVE):
            total.update(counters)
        if ingest_worker is not None:
            total.update(ingest_worker.counters)
        return total

    registry = CollectorRegistry()
    registry.register(WorkerFamilies(counts))
    start_http_server(port, addr=host, registry=registry)
    log.info("worker /metrics on port %d", port)


def cmd_worker(args: argparse.Namespace) -> None:
    settings = need_kafka(settings_of(args))
    run_worker(settings, ingest=not args.no_ingest, metrics_port=args.metrics_port, metrics_host=args.metrics_host)


def cmd_up(args: argparse.Namespace) -> None:
    from surgegate.cli.api import serve_api_in_thread
    from surgegate.devtools.embedded import where_missing
    from surgegate.streams.topics import create_topics

    settings = settings_of(args)
    if settings.kafka:
        settings = need_kafka(settings)
    with where_missing(settings, args.broker_port, args.redis_port) as settings:
        if args.demo and not settings.services:
            # the demo's service on its pool of local fake-llm replicas, its lease fit for the window
            settings = settings.replace(services=demo_services(window_s=settings.window_s))
        create_topics(settings)
        print(f"surgegate up: broker {settings.kafka}  redis {settings.redis_target()}  "
              f"topics {settings.topic_prefix}*  window {settings.window_s:.0f} s", flush=True)
        if args.api_port:
            serve_api_in_thread(settings, "127.0.0.1", args.api_port)
            print(f"surgegate up: status API on http://127.0.0.1:{args.api_port}", flush=True)
        stack = _demo(settings, args) if args.demo else None
        try:
            run_worker(settings)
        finally:
            if stack is not None:
                stack.close()


def _demo(settings: Settings, args: argparse.Namespace):
    """The whole loop: a local pool of fake replicas, edges in front of it, and bursts of OpenAI calls through
    them, split unevenly over the edges (70/30 for two) as a load balancer in front may split it."""
    import asyncio
    import dataclasses

    from surgegate.cli.live import DEFAULT_TTFT_SLO, parse_pairs, plan_of
    from surgegate.devtools.live import LiveStack, keys_by_tier
    from surgegate.devtools.load import run

    config = settings.service_configs().get("chat")
    pool = config.pool_config() if config is not None else None
    cold = pool.cold_start_s if pool is not None else 15.0
    stack = LiveStack(settings, edges=args.edges, edge_ports=[args.edge_port + i for i in range(args.edges)],
                      cold_start_s=cold, initial_replicas=pool.min_replicas if pool is not None else 2).start()
    plan = plan_of(args)
    print(f"surgegate up: a local pool of fake-llm replicas (pool gpu-a, cold start {cold:g} s) behind "
          f"{args.edges} edge(s) on {', '.join(e.url for e in stack.edges)}; keys "
          f"{', '.join(f'{t}={k}' for t, k in keys_by_tier().items())}", flush=True)
    weights = [0.7, 0.3] if len(stack.edges) == 2 else [1 / len(stack.edges)] * len(stack.edges)
    first = pool.min_replicas if pool is not None else 2

    def load() -> None:
        # the calls begin once the pool's first replicas serve: a service is not opened to its users cold
        deadline = time.monotonic() + cold + 30
        while stack.pool.states().get("ready", 0) < first and time.monotonic() < deadline:
            time.sleep(0.2)
        print(f"surgegate up: OpenAI calls at {plan.base_rps:g} rps, bursting to {plan.peak_rps:g} rps at "
              f"{plan.burst_at_s:g} s and every {plan.every_s:g} s after", flush=True)

        async def all_edges():
            parts = [dataclasses.replace(plan, base_rps=plan.base_rps * w, peak_rps=plan.peak_rps * w)
                     for w in weights]
            return await asyncio.gather(*(run(part, edge.url, keys_by_tier(), window_s=settings.window_s,
                                              ttft_slo_s=parse_pairs("--ttft-slo", DEFAULT_TTFT_SLO), seed=i)
                                          for i, (part, edge) in enumerate(zip(parts, stack.edges))))

        for edge, report in zip(stack.edges, asyncio.run(all_edges())):
            print(report.markdown(f"demo load through {edge.url}"), flush=True)

    threading.Thread(target=load, name="demo-load", daemon=True).start()
    return stack


def cmd_chaos(args: argparse.Namespace) -> None:
    import sys

    from surgegate.devtools.chaos import FAULTS, Chaos, Timing, table

    faults = tuple(f.strip() for f in args.faults.split(",") if f.strip())
    unknown = [f for f in faults if f not in FAULTS]
    if unknown:
        raise ValueError(f"--faults: unknown {', '.join(unknown)} (known: {', '.join(FAULTS)})")
    timing = Timing.short() if args.short else Timing()
    if args.outage is not None:
        if not 0 < args.outage <= 3600:
            raise ValueError("--outage: seconds within (0, 3600]")
        timing = dataclasses.replace(timing, outage_s=args.outage)
    if not 1 <= args.workers <= 8:
        raise ValueError("--workers: 1 to 8")
    accounts = Chaos(timing, rate=args.rate, faults=faults, log_level=settings_of(args).log_level,
                     log=lambda line: print(line, file=sys.stderr, flush=True), workers=args.workers).run()
    text = table(accounts)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    unaccounted = sum(a.unaccounted for a in accounts)
    if unaccounted:
        raise SurgegateError(f"{unaccounted} events unaccounted for (see the table)")


def cmd_topics(args: argparse.Namespace) -> None:
    from surgegate.streams.topics import create_topics, list_topics

    settings = need_kafka(settings_of(args))
    if args.action == "create":
        for name, state in sorted(create_topics(settings).items()):
            print(f"{name}\t{state}")
    else:
        for name, partitions in list_topics(settings).items():
            print(f"{name}\t{partitions}")


def cmd_replay(args: argparse.Namespace) -> None:
    import sys

    from surgegate.devtools.replay import replay
    from surgegate.streams.producer import TelemetryProducer
    from surgegate.telemetry.traces import read_trace

    settings = settings_of(args)
    bins = read_trace(Path(args.file))  # a bad file is named before the broker is asked anything
    settings = need_kafka(settings)
    start_ms = args.start_ms
    if start_ms is None:
        start_ms = int(time.time() * 1000)
        if not args.speedup:  # unpaced: the whole trace lies in the past, so no event is from the future
            start_ms -= int((bins[-1].start_s + bins[-1].length_s - bins[0].start_s) * 1000)
    start_ms -= start_ms % 1000

    with progress_bar(f"replay {Path(args.file).name}", len(bins), "bins") as bar, \
            TelemetryProducer(settings, client_id="surgegate-replay") as producer:
        def progress(done: int, total: int, sent: int) -> None:
            bar.update(done - bar.n)
            bar.set_postfix(requests=sent, refresh=False)

        sent = replay(producer, bins, start_ms=start_ms, speedup=args.speedup, scale=args.scale,
                      summaries=args.summaries, service=args.service, seed=args.seed, progress=progress)
    print(f"replayed {sent} requests from {args.file} as "
          f"{'RequestSummaries' if args.summaries else 'RequestEvents'}", file=sys.stderr)


def register(p: Parsers) -> None:
    """The pipeline's commands and their options."""
    up = p.command("up", "start broker, Redis, topics, a worker and the status API on this machine")
    p.broker(up)
    up.add_argument("--redis", metavar="URL", help="use this Redis instead of an embedded one "
                                                   "(default: SURGEGATE_REDIS, else embedded)")
    up.add_argument("--partitions", type=int, help="partitions per topic at creation "
                                                   "(default: SURGEGATE_PARTITIONS, else 4)")
    up.add_argument("--demo", action="store_true",
                    help="also run the whole loop: a local pool of fake-llm replicas (pool gpu-a), edges in front "
                         "of it (from --edge-port) and bursts of OpenAI calls through them (service chat)")
    up.add_argument("--edges", type=int, default=1, help="with --demo: gateways in front of the pool")
    up.add_argument("--edge-port", type=int, default=8080, help="with --demo: the first gateway's port")
    add_plan_options(up)
    up.set_defaults(burst_at=60.0, every=300.0, base=3.0, peak=40.0, ramp=20.0, hold=90.0)
    up.add_argument("--duration", type=float, default=24 * 3600.0, help="with --demo: seconds of load")
    up.add_argument("--broker-port", type=int, help="port of the embedded broker (default: a free one)")
    up.add_argument("--redis-port", type=int, help="port of the embedded Redis (default: a free one)")
    up.add_argument("--api-port", type=int, default=8000, help="status API port on 127.0.0.1 (0: no API)")
    up.set_defaults(func=cmd_up)

    worker = p.command("worker", "run the ingest consumer and the Faust agents")
    p.broker(worker)
    p.redis(worker, "the state mirror")
    worker.add_argument("--no-ingest", action="store_true", help="run the Faust agents only")
    worker.add_argument("--metrics-port", type=int, default=0,
                        help="serve this worker's counters on this port's /metrics, e.g. 9440 (0: none)")
    worker.add_argument("--metrics-host", default="127.0.0.1",
                        help="address the /metrics port listens on (0.0.0.0: every interface, for a scraper elsewhere)")
    worker.set_defaults(func=cmd_worker)

    ch = p.command("chaos", "kill workers, Redis, an edge and the broker of an embedded stack under load, and "
                            "account for every event")
    ch.add_argument("--faults", default=",".join(("worker", "redis", "edge", "broker")),
                    help="the faults, in order (worker: one worker; workers: all at once; redis, edge, broker)")
    ch.add_argument("--outage", type=float, help="seconds each fault lasts (default: 10, 5 with --short)")
    ch.add_argument("--workers", type=int, default=1, help="worker processes sharing the pipeline (default 1)")
    ch.add_argument("--rate", type=float, default=200.0, help="events per second from the load edges")
    ch.add_argument("--short", action="store_true", help="shorter phases and outages (what CI runs)")
    ch.add_argument("--out", help="also write the table to this file (default: print it only)")
    ch.set_defaults(func=cmd_chaos)

    topics = p.command("topics", "create or list topics")
    topics.add_argument("action", choices=["create", "list"], help="create every missing topic, or list them")
    p.broker(topics)
    topics.add_argument("--partitions", type=int, help="partitions per new topic "
                                                       "(default: SURGEGATE_PARTITIONS, else 4)")
    topics.set_defaults(func=cmd_topics)

    rp = p.command("replay", "replay a trace (timestamp_s,count[,tokens]) into sg.requests")
    rp.add_argument("file", help="trace file, optionally .gz (e.g. docs/examples/burst.csv)")
    p.broker(rp)
    rp.add_argument("--speedup", type=float, default=1.0,
                    help="time compression, also of event time (0: as fast as possible, event times in the past)")
    rp.add_argument("--scale", type=float, default=1.0, help="multiply every count")
    rp.add_argument("--summaries", action="store_true", help="send per-second RequestSummaries, not RequestEvents")
    rp.add_argument("--service", default="chat", help="service the requests are for")
    rp.add_argument("--seed", type=int, default=0, help="seed of the synthetic tenants, tiers and latencies")
    rp.add_argument("--start-ms", type=int, help="event time of the trace start, epoch ms (default: now)")
    rp.set_defaults(func=cmd_replay)
