"""Derived records: window partials (stage 1), watermarks and WindowStats."""

from __future__ import annotations

from typing import Literal

import msgspec

from surgegate.schemas.fields import Count, EpochMs, Fraction, Millis, Name, Offset, Rate
from surgegate.schemas.telemetry import Sketch, WorkerState


class TrafficAggregate(msgspec.Struct, frozen=True):
    """Mergeable request aggregate of one scope over part of a window."""

    ok: Count = 0
    error: Count = 0
    timeout: Count = 0
    throttled: Count = 0
    realtime: Count = 0
    batch: Count = 0
    input_tokens: Count = 0
    output_tokens: Count = 0
    cache_hits: Count = 0
    over_2s: Count = 0
    latency: Sketch = msgspec.field(default_factory=Sketch)
    queue_wait: Sketch = msgspec.field(default_factory=Sketch)
    deferred: Count = 0
    replayed: Count = 0
    ttft: Sketch = msgspec.field(default_factory=Sketch)
    itl: Sketch = msgspec.field(default_factory=Sketch)
    #: requests whose client left before the answer ended: served as far as they went, no failure of the service
    cancelled: Count = 0
    #: new demand (as ``demand_rps`` counts it, so a replayed cache hit counts -1) by the epoch second it
    #: arrived in: a window's busiest second is what a fleet must absorb, which its mean hides when
    #: requests come in spikes
    arrivals: dict[int, int] = msgspec.field(default_factory=dict)


class WorkerSample(msgspec.Struct, frozen=True, array_like=True):
    """A worker's latest report within a window: the newest ``ts`` wins a merge."""

    ts: EpochMs
    state: WorkerState
    queue_depth: Count
    running_requests: Count
    tokens_per_s: Rate


class DrainerSample(msgspec.Struct, frozen=True, array_like=True):
    """A drainer's latest backlog report within a window: the newest ``ts`` wins a merge."""

    ts: EpochMs
    tasks: Count
    tokens: Count
    oldest_ms: Millis
    required_rps: Rate


class PoolAggregate(msgspec.Struct, frozen=True):
    """Mergeable GPU-pool aggregate over part of a window."""

    samples: Count = 0
    utilisation_sum: float = 0.0
    utilisation_max: Fraction = 0.0
    kv_cache_sum: float = 0.0
    kv_cache_max: Fraction = 0.0
    queue_depth_max: Count = 0
    workers: dict[str, WorkerSample] = msgspec.field(default_factory=dict)
    #: the deferral lane's drainers of the pool's service, latest report each
    drainers: dict[str, DrainerSample] = msgspec.field(default_factory=dict)


class SourceRange(msgspec.Struct, frozen=True):
    """The input a partial was computed from: one partition, an offset range.

    ``log_id`` names the topic's incarnation (its Kafka topic id): a topic
    re-created on a broker that lost it starts its offsets again at zero, and
    ranges of the new log must not look like duplicates of the old one's.
    """

    topic: str
    partition: Offset
    first_offset: Offset
    last_offset: Offset
    log_id: str = ""


class WindowPartial(msgspec.Struct, frozen=True, tag_field="schema", tag="sg.WindowPartial/1"):
    """Stage-1 aggregate of one scope and window from one source offset range.

    The merge stage drops a partial whose source range it has already merged,
    so a partial republished after an ingest restart is not counted twice.
    """

    scope: str
    window_start: EpochMs
    window_ms: int
    source: SourceRange
    events: Count
    traffic: TrafficAggregate | None = None
    pool: PoolAggregate | None = None


class Watermark(msgspec.Struct, frozen=True, tag_field="schema", tag="sg.Watermark/1"):
    """Event-time progress of one ingest consumer, sent to every partials partition.

    Windows ending at or before ``watermark - lateness`` may close. ``owns``
    names the source partitions the claim covers (``topic:partition``) and
    ``sources`` how many the source topics have: windows close only while the
    members' claims cover all of them (left out: the claim covers everything).
    """

    ingest_id: str
    watermark: EpochMs
    owns: list[str] | None = None
    sources: Count = 0


