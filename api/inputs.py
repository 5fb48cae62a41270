"""The status API's answers to bad input and its readers of parameters: every error is JSON naming what
was wrong, every parameter bounded before it is read."""

from __future__ import annotations

import json
import re

import msgspec
from aiohttp import web

from surgegate.schemas.deferral import TASK_ID_PATTERN
from surgegate.telemetry.scopes import NAME_PATTERN

_ERRORS = {400: web.HTTPBadRequest, 401: web.HTTPUnauthorized, 404: web.HTTPNotFound,
           503: web.HTTPServiceUnavailable}


def ApiError(status: int, message: str, parameter: str | None = None, **headers: str) -> web.HTTPException:
    """An error answered as JSON: ``{"error": ..., "parameter": ...}``, ready to raise."""
    body = {"error": message}
    if parameter is not None:
        body["parameter"] = parameter
    return _ERRORS[status](text=json.dumps(body), content_type="application/json", headers=headers or None)


#: seconds a request body may take to arrive
BODY_TIMEOUT_S = 10.0


def bounded(raw: str, low: int, high: int) -> int | None:
    """``raw`` as an integer within [low, high], else None: ASCII digits only ("²" is a digit, not an int), and
    never more of them than ``high`` has (Python refuses to read an int of thousands of digits).

    >>> bounded("30", 1, 100), bounded("9" * 5000, 1, 100), bounded("²", 0, 9), bounded("0", 1, 9)
    (30, None, None, None)
    """
    if not raw or len(raw) > len(str(high)) or not (raw.isascii() and raw.isdigit()):
        return None
    value = int(raw)
    return value if low <= value <= high else None


NAME = re.compile(NAME_PATTERN)


def field_of(exc: msgspec.ValidationError) -> str:
    """The body field a validation error is about ("Expected ... - at `$.level`", "... unknown field `x`")."""
    message = str(exc)
    found = re.search(r"field `(\w+)`", message) or re.search(r"\$\.(\w+)", message)
    return found.group(1) if found else "body"


TASK_ID = re.compile(TASK_ID_PATTERN)


def redis_down() -> web.HTTPException:
    return ApiError(503, "the state store (Redis) is unreachable")


def label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", " ")


def text(value: bytes | str) -> str:
    """A Redis reply as text (the client is not decoding, so it is bytes)."""
    return value.decode() if isinstance(value, bytes) else value
