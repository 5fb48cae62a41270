"""`surgegate edge`: an OpenAI-compatible gateway that admits every request with the edge gate.

It fronts an OpenAI-compatible server (vLLM, SGLang, TGI, or ``surgegate
fake-llm``) and is invisible to clients except when it must say no.

- ``POST /v1/chat/completions``, ``/v1/completions`` and ``/v1/embeddings``:
  the JSON body is read once for ``model``, ``stream``, ``max_tokens`` /
  ``max_completion_tokens``, ``n`` and ``stream_options``; a malformed field
  is a 400 naming it. A degraded level caps the output budget *in the body*
  the upstream receives. Streamed responses (SSE) are relayed chunk by chunk
  as they arrive; a client that goes away cancels the upstream request.
  Everything else (``GET /v1/models`` included) is admitted and passed
  through unchanged.
- Identity: the API key (``Authorization: Bearer ...``) looked up in the keys
  registry gives tenant and tier; without a key, the ``X-Tenant`` / ``X-Tier``
  headers; without either, the default tenant on the default tier.
  ``X-Request-Type: batch`` marks deferrable work.
- The verdict: admit (forwarded); defer (batch work: ``202 Accepted`` with a
  task id, run once batch work is admitted again, ``GET /_surgegate/tasks/{id}``);
  reject: ``429`` in OpenAI's error shape (``code: rate_limit_exceeded``) with
  ``Retry-After``, ``retry-after-ms`` and ``x-ratelimit-*-requests`` headers,
  so the official clients back off by themselves. At level 3 and above the
  message says the service is busy.
- Outcomes: upstream 429, 503 and other 5xx count as errors (overload), not
  successes; tokens come from the response's ``usage`` (or the streamed usage
  chunk, or counted chunks), the input estimate otherwise.

Every response carries the decision version, level and gate state that
applied (``X-Surgegate-*``).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import itertools
import logging
import math
import re
import time
import uuid
from collections.abc import Mapping
from typing import Any, cast

import aiohttp
import msgspec
import redis
from aiohttp import web
from prometheus_client import generate_latest

from surgegate.admission.actions import ADMIT, DEFER, REJECT
from surgegate.admission.gate import UnknownTier, Verdict
from surgegate.admission.tokens import TokenBudgets
from surgegate.edge.cache import CachedAnswer, ResponseCache
from surgegate.edge.gate import EdgeGate, GlobalQuota
from surgegate.edge.lane import DeferralLane, LaneUnavailable, kept_headers, new_task_id
from surgegate.edge.metrics import PROMETHEUS_TEXT
from surgegate.llm.caching import CACHE_ONLY_LEVEL, OPT_IN, OPT_OUT, cacheable
from surgegate.llm.openai_wire import (
    MAX_TOKENS_LIMIT,
    OpenAIRequest,
    estimate_prompt_tokens,
    format_duration,
    openai_error,
    with_token_cap,
)
from surgegate.schemas.deferral import TASK_ID_PATTERN, DeferredTask
from surgegate.schemas.telemetry import RequestType, Status
from surgegate.streams.tasks import TaskBook
from surgegate.telemetry.scopes import NAME_PATTERN

log = logging.getLogger(__name__)

_NAME = re.compile(NAME_PATTERN)
#: Headers that belong to one connection and are not forwarded (RFC 9110 7.6.1).
HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te",
                        "trailer", "transfer-encoding", "upgrade", "host", "content-length"})
#: The paths whose JSON body admission reads (OpenAI's inference endpoints).
INFERENCE_PATHS = frozenset({"/v1/chat/completions", "/v1/completions", "/v1/embeddings"})
#: Upstream statuses that mean the server is overloaded, not that the request was bad.
OVERLOAD_STATUSES = frozenset({429, 503})
#: Finished deferred tasks kept for GET /_surgegate/tasks/{id} (without the durable lane).
TASKS_KEPT = 10_000
#: A deferred task's deadline: the default, the request header that sets it (whole seconds) and its ceiling.
DEFAULT_DEADLINE_S = 3600.0
DEADLINE_HEADER = "X-Surgegate-Deadline"
MAX_DEADLINE_S = 24 * 3600
#: From this level on a refusal says the service is busy, not that the caller sent too much.
BUSY_LEVEL = 3
#: Bytes kept from the end of a stream to find its usage chunk.
USAGE_TAIL_BYTES = 8192
#: The request header that opts in or out of the cache, and the answer header that says what it did.
CACHE_HEADER = "X-Surgegate-Cache"

GATE = web.AppKey("gate", EdgeGate)


@dataclasses.dataclass(frozen=True)
class Identity:
    """Who a request is for: a tenant on a tier, with its own token budget (tokens per minute) if any."""

    tenant: str
    tier: str
    tokens_per_minute: float | None = None


class BadRequest(Exception):
    """A request the edge cannot classify; ``status`` is 400, 401 or 403, ``param`` the field or header."""

    def __init__(self, status: int, code: str, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.param = param


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


@dataclasses.dataclass
class _Outcome:
    """What the upstream did with one request."""

    status: int
    outcome: Status
    input_tokens: int
    output_tokens: int
    #: streamed responses: time to the first chunk, and the mean gap between the following tokens
    ttft_ms: float | None = None
    itl_ms: float | None = None


class EdgeProxy:
    """The gateway's state: the upstream session, the keys registry, the deferred queue, the counters.

    ``keys`` maps API keys to identities (None: keys are not checked, headers
    and the default identity apply). ``default_tenant`` / ``default_tier``
    serve a request that names nobody (the tier defaults to the service's
    lowest).
    """

    def __init__(self, gate: EdgeGate, upstream: str, *, tenants: Mapping[str, str] | None = None,
                 keys: Mapping[str, Identity] | None = None, default_tenant: str = "anonymous",
                 default_tier: str | None = None, quota: GlobalQuota | None = None,
                 deferred_capacity: int = 1000, timeout_s: float = 60.0, connect_timeout_s: float = 1.0,
                 drain_concurrency: int = 16, connections: int = 1000, overflow_upstream: str | None = None,
                 cache: ResponseCache | None = None, lane: DeferralLane | None = None,
                 deadline_s: float = DEFAULT_DEADLINE_S) -> None:
        self.gate = gate
        #: the durable deferral lane (None: deferred work waits in this process's memory)
        self.lane = lane
        self.deadline_s = deadline_s
        #: exact-match answers shared by the deployment's edges (None: no cache)
        self.cache = cache
        self.upstream = upstream.rstrip("/")
        #: where lower tiers and batch work go while the pool's scaling decision asks overflow replicas
        self.overflow_upstream = overflow_upstream.rstrip("/") if overflow_upstream else None
        if self.overflow_upstream and not gate.follow_scaling:
            raise ValueError("overflow_upstream: the gate must follow scaling decisions (follow_scaling=True)")
        self.tenants = dict(tenants) if tenants is not None else None
        self.keys = dict(keys) if keys is not None else None
        tiers = gate.admission.tier_order  # highest first: the default is the lowest
        self.default = Identity(default_tenant, default_tier or tiers[-1])
        if self.default.tier not in tiers:
            raise ValueError(f"default_tier={self.default.tier!r}: not a tier of {gate.service!r} "
                             f"(known: {', '.join(tiers)})")
        self.quota = quota
        # waiting for a pooled connection is limited apart from the upstream's own time: running out of
        # connections is overload at the edge (503 with Retry-After), not an upstream timeout
        self.timeout = aiohttp.ClientTimeout(total=timeout_s, connect=connect_timeout_s)
        self.connect_timeout_s = connect_timeout_s
        self.connections = connections
        self.queue: asyncio.Queue[Task] = asyncio.Queue(maxsize=deferred_capacity)
        self.tasks: collections.OrderedDict[str, Task] = collections.OrderedDict()
        self.bad_requests: collections.Counter[str] = collections.Counter()
        self.counts: collections.Counter[str] = collections.Counter()
        self.budgets = TokenBudgets()
        config = gate.config
        self.tier_tpm = {t: v * gate.admission.share for t, v in config.tier_tokens_per_minute.items()}
        self._drain_slots = asyncio.Semaphore(drain_concurrency)
        self._running: set[asyncio.Task] = set()
        self._session: aiohttp.ClientSession | None = None
        self._drainer: asyncio.Task | None = None

    async def start(self) -> None:
        # one pooled session for every upstream call
        connector = aiohttp.TCPConnector(limit=self.connections, limit_per_host=self.connections)
        self._session = aiohttp.ClientSession(timeout=self.timeout, auto_decompress=False, connector=connector)
        self._drainer = asyncio.create_task(self._drain())
        if self.lane is not None:
            await self.lane.start()

    async def close(self) -> None:
        if self._drainer is not None:
            self._drainer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._drainer
        if self._session is not None:
            await self._session.close()
        if self.quota is not None:
            await self.quota.close()
        if self.cache is not None:
            await self.cache.close()
        if self.lane is not None:
            await self.lane.close()

    # ------------------------------------------------------------ classification

    def identify(self, request: web.Request) -> Identity:
        """Tenant and tier from the API key, else the headers, else the default; :class:`BadRequest` if bad."""
        h = request.headers
        auth = h.get("Authorization", "")
        key = auth[7:].strip() if auth[:7].lower() == "bearer " else ""
        if key and self.keys is not None:
            identity = self.keys.get(key)
            if identity is None:
                raise BadRequest(401, "invalid_api_key", "Incorrect API key provided.", "Authorization")
            return identity
        tenant = h.get("X-Tenant")
        tier = h.get("X-Tier")
        if tenant is None:
            if tier is not None:
                raise BadRequest(400, "missing_tenant", "header X-Tier needs X-Tenant", "X-Tenant")
            return self.default
        if not _NAME.fullmatch(tenant):
            raise BadRequest(400, "malformed_tenant",
                             "header X-Tenant must be 1-64 letters, digits, '_', '.', ':' or '-'", "X-Tenant")
        if self.tenants is not None:
            if tenant not in self.tenants:
                raise BadRequest(403, "unknown_tenant", f"tenant {tenant!r} is not known at this edge", "X-Tenant")
            tier = tier or self.tenants[tenant]
            if tier != self.tenants[tenant]:
                raise BadRequest(403, "tier_not_allowed", f"tenant {tenant!r} may not use tier {tier!r}", "X-Tier")
        tier = tier or self.default.tier
        if tier not in self.gate.admission.tiers:
            raise BadRequest(400, "unknown_tier", f"header X-Tier: unknown tier {tier!r} (known: "
                             f"{', '.join(sorted(self.gate.admission.tiers))})", "X-Tier")
        return Identity(tenant, tier)

    @staticmethod
    def request_type(request: web.Request) -> RequestType:
        """realtime (the default) or batch, from ``X-Request-Type``."""
        rtype = request.headers.get("X-Request-Type", "realtime")
        if rtype not in ("realtime", "batch"):
            raise BadRequest(400, "malformed_request_type",
                             f"header X-Request-Type must be realtime or batch, not {rtype!r}", "X-Request-Type")
        return cast(RequestType, rtype)

    @staticmethod
    def token_budget(request: web.Request, parsed: OpenAIRequest) -> int:
        """Output tokens asked for: the body's budget times ``n``, else ``X-Max-Tokens``, else 0."""
        cap = parsed.token_cap()
        if cap is not None:
            return cap * parsed.n
        raw = request.headers.get("X-Max-Tokens", "0")
        if not raw.isascii() or not raw.isdigit() or int(raw) > MAX_TOKENS_LIMIT:
            raise BadRequest(400, "malformed_max_tokens",
                             f"header X-Max-Tokens must be an integer within [0, {MAX_TOKENS_LIMIT}]", "X-Max-Tokens")
        return int(raw)

    # ------------------------------------------------------------ handlers

    async def handle(self, request: web.Request) -> web.StreamResponse:
        inference = request.method == "POST" and request.path in INFERENCE_PATHS
        try:
            who = self.identify(request)
            rtype = self.request_type(request)
            body = await request.read()
            parsed = OpenAIRequest.decode(body) if inference else OpenAIRequest()
            tokens = self.token_budget(request, parsed)
            if request.headers.get(CACHE_HEADER, OPT_IN) not in (OPT_IN, OPT_OUT):
                raise BadRequest(400, "malformed_cache_header", f"header {CACHE_HEADER} must be {OPT_IN} or {OPT_OUT}",
                                 CACHE_HEADER)
        except BadRequest as exc:
            self.bad_requests[exc.code] += 1
            return _error_response(exc.status, str(exc), "invalid_request_error", exc.code, exc.param)
        except ValueError as exc:  # a body field of the wrong type or range, named in the message
            self.bad_requests["invalid_body"] += 1
            return _error_response(400, str(exc), "invalid_request_error", "invalid_body", _param_of(str(exc)))
        cache_key = None
        if inference and self.cache is not None and cacheable(parsed.temperature, request.headers.get(CACHE_HEADER)):
            # a hit costs the upstream nothing: it is answered before admission, whatever the level
            cache_key = self.cache.key(self.gate.service, who.tenant, request.path, body)
            hit = await self.cache.get(cache_key)
            if hit is not None:
                return await self._serve_hit(request, who, rtype, hit)
        try:
            verdict = self.gate.admit(who.tenant, who.tier, rtype, tokens)
        except UnknownTier as exc:  # the registry named a tier the service lacks
            self.bad_requests["unknown_tier"] += 1
            return _error_response(400, str(exc), "invalid_request_error", "unknown_tier", "X-Tier")
        if verdict.action == ADMIT and self.quota is not None:
            verdict = await self._global(who, rtype, verdict)
        if verdict.action == ADMIT and self._cache_only(who, verdict):  # deferred work costs nothing now: it waits
            self.gate.admission.tally.count(who.tenant, who.tier, rtype, REJECT, verdict.shadow)
            if not verdict.shadow:
                self.counts["rejected_cache_only"] += 1
                return self._refusal(
                    Verdict(REJECT, 5.0, verdict.version, verdict.level, verdict.state, False, REJECT, None),
                    who, rtype, f"The service is busy (degradation level {verdict.level}): tier {who.tier!r} is "
                    f"served from the response cache only, and this request's answer is not in it.")
        if verdict.action == REJECT:
            self.counts["rejected"] += 1
            return self._refusal(verdict, who, rtype)
        if verdict.action == DEFER:
            if self.lane is not None:
                return await self._defer_durably(request, who, rtype, tokens, body, verdict)
            return self._defer(request, who, rtype, tokens, body, verdict)
        if verdict.max_tokens is not None and inference:
            body = with_token_cap(body, verdict.max_tokens)
            tokens = min(tokens, verdict.max_tokens * parsed.n) if tokens else verdict.max_tokens * parsed.n
        budgeted = who.tokens_per_minute is not None or who.tier in self.tier_tpm
        reserved = _estimate(body) + tokens if inference and budgeted else 0  # the estimate decodes the body again
        if reserved and not verdict.shadow:
            refused = self._reserve(who, rtype, reserved, verdict)
            if refused is not None:
                return refused
        self.counts["forwarded"] += 1
        if parsed.stream:
            return await self._relay_stream(request, who, rtype, verdict, body, parsed, reserved, cache_key)
        status, headers, payload = await self._forward(who, rtype, verdict, request.method, request.path_qs,
                                                       request.headers, body, reserved=reserved)
        extra = _verdict_headers(verdict)
        if cache_key is not None:
            extra[CACHE_HEADER] = "miss"
            if status == 200:
                await self._store(cache_key, CachedAnswer(200, headers.get("Content-Type", "application/json"),
                                                          payload, False, time.time()))
        return web.Response(status=status, headers={**headers, **extra}, body=payload)

    # ------------------------------------------------------------ the response cache

    def _cache_only(self, who: Identity, verdict: Verdict) -> bool:
        """True when the level leaves this tier the cache only (a miss has just been seen, or none may be)."""
        return (self.cache is not None and verdict.level >= CACHE_ONLY_LEVEL
                and who.tier != self.gate.admission.tier_order[0])

    async def _serve_hit(self, request: web.Request, who: Identity, rtype: RequestType,
                         hit: CachedAnswer) -> web.StreamResponse:
        started = time.perf_counter()
        self.counts["cache_hits"] += 1
        headers = {CACHE_HEADER: "hit", "Age": str(max(0, int(time.time() - hit.stored_at))),
                   "Content-Type": hit.content_type}
        if not hit.stream:
            response: web.StreamResponse = web.Response(status=hit.status, body=hit.body, headers=headers)
        else:  # replayed as the stream it was: one write per event
            response = web.StreamResponse(status=hit.status, headers=headers)
            await response.prepare(request)
            for event in hit.body.split(b"\n\n"):
                if event.strip():
                    await response.write(event + b"\n\n")
            await response.write_eof()
        latency_ms = (time.perf_counter() - started) * 1000
        # no tokens: the servers generated none for it (capacity and token rates count the misses only)
        self.gate.record(who.tenant, who.tier, rtype, "ok", latency_ms, cache_hit=True)
        return response

    async def _store(self, key: str, answer: CachedAnswer) -> None:
        assert self.cache is not None  # only called with a cache key
        if await self.cache.put(self.gate.service, key, answer):
            self.counts["cache_stored"] += 1

    def _reserve(self, who: Identity, rtype: RequestType, reserved: int, verdict: Verdict) -> web.Response | None:
        """Reserve the request's tokens from its tier and tenant budgets; a 429 (``type: tokens``) if they lack room."""
        ok, wait = self.budgets.reserve(who.tenant, who.tier, reserved, tier_tpm=self.tier_tpm.get(who.tier),
                                        tenant_tpm=who.tokens_per_minute, now=time.monotonic())
        if ok:
            return None
        self.counts["rejected_tokens"] += 1
        self.gate.admission.tally.count(who.tenant, who.tier, rtype, REJECT, False)
        refused = Verdict(REJECT, min(wait, 60.0), verdict.version, verdict.level, verdict.state, False, REJECT, None)
        return self._refusal(refused, who, rtype, f"Rate limit reached for tokens per minute: this request needs "
                             f"about {reserved:,} tokens.", kind="tokens")

    def _settle(self, who: Identity, reserved: int, used: int) -> None:
        if reserved:
            self.budgets.settle(who.tenant, who.tier, reserved=reserved, used=used,
                                tier_tpm=self.tier_tpm.get(who.tier), tenant_tpm=who.tokens_per_minute,
                                now=time.monotonic())

    def _defer(self, request: web.Request, who: Identity, rtype: RequestType, tokens: int, body: bytes,
               verdict: Verdict) -> web.Response:
        task = Task(who.tenant, who.tier, tokens, request.method, request.path_qs, request.headers, body)
        try:
            self.queue.put_nowait(task)
        except asyncio.QueueFull:
            self.gate.admission.tally.moved(who.tenant, who.tier, rtype, DEFER, REJECT)
            self.counts["deferred_queue_full"] += 1
            full = Verdict(REJECT, 5.0, verdict.version, verdict.level, verdict.state, verdict.shadow, REJECT, None)
            return self._refusal(full, who, rtype, "the queue for deferred batch work is full")
        self._keep(task)
        self.counts["deferred"] += 1
        return web.json_response({"task_id": task.id, "state": "queued", "status_url":
                                  f"/_surgegate/tasks/{task.id}"}, status=202, headers=_verdict_headers(verdict))

    async def _defer_durably(self, request: web.Request, who: Identity, rtype: RequestType, tokens: int,
                             body: bytes, verdict: Verdict) -> web.Response:
        """Write the request to the deferral lane; 202 with its task id once the broker has it."""
        assert self.lane is not None  # only called with a lane
        raw = request.headers.get(DEADLINE_HEADER)
        if raw is None:
            deadline_s = self.deadline_s
        elif raw.isascii() and raw.isdigit() and 1 <= int(raw) <= MAX_DEADLINE_S:
            deadline_s = int(raw)
        else:
            self.gate.admission.tally.moved(who.tenant, who.tier, rtype, DEFER, REJECT)
            self.bad_requests["malformed_deadline"] += 1
            return _error_response(400, f"header {DEADLINE_HEADER} must be whole seconds within "
                                        f"[1, {MAX_DEADLINE_S}]", "invalid_request_error", "malformed_deadline",
                                   DEADLINE_HEADER)
        now = int(time.time() * 1000)
        task = DeferredTask(id=new_task_id(), service=self.gate.service, tenant=who.tenant, tier=who.tier,
                            method=request.method, path=request.path_qs, body=body, created_at=now,
                            deadline=now + int(deadline_s * 1000), edge_id=self.gate.edge_id, tokens=tokens,
                            headers=kept_headers(request.headers))
        try:
            view = await self.lane.submit(task)
        except LaneUnavailable as exc:
            self.gate.admission.tally.moved(who.tenant, who.tier, rtype, DEFER, REJECT)
            self.counts["deferred_unavailable"] += 1
            return _error_response(503, f"{exc}. Please retry after 5 s.", "server_error", "deferral_unavailable",
                                   None, {"Retry-After": "5", "retry-after-ms": "5000", **_verdict_headers(verdict)})
        self.counts["deferred"] += 1
        return web.json_response({"task_id": task.id, "state": view.state, "deadline": task.deadline,
                                  "status_url": f"/_surgegate/tasks/{task.id}"}, status=202,
                                 headers=_verdict_headers(verdict))

    async def _global(self, who: Identity, rtype: RequestType, verdict: Verdict) -> Verdict:
        assert self.quota is not None  # only called with a quota
        answer = await self.quota.check(who.tenant)
        if answer is None or answer[0]:
            return verdict
        self.gate.admission.tally.count(who.tenant, who.tier, rtype, REJECT, verdict.shadow)
        if verdict.shadow:
            return verdict
        retry = min(60.0, max(1.0, answer[1]))
        return Verdict(REJECT, retry, verdict.version, verdict.level, verdict.state, False, REJECT, None)

    def _refusal(self, verdict: Verdict, who: Identity, rtype: RequestType, why: str | None = None,
                 kind: str = "requests") -> web.Response:
        retry_s = verdict.retry_after_s
        if why is None:
            why = (f"The service is busy (degradation level {verdict.level}): tier {who.tier!r} is admitted at a "
                   f"reduced rate until load falls." if verdict.level >= BUSY_LEVEL else
                   f"Rate limit reached for tier {who.tier!r} of tenant {who.tenant!r}.")
        message = f"{why} Please retry after {retry_s:.1f} s."
        rate, burst, available = self.gate.admission.class_limit(who.tier, rtype)
        headers = {"Retry-After": str(max(1, math.ceil(retry_s))), "retry-after-ms": str(math.ceil(retry_s * 1000)),
                   **_verdict_headers(verdict)}
        if math.isfinite(rate):
            headers.update({
                "x-ratelimit-limit-requests": str(math.floor(rate * 60)),
                "x-ratelimit-remaining-requests": str(max(0, math.floor(available))),
                "x-ratelimit-reset-requests": format_duration((burst - available) / rate if rate > 0 else retry_s),
            })
        headers.update(self._token_headers(who))
        return _error_response(429, message, kind, "rate_limit_exceeded", None, headers)

    def _token_headers(self, who: Identity) -> dict[str, str]:
        state = self.budgets.remaining(who.tenant, who.tier, tier_tpm=self.tier_tpm.get(who.tier),
                                       tenant_tpm=who.tokens_per_minute, now=time.monotonic())
        if state is None:
            return {}
        per_minute, left, to_full = state
        return {"x-ratelimit-limit-tokens": str(math.floor(per_minute)),
                "x-ratelimit-remaining-tokens": str(math.floor(left)),
                "x-ratelimit-reset-tokens": format_duration(to_full)}

    # ------------------------------------------------------------ upstream

    def upstream_for(self, who: Identity, rtype: RequestType) -> str:
        """The primary upstream, or the overflow one for lower tiers and batch work while the pool's decision asks
        overflow replicas; the top tier's realtime traffic always stays on the primary pool."""
        if self.overflow_upstream is None or self.gate.overflow() == 0:
            return self.upstream
        if rtype == "realtime" and who.tier == self.gate.admission.tier_order[0]:
            return self.upstream
        self.counts["to_overflow"] += 1
        return self.overflow_upstream

    def _upstream_headers(self, headers: Mapping[str, str]) -> dict[str, str]:
        return {k: v for k, v in headers.items() if k.lower() not in HOP_BY_HOP}

    async def _forward(self, who: Identity, rtype: RequestType, verdict: Verdict, method: str, path: str,
                       headers: Mapping[str, str], body: bytes, replayed: bool = False,
                       reserved: int = 0) -> tuple[int, dict, bytes]:
        started = time.perf_counter()
        assert self._session is not None, "the gateway's client session starts with the app"
        reply: dict[str, str] = {}
        try:
            async with self._session.request(method, self.upstream_for(who, rtype) + path,
                                             headers=self._upstream_headers(headers), data=body) as resp:
                payload = await resp.read()
                reply = self._upstream_headers(resp.headers)
                result = self._outcome(resp.status, body, payload)
        except asyncio.CancelledError:  # the client went away while waiting (handler cancellation)
            self.counts["client_disconnects"] += 1
            self._record(who, rtype, _Outcome(499, "error", _estimate(body), 0), started, replayed)
            self._settle(who, reserved, _estimate(body))
            raise
        except (TimeoutError, aiohttp.ClientError) as exc:
            result, reply, payload = self._failure(exc, body)
        self._record(who, rtype, result, started, replayed)
        self._settle(who, reserved, result.input_tokens + result.output_tokens)
        return result.status, reply, payload

    async def _relay_stream(self, request: web.Request, who: Identity, rtype: RequestType, verdict: Verdict,
                            body: bytes, parsed: OpenAIRequest, reserved: int = 0,
                            cache_key: str | None = None) -> web.StreamResponse:
        """Relay an SSE response chunk by chunk; a client that goes away ends the upstream request."""
        started = time.perf_counter()
        assert self._session is not None, "the gateway's client session starts with the app"
        out: web.StreamResponse | None = None
        result = _Outcome(502, "error", 0, 0)  # replaced on every path below
        try:
            async with self._session.request(request.method, self.upstream_for(who, rtype) + request.path_qs,
                                             headers=self._upstream_headers(request.headers), data=body) as resp:
                if resp.status != 200:
                    payload = await resp.read()
                    result = self._outcome(resp.status, body, payload)
                    return web.Response(status=resp.status, body=payload,
                                        headers={**self._upstream_headers(resp.headers), **_verdict_headers(verdict)})
                extra = _verdict_headers(verdict)
                if cache_key is not None:
                    extra[CACHE_HEADER] = "miss"
                out = web.StreamResponse(status=200, headers={**self._upstream_headers(resp.headers), **extra})
                await out.prepare(request)
                chunks, tail, first = 0, b"", None
                # the whole stream is kept for the cache while it stays within an entry's size
                kept: list[bytes] | None = [] if cache_key is not None else None
                size = 0
                try:
                    async for data in resp.content.iter_any():
                        if first is None:
                            first = (time.perf_counter() - started) * 1000
                        await out.write(data)
                        chunks += data.count(b"data: ")
                        tail = (tail + data)[-USAGE_TAIL_BYTES:]
                        if kept is not None and self.cache is not None:
                            size += len(data)
                            if size <= self.cache.max_entry_bytes:
                                kept.append(data)
                            else:
                                kept = None
                except ConnectionResetError:  # the client went away: closing the response ends the upstream's
                    resp.close()
                    self.counts["client_disconnects"] += 1
                    result = _Outcome(499, "error", _estimate(body), chunks, first)
                    return out
                usage = _stream_usage(tail)
                produced = usage.get("completion_tokens") if usage else None
                # chunks counted: the [DONE] line and a usage-only chunk carry no token
                counted = max(0, chunks - 1 - (1 if parsed.include_usage else 0))
                tokens = produced if isinstance(produced, int) else counted
                ended = (time.perf_counter() - started) * 1000
                itl = (ended - first) / (tokens - 1) if first is not None and tokens > 1 else None
                prompt = usage["prompt_tokens"] if isinstance(usage.get("prompt_tokens"), int) else _estimate(body)
                result = _Outcome(200, "ok", prompt, tokens, first, itl)
                await out.write_eof()
                if cache_key is not None:
                    if kept is None:
                        assert self.cache is not None  # a key is made only with a cache
                        self.cache.counts["too_large"] += 1
                    elif tail.rstrip().endswith(b"data: [DONE]"):  # only a stream that ended as it should
                        await self._store(cache_key, CachedAnswer(200, resp.headers.get("Content-Type",
                                                                                         "text/event-stream"),
                                                                  b"".join(kept), True, time.time()))
                return out
        except asyncio.CancelledError:  # the client went away while waiting (handler cancellation)
            self.counts["client_disconnects"] += 1
            result = _Outcome(499, "error", _estimate(body), 0)
            raise
        except (TimeoutError, aiohttp.ClientError) as exc:
            result, reply, payload = self._failure(exc, body)
            if out is None:  # nothing sent yet: the client gets the failure in OpenAI's shape
                return web.Response(status=result.status, body=payload, content_type="application/json",
                                    headers={**reply, **_verdict_headers(verdict)})
            return out
        finally:
            self._record(who, rtype, result, started, False)
            self._settle(who, reserved, result.input_tokens + result.output_tokens)

    def _failure(self, exc: BaseException, body: bytes) -> tuple[_Outcome, dict[str, str], bytes]:
        """An upstream call that failed, as its outcome, the headers and the OpenAI-shaped body to answer."""
        if isinstance(exc, aiohttp.ConnectionTimeoutError):
            # no upstream connection within connect_timeout_s: the edge is overloaded, come back shortly
            self.counts["upstream_busy"] += 1
            message = (f"The service is busy: no upstream connection was free within {self.connect_timeout_s:g} s. "
                       f"Please retry after 1 s.")
            return (_Outcome(503, "throttled", _estimate(body), 0), {"Retry-After": "1", "retry-after-ms": "1000"},
                    openai_error(message, "server_error", "upstream_busy"))
        if isinstance(exc, TimeoutError):
            return (_Outcome(504, "timeout", _estimate(body), 0), {},
                    openai_error("the upstream server did not answer in time", "server_error", "upstream_timeout"))
        return (_Outcome(502, "error", _estimate(body), 0), {},
                openai_error(f"the upstream server failed: {type(exc).__name__}", "server_error", "upstream_error"))

    def _outcome(self, status: int, body: bytes, payload: bytes) -> _Outcome:
        """Status and tokens of a buffered upstream answer (its ``usage`` when it has one)."""
        if status < 400:
            usage = _usage_of(payload)
            prompt = usage["prompt_tokens"] if isinstance(usage.get("prompt_tokens"), int) else _estimate(body)
            return _Outcome(status, "ok", prompt, usage.get("completion_tokens", 0))
        if status in OVERLOAD_STATUSES or status >= 500:
            self.counts["upstream_overload" if status in OVERLOAD_STATUSES else "upstream_5xx"] += 1
            return _Outcome(status, "error", _estimate(body), 0)
        return _Outcome(status, "ok", _estimate(body), 0)  # the client's own mistake: the service was fine

    def _record(self, who: Identity, rtype: RequestType, result: _Outcome, started: float, replayed: bool) -> None:
        latency_ms = (time.perf_counter() - started) * 1000
        self.gate.record(who.tenant, who.tier, rtype, result.outcome, latency_ms, input_tokens=result.input_tokens,
                         output_tokens=result.output_tokens, replayed=replayed, ttft_ms=result.ttft_ms,
                         itl_ms=result.itl_ms)
        self.counts[f"upstream_{result.outcome}"] += 1

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
            body = task.body
            if verdict.max_tokens is not None and task.path.split("?")[0] in INFERENCE_PATHS:
                body = with_token_cap(body, verdict.max_tokens)
            status, _, payload = await self._forward(Identity(task.tenant, task.tier), "batch", verdict,
                                                     task.method, task.path, task.headers, body, replayed=True)
            task.status, task.result = status, payload.decode("utf-8", "replace")
            task.state = "done"
            self.counts["deferred_done"] += 1
        finally:
            self._drain_slots.release()

    async def task_view(self, request: web.Request) -> web.Response:
        if self.lane is not None:
            return await lane_task_view(self.lane.book, request.match_info["task_id"])
        task = self.tasks.get(request.match_info["task_id"])
        if task is None:
            return _error_response(404, "no such task (unknown, or expired from the task list)",
                                   "invalid_request_error", "unknown_task", "task_id")
        return web.json_response(task.view())

    async def status_view(self, request: web.Request) -> web.Response:
        return web.json_response({**self.gate.status(), "proxy": {
            **self.counts, "deferred_queued": self.queue.qsize(), "bad_requests": dict(self.bad_requests),
            "global_quota": dict(self.quota.counts) if self.quota is not None else None}})


