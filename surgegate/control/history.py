"""What was decided for a service at a given time, and why: read from the decision history.

The decision topics are compacted (edges need only the newest); every
decision is also kept on a history topic. Given the history records around a
moment, :func:`explain_at` finds what an edge applied then - the newest
throttle decision issued at or before it - with the threshold and scaling
decision of the same window, and says what it meant for one tenant.

>>> from surgegate.schemas.decisions import ThrottleDecision, TierLimit
>>> def d(version, level):
...     return ThrottleDecision(service="chat", version=version, issued_at=version + 10_000,
...         valid_until=version + 40_000, level=level, mode="enforce", tenants={}, defer_batch=level >= 1,
...         tiers={"free": TierLimit(realtime_rps=2.0, batch_rps=0.0, burst=4.0)}, breaker="closed",
...         forecast_upper_rps=100.0, safe_rps=80.0, reason=f"level {level}: test")
>>> answer = explain_at([d(0, 0), d(10_000, 2), d(20_000, 3)], at_ms=25_000, tenant="acme", tier="free")
>>> answer["throttle"]["version"], answer["tenant"]["tier_limit"]["realtime_rps"], answer["in_force"]
(10000, 2.0, True)
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import msgspec

from surgegate.schemas.decisions import ScalingDecision, Threshold, ThrottleDecision

#: The history kept per service around a moment: decisions issued this long before it can still be in force.
LOOKBACK_MS = 10 * 60_000

HistoryRecord = Threshold | ThrottleDecision | ScalingDecision


def explain_at(records: Iterable[HistoryRecord], *, at_ms: int, tenant: str | None = None,
               tier: str | None = None) -> dict[str, Any]:
    """The decision in force at ``at_ms`` among ``records`` (one service's and its pool's), as plain data."""
    records = list(records)
    throttles = [r for r in records if isinstance(r, ThrottleDecision) and r.issued_at <= at_ms]
    if not throttles:
        return {"at": at_ms, "throttle": None, "in_force": False, "threshold": None, "scaling": None,
                "tenant": None}
    newest = max(throttles, key=lambda d: d.version)
    threshold = next((r for r in records if isinstance(r, Threshold) and r.window_start == newest.version), None)
    scaling = next((r for r in records if isinstance(r, ScalingDecision) and r.version == newest.version), None)
    answer: dict[str, Any] = {
        "at": at_ms, "throttle": msgspec.to_builtins(newest), "in_force": at_ms < newest.valid_until,
        "threshold": msgspec.to_builtins(threshold) if threshold is not None else None,
        "scaling": msgspec.to_builtins(scaling) if scaling is not None else None, "tenant": None,
    }
    if tenant is not None or tier is not None:
        tier_limit = newest.tiers.get(tier) if tier is not None else None
        tenant_limit = newest.tenants.get(tenant) if tenant is not None else None
        answer["tenant"] = {
            "tenant": tenant, "tier": tier, "level": newest.level,
            "tier_limit": msgspec.to_builtins(tier_limit) if tier_limit is not None else None,
            "tenant_limit": msgspec.to_builtins(tenant_limit) if tenant_limit is not None else None,
            "why": newest.reason,
        }
    return answer
