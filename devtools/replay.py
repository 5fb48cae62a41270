"""Replaying request-arrival traces (``timestamp_s,count[,tokens...]``) into sg.requests.

Each trace bin's count is spread evenly over the bin and sent as RequestEvents
or per-second RequestSummaries, with a scale factor on counts and a speed-up
factor on time. Latencies follow the long tail of the source analysis (90%
within 200 ms, 10% over 2 s), deterministically for a seed.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator

from surgegate.schemas.telemetry import RequestEvent
from surgegate.streams.producer import TelemetryProducer
from surgegate.telemetry.summaries import SummaryBuilder
from surgegate.telemetry.traces import TraceBin

#: Progress callback: (bins done, bins total, requests sent).
Progress = Callable[[int, int, int], None]


def synthesize(bins: list[TraceBin], *, start_ms: int, scale: float = 1.0, service: str = "chat",
               seed: int = 0, tenants: int = 8) -> Iterator[RequestEvent]:
    """RequestEvents for the trace, spread evenly over each bin, in time order."""
    rng = random.Random(seed)
    carry = 0.0
    t0 = bins[0].start_s
    for b in bins:
        exact = b.count * scale + carry
        n = int(exact)
        carry = exact - n
        if n <= 0:
            continue
        per_in = b.input_tokens / b.count if b.count else 0
        per_out = b.output_tokens / b.count if b.count else 0
        span_ms = b.length_s * 1000
        base = start_ms + int((b.start_s - t0) * 1000)
        for i in range(n):
            slow = rng.random() < 0.1
            tenant = min(int(rng.paretovariate(1.2)) - 1, tenants - 1)
            yield RequestEvent(
                ts=base + int(span_ms * i / n), service=service, tenant=f"tenant-{tenant}",
                tier=("enterprise", "pro", "free")[tenant % 3], edge_id=f"edge-{i % 4}",
                latency_ms=rng.uniform(2000, 8000) if slow else rng.uniform(20, 200),
                queue_ms=rng.uniform(0, 20), request_type="batch" if rng.random() < 0.2 else "realtime",
                input_tokens=int(per_in) if per_in else rng.randrange(50, 800),
                output_tokens=int(per_out) if per_out else rng.randrange(20, 400),
                cache_hit=rng.random() < 0.15,
            )


def replay(producer: TelemetryProducer, bins: list[TraceBin], *, start_ms: int, speedup: float = 1.0,
           scale: float = 1.0, summaries: bool = False, service: str = "chat", seed: int = 0,
           progress: Progress | None = None) -> int:
    """Send the trace, paced at ``speedup`` x real time (0 = as fast as possible).

    With a speed-up the trace's time is compressed into event time as well
    (a request ``d`` seconds into the trace is stamped ``start + d / speedup``),
    so windows stay live and each holds ``speedup`` times the trace's requests:
    pass ``scale=1/speedup`` to keep the trace's rates. Without pacing the event
    times are the trace's own from ``start_ms``.
    """
    if speedup < 0:
        raise ValueError(f"speedup={speedup!r} must be >= 0 (0 = no pacing)")
    if scale <= 0:
        raise ValueError(f"scale={scale!r} must be > 0")
    wall0 = time.monotonic()
    sent = 0
    builder = SummaryBuilder() if summaries else None
    current_second = None
    done_bins = 0
    last_bin_ts = None
    for ev in synthesize(bins, start_ms=start_ms, scale=scale, service=service, seed=seed):
        if speedup:
            ev = ev.__replace__(ts=start_ms + int((ev.ts - start_ms) / speedup))
            delay = (ev.ts - start_ms) / 1000 - (time.monotonic() - wall0)
            if delay > 0:
                time.sleep(delay)
        if builder is not None:
            second = ev.ts // 1000
            if current_second is not None and second != current_second:
                for s in builder.drain():
                    producer.send_summary(s)
            current_second = second
            builder.add(ev)
        else:
            producer.send_request(ev)
        sent += 1
        if sent % 5000 == 0:
            producer.poll()
        if progress is not None and ev.ts != last_bin_ts and sent % 1000 == 0:
            done_bins = min(len(bins), int((ev.ts - start_ms) / 1000 / bins[0].length_s) + 1)
            progress(done_bins, len(bins), sent)
            last_bin_ts = ev.ts
    if builder is not None:
        for s in builder.drain():
            producer.send_summary(s)
    producer.flush()
    if progress is not None:
        progress(len(bins), len(bins), sent)
    return sent