class TrafficStats(msgspec.Struct, frozen=True):
    """Request statistics of one scope over one window."""

    requests: Count
    rate_rps: Rate
    ok: Count
    error: Count
    timeout: Count
    throttled: Count
    realtime: Count
    batch: Count
    latency_p50_ms: Millis
    latency_p90_ms: Millis
    latency_p99_ms: Millis
    latency_max_ms: Millis
    queue_wait_p99_ms: Millis
    input_tokens: Count
    output_tokens: Count
    tokens_per_s: Rate
    over_2s_share: Fraction
    cache_hits: Count
    deferred: Count = 0
    replayed: Count = 0
    #: new demand per second on the servers: every request that arrived (throttled and
    #: deferred ones included), not the deferred ones replayed from the async queue, nor
    #: those answered from the response cache
    demand_rps: Rate | None = None
    #: time to first token and inter-token latency of streamed requests (None: none measured)
    ttft_p50_ms: Millis | None = None
    ttft_p99_ms: Millis | None = None
    itl_p50_ms: Millis | None = None
    itl_p99_ms: Millis | None = None
    #: requests whose client left before the answer ended (in ``requests``; in no latency statistic)
    cancelled: Count = 0
    #: new demand in the window's busiest second, per second (None: not measured)
    peak_rps: Rate | None = None

    @property
    def served(self) -> int:
        """Requests the servers worked on: every outcome but throttled (cancelled ones went part of the way)."""
        return self.ok + self.error + self.timeout + self.cancelled

    @property
    def failure_share(self) -> float:
        """Errors and timeouts over the requests that ended (a client that left is neither)."""
        return (self.error + self.timeout) / max(1, self.ok + self.error + self.timeout)

    @property
    def demand(self) -> float:
        """``demand_rps``; the rate itself for a window that does not give it."""
        return self.rate_rps if self.demand_rps is None else self.demand_rps

    @property
    def peak(self) -> float:
        """The busiest second's new demand per second; the window's mean where that was not measured."""
        return max(self.demand, self.peak_rps or 0.0)


class PoolStats(msgspec.Struct, frozen=True):
    """GPU-pool statistics over one window.

    Per-worker figures (queue depth, running requests, tokens/s, replica
    states) come from each worker's latest report in the window.
    """

    samples: Count
    utilisation_mean: Fraction
    utilisation_max: Fraction
    kv_cache_mean: Fraction
    kv_cache_max: Fraction
    queue_depth: Count
    queue_depth_max: Count
    running_requests: Count
    tokens_per_s: Rate
    workers: Count
    ready_replicas: Count
    cold_starting_replicas: Count
    #: the deferral lane's backlog over its drainers: tasks, their output tokens, the oldest one's age, and the
    #: rate that finishes every held task by its deadline
    backlog_tasks: Count = 0
    backlog_tokens: Count = 0
    backlog_oldest_ms: Millis = 0.0
    backlog_required_rps: Rate = 0.0


class WindowStats(msgspec.Struct, frozen=True, tag_field="schema", tag="sg.WindowStats/1"):
    """One closed window of one scope; identity is ``(scope, window_start)``.

    ``late_events`` counts events that arrived for this scope's earlier,
    already closed windows since the previous WindowStats was published.
    """

    scope: str
    kind: Literal["traffic", "pool"]
    window_start: EpochMs
    window_end: EpochMs
    late_events: Count = 0
    service: Name | None = None
    tier: Name | None = None
    tenant: Name | None = None
    pool: Name | None = None
    traffic: TrafficStats | None = None
    gpu: PoolStats | None = None

    @property
    def identity(self) -> tuple[str, int]:
        """``(scope, window_start)``: the same window replayed has the same identity."""
        return (self.scope, self.window_start)
