"""The forecast agent on the real broker: forecasts per window, and a restart resumes learned state."""

from __future__ import annotations

import random

import msgspec
import pytest
import redis
from confluent_kafka import Producer
from support import T0, TopicReader, W, WorkerProcess, eventually

from surgegate.forecast.scope import ScopeForecaster
from surgegate.schemas.aggregates import TrafficStats, WindowStats
from surgegate.schemas.forecasts import Forecast
from surgegate.streams.store import Keys
from surgegate.streams.topics import Topics

pytestmark = pytest.mark.e2e


def window(i: int, rate: float) -> WindowStats:
    requests = int(rate * W / 1000)
    traffic = TrafficStats(
        requests=requests, rate_rps=rate, ok=requests, error=0, timeout=0, throttled=0, realtime=requests, batch=0,
        latency_p50_ms=80.0, latency_p90_ms=150.0, latency_p99_ms=900.0, latency_max_ms=3000.0,
        queue_wait_p99_ms=20.0, input_tokens=requests * 300, output_tokens=requests * 100,
        tokens_per_s=rate * 400, over_2s_share=0.01, cache_hits=0)
    return WindowStats(scope="service=chat", kind="traffic", window_start=T0 + i * W, window_end=T0 + (i + 1) * W,
                       service="chat", traffic=traffic)


def publish(settings, windows) -> None:
    p = Producer({"bootstrap.servers": settings.kafka, "linger.ms": 5, "partitioner": "murmur2_random"})
    for w in windows:
        p.produce(Topics(settings.topic_prefix).windows, msgspec.json.encode(w), key=w.scope.encode())
    p.flush()


def origins(reader: TopicReader) -> dict[int, Forecast]:
    return {f.origin: f for f in reader.decoded(Forecast)}


def run_restart(settings, tmp_path):
    """Two worker lifetimes over 45 windows; returns what was published and what should have been."""
    settings = settings.replace(forecast_checkpoint_windows=1)  # every window, so the resume is exact
    rng = random.Random(5)
    windows = [window(i, max(0.0, 50 + 20 * (i > 30) + rng.gauss(0, 5))) for i in range(45)]
    reference = ScopeForecaster("service=chat", step_ms=settings.window_ms, horizon=settings.forecast_horizon,
                                coverage=settings.forecast_coverage)
    for w in windows:
        reference.observe(w.window_start, w.traffic.rate_rps, w.traffic.tokens_per_s)
    reader = TopicReader(settings, Topics(settings.topic_prefix).forecasts)

    first = WorkerProcess(settings, tmp_path / "a.log").start()
    try:
        publish(settings, windows[:25])
        reader.poll_until(lambda _: len(origins(reader)) >= 25, 90, "25 forecasts from the first worker")
    finally:
        first.stop()
    second = WorkerProcess(settings, tmp_path / "b.log").start()
    try:
        publish(settings, windows[25:26])
        reader.poll_until(lambda _: windows[25].window_start in origins(reader), 90, "the restarted worker")
        publish(settings, windows[26:])
        last = windows[-1].window_start
        reader.poll_until(lambda _: last in origins(reader), 90, "forecasts from the restarted worker")
    finally:
        second.stop()
    return origins(reader), windows, reference, last


def test_a_restarted_worker_continues_from_checkpointed_models_and_forecasts_every_window(settings, tmp_path):
    settings = settings.replace(forecast_checkpoint_windows=1)  # every window, so the resume is exact
    published, windows, reference, last = run_restart(settings, tmp_path)
    assert set(published) == {w.window_start for w in windows}
    # Had the second worker relearned from scratch, its forecast would differ from one
    # that saw every window; a restored checkpoint makes them identical.
    assert published[last] == reference.forecast()
    fresh = ScopeForecaster("service=chat", step_ms=settings.window_ms)
    for w in windows[25:]:
        fresh.observe(w.window_start, w.traffic.rate_rps, w.traffic.tokens_per_s)
    assert published[last] != fresh.forecast()
    f = published[last]
    assert len(f.rate_rps.point) == len(f.rate_rps.lower) == len(f.tokens_per_s.upper) == 30
    assert all(lo <= p <= hi for lo, p, hi in zip(f.rate_rps.lower, f.rate_rps.point, f.rate_rps.upper))
    assert f"rps in {6 * W // 1000} s" in f.reason
    r = redis.Redis.from_url(settings.redis)
    key = Keys.for_topic_prefix(settings.topic_prefix).latest_forecast("service=chat")
    eventually(lambda: r.get(key) is not None, 20, "the forecast mirrored to Redis")

