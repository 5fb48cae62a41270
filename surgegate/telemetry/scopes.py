"""Scope keys: what a window, forecast or decision is about.

A scope is a service, a service and tier, a service and tenant, or a GPU pool.
Its key is a readable, URL-safe label set used as the Kafka key and the Redis
key suffix.

>>> service_scope("chat"), tier_scope("chat", "free"), tenant_scope("chat", "acme")
('service=chat', 'service=chat,tier=free', 'service=chat,tenant=acme')
>>> parse_scope("service=chat,tier=free")
{'service': 'chat', 'tier': 'free'}
"""

from __future__ import annotations

import re

from surgegate.schemas.fields import NAME_PATTERN

_NAME = re.compile(NAME_PATTERN)
_LABELS = ("service", "tier", "tenant", "pool")


def service_scope(service: str) -> str:
    """Scope key of a whole service."""
    return f"service={service}"


def tier_scope(service: str, tier: str) -> str:
    """Scope key of one tier of a service."""
    return f"service={service},tier={tier}"


def tenant_scope(service: str, tenant: str) -> str:
    """Scope key of one tenant of a service."""
    return f"service={service},tenant={tenant}"


def pool_scope(pool: str) -> str:
    """Scope key of a GPU pool."""
    return f"pool={pool}"


def parse_scope(key: str) -> dict[str, str]:
    """Labels of a scope key; ``ValueError`` naming the fault if malformed."""
    labels: dict[str, str] = {}
    for part in key.split(","):
        name, sep, value = part.partition("=")
        if not sep or name not in _LABELS or not _NAME.fullmatch(value) or name in labels:
            raise ValueError(f"malformed scope {key!r}: expected e.g. 'service=chat,tier=free'")
        labels[name] = value
    if not ("service" in labels) ^ ("pool" in labels):
        raise ValueError(f"malformed scope {key!r}: needs exactly one of service= or pool=")
    return labels
