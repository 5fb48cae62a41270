"""All wire types by name, their codecs, and their JSON Schema files.

``python -m surgegate.schemas.registry`` (or ``surgegate schemas export``)
rewrites the ``*.schema.json`` files next to this module; a test fails when
they drift from the code.
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import Any

import msgspec

from surgegate.schemas.aggregates import Watermark, WindowPartial, WindowStats
from surgegate.schemas.deadletter import DeadLetter
from surgegate.schemas.decisions import Override, RegionLoad, ScalingDecision, Threshold, ThrottleDecision
from surgegate.schemas.deferral import DeferredTask
from surgegate.schemas.forecasts import Forecast
from surgegate.schemas.telemetry import MetricEvent, RequestEvent, RequestSummary

#: Every type that travels on a topic, in a stable order.
WIRE_TYPES: tuple[type[msgspec.Struct], ...] = (
    RequestEvent,
    RequestSummary,
    MetricEvent,
    WindowPartial,
    Watermark,
    WindowStats,
    Forecast,
    Threshold,
    ThrottleDecision,
    Override,
    ScalingDecision,
    RegionLoad,
    DeadLetter,
    DeferredTask,
)

SCHEMA_DIR = Path(__file__).resolve().parent

encode = msgspec.json.Encoder().encode


def schema_name(kind: type[msgspec.Struct]) -> str:
    """The ``schema`` tag of a wire type, e.g. ``sg.RequestEvent/1``."""
    return kind.__struct_config__.tag  # type: ignore[return-value]


def _clean_descriptions(node: Any) -> Any:
    """Descriptions as :func:`inspect.cleandoc` gives them, whatever msgspec version rendered them.

    msgspec 0.22 keeps a docstring's indentation and 0.23 strips it; the files must not depend on that.
    """
    if isinstance(node, dict):
        return {key: inspect.cleandoc(value) if key == "description" and isinstance(value, str)
                else _clean_descriptions(value) for key, value in node.items()}
    if isinstance(node, list):
        return [_clean_descriptions(value) for value in node]
    return node


def json_schema(kind: type[msgspec.Struct]) -> dict:
    """The JSON Schema (draft 2020-12) of one wire type, descriptions without indentation."""
    document = _clean_descriptions(msgspec.json.schema(kind))
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": f"https://surgegate.dev/schemas/{kind.__name__}.schema.json",
        "title": schema_name(kind),
        **document,
    }


def schema_path(kind: type[msgspec.Struct], directory: Path = SCHEMA_DIR) -> Path:
    """Where the JSON Schema file of ``kind`` lives."""
    return directory / f"{kind.__name__}.schema.json"


def render(kind: type[msgspec.Struct]) -> str:
    """The JSON Schema file text of ``kind``, stable across runs."""
    return json.dumps(json_schema(kind), indent=2, sort_keys=True) + "\n"


def write_json_schemas(directory: Path = SCHEMA_DIR) -> list[Path]:
    """Write every wire type's JSON Schema file; returns the paths written."""
    written = []
    for kind in WIRE_TYPES:
        path = schema_path(kind, directory)
        path.write_text(render(kind))
        written.append(path)
    return written


if __name__ == "__main__":
    for p in write_json_schemas():
        print(p)
