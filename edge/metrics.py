"""What edge gates do, as Prometheus metrics (prometheus_client).

One :class:`GateMetrics` per process, shared by its gates (a gateway that
routes models to several services has one gate each), on its own registry:

- ``surgegate_edge_verdicts_total{service, tier, request_type, action}``:
  admit, reject or defer per request; in shadow mode the action is what would
  have happened, prefixed ``would_`` (``would_reject``), and the request is
  admitted;
- ``surgegate_edge_requests_total{service, tier, status}``: outcomes of
  forwarded requests (ok, error, timeout);
- histograms ``surgegate_edge_request_duration_seconds``,
  ``surgegate_edge_ttft_seconds`` and ``surgegate_edge_inter_token_seconds``
  (labels ``service``, ``tier``): latency of forwarded requests, and for
  streamed ones the time to the first token and the mean gap between tokens;
  ``surgegate_edge_decision_delay_seconds`` (label ``service``): from a
  decision's issue to this edge applying it;
- gauges read at scrape time from each gate: ``surgegate_edge_level``,
  ``surgegate_edge_decision_age_seconds``, ``surgegate_edge_decision_version``,
  ``surgegate_edge_gate_state{state}`` (1 for the state in force: live,
  holding, fallback), ``surgegate_edge_shadow`` and
  ``surgegate_edge_limit_rps{tier, request_type}`` (the limit this edge
  applies; absent while a class is unlimited).

Label children are cached, so counting a verdict costs a dict lookup and an
increment on the request path.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from surgegate.edge.gate import EdgeGate

#: seconds: from a fast embedding to a long generation
LATENCY_BUCKETS = (0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0)
TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0)
ITL_BUCKETS = (0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64)
#: seconds from a decision's issue to an edge applying it: within a window (10 s) when all is well
DECISION_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
STATES = ("live", "holding", "fallback")
#: Prometheus' text exposition format, the version every scraper reads
PROMETHEUS_TEXT = "text/plain; version=0.0.4; charset=utf-8"


class GateMetrics(Collector):
    """The metrics of every gate that :meth:`attach` es itself, on ``registry``."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self._gates: list[EdgeGate] = []
        self.verdicts = Counter("surgegate_edge_verdicts", "Admission verdicts by tier, request type and action",
                                ["service", "tier", "request_type", "action"], registry=self.registry)
        self.requests = Counter("surgegate_edge_requests", "Outcomes of forwarded requests",
                                ["service", "tier", "status"], registry=self.registry)
        self.duration = Histogram("surgegate_edge_request_duration_seconds", "Latency of forwarded requests",
                                  ["service", "tier"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.ttft = Histogram("surgegate_edge_ttft_seconds", "Time to the first token of streamed responses",
                              ["service", "tier"], buckets=TTFT_BUCKETS, registry=self.registry)
        self.itl = Histogram("surgegate_edge_inter_token_seconds",
                             "Mean gap between tokens of each streamed response", ["service", "tier"],
                             buckets=ITL_BUCKETS, registry=self.registry)
        self.decision_delay = Histogram("surgegate_edge_decision_delay_seconds",
                                        "From a decision's issue to this edge applying it", ["service"],
                                        buckets=DECISION_BUCKETS, registry=self.registry)
        self.cache_hits = Counter("surgegate_edge_cache_hits", "Requests answered from the response cache",
                                  ["service", "tier"], registry=self.registry)
        self._children: dict[tuple, Any] = {}
        self.registry.register(self)

    def attach(self, gate: EdgeGate) -> None:
        """Report ``gate``'s state at each scrape."""
        self._gates.append(gate)

    def _child(self, metric: Any, labels: tuple[str, ...]) -> Any:
        key = (id(metric), labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def verdict(self, service: str, tier: str, request_type: str, action: str) -> None:
        """One admission verdict (``would_<action>`` for what shadow mode let through)."""
        self._child(self.verdicts, (service, tier, request_type, action)).inc()

    def served(self, service: str, tier: str, status: str, latency_s: float, ttft_s: float | None,
               itl_s: float | None, cache_hit: bool = False) -> None:
        """One forwarded (or, ``cache_hit``, answered from the cache) request's outcome."""
        self._child(self.requests, (service, tier, status)).inc()
        if cache_hit:
            self._child(self.cache_hits, (service, tier)).inc()
        self._child(self.duration, (service, tier)).observe(latency_s)
        if ttft_s is not None:
            self._child(self.ttft, (service, tier)).observe(ttft_s)
        if itl_s is not None:
            self._child(self.itl, (service, tier)).observe(itl_s)

    def decision_applied(self, service: str, delay_s: float) -> None:
        """A newer decision applied ``delay_s`` after it was issued."""
        self._child(self.decision_delay, (service,)).observe(max(0.0, delay_s))

    def collect(self) -> Iterator[GaugeMetricFamily]:
        level = GaugeMetricFamily("surgegate_edge_level", "Degradation level of the decision in force",
                                  labels=["service"])
        age = GaugeMetricFamily("surgegate_edge_decision_age_seconds", "Seconds since the gate applied a decision",
                                labels=["service"])
        version = GaugeMetricFamily("surgegate_edge_decision_version", "Version of the newest decision applied",
                                    labels=["service"])
        state = GaugeMetricFamily("surgegate_edge_gate_state", "1 for the gate's state: live, holding or fallback",
                                  labels=["service", "state"])
        shadow = GaugeMetricFamily("surgegate_edge_shadow", "1 while requests are only watched (shadow mode)",
                                   labels=["service"])
        limit = GaugeMetricFamily("surgegate_edge_limit_rps", "Requests per second this edge admits per class",
                                  labels=["service", "tier", "request_type"])
        for gate in list(self._gates):
            admission = gate.admission
            service = gate.service
            status = admission.status()
            if status["level"] is not None:
                level.add_metric([service], status["level"])
                age.add_metric([service], status["seconds_since_decision"])
                version.add_metric([service], status["version"])
            for name in STATES:
                state.add_metric([service, name], 1.0 if status["state"] == name else 0.0)
            shadow.add_metric([service], 1.0 if status["shadow"] else 0.0)
            for tier in admission.tier_order:
                for rtype in ("realtime", "batch"):
                    rate, _, _ = admission.request_limit("", tier, rtype, bucket="tier")
                    if math.isfinite(rate):
                        limit.add_metric([service, tier, rtype], rate)
        yield from (level, age, version, state, shadow, limit)
