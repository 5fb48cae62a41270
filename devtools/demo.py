"""Live synthetic traffic for `surgegate up --demo` (named synthetic: not a real trace)."""

from __future__ import annotations

import math
import random
import threading
import time

from surgegate.schemas.telemetry import MetricEvent, RequestEvent
from surgegate.streams.producer import TelemetryProducer

TICK_S = 0.1


def run_demo(producer: TelemetryProducer, stop: threading.Event, *, base_rps: float = 200.0,
             service: str = "chat", pool: str = "gpu-a", workers: int = 8, seed: int = 0) -> None:
    """Send requests at a slowly varying rate with a 5x burst every ten minutes, and
    one MetricEvent per worker per second, until ``stop`` is set."""
    rng = random.Random(seed)
    t_start = time.time()
    last_metrics = 0.0
    while not stop.is_set():
        now = time.time()
        elapsed = now - t_start
        burst = 5.0 if (elapsed % 600) > 480 else 1.0
        rate = base_rps * (1 + 0.3 * math.sin(elapsed / 120)) * burst
        for _ in range(int(rng.expovariate(1.0) * rate * TICK_S + 0.5)):
            tenant = min(int(rng.paretovariate(1.2)) - 1, 7)
            slow = rng.random() < 0.1
            producer.send_request(RequestEvent(
                ts=int(now * 1000), service=service, tenant=f"tenant-{tenant}",
                tier=("enterprise", "pro", "free")[tenant % 3], edge_id=f"edge-{rng.randrange(4)}",
                latency_ms=rng.uniform(2000, 6000) * burst ** 0.5 if slow else rng.uniform(20, 200) * burst ** 0.5,
                queue_ms=rng.uniform(0, 30) * burst, request_type="batch" if rng.random() < 0.2 else "realtime",
                input_tokens=rng.randrange(50, 800), output_tokens=rng.randrange(20, 400),
                cache_hit=rng.random() < 0.15,
            ))
        if now - last_metrics >= 1.0:
            last_metrics = now
            util = min(1.0, rate / (base_rps * 2.5))
            for w in range(workers):
                producer.send_metric(MetricEvent(
                    ts=int(now * 1000), pool=pool, worker_id=f"{pool}-{w}",
                    utilisation=min(1.0, max(0.0, util + rng.uniform(-0.05, 0.05))),
                    queue_depth=int(max(0.0, (util - 0.7) * 40)), kv_cache_use=min(1.0, util * 0.8),
                    running_requests=int(util * 16), tokens_per_s=util * 2400,
                    state="cold_starting" if w == workers - 1 and burst > 1 else "ready",
                ))
        producer.poll()
        stop.wait(TICK_S)
    producer.flush()
