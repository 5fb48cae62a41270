"""The status API: what surgegate sees, predicts and decides, and operator overrides.

Stateless: everything is read from the Redis mirror, and the decision stream
from the decision topics, so several instances can run behind a load balancer.
Built by :func:`create_api`; run by ``surgegate api``.

Errors are JSON: an unknown scope is a 404, a malformed parameter a 400 that
names it, a missing or wrong bearer token a 401 without detail, and Redis down
makes ``/readyz`` a 503 while the process stays up.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import time
import urllib.parse
import uuid
from collections.abc import Callable, Mapping
from typing import Any, cast

import msgspec
import redis
from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest

from surgegate.api import pages, regions
from surgegate.api.feeds import DecisionStream, OverrideBook
from surgegate.api.inputs import (
    BODY_TIMEOUT_S,
    NAME,
    TASK_ID,
    ApiError,
    bounded,
    field_of,
    redis_down,
    text,
)
from surgegate.api.metrics import Families, Snapshot
from surgegate.api.readiness import Readiness
from surgegate.control.history import LOOKBACK_MS, HistoryRecord, explain_at
from surgegate.edge.metrics import PROMETHEUS_TEXT
from surgegate.errors import BrokerError
from surgegate.gpu.pools import PoolCollector
from surgegate.llm.openai_wire import MAX_JSON_DEPTH, json_too_deep
from surgegate.schemas.aggregates import TrafficStats, WindowStats
from surgegate.schemas.decisions import Override, OverrideRequest, ScalingDecision, ThrottleDecision
from surgegate.settings import Settings
from surgegate.streams.history import read_between
from surgegate.streams.producer import KafkaSender
from surgegate.streams.redis_client import async_client
from surgegate.streams.store import Keys
from surgegate.streams.tasks import TaskBook
from surgegate.streams.topics import Topics
from surgegate.telemetry.scopes import parse_scope, service_scope, tier_scope

log = logging.getLogger(__name__)

REDIS_TIMEOUT_S = 0.5
MAX_LAST = 360
#: /v1/history/{service}/recent looks back at most this many minutes
MAX_RECENT_MINUTES = 1440
#: A comment line on the decision stream this often keeps idle proxies from closing it.
SSE_KEEPALIVE_S = 15.0


class Api:
    """Handlers over the Redis mirror, the decision stream and the overrides topic."""

    def __init__(self, settings: Settings, *, stream: bool = True) -> None:
        self.settings = settings
        self.keys = Keys.for_topic_prefix(settings.topic_prefix)
        self.topics = Topics(settings.topic_prefix)
        self.redis = async_client(settings.redis_target(), timeout_s=REDIS_TIMEOUT_S)
        self.stream = DecisionStream(settings) if stream else None
        self.sender = KafkaSender(settings, "surgegate-api")
        self.overrides = OverrideBook(settings)
        self.readiness = Readiness(settings, self.redis, self.keys, self.topics)
        self.tasks = TaskBook(settings.redis_target(), prefix=self.keys.prefix, timeout_s=REDIS_TIMEOUT_S)
        self.started = time.time()
        self.requests: dict[str, int] = {}

    async def start(self) -> None:
        if self.stream is not None:
            self.stream.start(asyncio.get_running_loop())
        if self.settings.kafka:
            self.overrides.start()
        try:  # an API that starts without its mirror says so at once, not at its first read
            await self.redis.ping()
        except (redis.RedisError, OSError) as exc:
            where = urllib.parse.urlsplit(self.settings.redis)  # host and port only: a URL may hold a password
            log.warning("api: Redis at %s:%s does not answer (%s): reads answer 503 and /readyz is not ready until "
                        "it does", where.hostname, where.port, exc)

    async def close(self) -> None:
        if self.stream is not None:
            self.stream.stop()
        self.overrides.stop()
        await self.redis.aclose()
        await self.tasks.close()
        await asyncio.get_running_loop().run_in_executor(None, self.sender.flush, 5.0)

    # ------------------------------------------------------------ helpers

    async def _get(self, key: str) -> bytes | None:
        try:
            return cast(bytes | None, await self.redis.get(key))  # the client returns bytes (no decoding)
        except (redis.RedisError, OSError):
            raise redis_down() from None

    def _scope(self, request: web.Request) -> tuple[str, dict[str, str]]:
        scope = request.match_info["scope"]
        try:
            return scope, parse_scope(scope)
        except ValueError as exc:
            raise ApiError(400, f"scope: {exc}", "scope") from None

    async def _known(self, scope: str) -> None:
        try:
            known = await self.redis.sismember(self.keys.scopes, scope)
        except (redis.RedisError, OSError):
            raise redis_down() from None
        if not known:
            raise ApiError(404, f"unknown scope {scope!r}", "scope")

    def _service(self, labels: dict[str, str], scope: str) -> str:
        if set(labels) != {"service"}:
            raise ApiError(400, f"scope {scope!r}: thresholds are per service (service=NAME), decisions per service "
                           "or pool (pool=NAME)", "scope")
        return labels["service"]

    @staticmethod
    def _raw(payload: bytes) -> web.Response:
        return web.Response(body=payload, content_type="application/json")

    # ------------------------------------------------------------ health

    async def healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "alive", "uptime_s": round(time.time() - self.started, 1)})

    async def readyz(self, request: web.Request) -> web.Response:
        checks = await self.readiness.checks()
        ready = all(c["ok"] for c in checks.values())
        return web.json_response({"ready": ready, "checks": checks}, status=200 if ready else 503)

    # ------------------------------------------------------------ reads

    async def scopes(self, request: web.Request) -> web.Response:
        try:
            scopes = sorted(text(s) for s in await self.redis.smembers(self.keys.scopes))
        except (redis.RedisError, OSError):
            raise redis_down() from None
        return web.json_response({"scopes": scopes})

    async def windows(self, request: web.Request) -> web.Response:
        scope, _ = self._scope(request)
        last = bounded(request.query.get("last", "30"), 1, MAX_LAST)
        if last is None:
            raise ApiError(400, f"last must be an integer within [1, {MAX_LAST}]", "last")
        await self._known(scope)
        try:
            rows = cast(list[bytes], await self.redis.zrange(self.keys.window_history(scope), -last, -1))
        except (redis.RedisError, OSError):
            raise redis_down() from None
        return self._raw(b'{"scope":' + json.dumps(scope).encode() + b',"windows":[' + b",".join(rows) + b"]}")

    async def forecast(self, request: web.Request) -> web.Response:
        scope, _ = self._scope(request)
        await self._known(scope)
        payload = await self._get(self.keys.latest_forecast(scope))
        if payload is None:
            raise ApiError(404, f"no forecast for scope {scope!r} yet", "scope")
        return self._raw(payload)

    async def threshold(self, request: web.Request) -> web.Response:
        return await self._per_service(request, self.keys.latest_threshold, "threshold")

    async def decision(self, request: web.Request) -> web.Response:
        scope, labels = self._scope(request)
        if set(labels) == {"pool"}:  # a pool's newest scaling decision, from the decision stream
            if self.stream is None:
                raise ApiError(503, "scaling decisions come from the decision stream, off in this instance")
            found = self.stream.pools.get(labels["pool"])
            if found is None:
                raise ApiError(404, f"unknown scope {scope!r}: no scaling decision", "scope")
            return self._raw(msgspec.json.encode(found))
        return await self._per_service(request, self.keys.latest_decision, "decision")

    async def _per_service(self, request: web.Request, key: Callable[[str], str], what: str) -> web.Response:
        """A service's newest record of one kind, for a ``service=NAME`` scope."""
        scope, labels = self._scope(request)
        payload = await self._get(key(self._service(labels, scope)))
        if payload is None:
            raise ApiError(404, f"unknown scope {scope!r}: no {what}", "scope")
        return self._raw(payload)

    async def history(self, request: web.Request) -> web.Response:
        """What was decided for a service at ``at`` (epoch ms) and why, from the durable decision history;
        with ``tenant`` and ``tier``, what it meant for them."""
        service = request.match_info["service"]
        if not NAME.fullmatch(service):
            raise ApiError(400, "service must be a service name", "service")
        at = bounded(request.query.get("at", ""), 0, 2**53)
        if at is None:
            raise ApiError(400, "at must be epoch milliseconds", "at")
        who = {name: request.query.get(name) for name in ("tenant", "tier")}
        for name, given in who.items():
            if given is not None and not NAME.fullmatch(given):
                raise ApiError(400, f"{name} must be a name", name)
        config = self.settings.service_configs().get(service)
        keys = frozenset({service.encode(), (config.pool if config is not None else "").encode()})
        try:
            values = await asyncio.get_running_loop().run_in_executor(
                None, read_between, self.settings, self.topics.history, at - LOOKBACK_MS, at, keys)
        except BrokerError as exc:
            raise ApiError(503, f"the decision history could not be read: {exc}", "at") from None
        records = []
        for value in values:
            with contextlib.suppress(msgspec.DecodeError):  # a record of another kind or version: not ours
                records.append(_HISTORY.decode(value))
        answer = explain_at([r for r in records if getattr(r, "service", service) == service
                             or isinstance(r, ScalingDecision)], at_ms=at, tenant=who["tenant"], tier=who["tier"])
        if answer["throttle"] is None:
            raise ApiError(404, f"no decision for {service!r} in the {LOOKBACK_MS // 60_000} minutes before {at}",
                           "at")
        return web.json_response({"service": service, **answer})

    async def recent(self, request: web.Request) -> web.Response:
        """Every throttle decision of a service, and scaling decision of its pool, issued in the last ``minutes``
        (from the durable decision history), oldest first: what a dashboard shows when it opens."""
        service = request.match_info["service"]
        if not NAME.fullmatch(service):
            raise ApiError(400, "service must be a service name", "service")
        minutes = bounded(request.query.get("minutes", "15"), 1, MAX_RECENT_MINUTES)
        if minutes is None:
            raise ApiError(400, f"minutes must be an integer within [1, {MAX_RECENT_MINUTES}]", "minutes")
        config = self.settings.service_configs().get(service)
        pool = config.pool if config is not None else service
        now = int(time.time() * 1000)
        try:
            values = await asyncio.get_running_loop().run_in_executor(
                None, read_between, self.settings, self.topics.history, now - minutes * 60_000, now,
                frozenset({service.encode(), pool.encode()}))
        except BrokerError as exc:
            raise ApiError(503, f"the decision history could not be read: {exc}") from None
        throttle, scaling = [], []
        for value in values:
            with contextlib.suppress(msgspec.DecodeError):  # a record of another kind or version: not ours
                record = _HISTORY.decode(value)
                if isinstance(record, ThrottleDecision) and record.service == service:
                    throttle.append(record)
                elif isinstance(record, ScalingDecision) and record.pool == pool:
                    scaling.append(record)
        return self._raw(msgspec.json.encode({"service": service, "pool": pool, "throttle": throttle,
                                              "scaling": scaling}))

    async def task(self, request: web.Request) -> web.Response:
        """A deferred task's state, from the task states in Redis (the drainers and edges write them), to the
        holder of the API token only: a task's result is its tenant's answer (tenants read theirs at the edge, with
        their key). Without the token it is not there (404), as on the edges."""
        task_id = request.match_info["task_id"]
        if not TASK_ID.fullmatch(task_id):
            raise ApiError(400, "task_id must be 32 lowercase hex digits", "task_id")
        if not self._holds_token(request):
            raise ApiError(404, f"no task {task_id} (unknown, expired, or the API token is missing)", "task_id")
        try:
            view = await self.tasks.get(task_id)
        except (redis.RedisError, OSError):
            raise redis_down() from None
        if view is None:
            raise ApiError(404, f"no task {task_id} (unknown, or its state expired)", "task_id")
        return web.Response(body=msgspec.json.encode(view), content_type="application/json")

    async def services(self, request: web.Request) -> web.Response:
        """The configured services: pool, tiers and SLOs (what charts draw their target lines from)."""
        return web.json_response({"services": {
            name: {"pool": c.pool, "tiers": list(c.tiers), "slo_p99_ms": c.slo_p99_ms, "ttft_slo_ms": c.ttft_slo_ms,
                   "mode": c.mode}
            for name, c in sorted(self.settings.service_configs().items())}})

    async def decisions(self, request: web.Request) -> web.Response:
        if request.query:  # a filter it does not have must not read as "no decisions match"
            name = next(iter(request.query))
            raise ApiError(400, f"unknown query parameter {name[:40]!r}: /v1/decisions lists every service's newest "
                                "throttle decision; one scope's is /v1/decisions/service=NAME or "
                                "/v1/decisions/pool=NAME", name[:40])
        try:
            out = await self._latest_decisions()
        except (redis.RedisError, OSError):
            raise redis_down() from None
        return self._raw(b'{"decisions":[' + b",".join(sorted(out)) + b"]}")

    async def _latest_decisions(self) -> list[bytes]:
        """Every service's newest throttle decision, as mirrored (Redis errors propagate)."""
        keys = [key async for key in self.redis.scan_iter(match=self.keys.latest_decision("*"), count=500)]
        return [cast(bytes, p) for p in (await self.redis.mget(keys) if keys else []) if p is not None]

    async def decision_stream(self, request: web.Request) -> web.StreamResponse:
        if self.stream is None:
            raise ApiError(503, "the decision stream is off in this instance")
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await response.prepare(request)
        queue = self.stream.subscribe()
        try:
            await response.write(b": connected\n\n")
            while True:
                try:
                    kind, raw = await asyncio.wait_for(queue.get(), SSE_KEEPALIVE_S)
                except TimeoutError:
                    await response.write(b": keep-alive\n\n")
                    continue
                await response.write(b"event: " + kind.encode() + b"\ndata: " + raw + b"\n\n")
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            self.stream.unsubscribe(queue)
        return response

    # ------------------------------------------------------------ overrides

    def _holds_token(self, request: web.Request) -> bool:
        token = self.settings.api_token
        given = request.headers.get("Authorization", "")
        return bool(token) and given.startswith("Bearer ") and \
            hmac.compare_digest(given[len("Bearer "):].encode("utf-8", "surrogateescape"), token.encode())

    def _authorised(self, request: web.Request) -> str:
        if not self._holds_token(request):
            raise ApiError(401, "unauthorised", **{"WWW-Authenticate": "Bearer"})
        return "operator"

    async def create_override(self, request: web.Request) -> web.Response:
        author = self._authorised(request)
        try:
            async with asyncio.timeout(BODY_TIMEOUT_S):  # a body sent slowly does not hold the connection
                raw = await request.read()
        except TimeoutError:
            raise ApiError(408, f"the request body did not arrive within {BODY_TIMEOUT_S:g} s", "body") from None
        if json_too_deep(raw):  # a bound of our own, not the interpreter's recursion limit
            raise ApiError(400, f"the body nests its JSON deeper than {MAX_JSON_DEPTH} levels", "body")
        try:
            body = msgspec.json.decode(raw, type=dict[str, Any])
        except msgspec.DecodeError as exc:
            raise ApiError(400, f"the body must be a JSON object: {exc}", "body") from None
        except RecursionError:  # absurdly nested values
            raise ApiError(400, "the body must be a JSON object of the override's fields", "body") from None
        if isinstance(body.get("level"), float) and body["level"].is_integer():
            body["level"] = int(body["level"])  # JSON does not tell 1.0 from 1 (nor does the published schema)
        try:  # the wire type's own bounds, those of the Override the worker decodes: nothing checked by hand
            wanted = msgspec.convert(body, OverrideRequest)
        except msgspec.ValidationError as exc:
            raise ApiError(400, f"override: {exc}", field_of(exc)) from None
        if wanted.level is None and wanted.limit_rps is None:
            raise ApiError(400, "give level (0-4) and/or limit_rps", "level")
        now = int(time.time() * 1000)
        override = Override(id=uuid.uuid4().hex[:16], service=wanted.service, created_at=now,
                            expires_at=now + int(wanted.expires_in_s * 1000), author=wanted.author or author,
                            reason=wanted.reason, level=wanted.level, limit_rps=wanted.limit_rps)
        await self._publish_override(override)
        return web.json_response(msgspec.to_builtins(override), status=201)

    async def list_overrides(self, request: web.Request) -> web.Response:
        """The overrides in force, from the override log."""
        active = self.overrides.active(int(time.time() * 1000))
        return web.json_response({"overrides": msgspec.to_builtins(active)})

    async def cancel_override(self, request: web.Request) -> web.Response:
        author = self._authorised(request)
        oid = request.match_info["override_id"]
        if not NAME.fullmatch(oid):
            raise ApiError(400, "override id is malformed", "override_id")
        now = int(time.time() * 1000)
        original = self.overrides.get(oid, now)  # the override log's own state: no Redis needed
        if original is None:
            try:  # an override the log follower has not read yet
                saved = await self.redis.hget(self.keys.prefix + "overrides", oid)
            except (redis.RedisError, OSError):
                saved = None
            if saved is None:
                raise ApiError(404, f"no override {oid!r} in force", "override_id")
            original = msgspec.json.decode(saved, type=Override)
        cancel = Override(id=oid, service=original.service, created_at=now, expires_at=max(now, original.expires_at),
                          author=author, reason=f"released through the API (was: {original.reason})"[:1000],
                          cancel=True)
        await self._publish_override(cancel)
        return web.json_response(msgspec.to_builtins(cancel))

    async def _publish_override(self, override: Override) -> None:
        payload = msgspec.json.encode(override)
        loop = asyncio.get_running_loop()

        def send() -> None:
            self.sender.send(self.topics.overrides, payload, key=override.service.encode())
            self.sender.flush(10.0)

        try:
            await loop.run_in_executor(None, send)
        except Exception as exc:  # DeliveryFailed, ProducerBufferFull: the pin did not reach the log
            raise ApiError(503, f"the override could not be written to the audit log: {type(exc).__name__}") \
                from None
        self.overrides.apply(override)
        with contextlib.suppress(redis.RedisError, OSError):  # the topic is the record; Redis is a lookup
            if override.cancel:
                await self.redis.hdel(self.keys.prefix + "overrides", override.id)
            else:
                await self.redis.hset(self.keys.prefix + "overrides", override.id, payload)

    # ------------------------------------------------------------ metrics and docs

    async def metrics(self, request: web.Request) -> web.Response:
        registry = CollectorRegistry()
        registry.register(Families(await self._snapshot()))
        if self.stream is not None:
            registry.register(PoolCollector(self.stream.pools))
        return web.Response(body=generate_latest(registry), headers={"Content-Type": PROMETHEUS_TEXT})

    async def _snapshot(self) -> Snapshot:
        """What /metrics reports, read now (Redis down: only that it is)."""
        stream_records = self.stream.records if self.stream is not None else None
        try:
            counters = await self.redis.hgetall(self.keys.counters)
            scopes = await self.redis.scard(self.keys.scopes)
            decisions = {d.service: d for d in (msgspec.json.decode(p, type=ThrottleDecision)
                                                for p in await self._latest_decisions())}
            traffic = await self._newest_traffic(decisions)
        except (redis.RedisError, OSError):
            return Snapshot(redis_up=False, stream_records=stream_records)
        worker = await self.readiness.check_worker()
        now = time.time()
        return Snapshot(redis_up=True, counters={text(k): int(v) for k, v in counters.items()}, scopes=scopes,
                        window_lag_s=worker.get("newest_window_age_s"), decisions=decisions,
                        decision_age_s={s: now - d.issued_at / 1000 for s, d in decisions.items()},
                        traffic=traffic, window_s=self.settings.window_s, stream_records=stream_records)

    async def _newest_traffic(self, decisions: Mapping[str, ThrottleDecision]
                              ) -> dict[str, dict[str | None, TrafficStats]]:
        """The newest mirrored window of each decided service and of each of its tiers."""
        wanted = [(service, tier) for service, d in sorted(decisions.items()) for tier in (None, *sorted(d.tiers))]
        keys = [self.keys.latest_window(service_scope(s) if t is None else tier_scope(s, t)) for s, t in wanted]
        out: dict[str, dict[str | None, TrafficStats]] = {}
        for (service, tier), raw in zip(wanted, await self.redis.mget(keys) if keys else []):
            try:
                window = msgspec.json.decode(cast(bytes, raw), type=WindowStats) if raw is not None else None
            except msgspec.DecodeError:
                continue
            if window is not None and window.traffic is not None:
                out.setdefault(service, {})[tier] = window.traffic
        return out


