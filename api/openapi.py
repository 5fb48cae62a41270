"""The OpenAPI 3.1 document of the status API: every route, its parameters, bodies, answers and errors.

Request and response bodies are described from the wire types themselves
(msgspec's JSON Schema of WindowStats, Forecast, Threshold, ThrottleDecision,
ScalingDecision, Override, OverrideRequest), the types the worker writes and
the API decodes, so the document cannot disagree with either.
"""

from __future__ import annotations

from typing import Any

import msgspec

from surgegate.schemas.aggregates import WindowStats
from surgegate.schemas.decisions import (
    MAX_OVERRIDE_S,
    Override,
    OverrideRequest,
    RegionLoad,
    ScalingDecision,
    Threshold,
    ThrottleDecision,
)
from surgegate.schemas.deferral import TASK_ID_PATTERN, TaskView
from surgegate.schemas.fields import CHECKED_NAME_PATTERN
from surgegate.schemas.forecasts import Forecast

_ERROR = {"type": "object", "properties": {"error": {"type": "string"}, "parameter": {"type": "string"}},
          "required": ["error"]}
_N = r"[A-Za-z0-9_.:-]{1,64}"
#: the scopes windows and forecasts are kept for
SCOPE_PATTERN = rf"^(service={_N}(,(tier|tenant)={_N})?|pool={_N})$"
#: decisions are per service (throttle) or pool (scaling); thresholds per service
DECISION_SCOPE_PATTERN = rf"^(service|pool)={_N}$"
SERVICE_SCOPE_PATTERN = rf"^service={_N}$"
_TYPES = (WindowStats, Forecast, Threshold, ThrottleDecision, ScalingDecision, Override, OverrideRequest, TaskView,
          RegionLoad)
_MAX_LAST = 360
_MAX_MINUTES = 1440


def _ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict) -> dict:
    return {"application/json": {"schema": schema}}


def _object(**properties: dict) -> dict:
    return {"type": "object", "properties": properties, "required": list(properties)}


def _error(description: str) -> dict:
    return {"description": description, "content": _json(_ref("Error"))}


_ERRORS = {400: "a malformed parameter, named", 404: "unknown scope, or nothing found", 401: "missing or wrong token",
           503: "the state store or the broker is unreachable"}


def _path(name: str, pattern: str = CHECKED_NAME_PATTERN, description: str = "") -> dict:
    return {"name": name, "in": "path", "required": True, "schema": {"type": "string", "pattern": pattern},
            **({"description": description} if description else {})}


def _query(name: str, schema: dict, required: bool = False, description: str = "") -> dict:
    return {"name": name, "in": "query", "required": required, "schema": schema,
            **({"description": description} if description else {})}


_SCOPE = _path("scope", SCOPE_PATTERN, "service=NAME, service=NAME,tier=T, service=NAME,tenant=X or pool=P")
_DECISION_SCOPE = _path("scope", DECISION_SCOPE_PATTERN, "service=NAME or pool=P")
_SERVICE_SCOPE = _path("scope", SERVICE_SCOPE_PATTERN, "service=NAME")


def _get(summary: str, ok: dict, *, errors: tuple[int, ...] = (503,), params: tuple[dict, ...] = (),
         content: dict | None = None) -> dict:
    op: dict[str, Any] = {"summary": summary,
                          "responses": {"200": {"description": "OK", "content": content or _json(ok)}}}
    if params:
        op["parameters"] = list(params)
    for code in errors:
        op["responses"][str(code)] = _error(_ERRORS[code])
    return {"get": op}


def _components() -> dict:
    _, components = msgspec.json.schema_components(_TYPES, ref_template="#/components/schemas/{name}")
    return {**components, "Error": _ERROR}


