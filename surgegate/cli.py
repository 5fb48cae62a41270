"""The `surgegate` command: up, worker, api, topics, replay, edge, scaler, fake-llm, simulate, eval-forecast,
chaos, schemas."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

from surgegate.errors import SettingsError, SurgegateError
from surgegate.settings import Settings

log = logging.getLogger("surgegate")

#: exit status of a failure worth retrying as it is (a broker that did not answer): sysexits' EX_TEMPFAIL
EX_TEMPFAIL = 75
DEMO_SERVICES = '{"chat": {"pool": "gpu-a", "replica_rps": 40, "replicas": 8}}'


#: options that override a setting: option -> Settings field
_SETTING_OPTIONS = {"partitions": "partitions", "prefix": "topic_prefix", "kafka": "kafka", "redis": "redis"}


def _settings(args: argparse.Namespace) -> Settings:
    settings = Settings.from_env(os.environ)
    for option, field in _SETTING_OPTIONS.items():
        value = getattr(args, option, None)
        if value is None:
            continue
        try:
            settings = settings.replace(**{field: value})
        except SettingsError as exc:  # it names the variable; the user typed the option
            reason = str(exc).split(": ", 1)[-1]
            raise SettingsError(f"--{option} {value!r}: {reason}") from None
    return settings


def _need_kafka(settings: Settings) -> None:
    """A broker address must be set, and a broker must answer there within a few seconds."""
    from surgegate.streams.kafka import probe_broker

    if not settings.kafka:
        raise SurgegateError("no broker: set SURGEGATE_KAFKA=host:port or pass --kafka (or use `surgegate up`)")
    probe_broker(settings)


LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def configure_logging(settings: Settings, verbose: bool) -> None:
    """Quiet by default: surgegate's own lines at ``SURGEGATE_LOG_LEVEL``; Faust, aiokafka, aiohttp's
    access log and librdkafka only for warnings (librdkafka not at all: clients report broker failures
    once, by name). ``--verbose`` lets everything through at debug (librdkafka at info)."""
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format=LOG_FORMAT)
    logging.getLogger("surgegate").setLevel(logging.DEBUG if verbose else settings.log_level.upper())
    logging.getLogger("surgegate.librdkafka").setLevel(logging.INFO if verbose else logging.CRITICAL)


def logging_as_configured() -> dict[str, Any]:
    """The levels :func:`configure_logging` set, as a ``logging.config`` dictionary: a Faust worker replaces
    the root handlers when it starts, with its one level on the handler, which would drop surgegate's
    info and debug lines whatever ``SURGEGATE_LOG_LEVEL`` asked for; given this, it keeps them."""
    return {
        "version": 1, "disable_existing_loggers": False,
        "formatters": {"plain": {"format": LOG_FORMAT}},
        "handlers": {"default": {"class": "logging.StreamHandler", "formatter": "plain", "stream": "ext://sys.stderr"}},
        "root": {"level": logging.getLogger().level, "handlers": ["default"]},
        "loggers": {name: {"level": logging.getLogger(name).level} for name in ("surgegate", "surgegate.librdkafka")},
    }


def progress_bar(description: str, total: float, unit: str) -> Any:
    """A progress bar on stderr with rate and time left (tqdm)."""
    from tqdm import tqdm

    return tqdm(total=total, desc=description, unit=unit, unit_scale=True, file=sys.stderr, mininterval=0.5,
                dynamic_ncols=True)


def run_worker(settings: Settings, *, ingest: bool = True, metrics_port: int = 0) -> None:
    """Run the Faust agents and, in threads, an ingest consumer and the topic keeper, until stopped; with
    ``metrics_port``, this process's counters on its ``/metrics``."""
    import faust

    from surgegate.agents.app import create_app
    from surgegate.streams.ingest import IngestWorker
    from surgegate.streams.kafka import end_offsets_trusted
    from surgegate.streams.store import Keys, StateMirror
    from surgegate.streams.topics import keep_topics

    mirror = StateMirror(settings.redis, Keys.for_topic_prefix(settings.topic_prefix),
                         window_s=settings.window_s) if settings.redis else None
    one_record_batches = not end_offsets_trusted(settings)
    if one_record_batches:
        log.info("the broker reports a partition's end wrongly after multi-record batches (the embedded broker): "
                 "the agents send one record per batch, so a restarted worker restores all its state")
    app = create_app(settings, mirror=mirror, one_record_batches=one_record_batches)
    ingest_worker = IngestWorker(settings) if ingest else None
    stop_keeper = threading.Event()

    def on_death(part: str) -> Callable[[BaseException], None]:
        def died(exc: BaseException) -> None:
            # A worker without one of its threads only looks healthy: end the process, so a supervisor restarts
            # it. Crash-only is safe here: offsets are committed only after what they cover was published.
            log.critical("%s stopped: %s: %s", part, type(exc).__name__, exc, exc_info=exc)
            print(f"surgegate worker: the {part} stopped: {type(exc).__name__}: {exc}", file=sys.stderr,
                  flush=True)
            logging.shutdown()
            os._exit(2)
        return died

    changelogs = tuple(table.changelog_topic.get_topic_name() for table in app.tables.values())
    supervised("topic-keeper", lambda: keep_topics(settings, stop_keeper, changelogs=changelogs),
               on_death("topic keeper"))
    thread = (supervised("ingest", ingest_worker.run, on_death("ingest consumer"))
              if ingest_worker is not None else None)
    if metrics_port:
        serve_worker_metrics(metrics_port, ingest_worker)
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


