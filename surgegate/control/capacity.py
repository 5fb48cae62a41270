"""Safe capacity per service, learned online from windows and GPU-pool metrics.

safe_rps = per-replica capacity x ready replicas x target utilisation x gradient

The per-replica capacity is learned from windows where the service met its
latency SLO at a meaningful utilisation (served rate / (replicas x
utilisation)). The gradient, in the spirit of Netflix's Gradient2 limiter,
compares the p99 latency to its no-load baseline: while p99 stays within a
tolerance of the baseline (twice it, and never less than half the SLO: a
first token at 200 ms against a 30 ms baseline is still well within a 1 s
target) it is 1; beyond, capacity falls in proportion; above the SLO it is at
most SLO / p99.

Latency that load does not explain is not cured by admitting less: when p99
breaches the SLO while the fleet runs below its target utilisation, or would
breach it even without the reported queue wait (a longer tail of service
times, say), capacity is not cut for it and the per-replica rate is still
learned, so the fleet is sized for the slower requests.

>>> cap = SafeCapacity(slo_p99_ms=1000, replica_rps=50, target_utilisation=0.8)
>>> t = cap.update(window_start=0, served_rps=100, p99_ms=200, ready_replicas=4, utilisation=0.5)
>>> round(t.safe_rps)
160
>>> t = cap.update(window_start=10_000, served_rps=100, p99_ms=2000, ready_replicas=4, utilisation=0.9)
>>> t.safe_rps < 160 and t.gradient <= 0.5
True
"""

from __future__ import annotations

from surgegate.checks import check
from surgegate.schemas.decisions import Threshold

#: p99 may exceed the no-load baseline by this factor, and reach this share of the SLO, before capacity is cut.
LATENCY_TOLERANCE, SLO_TOLERANCE = 2.0, 0.5
#: The gradient never cuts capacity below this share in one window.
MIN_GRADIENT = 0.3
#: Utilisation must be at least this for a window to teach the per-replica capacity.
LEARN_MIN_UTILISATION = 0.3
LEARN_RATE = 0.1
BASELINE_RISE = 0.01


class SafeCapacity:
    """Online estimate of the request rate the current fleet serves within its SLO."""

    def __init__(self, *, slo_p99_ms: float, replica_rps: float, target_utilisation: float = 0.85,
                 service: str = "") -> None:
        check(slo_p99_ms > 0, "slo_p99_ms", slo_p99_ms, "must be > 0")
        check(replica_rps > 0, "replica_rps", replica_rps, "must be > 0")
        check(0 < target_utilisation <= 1, "target_utilisation", target_utilisation, "must be within (0, 1]")
        self.service = service
        self.slo = slo_p99_ms
        self.replica_rps = replica_rps
        self.target = target_utilisation
        self.baseline: float | None = None
        self.tokens_per_request = 0.0
        self.last_service_bound = False

    def service_bound(self, p99_ms: float, queue_wait_ms: float, utilisation: float | None,
                      slo_ms: float | None = None) -> bool:
        """p99 breaches the SLO, but not because of load: the fleet runs below its target
        utilisation, or p99 breaches even without the reported (> 0) queue wait."""
        slo = self.slo if slo_ms is None else slo_ms
        if p99_ms <= slo:
            return False
        return (utilisation is not None and utilisation < self.target) or \
            (queue_wait_ms > 0 and p99_ms - queue_wait_ms > slo)

    def update(self, *, window_start: int, served_rps: float, p99_ms: float, ready_replicas: int,
               utilisation: float | None, tokens_per_s: float = 0.0, queue_wait_ms: float = 0.0,
               slo_ms: float | None = None) -> Threshold:
        """Learn one window and return the safe capacity that follows.

        ``queue_wait_ms`` is the window's p99 wait for a worker (0: not reported). ``p99_ms`` is judged against
        ``slo_ms`` (default: the configured SLO): the throttle passes a streamed service's TTFT and its target.
        """
        slo = self.slo if slo_ms is None else slo_ms
        service_bound = self.service_bound(p99_ms, queue_wait_ms, utilisation, slo)
        if p99_ms > 0:
            # the baseline follows the lowest p99 seen, rising only slowly
            self.baseline = p99_ms if self.baseline is None else min(p99_ms, self.baseline * (1 + BASELINE_RISE))
        healthy = 0 < p99_ms <= slo or service_bound
        if healthy and utilisation is not None and utilisation >= LEARN_MIN_UTILISATION and ready_replicas > 0:
            sample = served_rps / (ready_replicas * utilisation)
            self.replica_rps += LEARN_RATE * (sample - self.replica_rps)
        if served_rps > 0:
            tpr = tokens_per_s / served_rps
            self.tokens_per_request = tpr if not self.tokens_per_request else \
                self.tokens_per_request + LEARN_RATE * (tpr - self.tokens_per_request)
        gradient = 1.0
        reason = "p99 within tolerance of its baseline"
        if service_bound:
            reason = (f"p99 {p99_ms:.0f} ms breaches the SLO at utilisation {utilisation or 0:.0%} and queue wait "
                      f"{queue_wait_ms:.0f} ms: service time, not load; no cut")
        elif self.baseline and p99_ms > max(LATENCY_TOLERANCE * self.baseline, SLO_TOLERANCE * slo):
            gradient = max(LATENCY_TOLERANCE * self.baseline, SLO_TOLERANCE * slo) / p99_ms
            reason = (f"p99 {p99_ms:.0f} ms > {LATENCY_TOLERANCE:g} x baseline {self.baseline:.0f} ms and "
                      f"{SLO_TOLERANCE:g} x the SLO")
        if p99_ms > slo and not service_bound:
            gradient = min(gradient, slo / p99_ms)
            reason = f"p99 {p99_ms:.0f} ms breaches the {slo:.0f} ms SLO"
        gradient = max(MIN_GRADIENT, min(1.0, gradient))
        self.last_service_bound = service_bound
        safe = self.replica_rps * max(ready_replicas, 0) * self.target * gradient
        return Threshold(
            service=self.service, window_start=window_start, safe_rps=round(safe, 3),
            safe_tokens_per_s=round(safe * self.tokens_per_request, 3), replica_rps=round(self.replica_rps, 3),
            ready_replicas=max(ready_replicas, 0), latency_baseline_ms=round(self.baseline or 0.0, 3),
            latency_p99_ms=p99_ms, gradient=round(gradient, 4), slo_p99_ms=slo,
            reason=(f"safe {safe:,.0f} rps = {self.replica_rps:,.1f} rps/replica x {ready_replicas} ready x "
                    f"{self.target:g} target x gradient {gradient:.2f} ({reason})"),
        )