PROXY = web.AppKey("proxy", EdgeProxy)


_TASK_ID = re.compile(TASK_ID_PATTERN)


async def lane_task_view(book: TaskBook, task_id: str) -> web.Response:
    """A deferred task's state from Redis: 200, 400 for a malformed id, 404 unknown, 503 Redis down."""
    if not _TASK_ID.fullmatch(task_id):
        return _error_response(400, "task_id must be 32 lowercase hex digits", "invalid_request_error",
                               "malformed_task_id", "task_id")
    try:
        view = await book.get(task_id)
    except (redis.RedisError, OSError):
        return _error_response(503, "task states are unavailable (Redis does not answer); retry shortly",
                               "server_error", "tasks_unavailable", None, {"Retry-After": "1"})
    if view is None:
        return _error_response(404, "no such task (unknown, or its state expired)", "invalid_request_error",
                               "unknown_task", "task_id")
    return web.Response(body=msgspec.json.encode(view), content_type="application/json")


def _estimate(body: bytes) -> int:
    try:
        return estimate_prompt_tokens(msgspec.json.decode(body)) if body.strip() else 0
    except msgspec.DecodeError:
        return 0


def _usage_of(payload: bytes) -> dict[str, Any]:
    """``usage`` of a JSON answer, or empty."""
    try:
        usage = msgspec.json.decode(payload).get("usage")
    except (msgspec.DecodeError, AttributeError):
        return {}
    return usage if isinstance(usage, dict) else {}


