"""`surgegate edge`: the gateway application, one proxy per service
(:class:`~surgegate.edge.gateway.EdgeProxy`).

A request goes to the proxy of the service its body's ``model`` maps to; the
application also answers the edge's status, its metrics (every gate's registry
as one exposition) and deferred tasks' states.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from aiohttp import web
from prometheus_client import generate_latest

from surgegate.edge.balancer import ReplicaSource
from surgegate.edge.gate import EdgeGate
from surgegate.edge.gateway import EdgeProxy
from surgegate.edge.identity import Identifier, KeyRing
from surgegate.edge.metrics import PROMETHEUS_TEXT
from surgegate.edge.regions import SpillRouter
from surgegate.edge.relay import Relay
from surgegate.llm.openai_wire import INFERENCE_PATHS, OpenAIRequest

GATE = web.AppKey("gate", EdgeGate)
PROXY = web.AppKey("proxy", EdgeProxy)


class _Merged:
    """Several registries as one: gates of one process share one (as ``surgegate edge`` builds them), gates built
    apart have their own, and one exposition must name each metric family once."""

    def __init__(self, registries: list[Any]) -> None:
        self.registries = registries

    def collect(self) -> list[Any]:
        families: dict[str, Any] = {}
        for registry in self.registries:
            for family in registry.collect():
                known = families.get(family.name)
                if known is None:
                    families[family.name] = family
                else:
                    known.samples.extend(family.samples)
        return list(families.values())


def create_edge_app(gate: EdgeGate, upstream: str | Relay, *, models: Mapping[str, str] | None = None,
                    gates: Mapping[str, EdgeGate] | None = None, keys: Any = None,
                    tenants: Mapping[str, str] | None = None, default_tenant: str = "anonymous",
                    default_tier: str | None = None, anonymous_tier: str | None = None,
                    max_body_bytes: int = 32 * 1024 * 1024, watcher: ReplicaSource | None = None,
                    region: str = "", region_upstreams: Mapping[str, str] | None = None,
                    **options: Any) -> web.Application:
    """The gateway application; every gate must be started, and its owner closes it after the app.

    ``gate`` serves the default service. ``models`` maps a request's ``model``
    to a service, and ``gates`` holds the gates of those other services: a
    request for a model mapped elsewhere is admitted by that service's gate
    (and an unmapped model by the default one). ``upstream`` is the upstream's
    base URL, or a :class:`Relay` already made; ``keys`` a
    :class:`~surgegate.edge.identity.KeyFile`, a ``KeyRing``, plain keys and
    their identities, or None (keys are not checked). ``watcher`` keeps the
    relay's balancer on a pool's replicas while the app runs. ``region_upstreams`` maps other regions to
    their gateways' base URLs, for the spill-over decisions name (``region``: this edge's own).
    Run it with ``handler_cancellation=True`` (``web.run_app``, ``AppRunner``)
    so a client that disconnects also cancels its upstream request.
    """
    app = web.Application(client_max_size=max_body_bytes)
    relay = upstream if isinstance(upstream, Relay) else Relay(upstream)
    if isinstance(keys, Mapping):
        keys = KeyRing.of(keys)

    def proxy_for(g: EdgeGate) -> EdgeProxy:
        identifier = Identifier(g.admission.tier_order, keys=keys, tenants=tenants, default_tenant=default_tenant,
                                default_tier=default_tier, anonymous_tier=anonymous_tier)
        regions = SpillRouter(region, region_upstreams, g.admission.tier_order[0]) if region_upstreams else None
        return EdgeProxy(g, relay, identifier, regions=regions, **options)

    proxy = proxy_for(gate)
    others = {service: proxy_for(g) for service, g in (gates or {}).items() if service != gate.service}
    by_model = {model: others[service] for model, service in (models or {}).items() if service in others}
    missing = sorted({service for service in (models or {}).values()} - set(others) - {gate.service})
    if missing:
        raise ValueError(f"models: no gate for service(s) {', '.join(missing)}")
    app[GATE] = gate
    app[PROXY] = proxy
    proxies = (proxy, *others.values())

    async def lifecycle(app: web.Application):
        await relay.start()
        if watcher is not None:
            await watcher.start()
        for p in proxies:
            await p.start()
        yield
        for p in proxies:
            await p.close()
        if watcher is not None:
            await watcher.close()
        await relay.close()

    async def route(request: web.Request) -> web.StreamResponse:
        """The proxy of the service the body's ``model`` maps to (the body is read once and cached)."""
        if by_model and request.method == "POST" and request.path in INFERENCE_PATHS:
            try:
                model = OpenAIRequest.decode(await request.read()).model
            except ValueError:
                model = None  # the default proxy answers the 400, naming the field
            return await by_model.get(model or "", proxy).handle(request)
        return await proxy.handle(request)

    async def status(request: web.Request) -> web.Response:
        body = proxy.status_view()
        if others:
            body["services"] = {service: p.status_view() for service, p in others.items()}
        return web.json_response(body)

    async def task_view(request: web.Request) -> web.Response:
        for p in proxies:
            found = await p.task_view(request)
            if found.status != 404:
                return found
        return found

    registries = list({id(g.metrics.registry): g.metrics.registry for g in (gate, *(gates or {}).values())}.values())

    async def metrics(request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(_Merged(registries)), headers={"Content-Type": PROMETHEUS_TEXT})

    app.cleanup_ctx.append(lifecycle)
    app.router.add_get("/_surgegate/status", status)
    app.router.add_get("/_surgegate/metrics", metrics)
    app.router.add_get("/_surgegate/tasks/{task_id}", task_view)
    app.router.add_route("*", "/{tail:.*}", route)
    return app