def serve_worker_metrics(port: int, ingest_worker: Any) -> None:
    """This worker's own counters (its agents', its ingest consumer's) on ``port``'s ``/metrics``, under the
    names the API uses for the whole pipeline's."""
    from collections import Counter

    from prometheus_client import CollectorRegistry, start_http_server
    from prometheus_client.core import GaugeMetricFamily

    from surgegate.agents.counters import LIVE
    from surgegate.api.metrics import counter_families

    class WorkerCollector:
        def collect(self) -> Iterator[Any]:
            counts: Counter[str] = Counter()
            for counters in list(LIVE):
                counts.update(counters)
            if ingest_worker is not None:
                counts.update(ingest_worker.counters)
            yield GaugeMetricFamily("surgegate_worker_up", "The worker process is running", value=1)
            yield from counter_families(counts)

    registry = CollectorRegistry()
    registry.register(WorkerCollector())
    start_http_server(port, registry=registry)
    log.info("worker /metrics on port %d", port)


def supervised(name: str, target: Callable[[], None], on_death: Callable[[BaseException], None]) -> threading.Thread:
    """Run ``target`` in a daemon thread; if it raises, ``on_death`` gets the exception (a thread never dies
    unseen)."""
    def run() -> None:
        try:
            target()
        except BaseException as exc:  # every death is reported, whatever it was
            on_death(exc)

    thread = threading.Thread(target=run, name=name, daemon=True)
    thread.start()
    return thread


def cmd_worker(args: argparse.Namespace) -> None:
    settings = _settings(args)
    _need_kafka(settings)
    run_worker(settings, ingest=not args.no_ingest, metrics_port=args.metrics_port)


def cmd_up(args: argparse.Namespace) -> None:
    from surgegate.devtools.embedded import EmbeddedBroker, EmbeddedRedis
    from surgegate.streams.topics import create_topics

    settings = _settings(args)
    started: list[EmbeddedBroker | EmbeddedRedis] = []
    try:
        if not settings.kafka:
            broker = EmbeddedBroker(args.broker_port).start()
            started.append(broker)
            settings = settings.replace(kafka=broker.bootstrap)
        else:
            _need_kafka(settings)
        if not settings.redis:
            redis_server = EmbeddedRedis(args.redis_port).start()
            started.append(redis_server)
            settings = settings.replace(redis=redis_server.url)
        if args.demo and not settings.services:
            # the demo's service on its GPU pool: 8 replicas of 40 rps, so its bursts get throttled
            settings = settings.replace(services=DEMO_SERVICES)
        create_topics(settings)
        print(f"surgegate up: broker {settings.kafka}  redis {settings.redis}  "
              f"topics {settings.topic_prefix}*  window {settings.window_s:.0f} s", flush=True)
        if args.api_port:
            serve_api_in_thread(settings, "127.0.0.1", args.api_port)
            print(f"surgegate up: status API on http://127.0.0.1:{args.api_port}", flush=True)
        stop_demo = threading.Event()
        if args.demo:
            threading.Thread(target=_demo, args=(settings, stop_demo), name="demo", daemon=True).start()
            print("surgegate up: sending synthetic demo traffic (service 'chat', pool 'gpu-a')", flush=True)
        try:
            run_worker(settings)
        finally:
            stop_demo.set()
    finally:
        for service in reversed(started):
            service.stop()


def _demo(settings: Settings, stop: threading.Event) -> None:
    from surgegate.devtools.demo import run_demo
    from surgegate.streams.producer import TelemetryProducer

    with TelemetryProducer(settings, client_id="surgegate-demo") as producer:
        run_demo(producer, stop)


def cmd_chaos(args: argparse.Namespace) -> None:
    from surgegate.devtools.chaos import FAULTS, Chaos, Timing, table

    faults = tuple(f.strip() for f in args.faults.split(",") if f.strip())
    unknown = [f for f in faults if f not in FAULTS]
    if unknown:
        raise ValueError(f"--faults: unknown {', '.join(unknown)} (known: {', '.join(FAULTS)})")
    timing = Timing.short() if args.short else Timing()
    accounts = Chaos(timing, rate=args.rate, faults=faults,
                     log=lambda line: print(line, file=sys.stderr, flush=True)).run()
    text = table(accounts)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    unaccounted = sum(a.unaccounted for a in accounts)
    if unaccounted:
        raise SurgegateError(f"{unaccounted} events unaccounted for (see the table)")


def cmd_topics(args: argparse.Namespace) -> None:
    from surgegate.streams.topics import create_topics, list_topics

    settings = _settings(args)
    _need_kafka(settings)
    if args.action == "create":
        for name, state in sorted(create_topics(settings).items()):
            print(f"{name}\t{state}")
    else:
        for name, partitions in list_topics(settings).items():
            print(f"{name}\t{partitions}")


def cmd_replay(args: argparse.Namespace) -> None:
    from surgegate.devtools.replay import replay
    from surgegate.streams.producer import TelemetryProducer
    from surgegate.telemetry.traces import read_trace

    settings = _settings(args)
    bins = read_trace(Path(args.file))  # a bad file is named before the broker is asked anything
    _need_kafka(settings)
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


def load_tenants(path: str) -> tuple[dict[str, str], dict]:
    """Tenant registry and contracts from JSON ``{tenant: tier}`` or
    ``{tenant: {"tier": ..., "rate_rps": ..., "burst": ...}}`` (rate and burst: a global contract)."""
    from surgegate.edge.gate import Contract

    raw = _json_option("--tenants", path, "an object of tenant -> tier or settings")
    tiers, contracts = {}, {}
    for tenant, entry in raw.items():
        if isinstance(entry, str):
            tiers[tenant] = entry
        elif isinstance(entry, dict) and isinstance(entry.get("tier"), str):
            tiers[tenant] = entry["tier"]
            if "rate_rps" in entry:
                try:
                    contracts[tenant] = Contract(float(entry["rate_rps"]), float(entry.get("burst", 1.0)))
                except (TypeError, ValueError) as exc:
                    raise SurgegateError(f"--tenants {path}: tenant {tenant!r}: {exc}") from None
        else:
            raise SurgegateError(f"--tenants {path}: tenant {tenant!r}: expected a tier name or "
                                 '{"tier": ..., "rate_rps": ..., "burst": ...}')
    return tiers, contracts


