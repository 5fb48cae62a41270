"""On the real broker: a burst makes the pool's scaler get more replicas, and fewer only after the cooldown."""

from __future__ import annotations

import json

import pytest
from support import T0, W, WorkerProcess, eventually
from test_decide_e2e import load
from test_pipeline_e2e import send

from surgegate.gpu.scaler import ScalingSubscriber
from surgegate.schemas.decisions import ScalingDecision

pytestmark = pytest.mark.e2e

COOLDOWN_WINDOWS = 3
SERVICES = json.dumps({"chat": {"pool": "gpu-a", "replica_rps": 10, "replicas": 2, "slo_p99_ms": 2000, "scaling": {
    "min_replicas": 2, "max_replicas": 20, "cooldown_s": COOLDOWN_WINDOWS * W / 1000, "target_utilisation": 0.7}}})


class RecordingScaler:
    """The scaler plug-in point: keeps what it was asked to do."""

    def __init__(self) -> None:
        self.calls: list[ScalingDecision] = []

    def scale(self, decision: ScalingDecision) -> None:
        self.calls.append(decision)


def test_a_burst_scales_the_pool_up_then_down_only_after_the_cooldown(settings, tmp_path):
    settings = settings.replace(services=SERVICES)
    burst = range(4, 8)
    worker = WorkerProcess(settings, tmp_path / "w.log").start()
    scaler = RecordingScaler()
    try:
        with ScalingSubscriber(settings, "gpu-a", scaler) as subscriber:
            # half of the burst was throttled at the edges: it is still demand for scaling
            surge = [ev if i % 2 else ev.__replace__(status="throttled") for i, ev in enumerate(load(burst, 60, 2))]
            send(settings, load(range(0, 4), 5, 1) + surge + load(range(8, 24), 5, 3))
            first = T0

            def scaled_down() -> bool:
                sizes = [d.desired_replicas for d in scaler.calls]
                return len(sizes) >= 2 and sizes[-1] < max(sizes)

            eventually(scaled_down, 180, "a scale-up and a later scale-down")
            sizes = [((d.version - first) // W, d.desired_replicas) for d in scaler.calls]
            assert sizes[0][1] == 2, sizes  # 5 rps: the minimum
            peak_at, peak = max(sizes, key=lambda s: s[1])
            assert peak >= 9, sizes  # 60 rps at 7 rps a replica; the 30 rps served alone would need 5
            assert peak_at <= burst.start + 1, f"scaled up within a window of the burst: {sizes}"
            down_at = next(w for w, n in sizes if w > peak_at and n < peak)
            assert down_at >= burst.stop + COOLDOWN_WINDOWS - 1, f"scale-down before the cooldown: {sizes}"
            d = next(d for d in scaler.calls if d.desired_replicas == peak)
            assert d.reason.startswith(f"scale {d.previous_replicas} -> {peak}:") and "x 10 x 0.7" in d.reason
            assert subscriber.counts["applied"] == len(scaler.calls)
            assert subscriber.counts["other_pools"] == 0 and subscriber.counts["bad_records"] == 0
    finally:
        worker.stop()


def test_a_gpu_worker_reports_its_state_as_metric_events(settings):
    from support import TopicReader

    from surgegate.gpu.scaler import WorkerReporter
    from surgegate.schemas.telemetry import MetricEvent
    from surgegate.streams.producer import TelemetryProducer
    from surgegate.streams.topics import Topics

    state = {"state": "cold_starting", "utilisation": 0.0}
    with TelemetryProducer(settings) as producer:
        reporter = WorkerReporter(producer, "gpu-a", "w-7", probe=lambda: dict(state), interval_s=0.05)
        reporter.report()
        state.update(state="ready", utilisation=0.42, queue_depth=3, running_requests=5)
        reporter.report()
        reporter.stop()
        reporter.run()  # stopped at once: only the last report, draining
        with pytest.raises(Exception, match="utilisation"):
            state["utilisation"] = 1.5
            reporter.report()
    reader = TopicReader(settings, Topics(settings.topic_prefix).metrics)
    reader.poll_until(lambda m: len(m) >= 3, 20, "three worker reports")
    events = sorted(reader.decoded(MetricEvent), key=lambda e: e.ts)
    assert [e.state for e in events] == ["cold_starting", "ready", "draining"]
    assert events[1].utilisation == 0.42 and events[1].queue_depth == 3 and events[1].worker_id == "w-7"
