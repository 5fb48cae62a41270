"""The edge gate that an edge (gateway, LB plugin, LLM API server) embeds.

:class:`EdgeGate` keeps an :class:`~surgegate.admission.gate.Admission` fed with the
service's throttle decisions and reports what it saw:

- decisions come from the compacted sg.decisions.throttle, read from the
  beginning by a background thread (partitions assigned, no group to join),
  and, faster at start-up, from the Redis mirror's latest decision;
- once a second a reporter thread sends one RequestSummary per scope (or
  single RequestEvents) through the producer SDK, with the gate's state;
- :meth:`admit` answers from local buckets only and never waits on the network.

:class:`GlobalQuota` adds optional per-tenant contracts shared by all edges: one
GCRA Lua script in Redis. When Redis is unreachable it answers ``None`` and the
edge keeps to its local buckets.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping
from typing import Any, Literal

import msgspec
import redis

from surgegate.admission.gate import Admission, Fallback, Verdict
from surgegate.admission.gate import hold_after_s as _hold_after
from surgegate.control.config import DEFAULT_TIERS, ServiceConfig
from surgegate.edge.metrics import GateMetrics
from surgegate.edge.shares import DemandShares
from surgegate.errors import DeliveryFailed, ProducerBufferFull
from surgegate.gpu.pools import PoolBook
from surgegate.schemas.decisions import ThrottleDecision
from surgegate.schemas.telemetry import RequestEvent, RequestType, Status
from surgegate.settings import RedisTarget, Settings
from surgegate.streams.kafka import follow_from_start
from surgegate.streams.producer import TelemetryProducer
from surgegate.streams.redis_client import async_client, sync_client
from surgegate.streams.store import Keys
from surgegate.streams.topics import Topics

log = logging.getLogger(__name__)

REPORT_INTERVAL_MS = 1000
REDIS_TIMEOUT_S = 0.5
#: The broker answers a fetch after at most this long, so a new decision is applied within it.
FETCH_WAIT_MS = 50
#: After a Redis failure the global quota is skipped (local buckets only) for this long.
QUOTA_BACKOFF_S = 1.0

Report = Literal["summaries", "events", "off"]


class EdgeGate:
    """Admission for one service at one edge, fed by decisions, reporting telemetry.

    ``tiers`` default to the service's configured tiers (``SURGEGATE_SERVICES``),
    and the fallback to :meth:`Fallback.conservative` of that configuration.
    ``share`` is this edge's part of the service's traffic.
    """

    def __init__(self, settings: Settings, service: str, *, edge_id: str, share: float = 1.0,
                 shadow: bool = False, tiers: tuple[str, ...] | None = None, fallback: Fallback | None = None,
                 report: Report = "summaries", bootstrap_from_redis: bool = True,
                 hold_after_s: float | None = None, metrics: GateMetrics | None = None,
                 follow_scaling: bool = False, share_from_demand: bool = False) -> None:
        if report not in ("summaries", "events", "off"):
            raise ValueError(f"report={report!r}: must be summaries, events or off")
        config = settings.service_configs().get(service) or ServiceConfig(service=service)
        #: the service's control settings (tiers, token budgets)
        self.config = config
        self.settings = settings
        self.service = service
        self.edge_id = edge_id
        self.report = report
        self.topics = Topics(settings.topic_prefix)
        self.admission = Admission(
            service, tiers or config.tiers or DEFAULT_TIERS, share=share, shadow=shadow,
            fallback=fallback or Fallback.conservative(config, share), floor_share=config.floor_share,
            hold_after_s=hold_after_s if hold_after_s is not None else _hold_after(settings.window_s))
        self.bootstrap_from_redis = bootstrap_from_redis
        #: the configured share (the fallback), and the edges' demands where they meet (with Redis)
        self.configured_share = share
        self.shares: DemandShares | None = None
        if share_from_demand and settings.redis:
            self.shares = DemandShares(sync_client(settings.redis_target(), timeout_s=0.5),
                                       Keys.for_topic_prefix(settings.topic_prefix).edge_demand(service), edge_id)
        #: Prometheus metrics, shared by the process's gates when given (else this gate's own registry)
        self.metrics = metrics if metrics is not None else GateMetrics()
        self.metrics.attach(self)
        #: the service's pool's newest scaling decision (followed when ``follow_scaling``): whether it asks overflow
        self.pools = PoolBook()
        self.follow_scaling = follow_scaling
        self.feed: dict[str, Any] = {"records": 0, "bad_records": 0, "from_redis": 0, "errors": 0,
                                     "last_error": None}
        self.reported = {"summaries": 0, "events": 0, "send_failures": 0}
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._producer: TelemetryProducer | None = None
        self._decoder = msgspec.json.Decoder(ThrottleDecision)

    # ------------------------------------------------------------ lifecycle

    def start(self) -> EdgeGate:
        """Bootstrap from Redis (if reachable), then follow the decision topic and report."""
        if self.bootstrap_from_redis and self.settings.redis:
            self._bootstrap_from_redis()
        self._spawn(self._follow_decisions, "decisions")
        if self.follow_scaling:
            self._spawn(self._follow_scaling, "scaling")
        if self.report != "off":
            self._producer = TelemetryProducer(self.settings, client_id=f"edge-{self.edge_id}")
            self._spawn(self._report_loop, "report")
        return self

    def _spawn(self, target, name: str) -> None:
        t = threading.Thread(target=target, name=f"edge-{self.edge_id}-{name}", daemon=True)
        t.start()
        self._threads.append(t)

    def close(self) -> None:
        """Stop following decisions, send the last report and flush."""
        self._stop.set()
        for t in self._threads:
            t.join(timeout=10)
        if self._producer is not None:
            # stamped as the report interval in progress, like every other report: a span ending at
            # "now" would cross a window boundary in one close of ten and be dead-lettered
            self._report_once(_interval_end(time.time() * 1000))
            try:
                self._producer.flush(timeout=5)
            except DeliveryFailed as exc:
                self.reported["send_failures"] += 1
                log.warning("edge %s: last report not delivered: %s", self.edge_id, exc)

    def __enter__(self) -> EdgeGate:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------ the hot path

    def admit(self, tenant: str, tier: str, request_type: RequestType = "realtime", tokens: int = 0,
              requeued: bool = False) -> Verdict:
        """admit / defer / reject for one request (see :meth:`Admission.admit`)."""
        verdict = self.admission.admit(tenant, tier, request_type, tokens, requeued)
        would = verdict.would
        self.metrics.verdict(self.service, tier, request_type,
                             would if would == verdict.action else f"would_{would}")
        return verdict

    def record(self, tenant: str, tier: str, request_type: RequestType, status: Status, latency_ms: float,
               queue_ms: float = 0.0, input_tokens: int = 0, output_tokens: int = 0, replayed: bool = False,
               ttft_ms: float | None = None, itl_ms: float | None = None, cache_hit: bool = False) -> None:
        """The outcome of a request this edge forwarded; ``replayed`` for one run from the deferred queue,
        ``ttft_ms`` / ``itl_ms`` for a streamed response, ``cache_hit`` for one answered from the cache."""
        ev = RequestEvent(ts=int(time.time() * 1000), service=self.service, tenant=tenant, tier=tier,
                          edge_id=self.edge_id, latency_ms=max(0.0, latency_ms), request_type=request_type,
                          queue_ms=max(0.0, queue_ms), status=status, input_tokens=input_tokens,
                          output_tokens=output_tokens, replayed=replayed, cache_hit=cache_hit,
                          ttft_ms=None if ttft_ms is None else max(0.0, ttft_ms),
                          itl_ms=None if itl_ms is None else max(0.0, itl_ms))
        self.admission.tally.served(ev)
        self.metrics.served(self.service, tier, status, ev.latency_ms / 1000,
                            None if ev.ttft_ms is None else ev.ttft_ms / 1000,
                            None if ev.itl_ms is None else ev.itl_ms / 1000, cache_hit)

    def status(self) -> dict:
        """The admission status plus the feed's and the reporter's counters."""
        return {**self.admission.status(), "edge_id": self.edge_id, "feed": dict(self.feed),
                "reported": dict(self.reported)}

    # ------------------------------------------------------------ decisions

    def offer(self, raw: bytes) -> bool:
        """Apply one encoded decision; a record that does not decode is counted, not raised."""
        try:
            decision = self._decoder.decode(raw)
        except msgspec.DecodeError as exc:
            self.feed["bad_records"] += 1
            self.feed["last_error"] = f"bad decision record: {exc}"
            return False
        applied = self.admission.apply(decision)
        if applied:
            self.metrics.decision_applied(self.service, time.time() - decision.issued_at / 1000)
        return applied

    def _bootstrap_from_redis(self) -> None:
        key = Keys.for_topic_prefix(self.settings.topic_prefix).latest_decision(self.service)
        client = sync_client(self.settings.redis_target(), timeout_s=REDIS_TIMEOUT_S)
        try:
            raw = client.get(key)
        except redis.RedisError as exc:
            self.feed["errors"] += 1
            self.feed["last_error"] = f"redis bootstrap: {exc}"
            log.info("edge %s: no bootstrap from Redis (%s); waiting for the decision topic", self.edge_id, exc)
            return
        finally:
            client.close()
        if isinstance(raw, bytes) and self.offer(raw):
            self.feed["from_redis"] += 1

    def _follow_decisions(self) -> None:
        try:
            follow_from_start(self.settings, self.topics.throttle, f"edge-{self.edge_id}", self._stop,
                              self._on_record, self._on_kafka_error, fetch_wait_ms=FETCH_WAIT_MS)
        except Exception as exc:  # the gate keeps admitting on what it has; say why the feed stopped
            self.feed["errors"] += 1
            self.feed["last_error"] = f"decision feed stopped: {exc}"
            log.exception("edge %s: decision feed stopped", self.edge_id)

    def _follow_scaling(self) -> None:
        try:
            follow_from_start(self.settings, self.topics.scaling, f"edge-{self.edge_id}-scaling", self._stop,
                              self.pools.offer, self._on_kafka_error, fetch_wait_ms=FETCH_WAIT_MS)
        except Exception as exc:  # routing keeps to the last decision seen; say why the feed stopped
            self.feed["errors"] += 1
            self.feed["last_error"] = f"scaling feed stopped: {exc}"
            log.exception("edge %s: scaling feed stopped", self.edge_id)

    def overflow(self) -> int:
        """Replicas the newest scaling decision of this service's pool asks of the overflow pool (0: none)."""
        decision = self.pools.get(self.config.pool) if self.config.pool else None
        return decision.overflow.replicas if decision is not None and decision.overflow is not None else 0

    def _on_record(self, raw: bytes) -> None:
        self.feed["records"] += 1
        self.offer(raw)

    def _on_kafka_error(self, err: object) -> None:
        self.feed["errors"] += 1
        self.feed["last_error"] = str(err)

    # ------------------------------------------------------------ reporting

    def _report_loop(self) -> None:
        while True:
            now = time.time() * 1000
            boundary = _interval_end(now)
            if self._stop.wait((boundary - now) / 1000):
                return
            self._report_once(boundary)

    def _report_once(self, boundary_ms: int) -> None:
        summaries = self.admission.tally.drain(
            ts=boundary_ms - REPORT_INTERVAL_MS, duration_ms=REPORT_INTERVAL_MS, service=self.service,
            edge_id=self.edge_id, gate=self.admission.state(), shadow=self.admission.shadowing())
        if self.shares is not None:  # this second's demand at this edge: every request that met the gate
            arrivals = sum(s.requests + s.deferred for s in summaries) * 1000 / REPORT_INTERVAL_MS
            share = self.shares.update(arrivals)
            self.admission.set_share(share if share is not None else self.configured_share)
        producer = self._producer
        if producer is None or not summaries:
            return
        try:
            if self.report == "summaries":
                for s in summaries:
                    producer.send_summary(s)
                self.reported["summaries"] += len(summaries)
            else:
                for ev in _as_events(summaries):
                    producer.send_request(ev)
                    self.reported["events"] += 1
        except ProducerBufferFull as exc:
            self.reported["send_failures"] += 1
            log.warning("edge %s: report dropped: %s", self.edge_id, exc)
        producer.poll()


