"""Admission at an edge: token buckets fed by throttle decisions.

This is the pure core of the edge gate (:mod:`surgegate.edge.gate` wires it
to Kafka, Redis and the telemetry producer). :meth:`Admission.admit` runs on
every request, so it only touches local state: two clock reads, a dict lookup
or two and one or two token buckets.

Which rules apply:

- ``live``: the newest decision, while decisions keep arriving;
- ``holding``: no decision for ``hold_after_s``, or for half of the lease
  the last one had left when it arrived, whichever is sooner; the last one
  still applies until its ``valid_until`` (fail-static), so a gate whose
  decisions stop always holds before it falls back;
- ``fallback``: past ``valid_until`` (or before any decision): the static
  :class:`Fallback` limits.

A decision's rates are service-wide; an edge applies ``share`` of them (its
part of the traffic). Besides each class's bucket, the decision's safe
capacity is one bucket for the service: the classes' rates may each be
generous (a class can grow into room the others leave), but together they
never admit more than it; the top tier's realtime requests draw on it
without being refused by it, so a surge everywhere is refused below them.
A decision with an older version never replaces a newer one. In shadow mode
(the gate's or the decision's) every request is admitted and the verdict it
would have had is recorded.

>>> from surgegate.schemas.decisions import ThrottleDecision, TierLimit
>>> gate = Admission("chat", tiers=("pro", "free"), clock=lambda: 0.0, wall=lambda: 0.0)
>>> gate.apply(ThrottleDecision(service="chat", version=7, issued_at=0, valid_until=30_000, level=2,
...     mode="enforce", tiers={"free": TierLimit(realtime_rps=1, batch_rps=0, burst=1)}, tenants={},
...     defer_batch=True, breaker="closed", forecast_upper_rps=90, safe_rps=50, reason="r"))
True
>>> [gate.admit("acme", "free").action for _ in range(2)]
['admit', 'reject']
>>> gate.admit("acme", "free", "batch").action
'defer'
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Mapping

from surgegate.admission.actions import ADMIT, DEFER, REJECT
from surgegate.admission.tally import Tally
from surgegate.control.config import ServiceConfig
from surgegate.schemas.decisions import ThrottleDecision
from surgegate.schemas.telemetry import GateState, RequestType
from surgegate.settings import DEFAULT_WINDOW_S

#: Without decisions for this many windows the gate is ``holding``. A decision comes every window, and it
#: reaches an edge a window or so after it was issued (lateness, then the decision itself), so of its
#: three-window lease about two are left: holding must begin well before that runs out, or a gate would go
#: from live straight to fallback and never hold.
HOLD_WINDOWS = 1.5
#: Retry-After bounds: a client is never told to come back sooner or later than this.
MIN_RETRY_S, MAX_RETRY_S = 1.0, 60.0
#: Retry-After for a class whose admitted rate is zero: the next decision may lift it.
ZERO_RATE_RETRY_S = 10.0
#: The decision's safe capacity is one bucket for the whole service, holding this many seconds of it: a
#: surge inside a window, in every class at once, is refused beyond it for all but the top tier's realtime.
SAFE_BURST_S = 2.0


def hold_after_s(window_s: float) -> float:
    """Seconds without a decision before a gate is ``holding``: :data:`HOLD_WINDOWS` windows.

    >>> hold_after_s(10), hold_after_s(5)
    (15.0, 7.5)
    """
    return HOLD_WINDOWS * window_s


class UnknownTier(ValueError):
    """A request named a tier the service does not have."""


class Bucket:
    """A token bucket: ``rate`` per second, holding at most ``burst``; starts full."""

    __slots__ = ("rate", "burst", "tokens", "stamp")

    def __init__(self, rate: float, burst: float, now: float, tokens: float | None = None) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = burst if tokens is None else min(tokens, burst)
        self.stamp = now

    def take(self, now: float) -> float:
        """Take one token: 0.0 if taken, else the seconds until one is there."""
        tokens = self.tokens + (now - self.stamp) * self.rate
        if tokens > self.burst:
            tokens = self.burst
        self.stamp = now
        if tokens >= 1.0:
            self.tokens = tokens - 1.0
            return 0.0
        self.tokens = tokens
        return (1.0 - tokens) / self.rate if self.rate > 0 else ZERO_RATE_RETRY_S

    def force(self, now: float) -> None:
        """Take one token whatever is there: the balance may go down to ``-burst`` (a debt later takers repay)."""
        tokens = self.tokens + (now - self.stamp) * self.rate
        self.tokens = max(-self.burst, min(tokens, self.burst) - 1.0)
        self.stamp = now

    def available(self, now: float) -> float:
        """Tokens in the bucket at ``now``, refilled, without taking any."""
        return min(self.tokens + (now - self.stamp) * self.rate, self.burst)

    def refund(self) -> None:
        """Give back a token taken by a request that another bucket refused."""
        self.tokens = min(self.tokens + 1.0, self.burst)


class Unlimited(Bucket):
    """A bucket that never runs dry."""

    __slots__ = ()

    def __init__(self, now: float) -> None:
        super().__init__(math.inf, math.inf, now)

    def take(self, now: float) -> float:
        return 0.0

    def refund(self) -> None:
        pass


@dataclasses.dataclass(frozen=True)
class Fallback:
    """The static policy once decisions have expired: per-tier limits and a service total.

    A tier without a limit of its own is admitted up to ``total_rps``;
    ``total_rps=None`` admits everything. With ``protect_top``, the top tier's
    realtime requests draw on the total without being refused by it (their
    tier's limit bounds them), as a decision's safe capacity is drawn on: a
    control plane that is away does not take priority away. A plain static
    limit (a baseline's, in the simulator) is tier-blind.
    """

    total_rps: float | None = None
    tier_rps: Mapping[str, float] = dataclasses.field(default_factory=dict)
    burst_s: float = 2.0
    protect_top: bool = False

    @classmethod
    def conservative(cls, config: ServiceConfig, share: float = 1.0) -> Fallback:
        """Provisioned capacity (replicas x replica rps x target utilisation), this edge's share.

        Each tier may use its reserved floor plus the unreserved rest, so a
        single tier cannot take all of it and the top tiers keep room.
        """
        total = config.replicas * config.replica_rps * config.target_utilisation * share
        free = max(0.0, 1.0 - sum(config.floor_share.values()))
        return cls(total_rps=total,
                   tier_rps={t: total * (config.floor_share.get(t, 0.0) + free) for t in config.tiers},
                   protect_top=True)


class Verdict:
    """What applies to one request.

    ``action`` is admit, defer or reject; ``would`` what it would have been when
    only watching (shadow); ``max_tokens`` caps a degraded request's output;
    ``bucket`` names the bucket that refused (``tier``, ``tenant`` or ``service``:
    the decision's safe capacity, shared by every class), None when none did.
    """

    __slots__ = ("action", "retry_after_s", "version", "level", "state", "shadow", "would", "max_tokens", "bucket")

    def __init__(self, action: str, retry_after_s: float, version: int, level: int, state: str,
                 shadow: bool, would: str, max_tokens: int | None, bucket: str | None = None) -> None:
        self.action = action
        self.retry_after_s = retry_after_s
        self.version = version
        self.level = level
        self.state = state
        self.shadow = shadow
        self.would = would
        self.max_tokens = max_tokens
        self.bucket = bucket

    def __repr__(self) -> str:
        return (f"Verdict({self.action}, would={self.would}, retry_after_s={self.retry_after_s:g}, "
                f"version={self.version}, level={self.level}, state={self.state}, shadow={self.shadow})")


class _TierRules:
    __slots__ = ("realtime", "batch", "max_tokens")

    def __init__(self, realtime: Bucket, batch: Bucket, max_tokens: int | None) -> None:
        self.realtime = realtime
        self.batch = batch
        self.max_tokens = max_tokens


class _Rules:
    """One decision (or the fallback) turned into buckets."""

    __slots__ = ("version", "level", "valid_until_s", "shadow", "defer_batch", "tiers", "tenants", "total",
                 "missing", "reason", "safe")

    def __init__(self, version: int, level: int, valid_until_s: float, shadow: bool, defer_batch: bool,
                 tiers: dict[str, _TierRules], tenants: dict[str, Bucket], total: Bucket | None,
                 missing: Callable[[str], _TierRules], reason: str, safe: Bucket | None = None) -> None:
        self.version = version
        self.level = level
        self.valid_until_s = valid_until_s
        self.shadow = shadow
        self.defer_batch = defer_batch
        self.tiers = tiers
        self.tenants = tenants
        self.total = total
        self.missing = missing
        self.reason = reason
        #: the decision's safe capacity, shared by every class: the top tier's realtime requests draw
        #: on it without being refused, the rest are refused when it is spent
        self.safe = safe


def _carry(old: Bucket | None, rate: float, burst: float, now: float) -> Bucket:
    # a new decision keeps what the class has already used, so it cannot refill a bucket at once
    if old is None:
        return Bucket(rate, burst, now)
    return Bucket(rate, burst, now, tokens=old.available(now))


class Admission:
    """Per-service admission state at one edge.

    ``tiers`` are the service's tiers; a request naming another raises
    :class:`UnknownTier`. ``floor_share`` is the reserved share of safe
    capacity per tier, used for a tier the newest decision does not list (it
    had no traffic when the decision was made).
    """

    def __init__(self, service: str, tiers: tuple[str, ...], *, share: float = 1.0, shadow: bool = False,
                 fallback: Fallback | None = None, floor_share: Mapping[str, float] | None = None,
                 hold_after_s: float = HOLD_WINDOWS * DEFAULT_WINDOW_S, clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time) -> None:
        if not 0 < share <= 1:
            raise ValueError(f"share={share!r}: must be within (0, 1]")
        if not tiers:
            raise ValueError("tiers: name at least one tier")
        self.service = service
        self.tiers = frozenset(tiers)
        #: the tiers in the order given: highest priority first
        self.tier_order: tuple[str, ...] = tuple(dict.fromkeys(tiers))
        self.share = share
        self.shadow = shadow
        self.fallback = fallback or Fallback()
        self.floor_share = dict(floor_share or {})
        self.hold_after_s = hold_after_s
        self._clock = clock
        self._wall = wall
        self.decision: ThrottleDecision | None = None
        self.applied_at = -math.inf
        #: when the gate starts holding if no decision comes (see the module docstring)
        self._hold_at = -math.inf
        self.tally = Tally()
        self.counts = {"applied": 0, "stale_versions": 0, "other_service": 0}
        self._rules: _Rules | None = None
        self._fallback_rules = self._build_fallback(clock())

    # ------------------------------------------------------------ decisions

    def apply(self, decision: ThrottleDecision) -> bool:
        """Use ``decision`` from now on; False (and counted) if it is another service's or not newer."""
        if decision.service != self.service:
            self.counts["other_service"] += 1
            return False
        if self.decision is not None and decision.version <= self.decision.version:
            if decision.version < self.decision.version or decision != self.decision:
                self.counts["stale_versions"] += 1
            else:
                self._applied(self._clock())  # the same decision again (a restart) still says "alive"
            return False
        now = self._clock()
        self._rules = self._build(decision, now)
        self.decision = decision
        self._applied(now)
        self.counts["applied"] += 1
        return True

    def set_share(self, share: float) -> bool:
        """This edge's part of the service's rates from now on (its demand's share, as the edges agree it); the
        decision in force is applied again at the new share, each bucket keeping what it holds. False when the
        change is too small to matter (under 1%)."""
        if not 0 < share <= 1:
            raise ValueError(f"share={share!r}: must be within (0, 1]")
        if abs(share - self.share) <= 0.01 * self.share:
            return False
        self.share = share
        if self.decision is not None:
            self._rules = self._build(self.decision, self._clock())
        return True

    def _applied(self, now: float) -> None:
        self.applied_at = now
        lease_left = self._rules.valid_until_s - now if self._rules is not None else 0.0
        self._hold_at = now + min(self.hold_after_s, max(0.0, lease_left) / 2)

    def _build(self, d: ThrottleDecision, now: float) -> _Rules:
        old = self._rules
        share = self.share
        tiers = {}
        for tier, lim in d.tiers.items():
            rt, batch = lim.realtime_rps * share, lim.batch_rps * share
            both = rt + batch
            burst = lim.burst * share
            # the tier's burst is split by rate, at least one request each; a class
            # decided to zero admits nothing, not even a first request
            rt_burst = max(1.0, burst * rt / both) if rt else 0.0
            batch_burst = max(1.0, burst * batch / both) if batch else 0.0
            prev = old.tiers.get(tier) if old is not None else None
            tiers[tier] = _TierRules(_carry(prev.realtime if prev else None, rt, rt_burst, now),
                                     _carry(prev.batch if prev else None, batch, batch_burst, now), lim.max_tokens)
        tenants = {}
        for tenant, contract in d.tenants.items():
            prev_bucket = old.tenants.get(tenant) if old is not None else None
            rate = contract.rate_rps * share
            tenants[tenant] = _carry(prev_bucket, rate, max(1.0, contract.burst * share) if rate else 0.0, now)
        safe = d.safe_rps * share
        level, defer = d.level, d.defer_batch

        def missing(tier: str) -> _TierRules:
            # a tier the decision does not list (a worker that lists only the tiers it saw): all of safe
            # capacity at level 0, its reserved floor at levels 1-3, at level 4 nothing but for the top tier
            if level >= 4:
                rate = safe if tier == self.tier_order[0] else 0.0
            else:
                rate = safe if level == 0 else safe * self.floor_share.get(tier, 0.0)
            burst = max(1.0, rate * 2.0) if rate else 0.0  # a class at zero admits nothing, not even one
            made = _TierRules(Bucket(rate, burst, now),
                              Bucket(0.0 if defer else rate, 0.0 if defer else burst, now), None)
            tiers[tier] = made
            return made

        valid_until_s = now + (d.valid_until - self._wall() * 1000) / 1000
        shared = _carry(old.safe if old is not None else None, safe, max(1.0, safe * SAFE_BURST_S), now)
        return _Rules(d.version, d.level, valid_until_s, d.mode == "shadow", d.defer_batch, tiers, tenants,
                      None, missing, d.reason, shared)

    def _build_fallback(self, now: float) -> _Rules:
        fb = self.fallback

        def bucket(rate: float | None) -> Bucket:
            return Unlimited(now) if rate is None else Bucket(rate, max(1.0, rate * fb.burst_s), now)

        tiers = {}
        for tier in self.tiers:
            rate = fb.tier_rps.get(tier, fb.total_rps)
            tiers[tier] = _TierRules(bucket(rate), bucket(rate), None)
        total = (Bucket(fb.total_rps, max(1.0, fb.total_rps * fb.burst_s), now)
                 if fb.total_rps is not None else None)
        if fb.protect_top:  # the total, drawn on as a decision's safe capacity is
            return _Rules(0, 0, math.inf, False, False, tiers, {}, None, tiers.__getitem__, "fallback", total)
        return _Rules(0, 0, math.inf, False, False, tiers, {}, total, tiers.__getitem__, "fallback")

    # ------------------------------------------------------------ admission

    def state(self) -> GateState:
        """live, holding or fallback (see the module docstring)."""
        now = self._clock()
        if self._in_force(now) is None:
            return "fallback"
        return "live" if now < self._hold_at else "holding"

    def _in_force(self, now: float) -> _Rules | None:
        """The newest decision's rules while its lease lasts, else None (the fallback applies).
        ``admit`` inlines this test: it is the hot path."""
        rules = self._rules
        return None if rules is None or now >= rules.valid_until_s else rules

    def request_limit(self, tenant: str, tier: str, request_type: RequestType = "realtime",
                      bucket: str | None = None) -> tuple[float, float, float]:
        """(rate per second, burst, requests available now) of the bucket that binds a request of this class, for
        rate-limit headers: the named ``bucket`` (the one that refused), else whichever of the buckets the request
        draws on (its tier class's, its tenant's, the service's) has the fewest requests left.

        Read only: nothing is taken. Where no bucket limits (an unlimited fallback) it answers infinities.
        """
        # on every answer: plain comparisons, no containers
        now = self._clock()
        rules = self._in_force(now) or self._fallback_rules
        tr = rules.tiers.get(tier) or rules.missing(tier)
        own = tr.batch if request_type == "batch" else tr.realtime
        tenant_bucket = rules.tenants.get(tenant)
        service = rules.total or (rules.safe if request_type == "batch" or tier != self.tier_order[0] else None)
        if bucket == "tenant" and tenant_bucket is not None:
            chosen: Bucket | None = tenant_bucket
        elif bucket == "service" and service is not None:
            chosen = service
        elif bucket == "tier":
            chosen = own
        else:
            chosen, left = None, math.inf
            for b in (own, tenant_bucket, service):
                if b is not None and b.rate != math.inf:
                    available = b.available(now)
                    if chosen is None or available < left or (available == left and b.rate < chosen.rate):
                        chosen, left = b, available
        if chosen is None or chosen.rate == math.inf:
            return math.inf, math.inf, math.inf
        return chosen.rate, chosen.burst, chosen.available(now)

    def admit(self, tenant: str, tier: str, request_type: RequestType = "realtime", tokens: int = 0,
              requeued: bool = False) -> Verdict:
        """The verdict for one request; never blocks.

        ``tokens`` is the output the request asks for (capped by ``max_tokens``
        in a degraded tier). A request taken from the deferred queue passes
        ``requeued=True``, so deferring it again is not counted twice.
        """
        if tier not in self.tiers:
            raise UnknownTier(f"tier={tier!r}: unknown tier of service {self.service!r} "
                              f"(known: {', '.join(sorted(self.tiers))})")
        now = self._clock()
        rules = self._rules
        if rules is None or now >= rules.valid_until_s:
            rules = self._fallback_rules
            state = "fallback"
        else:
            state = "live" if now < self._hold_at else "holding"
        tr = rules.tiers.get(tier) or rules.missing(tier)
        batch = request_type == "batch"
        action, wait, refused_by = ADMIT, 0.0, None
        if batch and rules.defer_batch:
            action = DEFER
        else:
            bucket = tr.batch if batch else tr.realtime
            wait = bucket.take(now)
            if wait:
                refused_by = "tier"
            else:
                tb = rules.tenants.get(tenant)
                if tb is not None:
                    wait = tb.take(now)
                    if wait:
                        bucket.refund()
                        refused_by = "tenant"
                if not wait and rules.total is not None:
                    wait = rules.total.take(now)
                    if wait:
                        bucket.refund()
                        if tb is not None:
                            tb.refund()
                        refused_by = "service"
                if not wait and rules.safe is not None:
                    if not batch and tier == self.tier_order[0]:
                        rules.safe.force(now)
                    else:
                        wait = rules.safe.take(now)
                        if wait:
                            bucket.refund()
                            if tb is not None:
                                tb.refund()
                            refused_by = "service"
            if wait:
                action = DEFER if batch else REJECT
        cap = tr.max_tokens if tr.max_tokens is not None and tokens > tr.max_tokens else None
        shadow = self.shadow or rules.shadow
        would = action
        if shadow:
            action = ADMIT
        if would != ADMIT and not (requeued and would == DEFER):
            self.tally.count(tenant, tier, request_type, would, shadow)
        if action == REJECT:
            wait = MIN_RETRY_S if wait < MIN_RETRY_S else MAX_RETRY_S if wait > MAX_RETRY_S else wait
        else:
            wait = 0.0
        return Verdict(action, wait, rules.version, rules.level, state, shadow, would, cap, refused_by)

    def shadowing(self) -> bool:
        """Whether requests are only watched: the gate's own mode or the decision's."""
        rules = self._rules
        return self.shadow or bool(rules is not None and rules.shadow and self.state() != "fallback")

    def status(self) -> dict:
        """What the gate is doing, for a status endpoint or log."""
        d = self.decision
        return {
            "service": self.service, "state": self.state(), "shadow": self.shadowing(),
            "share": self.share,
            "version": d.version if d else None, "level": d.level if d else None,
            "valid_until": d.valid_until if d else None, "reason": d.reason if d else None,
            "seconds_since_decision": round(self._clock() - self.applied_at, 3) if d else None,
            **self.counts, **{f"total_{k}": v for k, v in self.tally.totals.items()},
        }
