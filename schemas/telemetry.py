"""Inbound telemetry: what edges and GPU workers send to sg.requests / sg.metrics."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec
from msgspec import Meta

from surgegate.schemas.fields import Count, EpochMs, Fraction, Millis, Name, Rate

RequestType = Literal["realtime", "batch"]
#: ``cancelled``: the client left (a "stop" button, its own timeout) before the answer ended; it was served as far
#: as it went, but is neither a failure of the service nor a measure of its latency
Status = Literal["ok", "error", "timeout", "throttled", "deferred", "cancelled"]
#: How an edge gate was deciding: on fresh decisions, holding the last one after
#: decisions stopped arriving, or on its configured fallback once that expired.
GateState = Literal["live", "holding", "fallback"]
WorkerState = Literal["ready", "cold_starting", "draining"]

#: Latency above which a request counts as a long-tail request.
SLOW_REQUEST_MS = 2000.0


class RequestEvent(msgspec.Struct, frozen=True, gc=False, tag_field="schema", tag="sg.RequestEvent/1"):
    """One finished (or throttled, or deferred) request, as seen by an edge.

    ``latency_ms`` is end-to-end time at the edge; ``queue_ms`` the part spent
    waiting for a worker. For a streamed LLM response, ``ttft_ms`` is the time
    to its first token (chunk) and ``itl_ms`` the mean time between the
    following ones; both are absent where they were not measured. Throttled requests were not served: they count as
    demand but not in latency statistics. A deferred request was put on the
    async queue; it is reported again with its outcome when it runs, so it
    counts as backlog, not as demand of this window. That second report is
    marked ``replayed``: it is load, but not new demand.
    """

    ts: EpochMs
    service: Name
    tenant: Name
    tier: Name
    edge_id: Name
    latency_ms: Millis
    request_type: RequestType = "realtime"
    queue_ms: Millis = 0.0
    status: Status = "ok"
    input_tokens: Count = 0
    output_tokens: Count = 0
    cache_hit: bool = False
    replayed: bool = False
    ttft_ms: Millis | None = None
    itl_ms: Millis | None = None


class Sketch(msgspec.Struct, frozen=True, gc=False):
    """Wire form of a log-bucket latency sketch (see :mod:`surgegate.telemetry.sketch`).

    ``bins`` maps bucket index to count, ``zeros`` counts values <= 0.001 ms,
    ``max`` is the exact maximum.
    """

    bins: dict[Annotated[int, Meta(ge=-2000, le=2000)], Count] = msgspec.field(default_factory=dict)
    zeros: Count = 0
    max: Millis = 0.0

    @property
    def count(self) -> int:
        """Number of values in the sketch."""
        return self.zeros + sum(self.bins.values())


class RequestSummary(msgspec.Struct, frozen=True, gc=False, tag_field="schema", tag="sg.RequestSummary/1"):
    """An edge's pre-aggregate of the requests of one scope over ``duration_ms``.

    The sketches cover served requests (every status but ``throttled``), so
    their count must equal ``ok + error + timeout``. ``over_2s`` counts served
    requests slower than 2 s. The covered interval must lie in one window.
    ``ttft`` and ``itl`` hold the time to first token and the inter-token
    latency of the served requests that measured them (streamed ones).
    ``deferred`` counts requests put on the async queue (not in ``requests``:
    they are reported again when they run, counted in ``replayed``). An edge gate also says how it was
    deciding (``gate``), whether it only watched (``shadow``) and how many
    requests it would have throttled had it enforced (``would_throttle``).
    """

    ts: EpochMs
    service: Name
    tenant: Name
    tier: Name
    edge_id: Name
    request_type: RequestType = "realtime"
    duration_ms: Annotated[int, Meta(ge=1, le=60_000)] = 1000
    ok: Count = 0
    error: Count = 0
    timeout: Count = 0
    throttled: Count = 0
    input_tokens: Count = 0
    output_tokens: Count = 0
    cache_hits: Count = 0
    over_2s: Count = 0
    latency: Sketch = msgspec.field(default_factory=Sketch)
    queue_wait: Sketch = msgspec.field(default_factory=Sketch)
    deferred: Count = 0
    replayed: Count = 0
    gate: GateState | None = None
    shadow: bool = False
    would_throttle: Count = 0
    ttft: Sketch = msgspec.field(default_factory=Sketch)
    itl: Sketch = msgspec.field(default_factory=Sketch)
    #: requests the client left before their answer ended (outside the sketches)
    cancelled: Count = 0

    @property
    def requests(self) -> int:
        """All requests covered, throttled ones included."""
        return self.ok + self.error + self.timeout + self.throttled + self.cancelled


class MetricEvent(msgspec.Struct, frozen=True, gc=False, tag_field="schema", tag="sg.MetricEvent/1"):
    """A GPU worker's (or an edge's, or a drainer's) periodic report of its own state.

    A drainer (``kind: drainer``) reports the deferral lane's backlog for the
    service's pool: ``queue_depth`` tasks (held and not yet read),
    ``backlog_tokens`` output tokens they asked for, the age of the oldest and
    the rate that finishes every held task by its deadline. Its report is
    kept apart from the replicas' (utilisation, KV cache, replica states).
    """

    ts: EpochMs
    pool: Name
    worker_id: Name
    utilisation: Fraction
    kind: Literal["gpu_worker", "edge", "drainer"] = "gpu_worker"
    state: WorkerState = "ready"
    queue_depth: Count = 0
    kv_cache_use: Fraction = 0.0
    running_requests: Count = 0
    tokens_per_s: Rate = 0.0
    backlog_tokens: Count = 0
    backlog_oldest_ms: Millis = 0.0
    backlog_required_rps: Rate = 0.0


#: Everything an edge or worker may send.
Telemetry = RequestEvent | RequestSummary | MetricEvent
