"""The edge's commands: edge (the OpenAI gateway), drain (the deferral lane), ratelimit (Envoy's service)."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from collections.abc import Callable
from typing import Any

from surgegate.children import die_with_parent
from surgegate.cli.common import Parsers, event_loop, json_option, log, need_kafka, need_redis, settings_of
from surgegate.cli.gpu import serve_grpc
from surgegate.errors import SettingsError, SurgegateError
from surgegate.settings import Settings


def load_tenants(path: str) -> tuple[dict[str, str], dict]:
    """Tenant registry and contracts from JSON ``{tenant: tier}`` or
    ``{tenant: {"tier": ..., "rate_rps": ..., "burst": ...}}`` (rate and burst: a global contract)."""
    from surgegate.edge.gate import Contract

    raw = json_option("--tenants", path, "an object of tenant -> tier or settings")
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


def check_upstream(option: str, url: str) -> str:
    """An upstream base URL with its scheme and host, or a :class:`SettingsError` naming the option."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise SettingsError(f"{option} {url!r}: must be an http:// or https:// URL with a host, e.g. "
                            f"http://127.0.0.1:8000")
    return url


def check_services(settings: Settings, services: list[str]) -> None:
    """Every service named must be configured, once any are (``SURGEGATE_SERVICES``); without a configuration
    every service runs on the defaults."""
    known = settings.service_configs()
    unknown = sorted(s for s in services if known and s not in known)
    if unknown:
        raise SettingsError(f"--service / --models: unknown service(s) {', '.join(unknown)} (SURGEGATE_SERVICES "
                            f"configures {', '.join(sorted(known))})")


def broker_or_fail_static(settings: Settings) -> Settings:
    """The settings, with the broker's group timeouts settled when one answers. A gateway must come up while the
    broker is away (rescheduled during an outage): it starts fail-static (its fallback, or the Redis mirror's
    newest decision) and goes live when the broker answers."""
    from surgegate.errors import BrokerUnavailable

    if not settings.kafka:
        raise SurgegateError("no broker: set SURGEGATE_KAFKA=host:port or pass --kafka")
    try:
        return need_kafka(settings)
    except BrokerUnavailable as exc:
        log.warning("%s; starting fail-static, live once the broker answers", exc)
        return settings


