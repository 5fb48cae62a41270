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

#: The layout of :class:`ThrottleState` and :class:`ScalingState`.
FORMAT = 1


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


class ScalingState(msgspec.Struct, frozen=True, tag="sg.ScalingState", tag_field="schema"):
    """A pool's scaling policy: target, TTFT headroom, learned lead time, the cooldown's recommendations and the
    scale-up waiting to be ready."""

    format: int
    pool: str
    current: int | None
    ttft_headroom: float
    lead_s: float
    last_version: int
    recommendations: list[tuple[int, int]]
    pending: tuple[int, int] | None


class _Format(msgspec.Struct):
    format: int


_FORMAT = msgspec.json.Decoder(_Format)
_ENCODER = msgspec.json.Encoder()


def upgrade(raw: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint of an earlier format in the current one's layout (format 1 is the first: nothing to do)."""
    if raw.get("format") != FORMAT:
        raise ValueError(f"policy state format {raw.get('format')!r}: this release reads {FORMAT}")
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
