"""Envoy's global rate limit service (v3 ``ShouldRateLimit``), answered by the edge gate.

Envoy, Istio and Envoy-based AI gateways ask a rate limit service before they
forward a request. This one answers from an :class:`~surgegate.edge.gate.EdgeGate`:
the same admission state (tier buckets, tenant limits, the total and the
service's safe capacity from the throttle decision in force, the fallback when
decisions stop) that the edge gateway uses, so a request is admitted through
Envoy exactly when it would be at surgegate's own edge.

What a request says, and how it is read:

- ``domain`` is the service (one process gates one service); another domain is
  INVALID_ARGUMENT naming ``domain``.
- Each descriptor describes the request with entries ``tenant``, ``tier`` and
  ``request_type`` (``realtime`` or ``batch``); a missing one takes the default
  (tenant ``anonymous``, the service's lowest tier, realtime). Other keys
  (Envoy's ``generic_key``, ``remote_address``, ...) are ignored, so a route's
  existing actions can stay. A bad value of a known key is INVALID_ARGUMENT
  naming ``descriptors[i].key``.
- Every descriptor is one request to admit; if any is refused the answer is
  OVER_LIMIT (Envoy's rule: all descriptors must pass).
- ``hits_addend`` (the descriptor's, else the request's) is the request's token
  cost: above 1 it is also reserved from the tier's token budget
  (``tokens_per_minute`` of the service's tier), and refused when the budget
  lacks room. 0 or 1 is a request without a token cost.

The answer carries, per descriptor, the class's limit (requests per second),
what remains now, and for a refusal the wait before a retry; refusals add
``retry-after`` and ``x-ratelimit-*`` headers to Envoy's 429. A ``defer``
verdict (batch work while the decision defers it) is OVER_LIMIT here: Envoy has
no queue to put it in. In shadow mode every answer is OK and the refusals are
only counted. Refusals are reported to the pipeline as the edge reports them.
"""

from __future__ import annotations

import math
import re
import time
from collections import Counter
from typing import Any

import grpc
from envoy.service.ratelimit.v3 import rls_pb2, rls_pb2_grpc
from prometheus_client import CollectorRegistry, Histogram
from prometheus_client import Counter as PromCounter

from surgegate.admission.actions import ADMIT
from surgegate.admission.tokens import TokenBudgets
from surgegate.edge.gate import EdgeGate
from surgegate.schemas.fields import NAME_PATTERN

OK, OVER_LIMIT = rls_pb2.RateLimitResponse.OK, rls_pb2.RateLimitResponse.OVER_LIMIT
REQUEST_TYPES = ("realtime", "batch")
_NAME = re.compile(NAME_PATTERN.strip("^$"))


class BadDescriptor(ValueError):
    """A request field that cannot be read; the message names it."""