def _json_option(option: str, value: str, expected: str = "a JSON object") -> dict:
    """A JSON object given inline or as a file name; a clear error naming the option otherwise."""
    import json

    try:
        text = value if value.lstrip().startswith("{") else Path(value).read_text()
        raw = json.loads(text)
    except (OSError, json.JSONDecodeError, RecursionError) as exc:
        raise SurgegateError(f"{option} {value!r}: {exc}") from None
    if not isinstance(raw, dict):
        raise SurgegateError(f"{option} {value!r}: expected {expected}")
    return raw


def load_keys(path: str) -> dict:
    """API keys from JSON ``{key: {"tenant": ..., "tier": ..., "tokens_per_minute": ...}}`` (the budget optional)."""
    from surgegate.edge.gateway import Identity

    raw = _json_option("--keys", path, "an object of API key -> {tenant, tier}")
    keys = {}
    for key, entry in raw.items():
        named = isinstance(entry, dict) and all(isinstance(entry.get(f), str) for f in ("tenant", "tier"))
        tpm = entry.get("tokens_per_minute") if isinstance(entry, dict) else None
        if not named or not (tpm is None or (isinstance(tpm, (int, float)) and tpm > 0)):
            raise SurgegateError(f"--keys {path}: key ending {key[-4:]!r}: expected "
                                 f'{{"tenant": ..., "tier": ..., "tokens_per_minute": > 0 (optional)}}')
        keys[key] = Identity(entry["tenant"], entry["tier"], None if tpm is None else float(tpm))
    return keys


def cmd_edge(args: argparse.Namespace) -> None:
    from aiohttp import web

    from surgegate.edge.gate import EdgeGate, GlobalQuota
    from surgegate.edge.gateway import create_edge_app
    from surgegate.edge.metrics import GateMetrics
    from surgegate.streams.store import Keys

    settings = _settings(args)
    _need_kafka(settings)
    tenants, contracts = load_tenants(args.tenants) if args.tenants else (None, {})
    quota = None
    if contracts:
        if not settings.redis:
            raise SurgegateError("tenant contracts need Redis: set SURGEGATE_REDIS or pass --redis")
        quota = GlobalQuota(settings.redis, contracts, prefix=Keys.for_topic_prefix(settings.topic_prefix).prefix)
    models = _json_option("--models", args.models) if args.models else {}
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in models.items()):
        raise SurgegateError("--models: expected an object of model name -> service name")
    cache = None
    if args.cache:
        from surgegate.edge.cache import ResponseCache

        if not settings.redis:
            raise SurgegateError("--cache needs Redis: set SURGEGATE_REDIS or pass --redis")
        try:
            cache = ResponseCache(settings.redis, prefix=Keys.for_topic_prefix(settings.topic_prefix).prefix,
                                  ttl_s=args.cache_ttl, max_entries=args.cache_max_entries,
                                  max_entry_bytes=args.cache_max_entry_bytes, shared_scope=args.cache_shared_scope)
        except ValueError as exc:
            raise SurgegateError(f"--cache-*: {exc}") from None
    lane = None
    if (args.deferral or ("lane" if settings.redis else "memory")) == "lane":
        from surgegate.edge.lane import DeferralLane

        if not settings.redis:
            raise SurgegateError("--deferral lane keeps task states in Redis: set SURGEGATE_REDIS or pass --redis")
        lane = DeferralLane(settings, args.edge_id)
    metrics = GateMetrics()
    overflow = bool(args.overflow_upstream)
    gate = EdgeGate(settings, args.service, edge_id=args.edge_id, share=args.share, shadow=args.shadow,
                    report=args.report, metrics=metrics, follow_scaling=overflow).start()
    gates = {service: EdgeGate(settings, service, edge_id=args.edge_id, share=args.share, shadow=args.shadow,
                               report=args.report, metrics=metrics, follow_scaling=overflow).start()
             for service in sorted(set(models.values()) - {args.service})}
    keys = load_keys(args.keys) if args.keys else None
    app = create_edge_app(gate, args.upstream, models=models, gates=gates, tenants=tenants, keys=keys, quota=quota,
                          default_tenant=args.default_tenant, default_tier=args.default_tier,
                          deferred_capacity=args.deferred_capacity, timeout_s=args.timeout,
                          connect_timeout_s=args.connect_timeout, connections=args.connections,
                          overflow_upstream=args.overflow_upstream, cache=cache, lane=lane,
                          deadline_s=args.deadline)
    print(f"surgegate edge {args.edge_id}: service {args.service} on http://{args.host}:{args.port} -> "
          f"{args.upstream}{' (shadow)' if args.shadow else ''}", flush=True)
    try:
        # a client that goes away cancels its handler, and with it the upstream request
        web.run_app(app, host=args.host, port=args.port, print=None, access_log=None, handler_cancellation=True)
    finally:
        for g in (gate, *gates.values()):
            g.close()


def cmd_scaler(args: argparse.Namespace) -> None:
    import shlex

    from surgegate.gpu.scaler import (
        CommandScaler,
        KubernetesScaler,
        LogScaler,
        Scaler,
        ScalerCollector,
        ScalingSubscriber,
    )

    settings = _settings(args)
    _need_kafka(settings)
    if args.command and args.deployment:
        raise SurgegateError("give --command or --deployment, not both")
    if (args.warm_deployment or args.overflow_deployment) and not args.deployment:
        raise SurgegateError("--warm-deployment and --overflow-deployment go with --deployment")
    if args.command:
        keep_warm = shlex.split(args.keep_warm_command) if args.keep_warm_command else None
        scaler: Scaler = CommandScaler(shlex.split(args.command), keep_warm_command=keep_warm)
    elif args.deployment:
        scaler = KubernetesScaler(args.deployment, args.namespace, warm_deployment=args.warm_deployment,
                                  overflow_deployment=args.overflow_deployment)
    else:
        scaler = LogScaler()
    print(f"surgegate scaler: pool {args.pool} -> {type(scaler).__name__}", flush=True)
    with ScalingSubscriber(settings, args.pool, scaler) as subscriber:
        if args.metrics_port:
            from prometheus_client import CollectorRegistry, start_http_server

            registry = CollectorRegistry()
            registry.register(ScalerCollector(subscriber))
            start_http_server(args.metrics_port, registry=registry)
        try:
            while True:
                time.sleep(60)
                log.info("pool %s: %s", args.pool, subscriber.counts)
        except KeyboardInterrupt:
            pass