def cmd_edge(args: argparse.Namespace) -> None:
    if args.workers > 1:
        return run_edge_workers(args)
    from aiohttp import web

    from surgegate.control.config import ServiceConfig
    from surgegate.edge.app import create_edge_app
    from surgegate.edge.balancer import Balancer, PoolWatcher, ReplicaSource
    from surgegate.edge.gate import EdgeGate, GlobalQuota
    from surgegate.edge.identity import KeyFile
    from surgegate.edge.metrics import GateMetrics
    from surgegate.edge.relay import Relay
    from surgegate.streams.store import Keys

    # everything that needs no broker is checked first: a bad setting stops the edge in one line, broker or not
    if sum(map(bool, (args.upstream, args.pool_replicas, args.k8s_service))) != 1:
        raise SettingsError("give one of --upstream (one URL, or several separated by commas), --pool-replicas POOL "
                            "or --k8s-service NAMESPACE/NAME[:PORT_NAME]")
    if args.k8s_service:
        from surgegate.edge.k8s_endpoints import parse_service

        k8s_service = parse_service(args.k8s_service)
    upstreams = [check_upstream("--upstream", u.strip()) for u in (args.upstream or "").split(",") if u.strip()]
    if args.upstream and not upstreams:
        raise SettingsError("--upstream: name at least one URL")
    if args.overflow_upstream:
        check_upstream("--overflow-upstream", args.overflow_upstream)
    regions = {}
    for item in args.region_upstream or ():
        name, sep, url = item.partition("=")
        if not sep or not name.strip():
            raise SettingsError(f"--region-upstream {item!r}: expected REGION=URL")
        regions[name.strip()] = check_upstream("--region-upstream", url.strip())
    models = json_option("--models", args.models) if args.models else {}
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in models.items()):
        raise SurgegateError("--models: expected an object of model name -> service name")
    settings = settings_of(args)
    if regions and not settings.region:
        raise SettingsError("--region-upstream needs SURGEGATE_REGION: the region this edge serves")
    if settings.region in regions:
        raise SettingsError(f"--region-upstream {settings.region}=...: that is this edge's own region")
    check_services(settings, [args.service, *models.values()])
    tiers = (settings.service_configs().get(args.service) or ServiceConfig(service=args.service)).tiers
    keys = KeyFile(args.keys, tiers=tiers) if args.keys else None
    tenants, contracts = load_tenants(args.tenants) if args.tenants else (None, {})
    settings = broker_or_fail_static(settings)
    prefix = Keys.for_topic_prefix(settings.topic_prefix).prefix
    quota = None
    if contracts:
        need_redis(settings, "tenant contracts")
        quota = GlobalQuota(settings.redis_target(), contracts, prefix=prefix)
    cache = None
    if args.cache:
        from surgegate.edge.cache import ResponseCache

        need_redis(settings, "--cache")
        try:
            cache = ResponseCache(settings.redis_target(), prefix=prefix, ttl_s=args.cache_ttl,
                                  max_entries=args.cache_max_entries, max_entry_bytes=args.cache_max_entry_bytes,
                                  shared_scope=args.cache_shared_scope)
        except ValueError as exc:
            raise SurgegateError(f"--cache-*: {exc}") from None
    lane = None
    if (args.deferral or ("lane" if settings.redis else "memory")) == "lane":
        from surgegate.edge.lane import DeferralLane

        need_redis(settings, "--deferral lane (task states)")
        lane = DeferralLane(settings, args.edge_id)
    watcher: ReplicaSource | None = None
    target: Any = upstreams[0] if len(upstreams) == 1 else Balancer(upstreams)
    if args.pool_replicas:
        need_redis(settings, "--pool-replicas (the pool's replica registry)")
        from surgegate.streams.redis_client import async_client

        target = Balancer()
        watcher = PoolWatcher(target, async_client(settings.redis_target(), timeout_s=1.0),
                              Keys.for_topic_prefix(settings.topic_prefix).pool_replicas(args.pool_replicas))
    if args.k8s_service:
        from surgegate.edge.k8s_endpoints import EndpointSliceWatcher

        target = Balancer()
        namespace, name, port = k8s_service
        watcher = EndpointSliceWatcher(target, namespace, name, port_name=port)
    try:
        relay = Relay(target, upstream_key=settings.upstream_key, connect_timeout_s=args.connect_timeout,
                      first_byte_s=args.timeout, idle_s=args.idle_timeout, connections=args.connections)
    except ValueError as exc:
        raise SettingsError(f"--connect-timeout / --timeout / --idle-timeout: {exc}") from None
    metrics = GateMetrics()
    overflow = bool(args.overflow_upstream)
    demand = args.share_from_demand and bool(settings.redis)
    gate = EdgeGate(settings, args.service, edge_id=args.edge_id, share=args.share, shadow=args.shadow,
                    report=args.report, metrics=metrics, follow_scaling=overflow, share_from_demand=demand).start()
    gates = {service: EdgeGate(settings, service, edge_id=args.edge_id, share=args.share, shadow=args.shadow,
                               report=args.report, metrics=metrics, follow_scaling=overflow,
                               share_from_demand=demand).start()
             for service in sorted(set(models.values()) - {args.service})}
    try:
        app = create_edge_app(gate, relay, models=models, gates=gates, tenants=tenants, keys=keys, quota=quota,
                              default_tenant=args.default_tenant, default_tier=args.default_tier,
                              anonymous_tier=args.anonymous_tier, deferred_capacity=args.deferred_capacity,
                              overflow=args.overflow_upstream, cache=cache, lane=lane, deadline_s=args.deadline,
                              api_token=settings.api_token, max_body_bytes=args.max_body_bytes, watcher=watcher,
                              region=settings.region, region_upstreams=regions)
        if keys is not None:
            app.cleanup_ctx.append(_watch_keys(keys))
        where = args.upstream or (f"the replicas of pool {args.pool_replicas}" if args.pool_replicas
                                  else f"the ready endpoints of Service {args.k8s_service}")
        print(f"surgegate edge {args.edge_id}: service {args.service} on http://{args.host}:{args.port} -> "
              f"{where}{' (shadow)' if args.shadow else ''}", flush=True)
        # a client that goes away cancels its handler, and with it the upstream request; several processes may
        # share the port (--workers), the kernel spreading connections among them
        web.run_app(app, host=args.host, port=args.port, print=None, access_log=None, handler_cancellation=True,
                    reuse_port=args.reuse_port, loop=event_loop())
    finally:
        for g in (gate, *gates.values()):
            g.close()


