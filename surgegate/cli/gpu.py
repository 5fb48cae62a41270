"""The GPU side's commands: scaler, keda, scrape, and fake-llm (a replica to try them on)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import threading
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from surgegate.cli.common import (
    Parsers,
    event_loop,
    exit_on_death,
    log,
    need_kafka,
    need_redis,
    settings_of,
    supervised,
)
from surgegate.errors import SurgegateError
from surgegate.settings import Settings

if TYPE_CHECKING:
    from surgegate.gpu.local_pool import LocalPool


def serve_grpc(start: Callable[[], Awaitable[tuple[Any, int]]], listen: str, metrics_port: int,
               registry: Any, banner: Callable[[str, int], str]) -> None:
    """Serve a gRPC server (``start()`` makes it) until interrupted, and ``registry`` on ``metrics_port``'s
    ``/metrics`` unless it is 0, both on ``listen``'s host."""
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

    settings = need_kafka(settings_of(args))
    if sum(map(bool, (args.command, args.deployment, args.local))) > 1:
        raise SurgegateError("give one of --command, --deployment and --local")
    if (args.warm_deployment or args.overflow_deployment) and not args.deployment:
        raise SurgegateError("--warm-deployment and --overflow-deployment go with --deployment")
    if args.command:
        keep_warm = shlex.split(args.keep_warm_command) if args.keep_warm_command else None
        scaler: Scaler = CommandScaler(shlex.split(args.command), keep_warm_command=keep_warm)
    elif args.deployment:
        scaler = KubernetesScaler(args.deployment, args.namespace, warm_deployment=args.warm_deployment,
                                  overflow_deployment=args.overflow_deployment)
    elif args.local:
        pool = local_pool(settings, args)
        scaler = pool.start()
    else:
        scaler = LogScaler()
    print(f"surgegate scaler: pool {args.pool} -> {type(scaler).__name__}", flush=True)
    try:
        with ScalingSubscriber(settings, args.pool, scaler) as subscriber:
            if args.metrics_port:
                from prometheus_client import CollectorRegistry, start_http_server

                registry = CollectorRegistry()
                registry.register(ScalerCollector(subscriber))
                start_http_server(args.metrics_port, addr=args.metrics_host, registry=registry)
            try:
                last = time.monotonic()
                while True:
                    time.sleep(1)
                    if args.local and not pool.alive():  # a pool no longer run must not look like one
                        raise SurgegateError(f"pool {args.pool}: the local pool stopped; see the log above")
                    if time.monotonic() - last >= 60:
                        last = time.monotonic()
                        log.info("pool %s: %s", args.pool, subscriber.counts)
            except KeyboardInterrupt:
                pass
    finally:
        if args.local:
            pool.close()


def local_pool(settings: Settings, args: argparse.Namespace) -> LocalPool:
    """``--local``: replica processes on this host, registered in Redis for the edges, reported on the broker."""
    import shlex

    from surgegate.gpu.local_pool import LocalPool, fake_llm_command, redis_registry
    from surgegate.streams.producer import TelemetryProducer
    from surgegate.streams.redis_client import sync_client
    from surgegate.streams.store import Keys

    need_redis(settings, "--local (the pool's replica registry, which edges read)")
    command = shlex.split(args.replica_command) if args.replica_command else \
        fake_llm_command(args.fake_time_scale, args.fake_output_median)
    producer = TelemetryProducer(settings, client_id=f"pool-{args.pool}")
    key = Keys.for_topic_prefix(settings.topic_prefix).pool_replicas(args.pool)
    try:
        pool = LocalPool(args.pool, command=command, cold_start_s=args.cold_start, warm_start_s=args.warm_start,
                         max_replicas=args.max_replicas, publish=producer.send_metric,
                         registry=redis_registry(sync_client(settings.redis_target(), timeout_s=1.0), key))
    except ValueError as exc:
        raise SurgegateError(f"--local: {exc}") from None
    pool.set_targets(args.initial_replicas)
    return pool


def cmd_keda(args: argparse.Namespace) -> None:
    from prometheus_client import CollectorRegistry

    from surgegate.gpu.keda import KedaScaler, start_server
    from surgegate.gpu.pools import PoolBook, PoolCollector
    from surgegate.streams.kafka import follow_from_start
    from surgegate.streams.topics import Topics

    settings = need_kafka(settings_of(args))
    book = PoolBook()
    registry = CollectorRegistry()
    registry.register(PoolCollector(book))
    scaler = KedaScaler(book, registry)
    stop = threading.Event()
    # without its feed the scaler would serve a frozen fleet as if current: end, so a supervisor restarts it
    supervised("scaling-feed", lambda: follow_from_start(
        settings, Topics(settings.topic_prefix).scaling, "surgegate-keda", stop, book.offer,
        lambda err: log.warning("scaling feed: %s", err), fetch_wait_ms=100), exit_on_death("keda", "scaling feed"))
    try:
        serve_grpc(lambda: start_server(scaler, args.listen), args.listen, args.metrics_port, registry,
                   lambda host, port: f"surgegate keda: externalscaler.ExternalScaler on {host}:{port}")
    finally:
        stop.set()


