"""`surgegate edge`: an aiohttp reverse proxy that admits requests with the edge gate.

A request names its tenant and tier in headers; the gate's verdict decides:

- admit: forwarded upstream (a degraded tier's ``X-Max-Tokens`` is capped), its
  outcome recorded for the control plane;
- defer (batch work): ``202 Accepted`` with a task id; the task waits in a
  bounded queue and is forwarded once batch work is admitted again;
  ``GET /_surgegate/tasks/{id}`` tells its state and result;
- reject: ``429 Too Many Requests`` with ``Retry-After``.

Headers read: ``X-Tenant`` (required), ``X-Tier`` (required unless the tenant
registry gives it), ``X-Request-Type`` (realtime or batch, default realtime),
``X-Max-Tokens`` (output tokens asked for). A malformed header is a 400 that
names it; a tenant missing from a configured registry is a 403; both are
counted. Every response carries the decision version, level and gate state
that applied (``X-Surgegate-*``).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import logging
import math
import re
import time
import uuid
from collections.abc import Mapping
from typing import cast

import aiohttp
from aiohttp import web

from surgegate.admission.actions import ADMIT, DEFER, REJECT
from surgegate.admission.gate import UnknownTier, Verdict
from surgegate.edge.gate import EdgeGate, GlobalQuota
from surgegate.schemas.telemetry import RequestType, Status
from surgegate.telemetry.scopes import NAME_PATTERN

log = logging.getLogger(__name__)

_NAME = re.compile(NAME_PATTERN)
#: Headers that belong to one connection and are not forwarded (RFC 9110 7.6.1).
HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te",
                        "trailer", "transfer-encoding", "upgrade", "host", "content-length"})
MAX_TOKENS_LIMIT = 10_000_000
#: Finished deferred tasks kept for GET /_surgegate/tasks/{id}.
TASKS_KEPT = 10_000

GATE = web.AppKey("gate", EdgeGate)


class BadRequest(Exception):
    """A request the edge cannot classify; ``status`` is 400 or 403."""

    def __init__(self, status: int, reason: str, message: str, header: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason
        self.header = header


class Task:
    """A deferred request waiting for batch capacity."""

    __slots__ = ("id", "tenant", "tier", "tokens", "method", "path", "headers", "body", "state",
                 "status", "result", "created")

    def __init__(self, tenant: str, tier: str, tokens: int, method: str, path: str,
                 headers: Mapping[str, str], body: bytes) -> None:
        self.id = uuid.uuid4().hex
        self.tenant, self.tier, self.tokens = tenant, tier, tokens
        self.method, self.path, self.headers, self.body = method, path, dict(headers), body
        self.state = "queued"
        self.status: int | None = None
        self.result: str | None = None
        self.created = time.time()

    def view(self) -> dict:
        return {"id": self.id, "state": self.state, "status": self.status, "result": self.result,
                "tenant": self.tenant, "tier": self.tier, "created": self.created}


class EdgeProxy:
    """The proxy's state: the upstream session, the deferred queue, the counters."""

    def __init__(self, gate: EdgeGate, upstream: str, *, tenants: Mapping[str, str] | None = None,
                 quota: GlobalQuota | None = None, deferred_capacity: int = 1000, timeout_s: float = 60.0,
                 drain_concurrency: int = 16) -> None:
        self.gate = gate
        self.upstream = upstream.rstrip("/")
        self.tenants = dict(tenants) if tenants is not None else None
        self.quota = quota
        self.timeout = aiohttp.ClientTimeout(total=timeout_s)
        self.queue: asyncio.Queue[Task] = asyncio.Queue(maxsize=deferred_capacity)
        self.tasks: collections.OrderedDict[str, Task] = collections.OrderedDict()
        self.bad_requests: collections.Counter[str] = collections.Counter()
        self.counts: collections.Counter[str] = collections.Counter()
        self._drain_slots = asyncio.Semaphore(drain_concurrency)
        self._running: set[asyncio.Task] = set()
        self._session: aiohttp.ClientSession | None = None
        self._drainer: asyncio.Task | None = None

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(timeout=self.timeout, auto_decompress=False)
        self._drainer = asyncio.create_task(self._drain())

    async def close(self) -> None:
        if self._drainer is not None:
            self._drainer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._drainer
        if self._session is not None:
            await self._session.close()
        if self.quota is not None:
            await self.quota.close()

    # ------------------------------------------------------------ classification

    def classify(self, request: web.Request) -> tuple[str, str, RequestType, int]:
        """(tenant, tier, request_type, max_tokens) from the headers, or :class:`BadRequest`."""
        h = request.headers
        tenant = h.get("X-Tenant")
        if tenant is None:
            raise BadRequest(400, "missing_tenant", "header X-Tenant is required", "X-Tenant")
        if not _NAME.match(tenant):
            raise BadRequest(400, "malformed_tenant",
                             "header X-Tenant must be 1-64 letters, digits, '_', '.', ':' or '-'", "X-Tenant")
        tier = h.get("X-Tier")
        if self.tenants is not None:
            if tenant not in self.tenants:
                raise BadRequest(403, "unknown_tenant", f"tenant {tenant!r} is not known at this edge", "X-Tenant")
            tier = tier or self.tenants[tenant]
            if tier != self.tenants[tenant]:
                raise BadRequest(403, "tier_not_allowed", f"tenant {tenant!r} may not use tier {tier!r}", "X-Tier")
        if tier is None:
            raise BadRequest(400, "missing_tier", "header X-Tier is required", "X-Tier")
        if tier not in self.gate.admission.tiers:
            raise BadRequest(400, "unknown_tier", f"header X-Tier: unknown tier {tier!r} (known: "
                             f"{', '.join(sorted(self.gate.admission.tiers))})", "X-Tier")
        rtype = h.get("X-Request-Type", "realtime")
        if rtype not in ("realtime", "batch"):
            raise BadRequest(400, "malformed_request_type",
                             f"header X-Request-Type must be realtime or batch, not {rtype!r}", "X-Request-Type")
        raw = h.get("X-Max-Tokens", "0")
        if not raw.isdigit() or int(raw) > MAX_TOKENS_LIMIT:
            raise BadRequest(400, "malformed_max_tokens",
                             f"header X-Max-Tokens must be an integer within [0, {MAX_TOKENS_LIMIT}]",
                             "X-Max-Tokens")
        return tenant, tier, cast(RequestType, rtype), int(raw)

    # ------------------------------------------------------------ handlers

    async def handle(self, request: web.Request) -> web.StreamResponse:
        try:
            tenant, tier, rtype, tokens = self.classify(request)
        except BadRequest as exc:
            self.bad_requests[exc.reason] += 1
            return web.json_response({"error": str(exc), "reason": exc.reason, "header": exc.header},
                                     status=exc.status)
        try:
            verdict = self.gate.admit(tenant, tier, rtype, tokens)
        except UnknownTier as exc:  # the registry named a tier the service lacks
            self.bad_requests["unknown_tier"] += 1
            return web.json_response({"error": str(exc), "reason": "unknown_tier", "header": "X-Tier"}, status=400)
        if verdict.action == ADMIT and self.quota is not None:
            verdict = await self._global(tenant, tier, rtype, verdict)
        if verdict.action == REJECT:
            self.counts["rejected"] += 1
            return self._refusal(verdict)
        body = await request.read()
        if verdict.action == DEFER:
            task = Task(tenant, tier, tokens, request.method, request.path_qs, request.headers, body)
            try:
                self.queue.put_nowait(task)
            except asyncio.QueueFull:
                self.gate.admission.tally.moved(tenant, tier, rtype, DEFER, REJECT)
                self.counts["deferred_queue_full"] += 1
                return self._refusal(Verdict(REJECT, 5.0, verdict.version, verdict.level, verdict.state,
                                             verdict.shadow, REJECT, None), "deferred queue full")
            self._keep(task)
            self.counts["deferred"] += 1
            return web.json_response({"task_id": task.id, "state": "queued", "status_url":
                                      f"/_surgegate/tasks/{task.id}"}, status=202, headers=_verdict_headers(verdict))
        self.counts["forwarded"] += 1
        status, headers, payload = await self._forward(tenant, tier, rtype, tokens, verdict, request.method,
                                                       request.path_qs, request.headers, body)
        return web.Response(status=status, headers={**headers, **_verdict_headers(verdict)}, body=payload)

    async def _global(self, tenant: str, tier: str, rtype: RequestType, verdict: Verdict) -> Verdict:
        assert self.quota is not None  # only called with a quota
        answer = await self.quota.check(tenant)
        if answer is None or answer[0]:
            return verdict
        self.gate.admission.tally.count(tenant, tier, rtype, REJECT, verdict.shadow)
        if verdict.shadow:
            return verdict
        retry = min(60.0, max(1.0, answer[1]))
        return Verdict(REJECT, retry, verdict.version, verdict.level, verdict.state, False, REJECT, None)

    def _refusal(self, verdict: Verdict, why: str = "over the admitted rate") -> web.Response:
        retry = math.ceil(verdict.retry_after_s)
        return web.json_response(
            {"error": f"too many requests: {why}", "retry_after_s": retry, "version": verdict.version,
             "level": verdict.level}, status=429, headers={"Retry-After": str(retry), **_verdict_headers(verdict)})

    async def _forward(self, tenant: str, tier: str, rtype: RequestType, tokens: int, verdict: Verdict, method: str,
                       path: str, headers: Mapping[str, str], body: bytes,
                       replayed: bool = False) -> tuple[int, dict, bytes]:
        out = {k: v for k, v in headers.items() if k.lower() not in HOP_BY_HOP}
        if verdict.max_tokens is not None:
            out["X-Max-Tokens"] = str(verdict.max_tokens)
        started = time.perf_counter()
        outcome: Status
        assert self._session is not None, "the gateway's client session starts with the app"
        try:
            async with self._session.request(method, self.upstream + path, headers=out, data=body) as resp:
                payload = await resp.read()
                status = resp.status
                reply = {k: v for k, v in resp.headers.items() if k.lower() not in HOP_BY_HOP}
                outcome = "ok" if status < 500 else "error"
                produced = _int(resp.headers.get("X-Output-Tokens"))
        except TimeoutError:
            status, reply, payload, outcome, produced = 504, {}, b'{"error": "upstream timed out"}', "timeout", 0
        except aiohttp.ClientError as exc:
            failure = f'{{"error": "upstream: {type(exc).__name__}"}}'.encode()
            status, reply, payload, outcome, produced = 502, {}, failure, "error", 0
        latency_ms = (time.perf_counter() - started) * 1000
        self.gate.record(tenant, tier, rtype, outcome, latency_ms, output_tokens=produced, replayed=replayed)
        self.counts[f"upstream_{outcome}"] += 1
        return status, reply, payload

    # ------------------------------------------------------------ deferred work

    def _keep(self, task: Task) -> None:
        self.tasks[task.id] = task
        while len(self.tasks) > TASKS_KEPT:
            self.tasks.popitem(last=False)

    async def _drain(self) -> None:
        """Forward deferred tasks in order, each once batch work is admitted again."""
        while True:
            task = await self.queue.get()
            for attempt in itertools.count():
                verdict = self.gate.admit(task.tenant, task.tier, "batch", task.tokens, requeued=True)
                if verdict.action == ADMIT:
                    break
                await asyncio.sleep(min(1.0, 0.05 * 2 ** min(attempt, 5)))
            await self._drain_slots.acquire()
            running = asyncio.create_task(self._run(task, verdict))
            self._running.add(running)  # a reference, so the task is not collected mid-flight
            running.add_done_callback(self._running.discard)

    async def _run(self, task: Task, verdict: Verdict) -> None:
        try:
            task.state = "running"
            status, _, payload = await self._forward(task.tenant, task.tier, "batch", task.tokens, verdict,
                                                     task.method, task.path, task.headers, task.body,
                                                     replayed=True)
            task.status, task.result = status, payload.decode("utf-8", "replace")
            task.state = "done"
            self.counts["deferred_done"] += 1
        finally:
            self._drain_slots.release()

    async def task_view(self, request: web.Request) -> web.Response:
        task = self.tasks.get(request.match_info["task_id"])
        if task is None:
            return web.json_response({"error": "no such task (unknown, or expired from the task list)"},
                                     status=404)
        return web.json_response(task.view())

    async def status_view(self, request: web.Request) -> web.Response:
        return web.json_response({**self.gate.status(), "proxy": {
            **self.counts, "deferred_queued": self.queue.qsize(), "bad_requests": dict(self.bad_requests),
            "global_quota": dict(self.quota.counts) if self.quota is not None else None}})


PROXY = web.AppKey("proxy", EdgeProxy)


def _int(raw: str | None) -> int:
    return int(raw) if raw is not None and raw.isdigit() else 0


def _verdict_headers(v: Verdict) -> dict[str, str]:
    return {"X-Surgegate-Version": str(v.version), "X-Surgegate-Level": str(v.level),
            "X-Surgegate-State": v.state, "X-Surgegate-Shadow": "1" if v.shadow else "0",
            "X-Surgegate-Would": v.would}


def create_edge_app(gate: EdgeGate, upstream: str, **options) -> web.Application:
    """The proxy application; the gate must be started, and its owner closes it after the app."""
    app = web.Application()
    proxy = EdgeProxy(gate, upstream, **options)
    app[GATE] = gate
    app[PROXY] = proxy

    async def lifecycle(app: web.Application):
        await proxy.start()
        yield
        await proxy.close()

    app.cleanup_ctx.append(lifecycle)
    app.router.add_get("/_surgegate/status", proxy.status_view)
    app.router.add_get("/_surgegate/tasks/{task_id}", proxy.task_view)
    app.router.add_route("*", "/{tail:.*}", proxy.handle)
    return app
