"""The status API's ``/metrics``: the pipeline as Prometheus metrics (prometheus_client families).

The API reads what it reports at scrape time (Redis's counters and newest
windows, the decisions it follows), so each scrape builds its families afresh
from one :class:`Snapshot`. Counter names follow Prometheus' conventions: one
metric per meaning, the variable part as a label.

Pipeline counters, summed over every worker (the agents and ingest consumers
push them to Redis), by the name they are kept under:

| kept as | metric | labels |
|---|---|---|
| ``events`` | ``surgegate_ingest_events_total`` | |
| ``partials`` / ``cuts`` | ``surgegate_ingest_partials_total`` / ``surgegate_ingest_cuts_total`` | |
| ``dead_letter.<reason>`` | ``surgegate_dead_letters_total`` | ``reason`` |
| ``clock_ahead`` | ``surgegate_ingest_clock_ahead_events_total`` | |
| ``logs_replaced`` | ``surgegate_ingest_logs_replaced_total`` | |
| ``rewound`` | ``surgegate_partitions_rewound_total`` | |
| ``commit_failed`` | ``surgegate_ingest_commit_failures_total`` | |
| ``slow_flushes`` | ``surgegate_ingest_slow_flushes_total`` | |
| ``stale_commits`` | ``surgegate_ingest_stale_commits_total`` | |
| ``skips`` | ``surgegate_agent_skips_total`` | |
| ``records_read_again`` | ``surgegate_agent_records_read_again_total`` | |
| ``partials.<outcome>`` | ``surgegate_partials_merged_total`` | ``outcome`` (merged, duplicate, late, rejected) |
| ``late_events`` | ``surgegate_late_events_total`` | |
| ``windows.published`` | ``surgegate_windows_published_total`` | |
| ``decisions.spill`` | ``surgegate_spill_decisions_total`` | |
| ``decisions.published``, ``scaling.published`` | ``surgegate_decisions_published_total`` | ``kind`` |
| ``forecasts.<outcome>`` | ``surgegate_forecasts_total`` | ``outcome`` |
| ``requests/<service>/<tier>/<outcome>`` | ``surgegate_tier_requests_total`` | ``service``, ``tier``, ``outcome`` |
| ``latency/<service>/...`` | ``surgegate_request_latency_seconds`` (a histogram) | ``service`` |
| ``timing.<agent>.us`` / ``.runs`` | ``surgegate_agent_seconds_total`` / ``surgegate_agent_runs_total`` | ``agent`` |
| anything else ``a.b`` | ``surgegate_a_b_total`` | |

The aggregate ``dead_letters`` is left out: it is the sum of the reasons.
A worker's own ``/metrics`` (``surgegate worker --metrics-port``) reports its
share of the same counters under ``surgegate_worker_`` names
(``surgegate_worker_ingest_events_total``, ...): one prefix per process role,
so no name means two things.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric

from surgegate.schemas.aggregates import TrafficStats
from surgegate.schemas.decisions import ThrottleDecision
from surgegate.telemetry.merging import LATENCY_BUCKETS_S, tier_outcomes

#: counter kept as -> (metric, help); names that take a label are matched by prefix in _counter
_PLAIN = {
    "events": ("surgegate_ingest_events", "Events the ingest consumers read"),
    "partials": ("surgegate_ingest_partials", "Window partials the ingest consumers published"),
    "cuts": ("surgegate_ingest_cuts", "Cuts (published ranges) the ingest consumers made"),
    "clock_ahead": ("surgegate_ingest_clock_ahead_events", "Events stamped ahead of the wall clock, clamped"),
    "logs_replaced": ("surgegate_ingest_logs_replaced", "Source topics found re-created and read again"),
    "rewound": ("surgegate_partitions_rewound",
                "Source partitions with nothing committed read from their start after a rebalance"),
    "commit_failed": ("surgegate_ingest_commit_failures", "Offset commits that failed (ranges republished)"),
    "slow_flushes": ("surgegate_ingest_slow_flushes",
                     "Ingest flushes that waited over a second on the broker (nothing was read meanwhile)"),
    "stale_commits": ("surgegate_ingest_stale_commits",
                      "Source partitions whose commits were of an older log, read from their start"),
    "skips": ("surgegate_agent_skips", "Times an agent found records of a partition skipped by its consumer"),
    "recovery_seeks": ("surgegate_agent_recovery_seeks",
                       "Changelog partitions a table recovery waited on too long, sought again"),
    "recovery_ends": ("surgegate_agent_recovery_ends",
                      "Changelog partitions a table recovery waited on with nothing left to read, taken as read"),
    "records_read_again": ("surgegate_agent_records_read_again",
                           "Records an agent's consumer skipped, read directly and handed to the agent"),
    "restarts": ("surgegate_ingest_restarts",
                 "Ingest members that started again from their last commit after a failed publication"),
    "late_events": ("surgegate_late_events", "Events that arrived after their window closed"),
    "windows.published": ("surgegate_windows_published", "Closed windows published"),
    "decisions.spill": ("surgegate_spill_decisions", "Throttle decisions that named a spill-over to another region"),
}
_LABELLED = (  # prefix, metric, label, help
    ("dead_letter.", "surgegate_dead_letters", "reason", "Records dead-lettered, by reason"),
    ("partials.", "surgegate_partials_merged", "outcome", "Window partials the merge stage took, by outcome"),
    ("forecasts.", "surgegate_forecasts", "outcome", "Forecast agent outcomes"),
)
_KINDS = {"decisions.published": "throttle", "scaling.published": "scaling"}


@dataclasses.dataclass
class Snapshot:
    """What one scrape reports."""

    redis_up: bool
    counters: Mapping[str, int] = dataclasses.field(default_factory=dict)
    scopes: int = 0
    window_lag_s: float | None = None
    #: newest throttle decision per service
    decisions: Mapping[str, ThrottleDecision] = dataclasses.field(default_factory=dict)
    #: seconds since each service's newest decision was issued
    decision_age_s: Mapping[str, float] = dataclasses.field(default_factory=dict)
    #: newest service-level and per-tier windows: service -> tier (None for the service) -> traffic
    traffic: Mapping[str, Mapping[str | None, TrafficStats]] = dataclasses.field(default_factory=dict)
    window_s: float = 10.0
    stream_records: int | None = None


def _counter(name: str, value: int, out: dict[str, Any], role: str) -> None:
    if name == "dead_letters":
        return
    if name.startswith("timing.") and name.count(".") == 2:
        _, agent, unit = name.split(".")
        metric = out["agent_seconds"] if unit == "us" else out["agent_runs"]
        metric.add_metric([agent], value / 1e6 if unit == "us" else value)
        return
    if name in _KINDS:
        out["decisions"].add_metric([_KINDS[name]], value)
        return
    if name.startswith("requests/") and name.count("/") == 3:
        out["tier_requests"].add_metric(name.split("/")[1:], value)
        return
    if name in _PLAIN:
        metric_name, text = _PLAIN[name]
        out[metric_name] = CounterMetricFamily(_named(metric_name, role), text, value=value)
        return
    for prefix, metric_name, _label, _text in _LABELLED:
        if name.startswith(prefix):
            out[metric_name].add_metric([name[len(prefix):]], value)
            return
    metric_name = "surgegate_" + re.sub(r"[^a-zA-Z0-9_]", "_", name)
    out[metric_name] = CounterMetricFamily(_named(metric_name, role), f"Pipeline counter {name}", value=value)


def _named(metric_name: str, role: str) -> str:
    """``surgegate_x`` as one process role reports it: ``surgegate_<role>_x`` (the pipeline's own: as is)."""
    return metric_name.replace("surgegate_", f"surgegate_{role}_", 1) if role else metric_name


def counter_families(counts: Mapping[str, int], role: str = "") -> Iterator[Metric]:
    """Pipeline counters under their metric names (table above): the whole pipeline's, as kept in Redis,
    or, with ``role``, one process's own under ``surgegate_<role>_`` names, so that no name means both."""
    counters: dict[str, Any] = {
        "agent_seconds": CounterMetricFamily(_named("surgegate_agent_seconds", role),
                                             "Time each agent spent on its work", labels=["agent"]),
        "agent_runs": CounterMetricFamily(_named("surgegate_agent_runs", role),
                                          "Units of work each agent did (windows, partials, decisions)",
                                          labels=["agent"]),
        "decisions": CounterMetricFamily(_named("surgegate_decisions_published", role),
                                         "Decisions published, by kind", labels=["kind"]),
        "tier_requests": CounterMetricFamily(_named("surgegate_tier_requests", role),
                                             "Requests of each tier in the windows published, by what became of "
                                             "them", labels=["service", "tier", "outcome"]),
    }
    for _prefix, metric_name, label, text in _LABELLED:
        counters[metric_name] = CounterMetricFamily(_named(metric_name, role), text, labels=[label])
    latency: dict[str, dict[str, int]] = {}  # service -> bucket bound, count or sum_us -> value
    for name, value in sorted(counts.items()):
        if name.startswith("latency/") and name.count("/") == 2:
            _, service, part = name.split("/")
            latency.setdefault(service, {})[part] = value
        else:
            _counter(name, value, counters, role)
    yield from (family for family in counters.values() if family.samples)
    if latency:
        yield _latency_histogram(latency, role)


def _latency_histogram(by_service: Mapping[str, Mapping[str, int]], role: str) -> Metric:
    """The ``latency/<service>/...`` counters as one histogram: cumulative buckets (a bound with no count kept is
    the one below's), ``+Inf`` the count, the sum in seconds."""
    family = HistogramMetricFamily(_named("surgegate_request_latency_seconds", role),
                                   "Request latency at the edges, over the windows published", labels=["service"])
    for service, parts in sorted(by_service.items()):
        buckets, below = [], 0
        for bound in LATENCY_BUCKETS_S:
            below = max(below, parts.get(f"{bound:g}", 0))
            buckets.append((f"{bound:g}", below))
        buckets.append(("+Inf", max(below, parts.get("count", 0))))
        family.add_metric([service], buckets, parts.get("sum_us", 0) / 1e6)
    return family


class WorkerFamilies:
    """A worker's own ``/metrics``: that it runs, and the counters of its agents and ingest consumer under
    ``surgegate_worker_`` names (``surgegate_worker_ingest_events_total``, ...). The status API reports
    the same counters summed over every worker under the pipeline's names; a query that sums both pages
    would otherwise count each event twice."""

    def __init__(self, counts: Callable[[], Mapping[str, int]]) -> None:
        self.counts = counts

    def collect(self) -> Iterator[Metric]:
        yield GaugeMetricFamily("surgegate_worker_up", "The worker process is running", value=1)
        yield from counter_families(self.counts(), role="worker")


def families(s: Snapshot) -> Iterator[Metric]:
    """Every family one scrape reports."""
    yield GaugeMetricFamily("surgegate_up", "The API is serving", value=1)
    yield GaugeMetricFamily("surgegate_state_store_up", "Redis answers", value=1 if s.redis_up else 0)
    if not s.redis_up:
        return
    yield GaugeMetricFamily("surgegate_scopes", "Scopes with mirrored windows", value=s.scopes)
    yield from counter_families(s.counters)
    if s.window_lag_s is not None:
        yield GaugeMetricFamily("surgegate_window_lag_seconds",
                                "Age of the newest closed window: the pipeline's lag behind the wall clock",
                                value=s.window_lag_s)
    yield from _decision_families(s)
    yield from _traffic_families(s)
    if s.stream_records is not None:
        yield CounterMetricFamily("surgegate_stream_records", "Decision records the API has streamed",
                                  value=s.stream_records)


def _decision_families(s: Snapshot) -> Iterator[Metric]:
    level = GaugeMetricFamily("surgegate_level", "Degradation level of the newest decision", labels=["service"])
    age = GaugeMetricFamily("surgegate_decision_age_seconds", "Seconds since the newest decision was issued",
                            labels=["service"])
    safe = GaugeMetricFamily("surgegate_safe_capacity_rps", "Safe capacity the newest decision keeps to",
                             labels=["service"])
    forecast = GaugeMetricFamily("surgegate_forecast_upper_rps", "Forecast upper bound the newest decision saw",
                                 labels=["service"])
    limits = GaugeMetricFamily("surgegate_tier_limit_rps", "Per-tier limits of the newest decision (all edges)",
                               labels=["service", "tier", "request_type"])
    for service, d in sorted(s.decisions.items()):
        level.add_metric([service], d.level)
        age.add_metric([service], s.decision_age_s.get(service, 0.0))
        safe.add_metric([service], d.safe_rps)
        forecast.add_metric([service], d.forecast_upper_rps)
        for tier, limit in sorted(d.tiers.items()):
            limits.add_metric([service, tier, "realtime"], limit.realtime_rps)
            limits.add_metric([service, tier, "batch"], limit.batch_rps)
    yield from (level, age, safe, forecast, limits)


def _traffic_families(s: Snapshot) -> Iterator[Metric]:
    rates = GaugeMetricFamily("surgegate_tier_requests_per_second",
                              "Requests per second in the newest window, by tier and what became of them",
                              labels=["service", "tier", "outcome"])
    # percentiles of one window, computed by the pipeline: gauges, labelled `percentile` (the `quantile` label is
    # a summary's, whose quantiles Prometheus may aggregate over time; these are not)
    ttft = GaugeMetricFamily("surgegate_time_to_first_token_seconds",
                             "Time to first token of streamed responses in the newest window, at a percentile",
                             labels=["service", "percentile"])
    itl = GaugeMetricFamily("surgegate_inter_token_latency_seconds",
                            "Inter-token latency of streamed responses in the newest window, at a percentile",
                            labels=["service", "percentile"])
    latency = GaugeMetricFamily("surgegate_latency_seconds", "Request latency in the newest window, at a percentile",
                                labels=["service", "percentile"])
    for service, by_tier in sorted(s.traffic.items()):
        for tier, t in sorted(by_tier.items(), key=lambda item: item[0] or ""):
            if tier is None:
                for q, ms in (("50", t.latency_p50_ms), ("99", t.latency_p99_ms)):
                    latency.add_metric([service, q], ms / 1000)
                for family, p50, p99 in ((ttft, t.ttft_p50_ms, t.ttft_p99_ms), (itl, t.itl_p50_ms, t.itl_p99_ms)):
                    for q, v in (("50", p50), ("99", p99)):
                        if v is not None:
                            family.add_metric([service, q], v / 1000)
                continue
            for outcome, n in tier_outcomes(t).items():
                rates.add_metric([service, tier, outcome], n / s.window_s)
    yield from (rates, latency, ttft, itl)


class Families:
    """Families as a collector, for ``generate_latest``."""

    def __init__(self, snapshot: Snapshot) -> None:
        self.snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        return families(self.snapshot)