def cmd_scrape(args: argparse.Namespace) -> None:
    from surgegate.gpu.scraper import ServerScraper
    from surgegate.streams.producer import TelemetryProducer

    settings = need_kafka(settings_of(args))
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
    web.run_app(app, host=args.host, port=args.port, print=None, access_log=None, handler_cancellation=True,
                loop=event_loop())


def register(p: Parsers) -> None:
    """The GPU side's commands and their options."""
    sc = p.command("scaler", "follow a GPU pool's scaling decisions and carry them out")
    p.broker(sc)
    sc.add_argument("--pool", required=True, help="the GPU pool to follow")
    sc.add_argument("--command", help="run this with SG_DESIRED_REPLICAS, SG_WARM_POOL, ... in its environment "
                                      "(default: log the decisions only)")
    sc.add_argument("--keep-warm-command", help="with --command: run this every window to keep idle replicas "
                                                "warm (default: none)")
    sc.add_argument("--deployment", help="set this Kubernetes Deployment's replicas through its scale subresource; "
                                         "refused if an HPA scales it (use `surgegate keda`) (default: none)")
    sc.add_argument("--warm-deployment", help="with --deployment: a standby Deployment that gets the warm pool "
                                              "(default: none)")
    sc.add_argument("--overflow-deployment", help="with --deployment: the overflow pool's Deployment, which gets the "
                                                  "overflow replicas, 0 when none are asked (default: none)")
    sc.add_argument("--namespace", default="default", help="the Deployments' namespace")
    sc.add_argument("--local", action="store_true",
                    help="run the pool's replicas as processes on this host (surgegate fake-llm, or "
                         "--replica-command), registered in Redis for edges started with --pool-replicas")
    sc.add_argument("--replica-command", help="with --local: one replica's command, with a {port} placeholder "
                                              "(default: surgegate fake-llm)")
    sc.add_argument("--cold-start", type=float, default=15.0, help="with --local: seconds until a new replica serves")
    sc.add_argument("--warm-start", type=float, default=0.8,
                    help="with --local: seconds until a replica of the warm pool serves")
    sc.add_argument("--max-replicas", type=int, default=32, help="with --local: replicas on this host at most")
    sc.add_argument("--initial-replicas", type=int, default=1, help="with --local: replicas run before any decision")
    sc.add_argument("--fake-time-scale", type=float, default=1.0,
                    help="with --local and the default replica: fake-llm's --time-scale")
    sc.add_argument("--fake-output-median", type=int, default=200,
                    help="with --local and the default replica: fake-llm's --output-median")
    sc.add_argument("--metrics-host", default="127.0.0.1", help="address the /metrics port listens on")
    sc.add_argument("--metrics-port", type=int, default=0,
                    help="serve the scaler's counts and its pool's decision on this port's /metrics (0: none)")
    sc.set_defaults(func=cmd_scaler)

    keda = p.command("keda", "serve every pool's desired replicas to KEDA (external scaler, gRPC) and Prometheus")
    p.broker(keda)
    keda.add_argument("--listen", default="0.0.0.0:9441", metavar="HOST:PORT",
                      help="the gRPC address (the ScaledObject's scalerAddress)")
    keda.add_argument("--metrics-port", type=int, default=9442,
                      help="serve the pools' gauges on this port's /metrics, on --listen's host (0: none)")
    keda.set_defaults(func=cmd_keda)

    scrape = p.command("scrape", "publish an inference server's own metrics (vLLM, SGLang, TGI) as MetricEvents")
    p.broker(scrape)
    scrape.add_argument("--url", required=True,
                        help="the server's Prometheus endpoint, e.g. http://127.0.0.1:8000/metrics")
    scrape.add_argument("--pool", required=True, help="the GPU pool this replica belongs to")
    scrape.add_argument("--worker-id", help="this replica's name in its reports (default: the URL's host-port)")
    scrape.add_argument("--flavour", choices=["vllm", "sglang", "tgi"], default="vllm",
                        help="the server's metric names")
    scrape.add_argument("--model", help="count only this model_name's series (default: every series)")
    scrape.add_argument("--max-num-seqs", type=int, default=256, help="the server's batch size, for utilisation")
    scrape.add_argument("--interval", type=float, default=1.0, help="seconds between scrapes")
    scrape.set_defaults(func=cmd_scrape)

    fake = p.command("fake-llm", "run a vLLM-like OpenAI-compatible server (one simulated replica)")
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
