"""Outbound decisions and what produced them: Threshold, ThrottleDecision, Override."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec
from msgspec import Meta

from surgegate.schemas.fields import CheckedName, Count, EpochMs, Fraction, Level, Name, Rate

#: Whether edges enforce a decision or only record what it would have done.
Mode = Literal["enforce", "shadow"]
#: A service's circuit breaker.
BreakerState = Literal["closed", "open", "half_open"]

class Threshold(msgspec.Struct, frozen=True, tag_field="schema", tag="sg.Threshold/1"):
    """A service's safe capacity for one window, with the inputs that produced it."""

    service: Name
    window_start: EpochMs
    safe_rps: Rate
    safe_tokens_per_s: Rate
    replica_rps: Rate
    ready_replicas: Count
    latency_baseline_ms: float
    latency_p99_ms: float
    gradient: float
    slo_p99_ms: float
    reason: str


class TierLimit(msgspec.Struct, frozen=True):
    """Admitted rates of one tier: realtime and batch, with the burst a token bucket may hold."""

    realtime_rps: Rate
    batch_rps: Rate
    burst: Rate
    max_tokens: Count | None = None


class TenantLimit(msgspec.Struct, frozen=True):
    """A tenant's admitted rate and burst."""

    rate_rps: Rate
    burst: Rate


class SpillOver(msgspec.Struct, frozen=True):
    """Send ``share`` of each named tier's requests to ``region`` (its gateway) before admitting the rest here:
    this region's demand is over its safe capacity and ``region`` has ``rps`` of headroom after its own demand.
    The top tier is never named."""

    region: Name
    share: dict[str, Fraction]
    rps: Rate


class ThrottleDecision(msgspec.Struct, frozen=True, tag_field="schema", tag="sg.ThrottleDecision/1"):
    """What edges admit for one service until ``valid_until``; latest ``version`` wins.

    ``level``: 0 normal; 1 defer batch; 2 throttle the lowest classes; 3 degrade
    low tiers (token caps); 4 protect only the top realtime class. In ``shadow``
    mode edges record what they would do and admit everything. ``spill``: shares
    of lower tiers to send to other regions first (empty: none, or no regions).
    """

    service: Name
    version: int
    issued_at: EpochMs
    valid_until: EpochMs
    level: int
    mode: Mode
    tiers: dict[str, TierLimit]
    tenants: dict[str, TenantLimit]
    defer_batch: bool
    breaker: BreakerState
    forecast_upper_rps: Rate
    safe_rps: Rate
    reason: str
    override: str | None = None
    spill: list[SpillOver] = msgspec.field(default_factory=list)


class RegionLoad(msgspec.Struct, frozen=True, tag_field="schema", tag="sg.RegionLoad/1"):
    """One region's view of a service for one window, for the other regions' spill-over decisions: the demand
    that arrived at its edges per tier (highest first), the forecast's upper bound of the service's demand over
    the decision's lookahead (0: no forecast yet) and its safe capacity, all in requests/s."""

    service: Name
    region: Name
    window_start: EpochMs
    issued_at: EpochMs
    demand_by_tier: dict[str, Rate]
    safe_rps: Rate
    forecast_rps: Rate = 0.0
    #: what this region's decision for the window sends to other regions: in its demand and in theirs
    sent_rps: Rate = 0.0


class Override(msgspec.Struct, frozen=True, tag_field="schema", tag="sg.Override/1"):
    """An operator's pin of a service's level and/or total admitted rate, until ``expires_at``.

    A record with ``cancel=True`` releases the override with the same ``id``
    early. sg.overrides is the audit log: every pin and release stays on it.
    """

    id: Name
    service: Name
    created_at: EpochMs
    expires_at: EpochMs
    author: str
    reason: str
    level: Level | None = None
    limit_rps: Rate | None = None
    cancel: bool = False


#: At most this long, in seconds, an override holds.
MAX_OVERRIDE_S = 86_400
#: Text with at least one character that is not white space to either regex engine: Python's ``\s`` (which the
#: server's decoder uses) counts the information separators U+001C-U+001F and U+0085 as space, ECMAScript's (the
#: OpenAPI document's) counts U+FEFF; ``\S`` alone would mean two things.
NOT_BLANK = r"[^\t\n\v\f\r \x1c-\x1f\x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000\ufeff]"


class OverrideRequest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """An operator's request to pin a service (the body of ``POST /v1/overrides``); at least one of ``level``
    and ``limit_rps``. The API decodes it with exactly these bounds, those of :class:`Override` the worker reads."""

    service: CheckedName
    reason: Annotated[str, Meta(min_length=1, max_length=1000, pattern=NOT_BLANK, description="why; it is audited")]
    level: Level | None = None
    limit_rps: Rate | None = None
    expires_in_s: Annotated[float, Meta(ge=1, le=MAX_OVERRIDE_S)] = 900.0
    author: Annotated[str, Meta(min_length=1, max_length=200, pattern=NOT_BLANK)] | None = None


class CapacityMix(msgspec.Struct, frozen=True):
    """How the desired replicas are bought: reserved baseline, on-demand, spot for deferrable work."""

    reserved: Count
    on_demand: Count
    spot: Count


class Overflow(msgspec.Struct, frozen=True):
    """Replicas asked of a secondary pool while the primary is at its maximum.

    Overflow serves lower tiers and batch work; top-tier realtime traffic stays
    on the primary pool's reserved capacity.
    """

    pool: Name
    replicas: Count


class ScalingDecision(msgspec.Struct, frozen=True, tag_field="schema", tag="sg.ScalingDecision/1"):
    """How many replicas a GPU pool should run; latest ``version`` wins.

    ``desired_replicas`` lies within [min_replicas, max_replicas]. ``warm_pool``
    replicas are kept loaded and idle so that the forecast upper bound over the
    cold-start time is covered without a cold start. ``cost_per_hour`` prices
    the mix and the overflow.
    """

    pool: Name
    version: int
    issued_at: EpochMs
    desired_replicas: Count
    previous_replicas: Count
    ready_replicas: Count
    cold_starting: Count
    warm_pool: Count
    min_replicas: Count
    max_replicas: Count
    lead_time_s: float
    demand_rps: Rate
    forecast_upper_rps: Rate
    mix: CapacityMix
    cost_per_hour: float
    reason: str
    overflow: Overflow | None = None