def cmd_ratelimit(args: argparse.Namespace) -> None:
    from surgegate.edge.gate import EdgeGate
    from surgegate.edge.metrics import GateMetrics
    from surgegate.edge.ratelimit import RateLimitService, start_server

    settings = _settings(args)
    _need_kafka(settings)
    metrics = GateMetrics()  # the gate's metrics and the service's answers, on one /metrics
    registry = metrics.registry
    gate = EdgeGate(settings, args.service, edge_id=args.edge_id, share=args.share, shadow=args.shadow,
                    report=args.report, metrics=metrics).start()
    try:
        service = RateLimitService(gate, default_tenant=args.default_tenant, default_tier=args.default_tier,
                                   registry=registry)
    except ValueError as exc:
        gate.close()
        raise SettingsError(f"--default-tier: {exc}") from None
    try:
        serve_grpc(lambda: start_server(service, args.listen), args.listen, args.metrics_port, registry,
                   lambda host, port: f"surgegate ratelimit {args.edge_id}: envoy.service.ratelimit.v3."
                                      f"RateLimitService for service {args.service} on {host}:{port}"
                                      f"{' (shadow)' if args.shadow else ''}")
    finally:
        gate.close()


def cmd_drain(args: argparse.Namespace) -> None:
    import asyncio
    import signal

    from prometheus_client import CollectorRegistry, start_http_server

    from surgegate.edge.drain import Drainer, DrainerCollector

    settings = _settings(args)
    _need_kafka(settings)
    if not settings.redis:
        raise SurgegateError("surgegate drain writes task states to Redis: set SURGEGATE_REDIS or pass --redis")
    if args.concurrency < 1 or args.max_attempts < 1 or args.hold < 1:
        raise SettingsError("--concurrency, --max-attempts and --hold must be at least 1")
    drainer = Drainer(settings, args.service, args.upstream, drainer_id=args.drainer_id, share=args.share,
                      concurrency=args.concurrency, max_attempts=args.max_attempts, hold=args.hold,
                      timeout_s=args.timeout, upstream_key=os.environ.get("SURGEGATE_UPSTREAM_KEY") or None)
    if args.metrics_port:
        registry = CollectorRegistry()
        registry.register(DrainerCollector(drainer))
        start_http_server(args.metrics_port, registry=registry)
    print(f"surgegate drain {args.drainer_id}: service {args.service} -> {args.upstream}"
          f"{f', /metrics on port {args.metrics_port}' if args.metrics_port else ''}", flush=True)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, drainer.stop)
        await drainer.run()

    asyncio.run(main())


def serve_grpc(start: Callable[[], Awaitable[tuple[Any, int]]], listen: str, metrics_port: int,
               registry: Any, banner: Callable[[str, int], str]) -> None:
    """Serve a gRPC server (``start()`` makes it) until interrupted, and ``registry`` on ``metrics_port``'s
    ``/metrics`` unless it is 0, both on ``listen``'s host."""
    import asyncio

    from prometheus_client import start_http_server

    host = listen.rpartition(":")[0]
    if metrics_port:
        start_http_server(metrics_port, addr=host or "0.0.0.0", registry=registry)

    async def serve() -> None:
        server, port = await start()
        print(banner(host, port) + (f", /metrics on port {metrics_port}" if metrics_port else ""), flush=True)
        await server.wait_for_termination()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve())


