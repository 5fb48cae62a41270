"""``surgegate chaos``: faults injected into the embedded stack under load, and an account of every event.

The stack is the one ``surgegate up`` runs: an embedded broker and Redis, one or
more ``surgegate worker`` processes, and load edges (processes that send
RequestEvents stamped now, one in
:data:`~surgegate.devtools.chaos_edge.INVALID_EVERY` of them malformed on
purpose, spread over every partition of the requests topic). Each phase
stamps its events with its own service (``chaos-<fault>``), so the
windows of that service hold exactly the phase's events. The faults, one per
phase, while the edges keep sending:

- ``worker``: a worker killed with SIGKILL, a new one started after the outage;
- ``workers``: every worker killed with SIGKILL, all started again after the outage, each
  :data:`RESTART_STAGGER_S` after the one before (as a supervisor restarts a fleet);
- ``redis``: Redis stopped, an empty one started on its address after the outage;
- ``edge``: one edge killed with SIGKILL, a new one started in its place;
- ``broker``: the broker killed, an empty one started on its address after the outage.

Nothing is restarted but what the fault killed. Per phase the account is:
events produced (by the edges' own counts), in published windows, late
(``late_events`` of the windows), dead-lettered, failed (counted by the
producer that sent them), and lost, with the mechanism that can lose them:
the SIGKILLed edge's records not yet acknowledged, and what a memory-only broker
acknowledged in its last seconds and took with it. ``unaccounted`` is what
nothing explains; it should be zero.

An edge reports through a status file it rewrites every tick; the runner
switches phases through a file the edges read every tick.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import redis

from surgegate.devtools.chaos_edge import read_json, write_atomic, write_json
from surgegate.devtools.embedded import EmbeddedBroker, EmbeddedRedis
from surgegate.schemas.aggregates import WindowStats
from surgegate.schemas.deadletter import DeadLetter
from surgegate.settings import Settings
from surgegate.streams.kafka import follow_from_start
from surgegate.streams.store import Keys
from surgegate.streams.topics import Topics, create_topics

FAULTS = ("worker", "workers", "redis", "edge", "broker")
#: Workers restarted together come back this far apart: the first reads, claims and rebalances before the next joins.
RESTART_STAGGER_S = 3.0
#: Lost with the killed broker is explained only up to what it acknowledged this long before it died.
BROKER_LOSS_HORIZON_S = 2.0


@dataclasses.dataclass(frozen=True)
class Timing:
    """How long each part of a run takes."""

    warmup_s: float = 20.0
    before_fault_s: float = 5.0
    outage_s: float = 10.0
    after_fault_s: float = 25.0
    drain_timeout_s: float = 120.0

    @classmethod
    def short(cls) -> Timing:
        """The version CI runs."""
        return cls(warmup_s=15.0, before_fault_s=3.0, outage_s=5.0, after_fault_s=20.0, drain_timeout_s=90.0)


@dataclasses.dataclass
class FaultAccount:
    """What became of one phase's events."""

    fault: str
    produced: int = 0
    #: of which malformed on purpose: each must be dead-lettered
    invalid: int = 0
    in_windows: int = 0
    late: int = 0
    dead_lettered: int = 0
    failed: int = 0
    lost: int = 0
    lost_bound: int = 0
    worst_delay_s: float = 0.0
    note: str = ""

    @property
    def unaccounted(self) -> int:
        """Events nothing explains: produced, but neither in windows, late, dead-lettered, failed nor lost by
        a mechanism that can lose them."""
        return self.produced - self.in_windows - self.late - self.dead_lettered - self.failed - self.lost


# ------------------------------------------------------------------ the runner