class RateLimitService(rls_pb2_grpc.RateLimitServiceServicer):
    """``envoy.service.ratelimit.v3.RateLimitService`` over one service's :class:`EdgeGate`."""

    def __init__(self, gate: EdgeGate, *, default_tenant: str = "anonymous", default_tier: str | None = None,
                 registry: CollectorRegistry | None = None) -> None:
        self.gate = gate
        self.service = gate.service
        tiers = gate.admission.tier_order  # highest first: the default is the lowest
        self.default_tenant = default_tenant
        self.default_tier = default_tier or tiers[-1]
        if self.default_tier not in tiers:
            raise ValueError(f"default_tier={self.default_tier!r}: not a tier of {self.service!r} "
                             f"(known: {', '.join(tiers)})")
        self.budgets = TokenBudgets()
        self.tier_tpm = {t: v * gate.admission.share for t, v in gate.config.tier_tokens_per_minute.items()}
        self.counts: Counter[str] = Counter()
        self.answers = PromCounter("surgegate_ratelimit_answers", "ShouldRateLimit answers by code",
                                   ["code"], registry=registry)
        self.seconds = Histogram("surgegate_ratelimit_answer_seconds", "Time to answer one ShouldRateLimit",
                                 registry=registry, buckets=(5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 1e-2, 0.1))

    # ------------------------------------------------------------ reading a request

    def _entries(self, index: int, descriptor: Any) -> tuple[str, str, str]:
        entries = {e.key: e.value for e in descriptor.entries}
        tenant = entries.get("tenant", self.default_tenant)
        if not _NAME.fullmatch(tenant):
            raise BadDescriptor(f"descriptors[{index}].tenant: {tenant!r} is not a tenant name "
                                "(1-64 of A-Z a-z 0-9 _ . : -)")
        tier = entries.get("tier", self.default_tier)
        if tier not in self.gate.admission.tiers:
            raise BadDescriptor(f"descriptors[{index}].tier: unknown tier {tier!r} of {self.service!r} "
                                f"(known: {', '.join(sorted(self.gate.admission.tiers))})")
        rtype = entries.get("request_type", "realtime")
        if rtype not in REQUEST_TYPES:
            raise BadDescriptor(f"descriptors[{index}].request_type: {rtype!r} is not realtime or batch")
        return tenant, tier, rtype

    def decide(self, request: Any) -> Any:
        """The RateLimitResponse for one request (BadDescriptor if a field cannot be read)."""
        if request.domain != self.service:
            raise BadDescriptor(f"domain: {request.domain!r} is not the service this rate limit service gates "
                                f"({self.service!r})")
        if not request.descriptors:
            raise BadDescriptor("descriptors: at least one is required")
        read = [self._entries(i, d) for i, d in enumerate(request.descriptors)]  # every field checked first
        response = rls_pb2.RateLimitResponse(overall_code=OK)
        wait_s = 0.0
        for descriptor, (tenant, tier, rtype) in zip(request.descriptors, read):
            hits = int(descriptor.hits_addend.value if descriptor.HasField("hits_addend") else request.hits_addend)
            tokens = hits if hits > 1 else 0
            verdict = self.gate.admit(tenant, tier, rtype, tokens)  # type: ignore[arg-type]  # checked above
            refused, wait = verdict.action != ADMIT, verdict.retry_after_s
            if not refused and tokens and not verdict.shadow:
                ok, wait = self.budgets.reserve(tenant, tier, tokens, tier_tpm=self.tier_tpm.get(tier),
                                                tenant_tpm=None, now=time.monotonic())
                if not ok:
                    refused = True
                    self.counts["refused_tokens"] += 1
            rate, _, available = self.gate.admission.request_limit(tenant, tier, rtype,  # type: ignore[arg-type]
                                                                   bucket=verdict.bucket)
            status = response.statuses.add(code=OVER_LIMIT if refused else OK)
            if math.isfinite(rate):
                status.current_limit.requests_per_unit = max(1, round(rate))
                status.current_limit.unit = rls_pb2.RateLimitResponse.RateLimit.SECOND
                status.current_limit.name = f"{self.service}/{tier}/{rtype}"
                status.limit_remaining = max(0, math.floor(available))
            if refused:
                wait_s = max(wait_s, wait)
                status.duration_until_reset.FromNanoseconds(int(wait * 1e9))
                response.overall_code = OVER_LIMIT
        if response.overall_code == OVER_LIMIT:
            retry = max(1, math.ceil(wait_s))
            for key, value in (("retry-after", str(retry)), ("x-ratelimit-reset-requests", f"{retry}s"),
                               ("x-surgegate-decision-version", str(verdict.version))):
                response.response_headers_to_add.add(key=key, value=value)
        return response

    # ------------------------------------------------------------ the gRPC method

    async def ShouldRateLimit(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        started = time.perf_counter()
        try:
            response = self.decide(request)
        except BadDescriptor as exc:
            self.answers.labels("INVALID_ARGUMENT").inc()
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
            raise  # abort raises; not reached
        code = "OVER_LIMIT" if response.overall_code == OVER_LIMIT else "OK"
        self.answers.labels(code).inc()
        self.seconds.observe(time.perf_counter() - started)
        return response


async def start_server(service: RateLimitService, address: str) -> tuple[grpc.aio.Server, int]:
    """A started ``grpc.aio`` server for ``service`` on ``address`` (``host:port``, port 0 picks one)."""
    server = grpc.aio.server()
    rls_pb2_grpc.add_RateLimitServiceServicer_to_server(service, server)
    port = server.add_insecure_port(address)
    if port == 0:
        raise OSError(f"cannot listen on {address}")
    await server.start()
    return server, port
