"""`surgegate edge`'s proxy: one service's OpenAI-compatible gateway that admits every request with the
edge gate (the application over one or more of them: :mod:`surgegate.edge.app`).

It fronts an OpenAI-compatible server (vLLM, SGLang, TGI, or ``surgegate
fake-llm``) and is invisible to clients except when it must say no. This
module decides; its parts live beside it:

- who a request is for: :mod:`surgegate.edge.identity` (API keys as digests,
  no header-claimed tier);
- the upstream call: :mod:`surgegate.edge.relay` (timeouts on silence, streams
  on any path, decoded encodings, the upstream's own credential, tokens from
  ``usage`` wherever it is);
- deferred batch work: the durable lane (:mod:`surgegate.edge.lane`) or the
  in-memory one (:mod:`surgegate.edge.memory_lane`), one interface;
- answers from the response cache: :mod:`surgegate.edge.cache`.

``POST /v1/chat/completions``, ``/v1/completions``, ``/v1/embeddings`` and
``/v1/responses`` are admitted by their body (``model``, ``stream``, the output
budget, ``n``); a malformed field is a 400 naming it, and a degraded level caps
the output budget *in the body* the upstream receives. Every other path is
admitted as one request and relayed. The verdict: admit (relayed); defer (batch
work: ``202`` with a task id); reject: ``429`` in OpenAI's shape, naming the
bucket that refused, with ``Retry-After`` and ``retry-after-ms``. Every answer
carries ``x-ratelimit-*`` for requests (and tokens, where a token budget
applies) from the bucket that binds, and the decision version, level and gate
state that applied (``X-Surgegate-*``).
"""

from __future__ import annotations

import asyncio
import functools
import hmac
import math
import re
import time
from collections import Counter
from collections.abc import Mapping
from typing import Any

import msgspec
import redis
from aiohttp import web

from surgegate.admission.actions import ADMIT, DEFER, REJECT
from surgegate.admission.gate import UnknownTier, Verdict
from surgegate.admission.tokens import TokenBudgets
from surgegate.edge.cache import CachedAnswer, ResponseCache
from surgegate.edge.gate import EdgeGate, GlobalQuota
from surgegate.edge.identity import BadRequest, Identifier, Identity, request_type
from surgegate.edge.lane import DeferralLane, LaneUnavailable, kept_headers, new_task_id
from surgegate.edge.memory_lane import MemoryLane
from surgegate.edge.regions import SpillRouter
from surgegate.edge.relay import SPILLED_FROM, Outcome, Relay
from surgegate.llm.caching import CACHE_ONLY_LEVEL, OPT_IN, OPT_OUT, cacheable
from surgegate.llm.openai_wire import (
    INFERENCE_PATHS,
    MAX_TOKENS_LIMIT,
    OpenAIRequest,
    estimate_prompt_tokens,
    format_duration,
    openai_error,
    with_token_cap,
)
from surgegate.schemas.deferral import TASK_ID_PATTERN, DeferredTask, TaskView
from surgegate.schemas.telemetry import RequestType

#: A deferred task's deadline: the default, the request header that sets it (whole seconds) and its ceiling.
DEFAULT_DEADLINE_S = 3600.0
DEADLINE_HEADER = "X-Surgegate-Deadline"
MAX_DEADLINE_S = 24 * 3600
#: From this level on a refusal says the service is busy, not that the caller sent too much.
BUSY_LEVEL = 3
#: The request header that opts in or out of the cache, and the answer header that says what it did.
CACHE_HEADER = "X-Surgegate-Cache"
#: How long a request body may take to arrive, whole.
BODY_TIMEOUT_S = 30.0
#: What each bucket that refuses is called in a 429's message.
BUCKET_WORDS = {"tier": "the {tier} tier's {rtype} requests", "tenant": "tenant {tenant!r}",
                "service": "the service as a whole (its safe capacity, shared by every tier)"}

_TASK_ID = re.compile(TASK_ID_PATTERN)


