"""Which answers may be cached, and under which key: pure functions the edge's response cache uses.

An answer is cached only when asking again would be answered the same way: the
request says ``temperature: 0`` (greedy decoding), or its sender opted in with
``X-Surgegate-Cache: on``; ``X-Surgegate-Cache: off`` opts out of both the
lookup and the store. The key is the scope (the tenant, or a scope the operator
shares between tenants), the path, and the request body normalised: keys sorted
at every level, whitespace gone, and the fields that do not change the answer
dropped (``user``, ``stream_options``). ``stream`` stays in the key: a streamed
answer is kept as its event stream and replayed as one, a buffered one as JSON.

>>> path, body = "/v1/chat/completions", b'{"model": "m", "temperature": 0, "messages": ["hi"]}'
>>> same = b'{"messages":["hi"],"temperature":0,"model":"m","user":"u1"}'
>>> request_key("acme", path, body) == request_key("acme", path, same)
True
>>> request_key("acme", path, body) == request_key("other", path, body)
False
>>> cacheable(0.0, None), cacheable(0.7, None), cacheable(0.7, "on"), cacheable(0.0, "off"), cacheable(None, None)
(True, False, True, False, False)
"""

from __future__ import annotations

import hashlib

import msgspec

#: Body fields that do not change the answer: left out of the key.
IGNORED_FIELDS = frozenset({"user", "stream_options"})
#: ``X-Surgegate-Cache`` values.
OPT_IN, OPT_OUT = "on", "off"
#: From this degradation level on, tiers below the top one are served from the cache only: a miss is refused.
CACHE_ONLY_LEVEL = 3


def cacheable(temperature: float | None, header: str | None) -> bool:
    """True when the answer to a request may be cached and served again (see the module docstring)."""
    if header == OPT_OUT:
        return False
    return header == OPT_IN or temperature == 0


def request_key(scope: str, path: str, body: bytes) -> str:
    """A hex digest naming one request within ``scope``; ``ValueError`` if ``body`` is not a JSON object."""
    raw = msgspec.json.decode(body) if body.strip() else {}
    if not isinstance(raw, dict):
        raise ValueError("invalid request body: expected a JSON object")
    normal = {k: v for k, v in raw.items() if k not in IGNORED_FIELDS}
    digest = hashlib.sha256()
    for part in (scope.encode(), b"\0", path.encode(), b"\0", msgspec.json.encode(normal, order="sorted")):
        digest.update(part)
    return digest.hexdigest()