#: How often a keys file is checked for changes on disk.
KEYS_CHECK_S = 2.0


def _watch_keys(keys: Any) -> Callable[[Any], Any]:
    """Reload the keys file on SIGHUP, and when it changes on disk."""
    async def watch(app: Any) -> Any:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGHUP, keys.reload)

        async def poll() -> None:
            while True:
                await asyncio.sleep(KEYS_CHECK_S)
                keys.check()

        task = asyncio.create_task(poll())
        yield
        task.cancel()
        loop.remove_signal_handler(signal.SIGHUP)
    return watch


def run_edge_workers(args: argparse.Namespace) -> None:
    """``--workers N``: N edge processes on one port (SO_REUSEPORT), each ``--share / N`` of this edge's traffic
    under its own id (``EDGE_ID-1`` ...); one that dies ends the rest, so a supervisor restarts the whole edge."""
    import subprocess
    import time

    argv = [a for a in sys.argv[1:]]
    children = []
    for i in range(1, args.workers + 1):
        child = [*_without(argv, ("--workers", "--edge-id", "--share")), "--workers", "1", "--reuse-port",
                 "--edge-id", f"{args.edge_id}-{i}", "--share", repr(args.share / args.workers)]
        children.append(subprocess.Popen([sys.executable, "-m", "surgegate.cli", *child], preexec_fn=die_with_parent))
    print(f"surgegate edge {args.edge_id}: {args.workers} worker processes on port {args.port}", flush=True)
    try:
        while all(c.poll() is None for c in children):
            time.sleep(0.5)
        failed = next(c for c in children if c.poll() is not None)
        raise SurgegateError(f"an edge worker process ended (exit {failed.returncode}); stopping the others")
    finally:
        for c in children:
            if c.poll() is None:
                c.send_signal(signal.SIGTERM)
        for c in children:
            try:
                c.wait(10)
            except subprocess.TimeoutExpired:
                c.kill()