def _stream_usage(tail: bytes) -> dict[str, Any]:
    """``usage`` from the last SSE chunk that carries one, or empty."""
    for line in reversed(tail.split(b"\n")):
        if line.startswith(b"data: {") and b'"usage"' in line:
            usage = _usage_of(line[6:])
            if usage:
                return usage
    return {}


def _param_of(message: str) -> str | None:
    """The field a msgspec error names (``... - at `$.max_tokens```), or None."""
    found = re.search(r"\$\.([A-Za-z_][\w.]*)", message)
    return found.group(1) if found else None


def _error_response(status: int, message: str, kind: str, code: str | None, param: str | None,
                    headers: Mapping[str, str] | None = None) -> web.Response:
    return web.Response(status=status, body=openai_error(message, kind, code, param),
                        content_type="application/json", headers=headers)


def _verdict_headers(v: Verdict) -> dict[str, str]:
    return {"X-Surgegate-Version": str(v.version), "X-Surgegate-Level": str(v.level),
            "X-Surgegate-State": v.state, "X-Surgegate-Shadow": "1" if v.shadow else "0",
            "X-Surgegate-Would": v.would}


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


def create_edge_app(gate: EdgeGate, upstream: str, *, models: Mapping[str, str] | None = None,
                    gates: Mapping[str, EdgeGate] | None = None, **options: Any) -> web.Application:
    """The gateway application; every gate must be started, and its owner closes it after the app.

    ``gate`` serves the default service. ``models`` maps a request's ``model``
    to a service, and ``gates`` holds the gates of those other services: a
    request for a model mapped elsewhere is admitted by that service's gate
    (and an unmapped model by the default one). Run it with
    ``handler_cancellation=True`` (``web.run_app``, ``AppRunner``) so a client
    that disconnects while waiting also cancels its upstream request.
    """
    app = web.Application()
    proxy = EdgeProxy(gate, upstream, **options)
    others = {service: EdgeProxy(g, upstream, **options) for service, g in (gates or {}).items()
              if service != gate.service}
    by_model = {model: others[service] for model, service in (models or {}).items() if service in others}
    missing = sorted({service for service in (models or {}).values()} - set(others) - {gate.service})
    if missing:
        raise ValueError(f"models: no gate for service(s) {', '.join(missing)}")
    app[GATE] = gate
    app[PROXY] = proxy

    async def lifecycle(app: web.Application):
        for p in (proxy, *others.values()):
            await p.start()
        yield
        for p in (proxy, *others.values()):
            await p.close()

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
        response = await proxy.status_view(request)
        if not others:
            return response
        body = msgspec.json.decode(cast(bytes, response.body))
        body["services"] = {service: msgspec.json.decode(cast(bytes, (await p.status_view(request)).body))
                            for service, p in others.items()}
        return web.json_response(body)

    async def task_view(request: web.Request) -> web.Response:
        for p in (proxy, *others.values()):
            if request.match_info["task_id"] in p.tasks:
                return await p.task_view(request)
        return await proxy.task_view(request)

    registries = list({id(g.metrics.registry): g.metrics.registry for g in (gate, *(gates or {}).values())}.values())

    async def metrics(request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(_Merged(registries)), headers={"Content-Type": PROMETHEUS_TEXT})

    app.cleanup_ctx.append(lifecycle)
    app.router.add_get("/_surgegate/status", status)
    app.router.add_get("/_surgegate/metrics", metrics)
    app.router.add_get("/_surgegate/tasks/{task_id}", task_view)
    app.router.add_route("*", "/{tail:.*}", route)
    return app