def openapi_document() -> dict:
    """The document served at /openapi.json."""
    bearer: list[dict[str, list[str]]] = [{"bearer": []}]
    decision_either = {"oneOf": [_ref("ThrottleDecision"), _ref("ScalingDecision")]}
    # the wire type, and what it cannot say alone: at least one of level and limit_rps, not null
    override_body = {"allOf": [_ref("OverrideRequest"), {"anyOf": [
        {"required": ["level"], "properties": {"level": {"type": "integer"}}},
        {"required": ["limit_rps"], "properties": {"limit_rps": {"type": "number"}}}]}]}
    return {
        "openapi": "3.1.0",
        "info": {"title": "surgegate status API", "version": "1",
                 "description": "What surgegate sees, predicts and decides, and operator overrides."},
        "paths": {
            "/healthz": _get("The process is alive", _object(status={"type": "string"}, uptime_s={"type": "number"}),
                             errors=()),
            "/readyz": {"get": {"summary": "Kafka, Redis and worker freshness, each reported", "responses": {
                "200": {"description": "ready", "content": _json(_object(ready={"type": "boolean"},
                                                                          checks={"type": "object"}))},
                "503": {"description": "a check failed", "content": _json(_object(ready={"type": "boolean"},
                                                                                   checks={"type": "object"}))}}}},
            "/v1/scopes": _get("Scopes with mirrored windows",
                               _object(scopes={"type": "array", "items": {"type": "string"}})),
            "/v1/windows/{scope}": _get(
                "The scope's newest windows, oldest first",
                _object(scope={"type": "string"}, windows={"type": "array", "items": _ref("WindowStats")}),
                errors=(400, 404, 503), params=(_SCOPE, _query("last", {"type": "integer", "minimum": 1,
                                                                         "maximum": _MAX_LAST, "default": 30}))),
            "/v1/forecasts/{scope}": _get("The scope's newest forecast", _ref("Forecast"), errors=(400, 404, 503),
                                          params=(_SCOPE,)),
            "/v1/thresholds/{scope}": _get("A service's newest threshold (safe capacity); scope service=NAME",
                                           _ref("Threshold"), errors=(400, 404, 503), params=(_SERVICE_SCOPE,)),
            "/v1/decisions": _get("Every service's newest throttle decision, with its reason (no query parameters: "
                                  "one scope's decision is /v1/decisions/{scope})",
                                  _object(decisions={"type": "array", "items": _ref("ThrottleDecision")}),
                                  errors=(400, 503)),
            "/v1/decisions/{scope}": _get("A service's newest throttle decision (service=NAME) or a pool's newest "
                                          "scaling decision (pool=NAME)", decision_either, errors=(400, 404, 503),
                                          params=(_DECISION_SCOPE,)),
            "/v1/history/{service}": _get(
                "What was decided for a service at a moment, and why (the durable decision history); with tenant "
                "and tier, what it meant for them",
                _object(service={"type": "string"}, throttle=_ref("ThrottleDecision"),
                        threshold={"oneOf": [_ref("Threshold"), {"type": "null"}]},
                        scaling={"oneOf": [_ref("ScalingDecision"), {"type": "null"}]}),
                errors=(400, 404, 503), params=(
                    _path("service"),
                    _query("at", {"type": "integer", "minimum": 0, "maximum": 2**53}, True, "epoch milliseconds"),
                    _query("tenant", {"type": "string", "pattern": CHECKED_NAME_PATTERN}),
                    _query("tier", {"type": "string", "pattern": CHECKED_NAME_PATTERN}))),
            "/v1/history/{service}/recent": _get(
                "Every throttle decision of the service, and scaling decision of its pool, issued in the last "
                "minutes, oldest first (from the durable decision history)",
                _object(service={"type": "string"}, pool={"type": "string"},
                        throttle={"type": "array", "items": _ref("ThrottleDecision")},
                        scaling={"type": "array", "items": _ref("ScalingDecision")}),
                errors=(400, 503), params=(_path("service"), _query("minutes", {
                    "type": "integer", "minimum": 1, "maximum": _MAX_MINUTES, "default": 15}))),
            "/v1/tasks/{task_id}": _get(
                "A deferred task's state (queued, running, done with the upstream's answer, failed or expired with "
                "the reason), as every edge answers it; to the holder of the API token (bearer) only, else 404",
                _ref("TaskView"), errors=(400, 404, 503),
                params=(_path("task_id", TASK_ID_PATTERN),)),
            "/v1/regions/{service}": _get(
                "Every region's newest load of the service (its own and its peers', see docs/regions.md) and the "
                "service as a whole; 404 until a region reports it",
                _object(service={"type": "string"}, regions={"type": "array", "items": _ref("RegionLoad")},
                        whole=_object(**{k: {"type": "number", "minimum": 0} for k in (
                            "demand_rps", "safe_rps", "spilled_rps", "headroom_rps")})),
                errors=(400, 404, 503), params=(_path("service"),)),
            "/v1/services": _get("The configured services: pool, tiers, SLOs and mode",
                                 _object(services={"type": "object"}), errors=()),
            # Server-Sent Events: each event is named throttle or scaling, its data one decision as JSON
            "/v1/decisions/stream": _get("Server-Sent Events: every new throttle and scaling decision", {},
                                         errors=(503,), content={"text/event-stream": {}}),
            "/v1/overrides": {
                "get": {"summary": "The overrides in force, read from the override log (answers while Redis is down)",
                        "responses": {"200": {"description": "oldest first", "content": _json(
                            _object(overrides={"type": "array", "items": _ref("Override")}))}}},
                "post": {
                    "summary": f"Pin a service's level and/or admitted rate until it expires (at most {MAX_OVERRIDE_S}"
                               " s; audited on sg.overrides); at least one of level and limit_rps",
                    "security": bearer,
                    "requestBody": {"required": True, "content": _json(override_body)},
                    "responses": {"201": {"description": "the override as written", "content": _json(_ref("Override"))},
                                  "400": _error("a malformed field, named"), "401": _error(_ERRORS[401]),
                                  "408": _error("the body did not arrive within 10 s"),
                                  "503": _error("the audit log could not be written")}}},
            "/v1/overrides/{override_id}": {"delete": {
                "summary": "Release an override early (audited)", "security": bearer,
                "parameters": [_path("override_id")],
                "responses": {"200": {"description": "the release as written", "content": _json(_ref("Override"))},
                              "400": _error("a malformed id"), "401": _error(_ERRORS[401]),
                              "404": _error("no such override in force"),
                              "503": _error("the audit log could not be written")}}},
            "/metrics": _get("Prometheus text (format 0.0.4): the pipeline, decisions, tiers, pools", {}, errors=(),
                             content={"text/plain": {"schema": {"type": "string"}}}),
            "/openapi.json": _get("This document", {"type": "object"}, errors=()),
            "/": _get("The live dashboard", {}, errors=(), content={"text/html": {"schema": {"type": "string"}}}),
            "/static/plotly.min.js": _get("The dashboard's charting library (Plotly, from its Python wheel)", {},
                                          errors=(),
                                          content={"application/javascript": {"schema": {"type": "string"}}}),
        },
        "components": {"schemas": _components(),
                       "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
    }