class EdgeProxy:
    """One service's gateway: identity, admission, deferral, the cache, and the relay to the upstream.

    ``lane`` holds deferred batch work (the durable :class:`DeferralLane`, or an in-memory one this proxy makes
    when None); ``overflow`` is the overflow pool's base URL (lower tiers and batch work go there while the
    pool's scaling decision asks overflow replicas).
    """

    def __init__(self, gate: EdgeGate, relay: Relay, identifier: Identifier, *, quota: GlobalQuota | None = None,
                 cache: ResponseCache | None = None, lane: DeferralLane | None = None, overflow: str | None = None,
                 deferred_capacity: int = 1000, drain_concurrency: int = 16, deadline_s: float = DEFAULT_DEADLINE_S,
                 body_timeout_s: float = BODY_TIMEOUT_S, api_token: str = "",
                 regions: SpillRouter | None = None) -> None:
        self.gate = gate
        self.regions = regions
        self.relay = relay
        self.identifier = identifier
        self.quota = quota
        self.cache = cache
        self.overflow = overflow.rstrip("/") if overflow else None
        if self.overflow and not gate.follow_scaling:
            raise ValueError("overflow: the gate must follow scaling decisions (follow_scaling=True)")
        self.lane: DeferralLane | MemoryLane = lane if lane is not None else MemoryLane(
            capacity=deferred_capacity, admit=self._admit_deferred, run=self._run_deferred,
            concurrency=drain_concurrency)
        self.deadline_s = deadline_s
        self.body_timeout_s = body_timeout_s
        self.api_token = api_token
        self.bad_requests: Counter[str] = Counter()
        self.counts: Counter[str] = Counter()
        self.budgets = TokenBudgets()
        self.tier_tpm = {t: v * gate.admission.share for t, v in gate.config.tier_tokens_per_minute.items()}
        self.top_tier = gate.admission.tier_order[0]
        self._decision_headers: dict[tuple, dict[str, str]] = {}

    async def start(self) -> None:
        await self.lane.start()

    async def close(self) -> None:
        await self.lane.close()

    # ------------------------------------------------------------ classification

    async def _classify(self, request: web.Request, inference: bool) -> tuple[Identity, RequestType, bytes,
                                                                                  OpenAIRequest, int]:
        who = self.identifier.identify(request.headers)
        rtype = request_type(request.headers)
        if request.content.is_eof():  # the usual case: the whole body came with the headers
            body = await request.read()
        else:
            try:
                async with asyncio.timeout(self.body_timeout_s):
                    body = await request.read()
            except TimeoutError:
                raise BadRequest(408, "request_timeout", f"the request body did not arrive within "
                                 f"{self.body_timeout_s:g} s", "body") from None
        parsed = OpenAIRequest.decode(body) if inference else OpenAIRequest()
        tokens = self._token_budget(request, parsed)
        if request.headers.get(CACHE_HEADER, OPT_IN) not in (OPT_IN, OPT_OUT):
            raise BadRequest(400, "malformed_cache_header", f"header {CACHE_HEADER} must be {OPT_IN} or {OPT_OUT}",
                             CACHE_HEADER)
        self._deadline(request)  # whether or not the request is deferred, a malformed header is the client's error
        return who, rtype, body, parsed, tokens

    def _deadline(self, request: web.Request) -> float:
        """Seconds a deferred request may wait: its ``X-Surgegate-Deadline``, else the edge's default."""
        raw = request.headers.get(DEADLINE_HEADER)
        if raw is None:
            return self.deadline_s
        if len(raw) <= 6 and raw.isascii() and raw.isdigit() and 1 <= int(raw) <= MAX_DEADLINE_S:
            return int(raw)
        raise BadRequest(400, "malformed_deadline", f"header {DEADLINE_HEADER} must be whole seconds within "
                         f"[1, {MAX_DEADLINE_S}]", DEADLINE_HEADER)

    @staticmethod
    def _token_budget(request: web.Request, parsed: OpenAIRequest) -> int:
        """Output tokens asked for: the body's budget times ``n``, else ``X-Max-Tokens``, else 0."""
        cap = parsed.token_cap()
        if cap is not None:
            return cap * parsed.n
        raw = request.headers.get("X-Max-Tokens", "0")
        if len(raw) > 9 or not raw.isascii() or not raw.isdigit() or int(raw) > MAX_TOKENS_LIMIT:
            raise BadRequest(400, "malformed_max_tokens",
                             f"header X-Max-Tokens must be an integer within [0, {MAX_TOKENS_LIMIT}]", "X-Max-Tokens")
        return int(raw)

    # ------------------------------------------------------------ the request

    async def handle(self, request: web.Request) -> web.StreamResponse:
        inference = request.method == "POST" and request.path in INFERENCE_PATHS
        try:
            who, rtype, body, parsed, tokens = await self._classify(request, inference)
        except BadRequest as exc:
            self.bad_requests[exc.code] += 1
            return _error(exc.status, str(exc), "invalid_request_error", exc.code, exc.param)
        except ValueError as exc:  # a body field of the wrong type or range, named in the message
            self.bad_requests["invalid_body"] += 1
            return _error(400, str(exc), "invalid_request_error", "invalid_body", _param_of(str(exc)))
        cache_key = None
        if inference and self.cache is not None and cacheable(parsed.temperature, request.headers.get(CACHE_HEADER)):
            # a hit costs the upstream nothing: it is answered before admission, whatever the level
            cache_key = self.cache.key(self.gate.service, who.tenant, request.path, body)
            hit = await self.cache.get(cache_key)
            if hit is not None:
                return await self._serve_hit(request, who, rtype, hit)
        # realtime calls are spilled before admission (the other region's gate admits them); batch work waits in
        # this region's deferral lane, where the task id it is given is known
        if self.regions is not None and rtype == "realtime":
            spill = self.regions.target(self.gate.admission.decision, who.tier, now_ms=time.time() * 1000,
                                        spilled_in=SPILLED_FROM in request.headers)
            if spill is not None:
                return await self._spill(request, who, rtype, body, spill)
        try:
            verdict = self.gate.admit(who.tenant, who.tier, rtype, tokens)
        except UnknownTier as exc:  # the registry named a tier the service lacks
            self.bad_requests["unknown_tier"] += 1
            return _error(400, str(exc), "invalid_request_error", "unknown_tier", "X-Tier")
        if verdict.action == ADMIT and self.quota is not None:
            verdict = await self._global(who, rtype, verdict)
        if verdict.action == ADMIT and self._cache_only(who, verdict):  # deferred work costs nothing now: it waits
            self.gate.admission.tally.count(who.tenant, who.tier, rtype, REJECT, verdict.shadow)
            if not verdict.shadow:
                self.counts["rejected_cache_only"] += 1
                return self._refusal(_refused(verdict, 5.0), who, rtype, f"The service is busy (degradation level "
                                     f"{verdict.level}): tier {who.tier!r} is served from the response cache only, "
                                     f"and this request's answer is not in it.")
        if verdict.action == REJECT:
            self.counts["rejected"] += 1
            return self._refusal(verdict, who, rtype)
        if verdict.action == DEFER:
            return await self._defer(request, who, rtype, tokens, body, verdict)
        if verdict.max_tokens is not None and inference:
            body = with_token_cap(body, verdict.max_tokens, request.path)
            tokens = min(tokens, verdict.max_tokens * parsed.n) if tokens else verdict.max_tokens * parsed.n
        estimate = _Estimate(body if inference else b"")  # read from the body only where it is needed
        budgeted = inference and (who.tokens_per_minute is not None or who.tier in self.tier_tpm)
        reserved = estimate() + tokens if budgeted else 0
        if reserved and not verdict.shadow:
            refused = self._reserve(who, rtype, reserved, verdict)
            if refused is not None:
                return refused
        self.counts["forwarded"] += 1
        started = time.perf_counter()

        def done(outcome: Outcome) -> None:
            self._record(who, rtype, outcome, started, False)
            self._settle(who, reserved, outcome.input_tokens + outcome.output_tokens)

        def headers() -> dict[str, str]:
            extra = self._answer_headers(who, rtype, verdict)
            if cache_key is not None:
                extra[CACHE_HEADER] = "miss"
            return extra

        keep = functools.partial(self._keep_answer, cache_key) if cache_key is not None else None
        return await self.relay.relay(request, request.path_qs, body, estimate, headers=headers, keep=keep, done=done,
                                      base=self._upstream_for(who, rtype))

    async def _spill(self, request: web.Request, who: Identity, rtype: RequestType, body: bytes,
                     target: tuple[str, str]) -> web.StreamResponse:
        """Relay the request to another region's gateway with the caller's credential; it is this region's
        demand (recorded here) and that region's load (admitted and recorded there)."""
        assert self.regions is not None
        started = time.perf_counter()

        def done(outcome: Outcome) -> None:
            self._record(who, rtype, outcome, started, False)

        return await self.relay.relay(request, request.path_qs, body, _Estimate(body), done=done, base=target[1],
                                      headers=lambda: {"X-Surgegate-Served-By-Region": target[0]},
                                      spilled_from=self.regions.region)

    def _record(self, who: Identity, rtype: RequestType, outcome: Outcome, started: float, replayed: bool) -> None:
        latency_ms = (time.perf_counter() - started) * 1000
        self.gate.record(who.tenant, who.tier, rtype, outcome.outcome, latency_ms, input_tokens=outcome.input_tokens,
                         output_tokens=outcome.output_tokens, replayed=replayed, ttft_ms=outcome.ttft_ms,
                         itl_ms=outcome.itl_ms)
        self.counts[f"upstream_{outcome.outcome}"] += 1

    # ------------------------------------------------------------ answers

    def _answer_headers(self, who: Identity, rtype: RequestType, verdict: Verdict) -> dict[str, str]:
        """The decision that applied, and the rate limits that bind this caller (requests, and tokens where a token
        budget applies), as OpenAI sends them on every answer."""
        applied = (verdict.version, verdict.level, verdict.state, verdict.shadow, verdict.would)
        decision = self._decision_headers.get(applied)
        if decision is None:  # the same few combinations answer thousands of requests a second: made once each
            if len(self._decision_headers) > 64:
                self._decision_headers.clear()
            decision = self._decision_headers[applied] = {
                "X-Surgegate-Version": str(verdict.version), "X-Surgegate-Level": str(verdict.level),
                "X-Surgegate-State": verdict.state, "X-Surgegate-Shadow": "1" if verdict.shadow else "0",
                "X-Surgegate-Would": verdict.would}
        headers = dict(decision)
        rate, burst, available = self.gate.admission.request_limit(who.tenant, who.tier, rtype, verdict.bucket)
        if math.isfinite(rate):
            remaining = max(0.0, available)
            headers.update({
                "x-ratelimit-limit-requests": str(math.floor(rate * 60)),
                "x-ratelimit-remaining-requests": str(math.floor(remaining)),
                "x-ratelimit-reset-requests": format_duration((burst - remaining) / rate if rate > 0
                                                              else verdict.retry_after_s),
            })
        state = self.budgets.remaining(who.tenant, who.tier, tier_tpm=self.tier_tpm.get(who.tier),
                                       tenant_tpm=who.tokens_per_minute, now=time.monotonic())
        if state is not None:
            per_minute, left, to_full = state
            headers.update({"x-ratelimit-limit-tokens": str(math.floor(per_minute)),
                            "x-ratelimit-remaining-tokens": str(math.floor(left)),
                            "x-ratelimit-reset-tokens": format_duration(to_full)})
        return headers

    def _refusal(self, verdict: Verdict, who: Identity, rtype: RequestType, why: str | None = None,
                 kind: str = "requests") -> web.Response:
        retry_s = verdict.retry_after_s
        if why is None:
            bucket = BUCKET_WORDS.get(verdict.bucket or "tier", BUCKET_WORDS["tier"]).format(
                tier=who.tier, rtype=rtype, tenant=who.tenant)
            why = (f"The service is busy (degradation level {verdict.level}): the limit reached is {bucket}, "
                   f"admitted at a reduced rate until load falls." if verdict.level >= BUSY_LEVEL else
                   f"Rate limit reached for requests: the limit reached is {bucket}.")
        headers = {"Retry-After": str(max(1, math.ceil(retry_s))), "retry-after-ms": str(math.ceil(retry_s * 1000)),
                   **self._answer_headers(who, rtype, verdict)}
        if verdict.bucket is not None:
            headers["X-Surgegate-Limit"] = verdict.bucket
        return _error(429, f"{why} Please retry after {retry_s:.1f} s.", kind, "rate_limit_exceeded", None, headers)

    def _reserve(self, who: Identity, rtype: RequestType, reserved: int, verdict: Verdict) -> web.Response | None:
        """Reserve the request's tokens from its tier and tenant budgets; a 429 (``type: tokens``) if they lack room."""
        ok, wait = self.budgets.reserve(who.tenant, who.tier, reserved, tier_tpm=self.tier_tpm.get(who.tier),
                                        tenant_tpm=who.tokens_per_minute, now=time.monotonic())
        if ok:
            return None
        self.counts["rejected_tokens"] += 1
        self.gate.admission.tally.count(who.tenant, who.tier, rtype, REJECT, False)
        return self._refusal(_refused(verdict, min(wait, 60.0), "tokens"), who, rtype, f"Rate limit reached for "
                             f"tokens per minute: this request needs about {reserved:,} tokens.", kind="tokens")

    def _settle(self, who: Identity, reserved: int, used: int) -> None:
        if reserved:
            self.budgets.settle(who.tenant, who.tier, reserved=reserved, used=used,
                                tier_tpm=self.tier_tpm.get(who.tier), tenant_tpm=who.tokens_per_minute,
                                now=time.monotonic())

    async def _global(self, who: Identity, rtype: RequestType, verdict: Verdict) -> Verdict:
        assert self.quota is not None  # only called with a quota
        answer = await self.quota.check(who.tenant)
        if answer is None or answer[0]:
            return verdict
        self.gate.admission.tally.count(who.tenant, who.tier, rtype, REJECT, verdict.shadow)
        if verdict.shadow:
            return verdict
        return _refused(verdict, min(60.0, max(1.0, answer[1])), "tenant")

    # ------------------------------------------------------------ the response cache

    def _cache_only(self, who: Identity, verdict: Verdict) -> bool:
        """True when the level leaves this tier the cache only (a miss has just been seen, or none may be)."""
        return self.cache is not None and verdict.level >= CACHE_ONLY_LEVEL and who.tier != self.top_tier

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

    async def _keep_answer(self, key: str, status: int, content_type: str, payload: bytes, streamed: bool) -> None:
        await self._store(key, CachedAnswer(status, content_type, payload, streamed, time.time()))

    async def _store(self, key: str, answer: CachedAnswer) -> None:
        assert self.cache is not None  # only called with a cache key
        if len(answer.body) > self.cache.max_entry_bytes:
            self.cache.counts["too_large"] += 1
        elif await self.cache.put(self.gate.service, key, answer):
            self.counts["cache_stored"] += 1

    # ------------------------------------------------------------ deferred work

    async def _defer(self, request: web.Request, who: Identity, rtype: RequestType, tokens: int, body: bytes,
                     verdict: Verdict) -> web.Response:
        """Put the request on the deferral lane; 202 with its task id once the lane has it."""
        deadline_s = self._deadline(request)  # checked at classification: well formed here
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
            return _error(503, f"{exc}. Please retry after 5 s.", "server_error", "deferral_unavailable", None,
                          {"Retry-After": "5", "retry-after-ms": "5000", **self._answer_headers(who, rtype, verdict)})
        self.counts["deferred"] += 1
        return web.json_response({"task_id": task.id, "state": view.state, "deadline": task.deadline,
                                  "status_url": f"/_surgegate/tasks/{task.id}"}, status=202,
                                 headers=self._answer_headers(who, rtype, verdict))

    def _admit_deferred(self, task: DeferredTask) -> Verdict:
        return self.gate.admit(task.tenant, task.tier, "batch", task.tokens, requeued=True)

    async def _run_deferred(self, task: DeferredTask, verdict: Verdict) -> tuple[int, bytes]:
        """Run a task of the in-memory lane upstream, as replayed batch work."""
        who = Identity(task.tenant, task.tier)
        body = task.body
        if verdict.max_tokens is not None and task.path.split("?")[0] in INFERENCE_PATHS:
            body = with_token_cap(body, verdict.max_tokens, task.path)
        started = time.perf_counter()
        outcome, _, payload = await self.relay.fetch(task.method, task.path, task.headers, body, _Estimate(body),
                                                     base=self._upstream_for(who, "batch"))
        self._record(who, "batch", outcome, started, True)
        self.counts["deferred_done"] += 1
        return outcome.status, payload

    async def task_view(self, request: web.Request) -> web.Response:
        """A deferred task's state, to the tenant that created it (or the API token's holder): 400 for a malformed
        id, 404 for an unknown task or another tenant's, 503 while task states cannot be read."""
        task_id = request.match_info["task_id"]
        if not _TASK_ID.fullmatch(task_id):
            return _error(400, "task_id must be 32 lowercase hex digits", "invalid_request_error",
                          "malformed_task_id", "task_id")
        try:
            view = await self.lane.view(task_id)
        except (redis.RedisError, OSError):
            return _error(503, "task states are unavailable (Redis does not answer); retry shortly", "server_error",
                          "tasks_unavailable", None, {"Retry-After": "1"})
        if view is None or not self._may_read(request, view):
            return _error(404, "no such task (unknown, expired, or not yours)", "invalid_request_error",
                          "unknown_task", "task_id")
        return web.Response(body=msgspec.json.encode(view), content_type="application/json")

    def _may_read(self, request: web.Request, view: TaskView) -> bool:
        auth = request.headers.get("Authorization", "")
        if self.api_token and hmac.compare_digest(auth.encode("utf-8", "surrogateescape"),
                                                  f"Bearer {self.api_token}".encode()):
            return True
        try:
            return self.identifier.identify(request.headers).tenant == view.tenant
        except BadRequest:
            return False

    def status_view(self) -> dict[str, Any]:
        lane = self.lane
        return {**self.gate.status(), "proxy": {
            **self.counts, **self.relay.counts, "bad_requests": dict(self.bad_requests),
            "deferred_queued": lane.queued if isinstance(lane, MemoryLane) else None,
            "regions": dict(self.regions.counts) if self.regions is not None else None,
            "global_quota": dict(self.quota.counts) if self.quota is not None else None}}

    def _upstream_for(self, who: Identity, rtype: RequestType) -> str | None:
        """None for the primary upstream (or pool), or the overflow one for lower tiers and batch work while the
        pool's decision asks overflow replicas; the top tier's realtime traffic always stays on the primary."""
        if self.overflow is None or self.gate.overflow() == 0:
            return None
        if rtype == "realtime" and who.tier == self.top_tier:
            return None
        self.counts["to_overflow"] += 1
        return self.overflow