def cmd_keda(args: argparse.Namespace) -> None:
    from prometheus_client import CollectorRegistry

    from surgegate.gpu.keda import KedaScaler, start_server
    from surgegate.gpu.pools import PoolBook, PoolCollector
    from surgegate.streams.kafka import follow_from_start
    from surgegate.streams.topics import Topics

    settings = _settings(args)
    _need_kafka(settings)
    book = PoolBook()
    registry = CollectorRegistry()
    registry.register(PoolCollector(book))
    scaler = KedaScaler(book, registry)
    stop = threading.Event()

    def died(exc: BaseException) -> None:
        # without its feed the scaler would serve a frozen fleet as if current: end, so a supervisor restarts it
        log.critical("the scaling feed stopped: %s", exc, exc_info=exc)
        print(f"surgegate keda: the scaling feed stopped: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
        logging.shutdown()
        os._exit(2)

    supervised("scaling-feed", lambda: follow_from_start(
        settings, Topics(settings.topic_prefix).scaling, "surgegate-keda", stop, book.offer,
        lambda err: log.warning("scaling feed: %s", err), fetch_wait_ms=100), died)
    try:
        serve_grpc(lambda: start_server(scaler, args.listen), args.listen, args.metrics_port, registry,
                   lambda host, port: f"surgegate keda: externalscaler.ExternalScaler on {host}:{port}")
    finally:
        stop.set()


def cmd_scrape(args: argparse.Namespace) -> None:
    from surgegate.gpu.scraper import ServerScraper
    from surgegate.streams.producer import TelemetryProducer

    settings = _settings(args)
    _need_kafka(settings)
    worker_id = args.worker_id or args.url.split("//")[-1].split("/")[0].replace(":", "-")
    with TelemetryProducer(settings, client_id=f"surgegate-scrape-{worker_id}") as producer:
        scraper = ServerScraper(producer, args.url, pool=args.pool, worker_id=worker_id, flavour=args.flavour,
                                model=args.model, max_num_seqs=args.max_num_seqs, interval_s=args.interval)
        print(f"surgegate scrape: {args.url} ({args.flavour}) -> pool {args.pool} as {worker_id}", flush=True)
        try:
            scraper.run()
        except KeyboardInterrupt:
            scraper.stop()


def cmd_fake_llm(args: argparse.Namespace) -> None:
    from aiohttp import web

    from surgegate.devtools.fake_llm import create_fake_llm_app
    from surgegate.llm.replica import ReplicaProfile

    profile = ReplicaProfile(kv_cache_tokens=args.kv_cache_tokens, max_num_seqs=args.max_num_seqs)
    app = create_fake_llm_app(model=args.model, profile=profile, time_scale=args.time_scale, seed=args.seed,
                              output_median=args.output_median, error_share=args.error_share)
    print(f"fake LLM ({args.model}, vLLM-like) on http://{args.host}:{args.port}/v1", flush=True)
    web.run_app(app, host=args.host, port=args.port, print=None, access_log=None, handler_cancellation=True)


def cmd_simulate(args: argparse.Namespace) -> None:
    from surgegate.sim.report import POLICIES, compare, plot, table
    from surgegate.sim.service import ServiceModel
    from surgegate.sim.workload import SCENARIOS, from_trace

    for option, value in (("--peak", args.peak), ("--hours", args.hours), ("--cold-start", args.cold_start)):
        if not value > 0:
            raise SurgegateError(f"{option}={value!r}: must be > 0")
    if args.jobs < 1:
        raise SurgegateError(f"--jobs={args.jobs!r}: must be >= 1")
    try:
        model = ServiceModel(cold_start_s=args.cold_start, engine_priority=args.engine_priority,
                             cache_hit_ratio=args.cache_hit_ratio, deferral=args.deferral)
    except ValueError as exc:
        raise SurgegateError(f"--cache-hit-ratio / --deferral: {exc}") from None
    workloads = [SCENARIOS[name](args.peak, args.seed) for name in args.scenario or ()]
    workloads += [from_trace(Path(t), args.peak, hours=args.hours) for t in args.trace or ()]
    if not workloads:
        workloads = [SCENARIOS["burst"](args.peak, args.seed)]
    policies = POLICIES if args.compare else ("surgegate",)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    window_s = int(_settings(args).window_s)
    sections = []
    with contextlib.ExitStack() as stack:
        mapper: Any = map
        if args.jobs > 1:
            import multiprocessing

            pool = stack.enter_context(multiprocessing.get_context("spawn").Pool(args.jobs))
            mapper = pool.imap
        for w in workloads:
            started = time.perf_counter()
            result = compare(w, policies, model=model, seed=args.seed, window_s=window_s, sweep=args.compare,
                             mapper=mapper)
            took = time.perf_counter() - started
            runs = len(result.defaults) + sum(len(v) for v in result.sweeps.values())
            print(f"{w.name}: {runs} runs of {w.seconds / 3600:.1f} simulated hours in {took:.1f} s",
                  file=sys.stderr, flush=True)
            section = table(result)
            if args.compare:
                png = plot(result, out / f"sim-{w.name}.png")
                section += f"\n![{w.name}]({png.name})\n"
            sections.append(section)
            print(section, flush=True)
    if args.compare:
        p = model.profile
        header = (f"# Policies compared on the simulated LLM service\n\n"
                  f"`surgegate simulate --compare` (seed {args.seed}). Replicas: Llama-3-8B on one A100 80GB "
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
        (out / "simulation.md").write_text(header + "\n".join(sections))
        print(f"report: {out / 'simulation.md'}", file=sys.stderr)


def cmd_api(args: argparse.Namespace) -> None:
    from aiohttp import web

    from surgegate.api.app import create_api

    settings = _settings(args)
    _need_kafka(settings)
    if not settings.redis:
        raise SurgegateError("the API reads the Redis mirror: set SURGEGATE_REDIS or pass --redis")
    print(f"surgegate api on http://{args.host}:{args.port}", flush=True)
    web.run_app(create_api(settings), host=args.host, port=args.port, print=None)


def serve_api_in_thread(settings: Settings, host: str, port: int) -> threading.Thread:
    """Run the status API on its own event loop in a daemon thread (for `surgegate up`)."""
    import asyncio

    from aiohttp import web

    from surgegate.api.app import create_api

    def run() -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        runner = web.AppRunner(create_api(settings))
        loop.run_until_complete(runner.setup())
        loop.run_until_complete(web.TCPSite(runner, host, port).start())
        loop.run_forever()

    thread = threading.Thread(target=run, name="api", daemon=True)
    thread.start()
    return thread


def cmd_eval_forecast(args: argparse.Namespace) -> None:
    from surgegate.forecast.evaluation import evaluate_trace, markdown, plot

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    sections = []
    window_ms = _settings(args).window_ms
    for trace in args.traces:
        with progress_bar(f"evaluate {Path(trace).name}", 0, "windows") as bar:
            def progress(done: int, total: int) -> None:
                bar.total = total
                bar.update(done - bar.n)

            report = evaluate_trace(Path(trace), horizon=args.horizon, coverage=args.coverage,
                                    gaps_as_zeros=args.gaps_as_zeros, window_ms=window_ms, progress=progress)
        section = markdown(report)
        png = plot(report, out / f"forecast-{report.name}.png")
        sections.append(section + f"\n![{report.name}]({png.name})\n")
        print(section, flush=True)
        print(f"plot: {png}", flush=True)
    (out / "forecast-eval.md").write_text("\n".join(sections))
    print(f"report: {out / 'forecast-eval.md'}", file=sys.stderr)


def cmd_schemas(args: argparse.Namespace) -> None:
    from surgegate.schemas.registry import write_json_schemas

    for path in write_json_schemas():
        print(path)


class _HelpWithDefaults(argparse.ArgumentDefaultsHelpFormatter):
    """Every option's help ends with its default: ``on``/``off`` for flags, and no ``None``: an
    option without a value of its own says in its help where its default comes from."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.default is None or action.default is argparse.SUPPRESS or "default" in text \
                or not action.option_strings:
            return text
        if isinstance(action.default, bool):
            return f"{text} (default: {'on' if action.default else 'off'})"
        return f"{text} (default: %(default)s)"


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the `surgegate` command."""
    parser = argparse.ArgumentParser(prog="surgegate", description=__doc__, formatter_class=_HelpWithDefaults)
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="log Faust, aiokafka, aiohttp and librdkafka too, and surgegate at debug")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, description: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=description, description=description, formatter_class=_HelpWithDefaults)
        p.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                       help="as `surgegate --verbose`, given after the command (default: off)")
        return p

    def broker(p: argparse.ArgumentParser) -> None:
        p.add_argument("--kafka", metavar="HOST:PORT", help="broker address (default: SURGEGATE_KAFKA)")
        p.add_argument("--prefix", help="topic prefix (default: SURGEGATE_TOPIC_PREFIX, else 'sg.')")

    def redis(p: argparse.ArgumentParser, what: str) -> None:
        p.add_argument("--redis", metavar="URL", help=f"Redis URL: {what} (default: SURGEGATE_REDIS)")

    up = command("up", "start broker, Redis, topics, a worker and the status API on this machine")
    broker(up)
    up.add_argument("--redis", metavar="URL", help="use this Redis instead of an embedded one "
                                                   "(default: SURGEGATE_REDIS, else embedded)")
    up.add_argument("--partitions", type=int, help="partitions per topic at creation "
                                                   "(default: SURGEGATE_PARTITIONS, else 4)")
    up.add_argument("--demo", action="store_true", help="also send synthetic traffic (service chat, pool gpu-a)")
    up.add_argument("--broker-port", type=int, help="port of the embedded broker (default: a free one)")
    up.add_argument("--redis-port", type=int, help="port of the embedded Redis (default: a free one)")
    up.add_argument("--api-port", type=int, default=8000, help="status API port on 127.0.0.1 (0: no API)")
    up.set_defaults(func=cmd_up)

    worker = command("worker", "run the ingest consumer and the Faust agents")
    broker(worker)
    redis(worker, "the state mirror")
    worker.add_argument("--no-ingest", action="store_true", help="run the Faust agents only")
    worker.add_argument("--metrics-port", type=int, default=0,
                        help="serve this worker's counters on this port's /metrics, e.g. 9440 (0: none)")
    worker.set_defaults(func=cmd_worker)

    ch = command("chaos", "kill the worker, Redis, an edge and the broker of an embedded stack under load, and "
                          "account for every event")
    ch.add_argument("--faults", default=",".join(("worker", "redis", "edge", "broker")),
                    help="the faults, in order (worker, redis, edge, broker)")
    ch.add_argument("--rate", type=float, default=200.0, help="events per second from the load edges")
    ch.add_argument("--short", action="store_true", help="shorter phases and outages (what CI runs)")
    ch.add_argument("--out", help="also write the table to this file (default: print it only)")
    ch.set_defaults(func=cmd_chaos)

    topics = command("topics", "create or list topics")
    topics.add_argument("action", choices=["create", "list"], help="create every missing topic, or list them")
    broker(topics)
    topics.add_argument("--partitions", type=int, help="partitions per new topic "
                                                       "(default: SURGEGATE_PARTITIONS, else 4)")
    topics.set_defaults(func=cmd_topics)

    rp = command("replay", "replay a trace (timestamp_s,count[,tokens]) into sg.requests")
    rp.add_argument("file", help="trace file, optionally .gz (e.g. docs/examples/burst.csv)")
    broker(rp)
    rp.add_argument("--speedup", type=float, default=1.0,
                    help="time compression, also of event time (0: as fast as possible, event times in the past)")
    rp.add_argument("--scale", type=float, default=1.0, help="multiply every count")
    rp.add_argument("--summaries", action="store_true", help="send per-second RequestSummaries, not RequestEvents")
    rp.add_argument("--service", default="chat", help="service the requests are for")
    rp.add_argument("--seed", type=int, default=0, help="seed of the synthetic tenants, tiers and latencies")
    rp.add_argument("--start-ms", type=int, help="event time of the trace start, epoch ms (default: now)")
    rp.set_defaults(func=cmd_replay)

    edge = command("edge", "run an admitting reverse proxy in front of an LLM service")
    broker(edge)
    redis(edge, "decision bootstrap and tenant contracts")
    edge.add_argument("--upstream", required=True, help="the service's base URL, e.g. http://127.0.0.1:9000")
    edge.add_argument("--overflow-upstream", metavar="URL",
                      help="the overflow pool's base URL: lower tiers and batch work go there while the pool's "
                           "scaling decision asks overflow replicas (default: none)")
    edge.add_argument("--service", default="chat", help="service whose throttle decisions this edge applies")
    edge.add_argument("--models", metavar="JSON|FILE",
                      help='model name -> service, e.g. \'{"bge-small": "embed"}\'; a model not named goes to '
                           "--service (default: every model to --service)")
    edge.add_argument("--edge-id", default="edge-1", help="this edge's name in its telemetry")
    edge.add_argument("--host", default="127.0.0.1", help="address to listen on")
    edge.add_argument("--port", type=int, default=8080, help="port to listen on")
    edge.add_argument("--share", type=float, default=1.0, help="this edge's share of the service's traffic")
    edge.add_argument("--shadow", action="store_true", help="admit everything; record what would be refused")
    edge.add_argument("--keys", metavar="FILE",
                      help="JSON file: API key -> {tenant, tier}; a bearer key not in it is refused (default: none, "
                           "keys are not checked)")
    edge.add_argument("--default-tenant", default="anonymous", help="tenant of a request that names none")
    edge.add_argument("--default-tier", help="tier of a request that names none (default: the service's lowest)")
    edge.add_argument("--tenants", metavar="FILE",
                      help="JSON file: tenant -> tier, or tenant -> {tier, rate_rps, burst} (default: none, "
                           "tenant and tier from headers)")
    edge.add_argument("--report", choices=["summaries", "events", "off"], default="summaries",
                      help="telemetry this edge sends")
    edge.add_argument("--deferred-capacity", type=int, default=1000, help="deferred batch tasks held at most")
    edge.add_argument("--timeout", type=float, default=60.0, help="upstream timeout in seconds")
    edge.add_argument("--connect-timeout", type=float, default=1.0,
                      help="seconds to wait for a free upstream connection before answering 503 (overload)")
    edge.add_argument("--connections", type=int, default=1000, help="upstream connections kept at most")
    edge.add_argument("--deferral", choices=["lane", "memory"],
                      help="where deferred batch work waits: the durable lane (sg.deferred, task states in Redis, run "
                           "by `surgegate drain`) or this process's memory (default: lane when Redis is set)")
    edge.add_argument("--deadline", type=float, default=3600.0,
                      help="seconds a deferred task may wait before it expires (X-Surgegate-Deadline sets it per "
                           "request)")
    edge.add_argument("--cache", action="store_true",
                      help="answer repeated deterministic requests (temperature 0, or X-Surgegate-Cache: on) from a "
                           "response cache in Redis shared by the edges; from level 3 lower tiers get cached answers "
                           "only")
    edge.add_argument("--cache-ttl", type=float, default=300.0, help="seconds a cached answer is kept")
    edge.add_argument("--cache-max-entries", type=int, default=10_000, help="cached answers kept per service")
    edge.add_argument("--cache-max-entry-bytes", type=int, default=128 * 1024,
                      help="a larger answer (or stream) is not cached")
    edge.add_argument("--cache-shared-scope", metavar="NAME",
                      help="one cache scope for every tenant of the service (default: none, each tenant reads only "
                           "its own answers)")
    edge.set_defaults(func=cmd_edge)

    dr = command("drain", "run deferred batch tasks from the deferral lane at the batch rate the decision allows")
    broker(dr)
    redis(dr, "task states")
    dr.add_argument("--service", default="chat", help="the service whose deferred tasks this drainer runs")
    dr.add_argument("--upstream", required=True, help="the service's base URL, e.g. http://127.0.0.1:9000 (its "
                                                      "bearer key, if it needs one, from SURGEGATE_UPSTREAM_KEY)")
    dr.add_argument("--drainer-id", default="drain-1", help="this drainer's name in its telemetry")
    dr.add_argument("--share", type=float, default=1.0, help="this drainer's share of the service's batch rate")
    dr.add_argument("--concurrency", type=int, default=16, help="tasks running upstream at once")
    dr.add_argument("--max-attempts", type=int, default=5, help="tries of a task the upstream answers with overload")
    dr.add_argument("--hold", type=int, default=1000, help="tasks held in memory (reading pauses beyond)")
    dr.add_argument("--timeout", type=float, default=300.0, help="upstream timeout of one try, in seconds")
    dr.add_argument("--metrics-port", type=int, default=0, help="serve the backlog on this port's /metrics (0: none)")
    dr.set_defaults(func=cmd_drain)

    rl = command("ratelimit", "answer Envoy's rate limit service calls (v3 ShouldRateLimit) with the edge gate")
    broker(rl)
    redis(rl, "decision bootstrap")
    rl.add_argument("--service", default="chat", help="the service gated; Envoy's rate limit domain")
    rl.add_argument("--listen", default="0.0.0.0:8081", metavar="HOST:PORT",
                    help="the gRPC address (Envoy's rate limit cluster)")
    rl.add_argument("--metrics-port", type=int, default=9443, help="serve /metrics on this port (0: none)")
    rl.add_argument("--edge-id", default="ratelimit-1", help="this gate's name in its telemetry")
    rl.add_argument("--share", type=float, default=1.0, help="this process's share of the service's traffic")
    rl.add_argument("--shadow", action="store_true", help="answer OK to everything; record what would be refused")
    rl.add_argument("--default-tenant", default="anonymous", help="tenant of a descriptor that names none")
    rl.add_argument("--default-tier", help="tier of a descriptor that names none (default: the service's lowest)")
    rl.add_argument("--report", choices=["summaries", "events", "off"], default="summaries",
                    help="telemetry this gate sends")
    rl.set_defaults(func=cmd_ratelimit)

    sc_ = command("scaler", "follow a GPU pool's scaling decisions and carry them out")
    broker(sc_)
    sc_.add_argument("--pool", required=True, help="the GPU pool to follow")
    sc_.add_argument("--command", help="run this with SG_DESIRED_REPLICAS, SG_WARM_POOL, ... in its environment "
                                       "(default: log the decisions only)")
    sc_.add_argument("--keep-warm-command", help="with --command: run this every window to keep idle replicas "
                                                 "warm (default: none)")
    sc_.add_argument("--deployment", help="set this Kubernetes Deployment's replicas through its scale subresource; "
                                          "refused if an HPA scales it (use `surgegate keda`) (default: none)")
    sc_.add_argument("--warm-deployment", help="with --deployment: a standby Deployment that gets the warm pool "
                                               "(default: none)")
    sc_.add_argument("--overflow-deployment", help="with --deployment: the overflow pool's Deployment, which gets the "
                                                   "overflow replicas, 0 when none are asked (default: none)")
    sc_.add_argument("--namespace", default="default", help="the Deployments' namespace")
    sc_.add_argument("--metrics-port", type=int, default=0,
                     help="serve the scaler's counts and its pool's decision on this port's /metrics (0: none)")
    sc_.set_defaults(func=cmd_scaler)

    keda = command("keda", "serve every pool's desired replicas to KEDA (external scaler, gRPC) and Prometheus")
    broker(keda)
    keda.add_argument("--listen", default="0.0.0.0:9441", metavar="HOST:PORT",
                      help="the gRPC address (the ScaledObject's scalerAddress)")
    keda.add_argument("--metrics-port", type=int, default=9442,
                      help="serve the pools' gauges on this port's /metrics, on --listen's host (0: none)")
    keda.set_defaults(func=cmd_keda)

    scrape = command("scrape", "publish an inference server's own metrics (vLLM, SGLang, TGI) as MetricEvents")
    broker(scrape)
    scrape.add_argument("--url", required=True, help="the server's Prometheus endpoint, e.g. http://127.0.0.1:8000/metrics")
    scrape.add_argument("--pool", required=True, help="the GPU pool this replica belongs to")
    scrape.add_argument("--worker-id", help="this replica's name in its reports (default: the URL's host-port)")
    scrape.add_argument("--flavour", choices=["vllm", "sglang", "tgi"], default="vllm",
                        help="the server's metric names")
    scrape.add_argument("--model", help="count only this model_name's series (default: every series)")
    scrape.add_argument("--max-num-seqs", type=int, default=256, help="the server's batch size, for utilisation")
    scrape.add_argument("--interval", type=float, default=1.0, help="seconds between scrapes")
    scrape.set_defaults(func=cmd_scrape)

    fake = command("fake-llm", "run a vLLM-like OpenAI-compatible server (one simulated replica)")
    fake.add_argument("--host", default="127.0.0.1", help="address to listen on")
    fake.add_argument("--port", type=int, default=9000, help="port to listen on")
    fake.add_argument("--model", default="llama-3-8b", help="model name it serves")
    fake.add_argument("--time-scale", type=float, default=1.0, help="multiply every simulated duration")
    fake.add_argument("--output-median", type=int, default=200, help="median output tokens of a request")
    fake.add_argument("--kv-cache-tokens", type=int, default=400_000, help="KV cache of the replica, in tokens")
    fake.add_argument("--max-num-seqs", type=int, default=256, help="sequences in one batch at most")
    fake.add_argument("--error-share", type=float, default=0.0, help="share of requests answered 500")
    fake.add_argument("--seed", type=int, help="seed of the output lengths (default: random)")
    fake.set_defaults(func=cmd_fake_llm)

    api = command("api", "serve the status API (Redis mirror, decision stream, overrides)")
    broker(api)
    redis(api, "the state mirror the API reads")
    api.add_argument("--host", default="127.0.0.1", help="address to listen on")
    api.add_argument("--port", type=int, default=8000, help="port to listen on")
    api.set_defaults(func=cmd_api)

    sim = command("simulate", "run policies against a simulated LLM service (--compare: all, swept, a report)")
    sim.add_argument("--scenario", action="append",
                     choices=["burst", "daily", "flash_crowd", "long_tail_shift", "replica_failures", "token_heavy",
                              "gpu_quota", "slow_cold_start"],
                     help="a synthetic workload, repeatable (default: burst unless --trace)")
    sim.add_argument("--trace", action="append", help="a trace file, scaled to --peak, repeatable (default: none)")
    sim.add_argument("--compare", action="store_true",
                     help="every policy, at its defaults and swept over its knob, for cost at equal SLO; writes --out")
    sim.add_argument("--peak", type=float, default=120_000.0, help="rps of the busiest 10 s window")
    sim.add_argument("--hours", type=float, default=24.0, help="simulate at most this much of a trace")
    sim.add_argument("--cold-start", type=float, default=15.0, help="seconds until a new replica serves")
    sim.add_argument("--engine-priority", action="store_true",
                     help="replicas schedule by tier (vLLM's priority scheduling), not first come, first served")
    sim.add_argument("--cache-hit-ratio", type=float, default=0.0,
                     help="share of requests the edges' response cache answers (0 <= ratio < 1)")
    sim.add_argument("--deferral", choices=["queue", "lane"], default="queue",
                     help="deferred batch work waits in the edges' in-memory queue, or in the durable deferral lane "
                          "(drained at the admitted batch rate, deadlines kept, backlog reported to scaling)")
    sim.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="simulations run in parallel")
    sim.add_argument("--seed", type=int, default=0, help="seed of the workload and the service")
    sim.add_argument("--out", default="simulation", help="directory for the markdown report and PNGs")
    sim.set_defaults(func=cmd_simulate)

    ev = command("eval-forecast", "score the forecasters on traces (MASE, sMAPE, coverage)")
    ev.add_argument("traces", nargs="+", help="trace files (timestamp_s,count[,...], optionally .gz)")
    ev.add_argument("--horizon", type=int, default=30, help="windows forecast ahead")
    ev.add_argument("--coverage", type=float, default=0.9, help="nominal coverage of the bounds")
    ev.add_argument("--out", default="forecast-eval", help="directory for the markdown report and PNG plots")
    ev.add_argument("--gaps-as-zeros", action="store_true",
                    help="learn and score a rate trace's collection gaps as the zeros the file holds")
    ev.set_defaults(func=cmd_eval_forecast)

    sc = command("schemas", "write the JSON Schema files into schemas/")
    sc.add_argument("action", choices=["export"], help="export: rewrite every *.schema.json")
    sc.set_defaults(func=cmd_schemas)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `surgegate` console command."""
    args = build_parser().parse_args(argv)
    try:
        configure_logging(Settings.from_env(os.environ), args.verbose)
        args.func(args)
    except SurgegateError as exc:
        print(f"surgegate {args.command}: {exc}", file=sys.stderr)
        return EX_TEMPFAIL if exc.retriable else 2
    except (ValueError, OSError) as exc:
        print(f"surgegate {args.command}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
