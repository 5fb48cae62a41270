"""DeferredTask: a batch request an edge accepted for later, and TaskView: what became of it.

A DeferredTask travels on ``sg.deferred`` (keyed by tenant, so one tenant's
work stays in order) from the edge that accepted it to a drainer. Its TaskView
is kept in Redis, where any edge and the status API read it; a final state
(``done``, ``failed``, ``expired``) is never replaced, so a task is never
answered twice with different results.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec
from msgspec import Meta

from surgegate.schemas.fields import Count, EpochMs, Name

#: A task id: 32 lowercase hex digits (a UUID4 without dashes).
TASK_ID_PATTERN = r"^[0-9a-f]{32}$"
TaskId = Annotated[str, Meta(pattern=TASK_ID_PATTERN, description="32 lowercase hex digits")]
TaskState = Literal["queued", "running", "done", "failed", "expired"]
#: States a task never leaves.
FINAL_STATES: frozenset[str] = frozenset({"done", "failed", "expired"})


class DeferredTask(msgspec.Struct, frozen=True, tag_field="schema", tag="sg.DeferredTask/1"):
    """The whole request as the client sent it (``body`` base64 in JSON), who it is for, and its deadline.

    ``headers`` are the request's own, less hop-by-hop ones and the client's
    credentials (``Authorization`` is never written to the topic).
    """

    id: TaskId
    service: Name
    tenant: Name
    tier: Name
    method: Annotated[str, Meta(pattern=r"^[A-Z]{1,16}$")]
    path: Annotated[str, Meta(min_length=1, max_length=2048)]
    body: bytes
    created_at: EpochMs
    deadline: EpochMs
    edge_id: Name
    #: output tokens the request asked for (its admission cost)
    tokens: Count = 0
    headers: dict[str, str] = {}


class TaskView(msgspec.Struct, frozen=True, kw_only=True):
    """A deferred task's state as ``GET /_surgegate/tasks/{id}`` and ``GET /v1/tasks/{id}`` answer it.

    ``status`` and ``result`` are the upstream's HTTP status and body once
    ``done``; ``reason`` says why a task ``failed`` or ``expired``.
    """

    id: TaskId
    state: TaskState
    service: Name
    tenant: Name
    tier: Name
    created_at: EpochMs
    deadline: EpochMs
    attempts: Count = 0
    status: Annotated[int, Meta(ge=100, le=599)] | None = None
    result: str | None = None
    reason: str | None = None
    updated_at: EpochMs = 0
