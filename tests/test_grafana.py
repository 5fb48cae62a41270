"""The Grafana dashboard queries only metrics that surgegate's processes expose.

Each process's metrics are built here as the process builds them (the edge
gate's, the API's, the worker's counters, the KEDA scaler's, the rate limit
service's, a pool scaler's, a drainer's), fed with enough to show every family, and read back
through prometheus_client's parser; every ``surgegate_*`` name in the
dashboard's queries must be among the samples.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import msgspec
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from support import lint
from test_admission import decision as throttle
from test_keda import decision as scaling

from surgegate.api.metrics import Families, Snapshot, WorkerFamilies
from surgegate.edge.drain import Drainer, DrainerCollector
from surgegate.edge.gate import EdgeGate
from surgegate.edge.metrics import GateMetrics
from surgegate.edge.ratelimit import RateLimitService
from surgegate.gpu.keda import KedaScaler
from surgegate.gpu.pools import PoolBook, PoolCollector
from surgegate.gpu.scaler import LogScaler, ScalerCollector, ScalingSubscriber
from surgegate.schemas.decisions import Overflow
from surgegate.schemas.telemetry import RequestEvent
from surgegate.settings import Settings
from surgegate.telemetry.merging import traffic_stats
from surgegate.telemetry.windowing import TrafficCell

DASHBOARD = Path(__file__).resolve().parent.parent / "docs" / "grafana" / "surgegate.json"
#: every counter name the agents and the ingest consumers keep
PIPELINE_COUNTERS = ("events", "partials", "cuts", "dead_letters", "dead_letter.invalid_field", "clock_ahead",
                     "logs_replaced", "commit_failed", "restarts", "partials.merged", "partials.duplicate",
                     "late_events",
                     "windows.published", "decisions.published", "scaling.published", "forecasts.published",
                     "timing.decide.us", "timing.decide.runs", "slow_flushes", "stale_commits", "skips",
                     "records_read_again", "recovery_seeks", "recovery_ends",
                     "requests/chat/pro/admitted",
                     "latency/chat/0.5", "latency/chat/count", "latency/chat/sum_us")


def names(page: str) -> set[str]:
    return {s.name for family in text_string_to_metric_families(page) for s in family.samples}


def pages() -> dict[str, str]:
    """Each process role's /metrics page, built as the process builds it."""
    out: dict[str, str] = {}
    # an edge gate, and the rate limit service on the same registry (as `surgegate ratelimit` builds them)
    metrics = GateMetrics()
    gate = EdgeGate(Settings(), "chat", edge_id="e", report="off", bootstrap_from_redis=False, metrics=metrics)
    assert gate.offer(msgspec.json.encode(throttle(now=time.time(), valid_for_s=600)))
    gate.admit("acme", "pro")
    gate.record("acme", "pro", "realtime", "ok", 120.0, ttft_ms=30.0, itl_ms=8.0)
    gate.record("acme", "pro", "realtime", "ok", 0.4, cache_hit=True)
    service = RateLimitService(gate, registry=metrics.registry)
    service.answers.labels("OK").inc()
    out["edge"] = generate_latest(metrics.registry).decode()
    # the API: pipeline counters, a decision, the newest windows, the pools
    cell = TrafficCell()
    cell.add_event(RequestEvent(ts=0, service="chat", tenant="a", tier="pro", edge_id="e", latency_ms=90.0,
                                ttft_ms=20.0, itl_ms=5.0))
    stats = traffic_stats(cell.to_wire(), 10_000)
    book = PoolBook()
    book.offer(msgspec.json.encode(scaling(overflow=Overflow(pool="gpu-b", replicas=2))))
    api = CollectorRegistry()
    api.register(Families(Snapshot(redis_up=True, counters=dict.fromkeys(PIPELINE_COUNTERS, 1), scopes=3,
                                   window_lag_s=4.0, decisions={"chat": throttle()}, decision_age_s={"chat": 1.0},
                                   traffic={"chat": {None: stats, "pro": stats}}, stream_records=5)))
    api.register(PoolCollector(book))
    out["api"] = generate_latest(api).decode()
    # a worker's own counters (`surgegate worker --metrics-port`)
    worker = CollectorRegistry()
    worker.register(WorkerFamilies(lambda: dict.fromkeys(PIPELINE_COUNTERS, 1)))
    out["worker"] = generate_latest(worker).decode()
    # the KEDA scaler and a pool scaler
    keda = CollectorRegistry()
    keda.register(PoolCollector(book))  # as `surgegate keda` serves them
    KedaScaler(book, keda).calls.labels("GetMetrics", "OK").inc()
    out["keda"] = generate_latest(keda).decode()
    subscriber = ScalingSubscriber(Settings(), "gpu-a", LogScaler())
    scaler = CollectorRegistry()
    scaler.register(ScalerCollector(subscriber))
    out["scaler"] = generate_latest(scaler).decode()
    # a drainer (`surgegate drain --metrics-port`): nothing is connected until it runs
    drainer = Drainer(Settings(redis="redis://127.0.0.1:9/0"), "chat", "http://127.0.0.1:9")
    drained = CollectorRegistry()
    drained.register(DrainerCollector(drainer))
    out["drain"] = generate_latest(drained).decode()
    return out


def exposed() -> set[str]:
    return set().union(*(names(page) for page in pages().values()))


def test_every_metric_the_dashboard_queries_is_exposed():
    dashboard = json.loads(DASHBOARD.read_text())
    queried = {name for panel in dashboard["panels"] for target in panel["targets"]
               for name in re.findall(r"\bsurgegate_[a-z0-9_]+", target["expr"])}
    assert len(queried) >= 30, queried  # the dashboard covers each process
    missing = sorted(queried - exposed())
    assert not missing, f"the dashboard queries metrics nothing exposes: {missing}"
    assert all(target["expr"] for panel in dashboard["panels"] for target in panel["targets"])


#: the names each process role reports under: its own prefix (the status API has the plain ones, the whole
#: pipeline's); the rate limit service is an edge gate too, and the pools' gauges (``surgegate_pool_*``: the
#: newest scaling decision's numbers, the same wherever they are served) are the API's, the KEDA scaler's and
#: a pool scaler's alike
ROLE_PREFIXES = {"edge": ("surgegate_edge_", "surgegate_ratelimit_"), "worker": ("surgegate_worker_",),
                 "keda": ("surgegate_keda_", "surgegate_pool_"), "scaler": ("surgegate_scaler_", "surgegate_pool_"),
                 "drain": ("surgegate_drain_",)}


def test_every_process_page_follows_the_naming_rules_and_no_name_means_two_things():
    from surgegate.cli import no_created_series

    no_created_series()  # as every command does at start
    found = pages()
    for role, page in found.items():
        assert not lint(page), (role, lint(page))
    families = {role: {family.name for family in text_string_to_metric_families(page)
                       if not family.name.startswith("surgegate_pool_")} for role, page in found.items()}
    for role, prefixes in ROLE_PREFIXES.items():
        assert families[role] and all(name.startswith(prefixes) for name in families[role]), (role, families[role])
    # the API's plain names are no role's, and apart from the pools' gauges no two processes share a name
    assert not any(name.startswith(prefixes) for name in families["api"] for prefixes in ROLE_PREFIXES.values())
    assert all(not families[a] & families[b] for a in families for b in families if a < b)