class _Follower:
    """Keeps every service-level window and every dead letter published, across brokers."""

    def __init__(self, settings: Settings) -> None:
        #: (service, window start) -> every publication of it as (requests, late events, delay), the newest last:
        #: a window published again after a restart shows here; the newest is what counts
        self.publications: dict[tuple[str, int], list[tuple[int, int, float]]] = defaultdict(list)
        self.dead: dict[str, int] = defaultdict(int)
        self._dead_seen: set[tuple[str, int, int, str]] = set()
        self._stop = threading.Event()
        topics = Topics(settings.topic_prefix)
        self._lateness_ms = settings.lateness_ms
        stats, letters = msgspec.json.Decoder(WindowStats), msgspec.json.Decoder(DeadLetter)
        self._threads = [
            threading.Thread(target=follow_from_start, daemon=True, args=(
                settings, topics.windows, "chaos-windows", self._stop, lambda raw: self._window(stats.decode(raw)),
                lambda err: None)),
            threading.Thread(target=follow_from_start, daemon=True, args=(
                settings, topics.deadletter, "chaos-dead", self._stop, lambda raw: self._letter(letters.decode(raw)),
                lambda err: None)),
        ]
        for t in self._threads:
            t.start()

    def _window(self, w: WindowStats) -> None:
        if w.kind != "traffic" or w.tenant is not None or w.tier is not None or w.service is None:
            return
        requests = w.traffic.requests if w.traffic is not None else 0
        delay = time.time() - (w.window_end + self._lateness_ms) / 1000
        self.publications[(w.service, w.window_start)].append((requests, w.late_events, delay))

    def _letter(self, letter: DeadLetter) -> None:
        try:
            service = json.loads(base64.b64decode(letter.value_b64)).get("service", "?")
        except (ValueError, AttributeError):
            service = "?"
        # a dead letter republished (the ingest re-reading a range) is counted once
        identity = (letter.source_topic, letter.partition, letter.offset, service)
        if identity not in self._dead_seen:
            self._dead_seen.add(identity)
            self.dead[service] += 1

    def service_windows(self, service: str) -> list[tuple[int, int, int, float]]:
        return sorted((start, *published[-1]) for (s, start), published in list(self.publications.items())
                      if s == service)

    def record(self, service: str) -> dict[str, dict[str, Any]]:
        """The service's windows by start: the newest publication, and every one of them."""
        return {str(start): {"requests": n, "late": late, "delay_s": round(delay, 2),
                             "published": [(p[0], p[1], round(p[2], 2)) for p in self.publications[(service, start)]]}
                for start, n, late, delay in self.service_windows(service)}

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(10)


