"""Saturation evidence an inference server gives, whatever the request rate says.

An LLM replica's request rate is a poor measure of how busy it is: a few long
prompts can fill it while the rate looks low. What the servers report says
it directly. A service is *saturated* when

- its pool's KV cache is full (at least :data:`KV_FULL` at the window's peak)
  while requests wait and the queue is not shrinking: new requests can only
  queue or preempt running ones; or
- its users' time to first token breaches the service's TTFT SLO (p99),
  unless the pool reports that nothing waited in the window: then the time is
  the prompts' own prefill (longer prompts), which admitting less does not
  shorten.

The throttle policy treats a saturated window as a breach: it escalates and
does not admit more than it served.

>>> from surgegate.schemas.aggregates import PoolStats
>>> full = PoolStats(samples=10, utilisation_mean=1.0, utilisation_max=1.0, kv_cache_mean=0.97, kv_cache_max=0.99,
...                  queue_depth=40, queue_depth_max=45, running_requests=256, tokens_per_s=9000.0, workers=4,
...                  ready_replicas=4, cold_starting_replicas=0)
>>> saturation(full, None, ttft_p99_ms=None, ttft_slo_ms=None)
'KV cache 99% full with 40 requests waiting'
>>> saturation(full, full.__replace__(queue_depth=80), ttft_p99_ms=None, ttft_slo_ms=None) is None
True
>>> saturation(None, None, ttft_p99_ms=4200.0, ttft_slo_ms=2000.0)
'TTFT p99 4,200 ms vs SLO 2,000 ms'
"""

from __future__ import annotations

from surgegate.schemas.aggregates import PoolStats

#: KV-cache use at which a replica can admit nothing new without preempting.
KV_FULL = 0.95


def saturation(pool: PoolStats | None, previous: PoolStats | None, *, ttft_p99_ms: float | None,
               ttft_slo_ms: float | None) -> str | None:
    """Why the service is saturated in this window, in words, or None when nothing says so."""
    full = pool is not None and pool.workers and pool.kv_cache_max >= KV_FULL and pool.queue_depth > 0
    growing = previous is None or not previous.workers or (pool is not None
                                                           and pool.queue_depth >= previous.queue_depth)
    if pool is not None and full and growing:
        return f"KV cache {pool.kv_cache_max:.0%} full with {pool.queue_depth} requests waiting"
    if ttft_slo_ms is not None and ttft_p99_ms is not None and ttft_p99_ms > ttft_slo_ms:
        if pool is not None and pool.workers and pool.queue_depth_max == 0:
            return None  # nothing waits: the prompts themselves are long, and admitting less cures nothing
        return f"TTFT p99 {ttft_p99_ms:,.0f} ms vs SLO {ttft_slo_ms:,.0f} ms"
    return None