_HISTORY = msgspec.json.Decoder(HistoryRecord)
API = web.AppKey("api", Api)


def create_api(settings: Settings, *, stream: bool = True) -> web.Application:
    """The API application for ``settings`` (Redis URL required; the broker for the stream and overrides)."""
    if not settings.redis:
        raise ValueError("the API reads the Redis mirror: set SURGEGATE_REDIS")
    api = Api(settings, stream=stream)
    app = web.Application()
    app[API] = api

    async def lifecycle(app: web.Application):
        await api.start()
        yield
        await api.close()

    app.cleanup_ctx.append(lifecycle)
    r = app.router
    r.add_get("/healthz", api.healthz)
    r.add_get("/readyz", api.readyz)
    r.add_get("/v1/scopes", api.scopes)
    r.add_get("/v1/windows/{scope}", api.windows)
    r.add_get("/v1/forecasts/{scope}", api.forecast)
    r.add_get("/v1/thresholds/{scope}", api.threshold)
    r.add_get("/v1/decisions", api.decisions)
    r.add_get("/v1/decisions/stream", api.decision_stream)
    r.add_get("/v1/decisions/{scope}", api.decision)
    r.add_get("/v1/history/{service}", api.history)
    r.add_get("/v1/history/{service}/recent", api.recent)
    r.add_get("/v1/services", api.services)
    r.add_get("/v1/regions/{service}", regions.regions)
    r.add_get("/v1/tasks/{task_id}", api.task)
    r.add_get("/v1/overrides", api.list_overrides)
    r.add_post("/v1/overrides", api.create_override)
    r.add_delete("/v1/overrides/{override_id}", api.cancel_override)
    r.add_get("/metrics", api.metrics)
    r.add_get("/openapi.json", pages.openapi)
    r.add_get("/", pages.dashboard)
    r.add_get("/static/plotly.min.js", pages.plotly_js)
    return app
