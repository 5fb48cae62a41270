"""The OpenAPI 3.1 document of the status API: every route, its parameters and errors."""

from __future__ import annotations

from typing import Any

_ERROR = {"type": "object", "properties": {"error": {"type": "string"}, "parameter": {"type": "string"}},
          "required": ["error"]}
_JSON = {"application/json": {"schema": {"type": "object"}}}


def _error(description: str) -> dict:
    schema = {"$ref": "#/components/schemas/Error"}
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _scope_param() -> dict:
    return {"name": "scope", "in": "path", "required": True, "schema": {"type": "string"},
            "description": "service=NAME, service=NAME,tier=T, service=NAME,tenant=X or pool=P"}


def _get(summary: str, *, scope: bool = False, errors: tuple[int, ...] = (503,), extra: list | None = None,
         content: dict | None = None) -> dict:
    op: dict[str, Any] = {"summary": summary, "responses": {"200": {"description": "OK", "content": content or _JSON}}}
    params = ([_scope_param()] if scope else []) + (extra or [])
    if params:
        op["parameters"] = params
    for code in errors:
        op["responses"][str(code)] = _error({400: "a malformed parameter, named", 404: "unknown scope",
                                             503: "the state store is unreachable"}[code])
    return {"get": op}


def openapi_document() -> dict:
    """The document served at /openapi.json."""
    bearer: list[dict[str, list[str]]] = [{"bearer": []}]
    override_body = {
        "type": "object", "required": ["service", "reason"],
        "properties": {"service": {"type": "string"}, "level": {"type": "integer", "minimum": 0, "maximum": 4},
                       "limit_rps": {"type": "number", "minimum": 0},
                       "expires_in_s": {"type": "number", "minimum": 1, "maximum": 86400},
                       "reason": {"type": "string"}, "author": {"type": "string"}},
    }
    return {
        "openapi": "3.1.0",
        "info": {"title": "surgegate status API", "version": "1",
                 "description": "What surgegate sees, predicts and decides, and operator overrides."},
        "paths": {
            "/healthz": _get("The process is alive", errors=()),
            "/readyz": {"get": {"summary": "Kafka, Redis and worker freshness, each reported",
                                "responses": {"200": {"description": "ready", "content": _JSON},
                                              "503": {"description": "a check failed", "content": _JSON}}}},
            "/v1/scopes": _get("Scopes with mirrored windows"),
            "/v1/windows/{scope}": _get("The scope's newest windows", scope=True, errors=(400, 404, 503), extra=[
                {"name": "last", "in": "query", "required": False,
                 "schema": {"type": "integer", "minimum": 1, "maximum": 360, "default": 30}}]),
            "/v1/forecasts/{scope}": _get("The scope's newest forecast", scope=True, errors=(400, 404, 503)),
            "/v1/thresholds/{scope}": _get("A service's newest threshold (safe capacity)", scope=True,
                                           errors=(400, 404, 503)),
            "/v1/decisions": _get("Every service's newest throttle decision, with its reason"),
            "/v1/decisions/{scope}": _get("A service's newest throttle decision (service=NAME) or a pool's newest "
                                          "scaling decision (pool=NAME)", scope=True, errors=(400, 404, 503)),
            "/v1/history/{service}": _get(
                "What was decided for a service at a moment, and why (the durable decision history); with tenant "
                "and tier, what it meant for them", errors=(400, 404, 503), extra=[
                    {"name": "service", "in": "path", "required": True,
                     "schema": {"type": "string", "pattern": "^[A-Za-z0-9_.:-]{1,64}$"}},
                    {"name": "at", "in": "query", "required": True, "schema": {"type": "integer", "minimum": 0},
                     "description": "epoch milliseconds"},
                    {"name": "tenant", "in": "query", "required": False, "schema": {"type": "string"}},
                    {"name": "tier", "in": "query", "required": False, "schema": {"type": "string"}}]),
            "/v1/history/{service}/recent": _get(
                "Every throttle decision of the service, and scaling decision of its pool, issued in the last "
                "minutes, oldest first (from the durable decision history)", errors=(400, 503), extra=[
                    {"name": "service", "in": "path", "required": True,
                     "schema": {"type": "string", "pattern": "^[A-Za-z0-9_.:-]{1,64}$"}},
                    {"name": "minutes", "in": "query", "required": False,
                     "schema": {"type": "integer", "minimum": 1, "maximum": 1440, "default": 15}}]),
            "/v1/services": _get("The configured services: pool, tiers, SLOs and mode", errors=()),
            "/v1/decisions/stream": _get("Server-Sent Events: every new throttle and scaling decision", errors=(503,),
                                         content={"text/event-stream": {"schema": {"type": "string"}}}),
            "/v1/overrides": {"get": {
                "summary": "The overrides in force, read from the override log (answers while Redis is down)",
                "responses": {"200": {"description": "{\"overrides\": [...]}, oldest first", "content": _JSON}}},
                "post": {
                "summary": "Pin a service's level and/or admitted rate until it expires (audited on sg.overrides)",
                "security": bearer,
                "requestBody": {"required": True, "content": {"application/json": {"schema": override_body}}},
                "responses": {"201": {"description": "the override as written", "content": _JSON},
                              "400": _error("a malformed field, named"), "401": _error("missing or wrong token"),
                              "503": _error("the audit log could not be written")}}},
            "/v1/overrides/{override_id}": {"delete": {
                "summary": "Release an override early (audited)", "security": bearer,
                "parameters": [{"name": "override_id", "in": "path", "required": True, "schema": {"type": "string"}}],
                "responses": {"200": {"description": "the release as written", "content": _JSON},
                              "400": _error("a malformed id"), "401": _error("missing or wrong token"),
                              "404": _error("no such override in force"),
                              "503": _error("the audit log could not be written")}}},
            "/metrics": _get("Prometheus text: counters, levels, decision age, streamed records", errors=(),
                             content={"text/plain": {"schema": {"type": "string"}}}),
            "/openapi.json": _get("This document", errors=()),
            "/": _get("The live dashboard", errors=(), content={"text/html": {"schema": {"type": "string"}}}),
            "/static/plotly.min.js": _get("The dashboard's charting library (Plotly, from its Python wheel)",
                                          errors=(),
                                          content={"application/javascript": {"schema": {"type": "string"}}}),
        },
        "components": {"schemas": {"Error": _ERROR},
                       "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
    }
