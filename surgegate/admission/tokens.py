"""Token budgets: tokens per minute per tier and per tenant, as OpenAI's TPM limits work.

A budget is a token bucket in tokens: it refills at ``tokens_per_minute / 60``
a second and holds at most a minute's worth. Before admission a request
*reserves* its estimate (input tokens estimated from its text, plus the
output it allows itself); once its ``usage`` is known the reservation is
*settled* against what it really used, so an over-estimate is given back and
an under-estimate is owed (the bucket may go below zero, and the next
requests wait for it). A request is admitted when every budget that applies
has room for its estimate, capped at a full bucket, so one request larger
than a minute's budget still runs when the bucket is full.

Pure and single-threaded: time is passed in, in seconds.

>>> b = TokenBudgets()
>>> b.reserve("acme", "pro", 900, tier_tpm=None, tenant_tpm=1_200, now=0.0)
(True, 0.0)
>>> b.reserve("acme", "pro", 900, tier_tpm=None, tenant_tpm=1_200, now=0.0)
(False, 30.0)
>>> b.settle("acme", "pro", reserved=900, used=300, tenant_tpm=1_200, tier_tpm=None, now=0.0)
>>> b.reserve("acme", "pro", 900, tier_tpm=None, tenant_tpm=1_200, now=0.0)
(True, 0.0)
"""

from __future__ import annotations

import math


class _TokenBucket:
    __slots__ = ("rate", "capacity", "tokens", "stamp")

    def __init__(self, per_minute: float, now: float) -> None:
        self.rate = per_minute / 60.0
        self.capacity = per_minute
        self.tokens = per_minute
        self.stamp = now

    def refill(self, per_minute: float, now: float) -> None:
        if per_minute != self.capacity:  # the budget changed: keep what was used, at the new size
            self.tokens = min(self.tokens, per_minute)
            self.rate, self.capacity = per_minute / 60.0, per_minute
        self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now

    def wait_for(self, amount: float) -> float:
        """Seconds until ``amount`` (at most a full bucket) is there; 0 if it is now."""
        need = min(amount, self.capacity)
        if self.tokens >= need:
            return 0.0
        return (need - self.tokens) / self.rate if self.rate > 0 else math.inf


class TokenBudgets:
    """The tier and tenant token buckets of one edge."""

    def __init__(self) -> None:
        self._tiers: dict[str, _TokenBucket] = {}
        self._tenants: dict[str, _TokenBucket] = {}
        self.refused = 0

    def _buckets(self, tenant: str, tier: str, tier_tpm: float | None, tenant_tpm: float | None,
                 now: float) -> list[_TokenBucket]:
        out = []
        for table, key, per_minute in ((self._tiers, tier, tier_tpm), (self._tenants, tenant, tenant_tpm)):
            if per_minute is None:
                continue
            bucket = table.get(key)
            if bucket is None:
                bucket = table[key] = _TokenBucket(per_minute, now)
            bucket.refill(per_minute, now)
            out.append(bucket)
        return out

    def reserve(self, tenant: str, tier: str, estimate: int, *, tier_tpm: float | None, tenant_tpm: float | None,
                now: float) -> tuple[bool, float]:
        """Reserve ``estimate`` tokens: (True, 0) if every budget has room, else (False, seconds to wait)."""
        buckets = self._buckets(tenant, tier, tier_tpm, tenant_tpm, now)
        wait = max((b.wait_for(estimate) for b in buckets), default=0.0)
        if wait > 0:
            self.refused += 1
            return False, wait
        for b in buckets:
            b.tokens -= estimate
        return True, 0.0

    def settle(self, tenant: str, tier: str, *, reserved: int, used: int, tier_tpm: float | None,
               tenant_tpm: float | None, now: float) -> None:
        """Replace a reservation by what the request used (its ``usage``)."""
        for b in self._buckets(tenant, tier, tier_tpm, tenant_tpm, now):
            b.tokens = min(b.capacity, b.tokens + reserved - used)

    def remaining(self, tenant: str, tier: str, *, tier_tpm: float | None, tenant_tpm: float | None,
                  now: float) -> tuple[float, float, float] | None:
        """(tokens per minute, tokens left, seconds to full) of the tighter budget, or None without one."""
        buckets = self._buckets(tenant, tier, tier_tpm, tenant_tpm, now)
        if not buckets:
            return None
        tight = min(buckets, key=lambda b: b.tokens)
        to_full = (tight.capacity - tight.tokens) / tight.rate if tight.rate > 0 else 0.0
        return tight.capacity, max(0.0, tight.tokens), to_full
