"""``GET /v1/regions/{service}``: every region's newest load of a service, and the service as a whole."""

from __future__ import annotations

import msgspec
import redis
from aiohttp import web

from surgegate.api.inputs import NAME, ApiError, redis_down
from surgegate.schemas.decisions import RegionLoad

_decode = msgspec.json.Decoder(RegionLoad)


def whole(loads: list[RegionLoad]) -> dict[str, float]:
    """The service over every region: a call one region spilled to another is in both regions' demand, so what
    the regions sent is taken off once."""
    demand = sum(sum(r.demand_by_tier.values()) for r in loads)
    sent = sum(r.sent_rps for r in loads)
    safe = sum(r.safe_rps for r in loads)
    return {"demand_rps": round(max(0.0, demand - sent), 3), "safe_rps": round(safe, 3),
            "spilled_rps": round(sent, 3), "headroom_rps": round(max(0.0, safe - (demand - sent)), 3)}


async def regions(request: web.Request) -> web.Response:
    """404 when no region has reported the service (no SURGEGATE_REGION, or not yet)."""
    from surgegate.api.app import API

    api = request.app[API]
    service = request.match_info["service"]
    if not NAME.fullmatch(service):
        raise ApiError(400, "service must be a service name", "service")
    try:
        raw = await api.redis.hgetall(api.keys.region_loads(service))
    except (redis.RedisError, OSError):
        raise redis_down() from None
    loads = []
    for value in raw.values():
        try:
            loads.append(_decode.decode(value))
        except msgspec.DecodeError:
            continue  # a record this version does not read: the others still answer
    if not loads:
        raise ApiError(404, f"service {service!r}: no region has reported its load", "service")
    loads.sort(key=lambda r: r.region)
    return web.json_response({"service": service, "regions": msgspec.to_builtins(loads), "whole": whole(loads)})
