"""Wire schemas: JSON Schema files in sync with the code, bad input named clearly."""

from __future__ import annotations

import json

import msgspec
import pytest

from surgegate.errors import InvalidEvent
from surgegate.schemas.registry import WIRE_TYPES, render, schema_name, schema_path
from surgegate.telemetry.validation import TelemetryValidator

NOW = 1_767_225_600_000
GOOD = {"schema": "sg.RequestEvent/1", "ts": NOW, "service": "chat", "tenant": "acme", "tier": "pro",
        "edge_id": "e1", "latency_ms": 120.0}


@pytest.mark.parametrize("kind", WIRE_TYPES, ids=lambda k: k.__name__)
def test_json_schema_file_matches_the_code(kind):
    path = schema_path(kind)
    assert path.exists(), f"{path.name} missing: run `surgegate schemas export`"
    assert path.read_text() == render(kind), f"{path.name} drifted: run `surgegate schemas export`"


@pytest.mark.parametrize("kind", WIRE_TYPES, ids=lambda k: k.__name__)
def test_every_value_names_its_type_and_version(kind):
    assert schema_name(kind) == f"sg.{kind.__name__}/1"
    doc = json.loads(schema_path(kind).read_text())
    assert doc["title"] == schema_name(kind)


def validator():
    return TelemetryValidator(window_ms=10_000, max_future_ms=300_000)


@pytest.mark.parametrize(("change", "reason", "says"), [
    ({"schema": "sg.Unknown/1"}, "unknown_schema", "sg.Unknown/1"),
    ({"schema": None}, "unknown_schema", "schema"),
    ({"service": None}, "missing_field", "service"),
    ({"service": 42}, "invalid_field", "$.service"),
    ({"latency_ms": -1}, "invalid_field", "$.latency_ms"),
    ({"status": "exploded"}, "invalid_field", "$.status"),
    ({"tenant": "has space"}, "invalid_field", "tenant='has space' must match"),
    ({"ts": NOW + 3_600_000}, "future_timestamp", "ahead of the ingest clock"),
    ({"ts": 0}, "past_timestamp", "before 2000-01-01"),
    ({"service": "chat\n"}, "invalid_field", "service='chat\\n' must match"),
])
def test_bad_events_are_rejected_with_a_reason_that_names_the_fault(change, reason, says):
    raw = {**GOOD, **change}
    raw = {k: v for k, v in raw.items() if v is not None}
    with pytest.raises(InvalidEvent) as err:
        validator().decode(msgspec.json.encode(raw), now_ms=NOW)
    assert err.value.reason == reason
    assert says in str(err.value)


def test_missing_field_and_garbage_bytes():
    raw = dict(GOOD)
    del raw["latency_ms"]
    with pytest.raises(InvalidEvent, match=r"missing_field: .*latency_ms"):
        validator().decode(msgspec.json.encode(raw), now_ms=NOW)
    with pytest.raises(InvalidEvent, match="undecodable"):
        validator().decode(b"\x00\xffnot json", now_ms=NOW)
    with pytest.raises(InvalidEvent, match="undecodable"):
        validator().decode(b"[1, 2]", now_ms=NOW)


def test_inconsistent_summary_is_rejected():
    summary = {"schema": "sg.RequestSummary/1", "ts": NOW, "service": "chat", "tenant": "a", "tier": "free",
               "edge_id": "e", "ok": 3, "latency": {"bins": {"100": 2}}, "queue_wait": {"zeros": 3}}
    with pytest.raises(InvalidEvent, match="inconsistent: latency sketch holds 2"):
        validator().decode(msgspec.json.encode(summary), now_ms=NOW)
    crossing = {**summary, "ts": NOW + 9_500, "latency": {"zeros": 3}}
    with pytest.raises(InvalidEvent, match="crosses the window boundary"):
        validator().decode(msgspec.json.encode(crossing), now_ms=NOW)


#: white space to Python's ``\s`` (the server's decoder), to ECMAScript's (the OpenAPI document's), or to both
SPACE_TO_EITHER = ["\t", "\n", "\v", "\f", "\r", " ", "\x1c", "\x1e", "\x1f", "\x85", "\xa0", "\u1680", "\u2000",
                   "\u200a", "\u2028", "\u2029", "\u202f", "\u205f", "\u3000", "\ufeff"]


@pytest.mark.parametrize("blank", SPACE_TO_EITHER, ids=[f"U+{ord(c):04X}" for c in SPACE_TO_EITHER])
def test_an_override_reason_of_white_space_is_refused_by_the_server_as_the_document_refuses_it(blank):
    from surgegate.api.openapi import openapi_document
    from surgegate.schemas.decisions import NOT_BLANK, OverrideRequest

    body = msgspec.json.encode({"service": "chat", "reason": blank * 3, "level": 2})
    with pytest.raises(msgspec.ValidationError, match="reason"):
        msgspec.json.decode(body, type=OverrideRequest)
    ok = msgspec.json.encode({"service": "chat", "reason": blank + "drill" + blank, "level": 2})
    assert msgspec.json.decode(ok, type=OverrideRequest).reason.strip(blank) == "drill"
    # the document states the very pattern the server decodes with
    assert msgspec.json.encode(NOT_BLANK).decode()[1:-1] in msgspec.json.encode(openapi_document()).decode()
