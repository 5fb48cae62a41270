"""Each pool's newest ScalingDecision, and the same as Prometheus gauges.

:class:`PoolBook` is fed raw records from the scaling topic (by whoever follows
it: the KEDA scaler, the API's decision stream, a pool's scaler) and keeps the
newest version per pool; :class:`PoolCollector` shows them at scrape time.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator

import msgspec
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from surgegate.schemas.decisions import ScalingDecision

log = logging.getLogger(__name__)


class PoolBook:
    """The newest ScalingDecision per pool, fed from the scaling topic (thread-safe)."""

    def __init__(self) -> None:
        self._decoder = msgspec.json.Decoder(ScalingDecision)
        self._lock = threading.Lock()
        self._pools: dict[str, tuple[ScalingDecision, float]] = {}
        self.counts = {"records": 0, "bad_records": 0, "stale_versions": 0}
        self.last_error: str | None = None

    def offer(self, raw: bytes) -> bool:
        """Take one encoded decision; True if it is its pool's newest."""
        self.counts["records"] += 1
        try:
            decision = self._decoder.decode(raw)
        except msgspec.DecodeError as exc:
            self.counts["bad_records"] += 1
            self.last_error = f"bad scaling record: {exc}"
            log.error("scaling record skipped: %s", exc)
            return False
        with self._lock:
            known = self._pools.get(decision.pool)
            if known is not None and decision.version <= known[0].version:
                self.counts["stale_versions"] += decision.version < known[0].version
                return False
            self._pools[decision.pool] = (decision, time.time())
        return True

    def get(self, pool: str) -> ScalingDecision | None:
        """The pool's newest decision, or None."""
        with self._lock:
            known = self._pools.get(pool)
        return None if known is None else known[0]

    def items(self) -> list[tuple[ScalingDecision, float]]:
        """Every pool's newest decision with the wall-clock time it arrived."""
        with self._lock:
            return sorted(self._pools.values(), key=lambda item: item[0].pool)


class PoolCollector(Collector):
    """Every pool's newest decision as Prometheus gauges, read at scrape time (for prometheus-adapter)."""

    def __init__(self, book: PoolBook) -> None:
        self.book = book

    def collect(self) -> Iterator[GaugeMetricFamily]:
        gauges = {
            name: GaugeMetricFamily(f"surgegate_pool_{name}", text, labels=["pool"])
            for name, text in (
                ("desired_replicas", "Replicas the newest scaling decision asks of the pool"),
                ("ready_replicas", "Replicas ready when the newest decision was made"),
                ("cold_starting_replicas", "Replicas starting when the newest decision was made"),
                ("warm_replicas", "Replicas the newest decision keeps loaded and idle"),
                ("min_replicas", "The pool's lower bound"),
                ("max_replicas", "The pool's upper bound"),
                ("decision_version", "Version of the newest decision"),
                ("decision_age_seconds", "Seconds since the newest decision arrived"),
            )}
        overflow = GaugeMetricFamily("surgegate_pool_overflow_replicas",
                                     "Replicas the newest decision asks of the overflow pool",
                                     labels=["pool", "overflow_pool"])
        now = time.time()
        for d, received in self.book.items():
            for name, value in (("desired_replicas", d.desired_replicas), ("ready_replicas", d.ready_replicas),
                                ("cold_starting_replicas", d.cold_starting), ("warm_replicas", d.warm_pool),
                                ("min_replicas", d.min_replicas), ("max_replicas", d.max_replicas),
                                ("decision_version", d.version), ("decision_age_seconds", now - received)):
                gauges[name].add_metric([d.pool], value)
            if d.overflow is not None:
                overflow.add_metric([d.pool, d.overflow.pool], d.overflow.replicas)
        yield from gauges.values()
        yield overflow