def _interval_end(now_ms: float) -> int:
    """The end of the report interval ``now_ms`` falls in (intervals divide every window)."""
    return int(now_ms // REPORT_INTERVAL_MS + 1) * REPORT_INTERVAL_MS


def _as_events(summaries) -> list[RequestEvent]:
    """Refusals as single events (served requests were recorded one by one already)."""
    out = []
    for s in summaries:
        base = dict(ts=s.ts, service=s.service, tenant=s.tenant, tier=s.tier, edge_id=s.edge_id,
                    request_type=s.request_type, latency_ms=0.0)
        out += [RequestEvent(status="throttled", **base)] * s.throttled
        out += [RequestEvent(status="deferred", **base)] * s.deferred
    return out


# -------------------------------------------------------------------- global quotas

#: GCRA (the generic cell rate algorithm) over one key: the theoretical arrival
#: time (TAT) moves by one emission interval per request; a request is allowed
#: while TAT - now stays within the burst tolerance. Returns {allowed, retry_ms}.
GCRA_LUA = """
local emission = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local new_tat = tat + emission
local allow_at = new_tat - tolerance
if allow_at > now then
  return {0, math.ceil(allow_at - now)}
end
redis.call('SET', KEYS[1], new_tat, 'PX', math.ceil(new_tat - now) + 1000)
return {1, 0}
"""


class Contract:
    """A tenant's contracted rate across all edges, and the burst it may hold."""

    __slots__ = ("rate_rps", "burst")

    def __init__(self, rate_rps: float, burst: float) -> None:
        if rate_rps <= 0 or burst < 1:
            raise ValueError(f"contract rate_rps={rate_rps!r} burst={burst!r}: need rate_rps > 0 and burst >= 1")
        self.rate_rps = rate_rps
        self.burst = burst


class GlobalQuota:
    """Per-tenant contracts enforced across edges in Redis; local buckets when Redis is down."""

    def __init__(self, target: RedisTarget | str, contracts: Mapping[str, Contract], *, prefix: str = "sg:",
                 timeout_s: float = 0.05) -> None:
        self.contracts = dict(contracts)
        self._client = async_client(target, timeout_s=timeout_s)
        self._script = self._client.register_script(GCRA_LUA)
        self._prefix = f"{prefix}quota:"
        self._skip_until = 0.0
        self.counts = {"allowed": 0, "refused": 0, "unavailable": 0}

    async def check(self, tenant: str) -> tuple[bool, float] | None:
        """``(allowed, retry_after_s)`` for one request of ``tenant``; ``None`` when there is
        no contract or Redis cannot answer (the caller keeps its local verdict)."""
        contract = self.contracts.get(tenant)
        if contract is None:
            return None
        if time.monotonic() < self._skip_until:
            self.counts["unavailable"] += 1
            return None
        emission = 1000.0 / contract.rate_rps
        try:
            allowed, retry_ms = await self._script(keys=[self._prefix + tenant],
                                                   args=[emission, emission * contract.burst])
        except (redis.RedisError, OSError) as exc:
            self._skip_until = time.monotonic() + QUOTA_BACKOFF_S
            self.counts["unavailable"] += 1
            log.info("global quota unavailable (%s); local buckets only for %.0f s", exc, QUOTA_BACKOFF_S)
            return None
        self.counts["allowed" if allowed else "refused"] += 1
        return bool(allowed), retry_ms / 1000

    async def close(self) -> None:
        await self._client.aclose()