class _Estimate:
    """A request's input tokens estimated from its body, worked out once, when first asked."""

    __slots__ = ("body", "value")

    def __init__(self, body: bytes) -> None:
        self.body = body
        self.value: int | None = None

    def __call__(self) -> int:
        if self.value is None:
            try:
                self.value = estimate_prompt_tokens(msgspec.json.decode(self.body)) if self.body.strip() else 0
            except (msgspec.DecodeError, RecursionError):
                self.value = 0
        return self.value


def _refused(verdict: Verdict, retry_after_s: float, bucket: str | None = None) -> Verdict:
    """``verdict`` turned into a refusal after the gate had admitted it (another limit refused)."""
    return Verdict(REJECT, retry_after_s, verdict.version, verdict.level, verdict.state, False, REJECT, None,
                   bucket or verdict.bucket)


def _param_of(message: str) -> str | None:
    """The field a msgspec error names (``... - at `$.max_tokens```), or None."""
    found = re.search(r"\$\.([A-Za-z_][\w.]*)", message)
    return found.group(1) if found else None


def _error(status: int, message: str, kind: str, code: str | None, param: str | None,
           headers: Mapping[str, str] | None = None) -> web.Response:
    return web.Response(status=status, body=openai_error(message, kind, code, param),
                        content_type="application/json", headers=headers)