class Chaos:
    """The stack, the load and the faults; :meth:`run` returns one account per phase."""

    def __init__(self, timing: Timing, rate: float = 200.0, edges: int = 2, faults: tuple[str, ...] = FAULTS,
                 log: Callable[[str], None] = print, log_level: str = "info", workers: int = 1) -> None:
        self.timing = timing
        self.rate = rate
        self.edge_count = edges
        self.worker_count = workers
        self.faults = faults
        self.log = log
        self.dir = Path(tempfile.mkdtemp(prefix="surgegate-chaos-"))
        self.broker = EmbeddedBroker()
        self.redis = EmbeddedRedis()
        # 4 partitions: what the embedded broker gives a topic a client has it auto-create (Faust's clients do,
        # when the broker comes back empty before the worker's keeper has re-created the topics)
        self.settings = Settings(topic_prefix="chaos.", partitions=4, lateness_s=2.0, flush_interval_s=0.5,
                                 idle_after_s=1.5, log_level=log_level)
        #: the worker processes by id
        self.workers: dict[str, subprocess.Popen] = {}
        self.edges: dict[str, subprocess.Popen] = {}
        self.phase_file = self.dir / "phase"
        self.killed_edges: dict[str, dict] = {}
        self.fault_at: dict[str, float] = {}
        self.broker_recent_acks = 0
        #: when each phase's service stopped being stamped on new events (wall clock)
        self.phase_end: dict[str, float] = {}

    # -------------------------------------------------------------- processes

    def _start_worker(self, worker_id: str) -> None:
        folder = self.dir / worker_id  # each worker's Faust data apart
        folder.mkdir(exist_ok=True)
        out = open(self.dir / f"{worker_id}.log", "ab")  # noqa: SIM115 - the child keeps it
        self.workers[worker_id] = subprocess.Popen(
            [sys.executable, "-m", "surgegate.cli", "worker"],
            env=self.settings.replace(worker_id=worker_id).child_environ(), stdout=out, stderr=subprocess.STDOUT,
            cwd=folder, start_new_session=True)

    def _kill_workers(self, ids: list[str]) -> None:
        for worker_id in ids:
            proc = self.workers.pop(worker_id)
            proc.kill()
            proc.wait()

    def _start_edge(self, name: str) -> None:
        out = open(self.dir / f"{name}.log", "ab")  # noqa: SIM115 - the child keeps it
        self.edges[name] = subprocess.Popen(
            [sys.executable, "-m", "surgegate.devtools.chaos_edge", "--edge", name, "--rate",
             str(self.rate / self.edge_count), "--phase-file", str(self.phase_file),
             "--status-file", str(self._status(name))],
            env=self.settings.child_environ(), stdout=out, stderr=subprocess.STDOUT, cwd=self.dir,
            start_new_session=True)

    def _status(self, name: str) -> Path:
        return self.dir / f"{name}.json"

    def _set_phase(self, phase: str) -> None:
        write_atomic(self.phase_file, phase)

    # -------------------------------------------------------------- faults

    def _inject(self, fault: str) -> None:
        t = self.timing
        self.fault_at[fault] = time.time()
        if fault in ("worker", "workers"):
            ids = sorted(self.workers)[:1] if fault == "worker" else sorted(self.workers)
            self._kill_workers(ids)
            time.sleep(t.outage_s)
            for i, worker_id in enumerate(ids):
                if i:
                    time.sleep(RESTART_STAGGER_S)
                self._start_worker(worker_id)
        elif fault == "redis":
            self.redis.stop()
            time.sleep(t.outage_s)
            self.redis = EmbeddedRedis(self.redis.port).start()
        elif fault == "edge":
            name = sorted(self.edges)[-1]
            proc = self.edges.pop(name)
            proc.kill()
            proc.wait()
            self.killed_edges[name] = read_json(self._status(name))
            self._start_edge(f"{name}r")
        elif fault == "broker":
            before = self._acked()
            time.sleep(BROKER_LOSS_HORIZON_S)
            # what it acknowledged in its last seconds (the edges' status lags a tick: a quarter second more)
            self.broker_recent_acks = self._acked() - before + int(self.rate * 0.25)
            self.broker.kill()
            time.sleep(t.outage_s)
            self.broker = EmbeddedBroker(self.broker.port).start()
        else:
            raise ValueError(f"unknown fault {fault!r} (known: {', '.join(FAULTS)})")

    def _acked(self) -> int:
        return sum(read_json(self._status(name)).get("delivered", 0) for name in self.edges)

    # -------------------------------------------------------------- the run

    def run(self) -> list[FaultAccount]:
        t = self.timing
        self.broker.start()
        self.redis.start()
        self.settings = self.settings.replace(kafka=self.broker.bootstrap, redis=self.redis.url)
        create_topics(self.settings)
        follower = _Follower(self.settings)
        phases = ["baseline", *self.faults]
        try:
            for i in range(self.worker_count):
                self._start_worker(f"chaos-worker-{i + 1}")
            self._set_phase("chaos-baseline")
            for i in range(self.edge_count):
                self._start_edge(f"edge{i + 1}")
            self.log(f"chaos: load {self.rate:g} events/s from {self.edge_count} edges, {self.worker_count} "
                     f"worker(s), outages of {t.outage_s:g} s; warming up "
                     f"{t.warmup_s:g} s; logs and windows.json in {self.dir}")
            time.sleep(t.warmup_s)
            previous = "baseline"
            for fault in self.faults:
                self._set_phase(f"chaos-{fault}")
                self.phase_end[previous] = time.time()
                previous = fault
                time.sleep(t.before_fault_s)
                self.log(f"chaos: {fault} fault")
                self._inject(fault)
                time.sleep(t.after_fault_s)
            self._set_phase("chaos-drain")
            self.phase_end[previous] = time.time()
            self.log("chaos: faults done; waiting for every phase's windows")
            self._drain(follower, phases)
        finally:
            for proc in self.edges.values():
                proc.terminate()
            for proc in self.edges.values():
                proc.wait(60)
            for proc in self.workers.values():
                proc.terminate()
            for proc in self.workers.values():
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()
            follower.stop()
            counters = self._counters()
            self.broker.stop()
            self.redis.stop()
            # what each window held, beside what the edges sent into it (edge*.json), every publication of it, and
            # the pipeline's counters (duplicate and late partials among them): where a loss happened
            write_json(self.dir / "windows.json", {
                "faults_at": self.fault_at,
                "windows": {f"chaos-{phase}": follower.record(f"chaos-{phase}") for phase in phases},
                "counters": counters})
        return [self._account(follower, phase) for phase in phases]

    def _counters(self) -> dict[str, int]:
        """The pipeline's counter hash in Redis (since the last Redis fault), or nothing if it cannot be read."""
        client = redis.Redis.from_url(self.redis.url, socket_timeout=5, decode_responses=True)
        try:
            key = Keys.for_topic_prefix(self.settings.topic_prefix).counters
            raw: dict[str, str] = client.hgetall(key)  # type: ignore[assignment]  # sync client: a dict, not an Awaitable
        except redis.RedisError:
            return {}
        finally:
            client.close()
        return {k: int(v) for k, v in sorted(raw.items())}

    def _invalid(self, service: str) -> int:
        names = {p.stem for p in self.dir.glob("edge*.json")}
        return sum((self.killed_edges.get(name) or read_json(self._status(name))).get("phases", {})
                   .get(service, {}).get("invalid", 0) for name in names)

    def _produced(self, service: str) -> tuple[int, int, int, int]:
        """(sent, delivered, failed, unacknowledged in a killed edge) for one phase, over every edge."""
        sent = delivered = failed = unacked = 0
        names = {p.stem for p in self.dir.glob("edge*.json")}
        for name in names:
            status = self.killed_edges.get(name) or read_json(self._status(name))
            phase = status.get("phases", {}).get(service)
            if phase is None:
                continue
            sent += phase["sent"]
            if "delivered" in phase:
                delivered += phase["delivered"]
                failed += phase["failed"]
            else:  # the phase it was killed in: acknowledged so far, the rest died with it
                delivered += status.get("delivered_since_phase", 0)
                failed += status.get("failed_since_phase", 0)
                unacked += phase["sent"] - status.get("delivered_since_phase", 0) - \
                    status.get("failed_since_phase", 0)
        return sent, delivered, failed, unacked

    def _drain(self, follower: _Follower, phases: list[str]) -> None:
        """Wait until each phase's last window (the one its last event fell in) is published."""
        w = self.settings.window_ms
        # the edges look at the phase once a tick: the last event may come a little after the switch
        last = {phase: int((self.phase_end[phase] + 0.5) * 1000) // w * w for phase in phases}
        deadline = time.monotonic() + self.timing.drain_timeout_s
        while time.monotonic() < deadline:
            waiting = [phase for phase in phases if (f"chaos-{phase}", last[phase]) not in follower.publications]
            if not waiting:
                time.sleep(3)  # a window published again after a restart would show by now
                return
            time.sleep(1)
        self.log(f"chaos: the last windows of {', '.join(waiting)} were not published within "
                 f"{self.timing.drain_timeout_s:g} s")

    def _account(self, follower: _Follower, phase: str) -> FaultAccount:
        service = f"chaos-{phase}"
        sent, _delivered, failed, unacked = self._produced(service)
        windows = follower.service_windows(service)
        account = FaultAccount(fault=phase, produced=sent, invalid=self._invalid(service), failed=failed,
                               in_windows=sum(n for _, n, _, _ in windows),
                               late=sum(late for _, _, late, _ in windows),
                               dead_lettered=follower.dead.get(service, 0),
                               # windows with the phase's events: the zeros published after it say nothing of it
                               worst_delay_s=max((d for _, n, _, d in windows if n), default=0.0))
        remainder = account.unaccounted
        if phase == "edge":
            account.lost_bound = unacked
            account.lost = max(0, min(remainder, unacked))
            account.note = f"lost: unacknowledged in the SIGKILLed edge (at most {unacked})"
        elif phase == "broker":
            bound = int(self.broker_recent_acks)
            account.lost_bound = bound
            account.lost = max(0, min(remainder, bound))
            account.note = (f"lost: acknowledged by the memory-only broker in its last "
                            f"{BROKER_LOSS_HORIZON_S:g} s and not yet read (at most {bound})")
        return account


def table(accounts: list[FaultAccount]) -> str:
    """The accounts as a Markdown table."""
    head = ("| fault | produced | in windows | late | dead-lettered | failed (producer) | lost | unaccounted "
            "| worst window delay |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    rows = [f"| {a.fault} | {a.produced:,} | {a.in_windows:,} | {a.late:,} | {a.dead_lettered:,} | {a.failed:,} "
            f"| {a.lost:,} | {a.unaccounted:,} | {a.worst_delay_s:.1f} s |" for a in accounts]
    notes = [f"- {a.fault}: {a.note}" for a in accounts if a.note]
    return "\n".join([head, *rows, "", *notes])
