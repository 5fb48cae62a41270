"""What a service's throttle policy and its pool's scaling policy have learned, as typed records (msgspec): the
checkpoint format of the decide agent.

Learned values only: the policies are built from the configuration in force
and take the state up (:meth:`ThrottlePolicy.load`, :meth:`ScalingPolicy.load`),
so a changed ``SURGEGATE_SERVICES`` applies to a restored worker and reading a
checkpoint executes nothing. :data:`FORMAT` is raised whenever a record
changes; :func:`upgrade` reads the previous format.
"""

from __future__ import annotations

from typing import Any, TypeVar

import msgspec

from surgegate.schemas.aggregates import PoolStats

#: The layout of :class:`ThrottleState` and :class:`ScalingState` (2: the scaling policy's burst envelope).
FORMAT = 2


class CapacityState(msgspec.Struct, frozen=True):
    """The safe-capacity estimate: the per-replica rate learned, the latency baseline, tokens per request."""

    replica_rps: float
    baseline: float | None
    tokens_per_request: float
    last_service_bound: bool


class TenantState(msgspec.Struct, frozen=True):
    mean: float
    var: float
    overuse: float
    cost_ratio: float
    seen: int


class ThrottleState(msgspec.Struct, frozen=True, tag="sg.ThrottleState", tag_field="schema"):
    """A service's throttle policy: capacity, level and its calm windows, breaker, tenants, last rates and mix."""

    format: int
    service: str
    capacity: CapacityState
    level: int
    calm: int
    breaker: str
    breaker_opened: int
    tenants: dict[str, TenantState]
    previous: dict[str, float]
    mix: dict[str, float]
    last_version: int
    previous_pool: PoolStats | None


class BurstState(msgspec.Struct, frozen=True):
    """The burst envelope: the horizon it learns over, the load's level, the windows still within the
    horizon ``[base, highest since]``, the rises learned (oldest first), the windows learned and the loads that
    may still be the highest within the memory ``(window, load)``."""

    horizon: int
    level: float
    open: list[tuple[float, float]]
    rises: list[float]
    seen: int
    highs: list[tuple[int, float]]


class ScalingState(msgspec.Struct, frozen=True, tag="sg.ScalingState", tag_field="schema"):
    """A pool's scaling policy: target, TTFT headroom, learned lead time, the cooldown's recommendations, the
    scale-up waiting to be ready and the burst envelopes (None: none learned yet, or format 1)."""

    format: int
    pool: str
    current: int | None
    ttft_headroom: float
    lead_s: float
    last_version: int
    recommendations: list[tuple[int, int]]
    pending: tuple[int, int] | None
    burst: BurstState | None = None
    #: the top tier's realtime load's envelope
    protected: BurstState | None = None


class _Format(msgspec.Struct):
    format: int


_FORMAT = msgspec.json.Decoder(_Format)
_ENCODER = msgspec.json.Encoder()


def upgrade(raw: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint of an earlier format in the current one's layout.

    Format 1 had no burst envelope: the scaling policy learns it again from the next windows.
    """
    if raw.get("format") == 1:
        return {**raw, "format": 2}
    if raw.get("format") != FORMAT:
        raise ValueError(f"policy state format {raw.get('format')!r}: this release reads 1 to {FORMAT}")
    return raw


def encode(state: ThrottleState | ScalingState) -> bytes:
    """The checkpoint's bytes (JSON: a policy's state is small, and readable)."""
    return _ENCODER.encode(state)


State = TypeVar("State", ThrottleState, ScalingState)


def decode(data: bytes, kind: type[State]) -> State:
    """A checkpoint of ``kind`` read back, upgraded to the current format; ``ValueError`` (msgspec's
    ``DecodeError`` and ``ValidationError`` are ones) if it is not one."""
    if _FORMAT.decode(data).format == FORMAT:
        return msgspec.json.decode(data, type=kind)
    return msgspec.convert(upgrade(msgspec.json.decode(data)), kind, strict=False)
