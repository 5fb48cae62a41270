"""Trace replay: counts, scaling and time compression (against a spec'd producer double)."""

from __future__ import annotations

from unittest import mock

from surgegate.devtools.replay import replay
from surgegate.streams.producer import TelemetryProducer
from surgegate.telemetry.traces import TraceBin

BINS = [TraceBin(0, 10, 20, 0, 0), TraceBin(10, 10, 40, 0, 0), TraceBin(20, 10, 0, 0, 0), TraceBin(30, 10, 10, 0, 0)]


def sent_events(**kwargs):
    producer = mock.create_autospec(TelemetryProducer, instance=True, spec_set=True)
    replay(producer, BINS, start_ms=1_000_000, **kwargs)
    return [c.args[0] for c in producer.send_request.call_args_list], producer


def test_every_request_of_the_trace_is_sent_scaled():
    events, producer = sent_events(speedup=0, scale=2.0)
    assert len(events) == 2 * 70
    assert producer.flush.called
    assert sum(1_000_000 + 10_000 <= e.ts < 1_000_000 + 20_000 for e in events) == 80


def test_a_speedup_compresses_event_time_so_windows_stay_live():
    events, _ = sent_events(speedup=100.0)
    assert max(e.ts for e in events) - 1_000_000 < 400  # 40 s of trace in 0.4 s of event time
    assert [e.ts for e in events] == sorted(e.ts for e in events)


def test_summaries_cover_the_same_requests():
    producer = mock.create_autospec(TelemetryProducer, instance=True, spec_set=True)
    replay(producer, BINS, start_ms=1_000_000, speedup=0, summaries=True)
    summaries = [c.args[0] for c in producer.send_summary.call_args_list]
    assert sum(s.requests for s in summaries) == 70
