"""The load edge of ``surgegate chaos``: a child process sending RequestEvents along the runner's phases.

It sends RequestEvents stamped now, one in :data:`INVALID_EVERY` of them
malformed on purpose, spread over every partition of the requests topic, for
the service the runner names in a phase file it reads every tick, and reports
what it sent, delivered and failed through a status file it rewrites every
tick (:func:`run_edge`). The runner starts it as ``python -m
surgegate.devtools.chaos_edge``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

import msgspec

from surgegate.errors import DeliveryFailed
from surgegate.settings import Settings
from surgegate.streams.producer import KafkaSender
from surgegate.streams.topics import Topics

#: One event in this many is malformed on purpose (no tier): it must be dead-lettered, not lost.
INVALID_EVERY = 250
TICKS_PER_S = 20


def run_edge(name: str, rate: float, phase_file: Path, status_file: Path, settings: Settings) -> None:
    """Send RequestEvents at ``rate`` per second, stamped now, for the service named in ``phase_file``.

    Before the service changes, everything sent is flushed, so each phase's
    delivered and failed counts are exact. ``status_file`` is rewritten every
    tick: per phase ``sent`` (also ``by_window``: sent per event-time window
    start) and ``invalid``, and (once closed) ``delivered`` and ``failed``; plus
    the running totals.
    """
    sender = KafkaSender(settings, f"chaos-{name}")
    topic = Topics(settings.topic_prefix).requests
    encode = msgspec.json.encode
    phases: dict[str, dict[str, Any]] = {}
    window_ms = settings.window_ms
    partitions = settings.partitions
    phase = ""
    marks = (0, 0)
    per_tick = rate / TICKS_PER_S
    owed = 0.0
    n = 0
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    next_tick = time.monotonic()
    while not stop.is_set():
        wanted = phase_file.read_text().strip() if phase_file.exists() else ""
        if wanted != phase:
            if phase:
                with contextlib.suppress(DeliveryFailed):  # counted in sender.failed
                    sender.flush(60)
                phases[phase].update(delivered=sender.delivered - marks[0], failed=sender.failed - marks[1])
            marks = (sender.delivered, sender.failed)
            phase = wanted
            phases.setdefault(phase, {"sent": 0, "invalid": 0, "by_window": {}})
        owed += per_tick
        now_ms = int(time.time() * 1000)
        while owed >= 1.0 and phase:
            owed -= 1.0
            n += 1
            event: dict[str, Any] = {"schema": "sg.RequestEvent/1", "ts": now_ms, "service": phase, "tenant": name,
                                     "tier": "pro", "edge_id": name, "latency_ms": 40.0 + n % 50}
            if n % INVALID_EVERY == 0:
                del event["tier"]
                phases[phase]["invalid"] += 1
            # counted before it is queued: a kill between the two leaves it counted, never uncounted
            phases[phase]["sent"] += 1
            by_window = phases[phase]["by_window"]
            start = str(now_ms // window_ms * window_ms)
            by_window[start] = by_window.get(start, 0) + 1
            # over every partition, so each ingest member has its share (keyed by edge, two edges may share one)
            sender.send(topic, encode(event), key=name.encode(), partition=n % partitions)
        sender.poll()
        write_json(status_file, {"phases": phases, "phase": phase, "delivered": sender.delivered,
                                  "failed": sender.failed, "delivered_since_phase": sender.delivered - marks[0],
                                  "failed_since_phase": sender.failed - marks[1], "renewals": sender.renewals})
        next_tick += 1 / TICKS_PER_S
        time.sleep(max(0.0, next_tick - time.monotonic()))
    with contextlib.suppress(DeliveryFailed):
        sender.flush(30)
    if phase:
        phases[phase].update(delivered=sender.delivered - marks[0], failed=sender.failed - marks[1])
    write_json(status_file, {"phases": phases, "phase": phase, "delivered": sender.delivered,
                              "failed": sender.failed, "delivered_since_phase": 0, "failed_since_phase": 0,
                              "renewals": sender.renewals, "stopped": True})


def write_json(path: Path, value: object) -> None:
    write_atomic(path, json.dumps(value))


def write_atomic(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` at once: a reader never sees half of it."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def main(argv: list[str] | None = None) -> int:
    """The load edge's entry point."""
    p = argparse.ArgumentParser(prog="surgegate.devtools.chaos_edge")
    p.add_argument("--edge", required=True)
    p.add_argument("--rate", type=float, required=True)
    p.add_argument("--phase-file", type=Path, required=True)
    p.add_argument("--status-file", type=Path, required=True)
    args = p.parse_args(argv)
    run_edge(args.edge, args.rate, args.phase_file, args.status_file, Settings.from_env(os.environ))
    return 0


if __name__ == "__main__":
    sys.exit(main())