def _without(argv: list[str], options: tuple[str, ...]) -> list[str]:
    """``argv`` without the given options and their values (``--opt v`` or ``--opt=v``)."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
            continue
        if arg in options:
            skip = True
            continue
        if any(arg.startswith(o + "=") for o in options):
            continue
        out.append(arg)
    return out


def cmd_ratelimit(args: argparse.Namespace) -> None:
    from surgegate.edge.gate import EdgeGate
    from surgegate.edge.metrics import GateMetrics
    from surgegate.edge.ratelimit import RateLimitService, start_server

    settings = need_kafka(settings_of(args))
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
    from prometheus_client import CollectorRegistry, start_http_server

    from surgegate.edge.drain import Drainer, DrainerCollector

    settings = need_kafka(settings_of(args))
    need_redis(settings, "surgegate drain (task states)")
    if args.concurrency < 1 or args.max_attempts < 1 or args.hold < 1:
        raise SettingsError("--concurrency, --max-attempts and --hold must be at least 1")
    drainer = Drainer(settings, args.service, args.upstream, drainer_id=args.drainer_id, share=args.share,
                      concurrency=args.concurrency, max_attempts=args.max_attempts, hold=args.hold,
                      timeout_s=args.timeout, upstream_key=settings.upstream_key or None)
    if args.metrics_port:
        registry = CollectorRegistry()
        registry.register(DrainerCollector(drainer))
        start_http_server(args.metrics_port, addr=args.metrics_host, registry=registry)
    print(f"surgegate drain {args.drainer_id}: service {args.service} -> {args.upstream}"
          f"{f', /metrics on port {args.metrics_port}' if args.metrics_port else ''}", flush=True)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, drainer.stop)
        await drainer.run()

    asyncio.run(main())


def register(p: Parsers) -> None:
    """The edge's commands and their options."""
    edge = p.command("edge", "run an admitting reverse proxy in front of an LLM service")
    p.broker(edge)
    p.redis(edge, "decision bootstrap and tenant contracts")
    edge.add_argument("--upstream", help="the service's base URL, e.g. http://127.0.0.1:9000, or several separated "
                                         "by commas (each call to the replica with the fewest requests outstanding); "
                                         "or --pool-replicas (default: none)")
    edge.add_argument("--pool-replicas", metavar="POOL",
                      help="send to the serving replicas of this pool, as its local pool lists them in Redis "
                           "(surgegate scaler --local) (default: none)")
    edge.add_argument("--k8s-service", metavar="NAMESPACE/NAME[:PORT_NAME]",
                      help="send to this Kubernetes Service's ready endpoints, read from its EndpointSlices every "
                           "second (in-cluster credentials, else the kubeconfig) (default: none)")
    edge.add_argument("--region-upstream", action="append", metavar="REGION=URL",
                      help="another region's gateway, repeatable: the share of lower tiers the throttle decision "
                           "spills to REGION goes there, with the caller's key (needs SURGEGATE_REGION) "
                           "(default: none)")
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
    edge.add_argument("--share", type=float, default=1.0,
                      help="this edge's share of the service's traffic: the fallback when shares follow demand")
    edge.add_argument("--share-from-demand", action=argparse.BooleanOptionalAction, default=True,
                      help="with Redis, take the part of the service's rates this edge's demand is of all edges'")
    edge.add_argument("--shadow", action="store_true", help="admit everything; record what would be refused")
    edge.add_argument("--keys", metavar="FILE",
                      help="JSON file: API key (or sha256:<hex digest> of it) -> {tenant, tier, tokens_per_minute}; "
                           "with keys, a call without a valid key is refused (401); reloaded on SIGHUP or when the "
                           "file changes (default: none, keys are not checked)")
    edge.add_argument("--anonymous-tier", metavar="TIER",
                      help="with --keys: serve calls without a key on this tier, as --default-tenant (default: none, "
                           "such calls are refused)")
    edge.add_argument("--default-tenant", default="anonymous", help="tenant of a request that names none")
    edge.add_argument("--default-tier", help="tier of a request that names none (default: the service's lowest)")
    edge.add_argument("--tenants", metavar="FILE",
                      help="JSON file: tenant -> tier, or tenant -> {tier, rate_rps, burst} (default: none, "
                           "tenant and tier from headers)")
    edge.add_argument("--report", choices=["summaries", "events", "off"], default="summaries",
                      help="telemetry this edge sends")
    edge.add_argument("--deferred-capacity", type=int, default=1000, help="deferred batch tasks held at most")
    edge.add_argument("--timeout", type=float, default=600.0,
                      help="seconds the upstream may take to begin its answer (a non-streamed answer begins when "
                           "it is complete); nothing bounds the whole answer")
    edge.add_argument("--idle-timeout", type=float, default=60.0,
                      help="seconds a stream may go silent between two chunks; then it ends with an error event")
    edge.add_argument("--connect-timeout", type=float, default=1.0,
                      help="seconds to wait for a free upstream connection before answering 503 (overload)")
    edge.add_argument("--max-body-bytes", type=int, default=32 * 1024 * 1024,
                      help="a larger request body is refused (413)")
    edge.add_argument("--workers", type=int, default=1,
                      help="edge processes sharing --port (SO_REUSEPORT), each with its part of --share")
    edge.add_argument("--reuse-port", action="store_true", help="let other processes listen on --port too "
                                                                "(what --workers sets for its processes)")
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

    dr = p.command("drain", "run deferred batch tasks from the deferral lane at the batch rate the decision allows")
    p.broker(dr)
    p.redis(dr, "task states")
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
    dr.add_argument("--metrics-host", default="127.0.0.1",
                    help="address the /metrics port listens on (0.0.0.0: every interface, for a scraper elsewhere)")
    dr.set_defaults(func=cmd_drain)

    rl = p.command("ratelimit", "answer Envoy's rate limit service calls (v3 ShouldRateLimit) with the edge gate")
    p.broker(rl)
    p.redis(rl, "decision bootstrap")
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

