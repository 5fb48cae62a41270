"""Helpers for end-to-end tests: worker processes and topic readers."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import msgspec
from confluent_kafka import Consumer, TopicPartition
from prometheus_client.parser import text_string_to_metric_families

from surgegate.schemas.aggregates import WindowStats
from surgegate.settings import Settings
from surgegate.streams.kafka import follow_from_start
from surgegate.streams.producer import TelemetryProducer
from surgegate.streams.topics import Topics

T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z, on a window boundary
#: the window of end-to-end tests (the settings fixture's): short, so a test waits seconds, not minutes
WINDOW_S = 2
W = WINDOW_S * 1000


class Child:
    """A `surgegate <command>` child process configured by ``settings``' environment (and ``extra_env``),
    logging to ``log_path``; it runs in ``log_path``'s folder."""

    def __init__(self, settings: Settings, log_path: Path, *command: str, extra_env: dict[str, str] | None = None
                 ) -> None:
        self.settings = settings
        self.log_path = log_path
        self.command = command
        self.extra_env = extra_env or {}
        self.proc: subprocess.Popen | None = None

    def start(self) -> Child:
        env = {**self.settings.child_environ(), **self.extra_env}
        with open(self.log_path, "ab") as out:  # the child keeps its own copy of the descriptor
            self.proc = subprocess.Popen([sys.executable, "-m", "surgegate.cli", *self.command], env=env, stdout=out,
                                         stderr=subprocess.STDOUT, start_new_session=True,
                                         cwd=self.log_path.parent)  # a worker's Faust data lands beside the log
        return self

    def wait_http(self, url: str, timeout: float = 30.0) -> None:
        """Until ``url`` answers 200; fails with the log if the child dies or never answers."""
        import urllib.request

        deadline = time.monotonic() + timeout
        while True:
            assert self.proc is not None and self.proc.poll() is None, f"{self.command[0]} died:\n{self.log()}"
            try:
                with urllib.request.urlopen(url, timeout=1) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"{url} did not answer within {timeout:.0f} s:\n{self.log()}")
            time.sleep(0.2)

    def kill(self) -> None:
        """SIGKILL, as a crash would."""
        self.stop(signal.SIGKILL)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(sig)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-5000:] if self.log_path.exists() else ""


class WorkerProcess(Child):
    """`surgegate worker` as a child process, configured by environment only."""

    def __init__(self, settings: Settings, log_path: Path, worker_id: str = "w1", metrics_port: int = 0) -> None:
        super().__init__(settings.replace(worker_id=worker_id), log_path, "worker", "--metrics-port",
                         str(metrics_port))
        self.worker_id = worker_id
        self.metrics_port = metrics_port

    def start(self) -> WorkerProcess:
        super().start()
        return self


class TopicReader:
    """Reads a whole topic from the beginning without a consumer group."""

    def __init__(self, settings: Settings, topic: str) -> None:
        self.topic = topic
        self.consumer = Consumer({"bootstrap.servers": settings.kafka, "group.id": f"reader-{topic}",
                                  "enable.auto.commit": False, "log_level": 0})
        md = self.consumer.list_topics(topic, timeout=10)
        parts = md.topics[topic].partitions
        self.consumer.assign([TopicPartition(topic, p, 0) for p in parts])
        self.messages: list = []

    def poll_until(self, done: Callable[[list], bool], timeout: float, what: str = "") -> list:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for m in self.consumer.consume(1000, 0.2):
                if m.error() is None:
                    self.messages.append(m)
            if done(self.messages):
                return self.messages
        raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what or self.topic}; "
                             f"have {len(self.messages)} messages")

    def read_to_end(self, timeout: float = 30.0) -> list:
        """Consume until every partition's current end offset has been read."""
        ends = {}
        for tp in self.consumer.assignment():
            _, high = self.consumer.get_watermark_offsets(tp, timeout=10)
            ends[tp.partition] = high

        def done(messages):
            seen = {}
            for m in messages:
                seen[m.partition()] = max(seen.get(m.partition(), -1), m.offset())
            return all(high == 0 or seen.get(p, -1) >= high - 1 for p, high in ends.items())

        return self.poll_until(done, timeout, f"the end of {self.topic}")

    def decoded(self, kind: type) -> list:
        return [msgspec.json.decode(m.value(), type=kind) for m in self.messages]

    def close(self) -> None:
        self.consumer.close()


def eventually(check: Callable[[], bool], timeout: float, what: str) -> None:
    """Wait until ``check()`` holds; fail naming ``what`` otherwise."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.2)


class Edge:
    """Sends RequestEvents stamped now at ``rate`` per second; counts what it sent per window."""

    def __init__(self, settings: Settings, rate: float = 100.0) -> None:
        self.rate = rate
        self.producer = TelemetryProducer(settings, client_id="edge-under-test")
        self.sent: Counter[int] = Counter()
        self.sending = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> Edge:
        self.sending.set()
        self._thread.start()
        return self

    def _run(self) -> None:
        i = 0
        while not self._stop.is_set():
            if self.sending.is_set():
                ts = int(time.time() * 1000)
                self.producer.send_request({"ts": ts, "service": "chat", "tenant": f"t{i % 3}", "tier": "pro",
                                            "edge_id": "edge-a", "latency_ms": 40.0})
                self.sent[ts - ts % W] += 1
                i += 1
            self.producer.poll()
            time.sleep(1 / self.rate)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)


class WindowFollower:
    """Keeps every service-level window published, across brokers (a new broker is read from its start).

    ``windows`` holds each window's last publication; ``published`` every one, in order, so a window published
    again with other figures shows in a failure's message."""

    def __init__(self, settings: Settings) -> None:
        self.windows: dict[int, int] = {}
        self.late: dict[int, int] = {}
        self.published: dict[int, list[int]] = {}
        self._stop = threading.Event()
        self._decoder = msgspec.json.Decoder(WindowStats)
        topic = Topics(settings.topic_prefix).windows
        self._thread = threading.Thread(target=follow_from_start, daemon=True, args=(
            settings, topic, "window-follower", self._stop, self._on_value, lambda err: None))
        self._thread.start()

    def _on_value(self, raw: bytes) -> None:
        w = self._decoder.decode(raw)
        if w.kind == "traffic" and w.tenant is None and w.tier is None and w.traffic is not None:
            self.windows[w.window_start] = w.traffic.requests
            self.late[w.window_start] = w.late_events
            self.published.setdefault(w.window_start, []).append(w.traffic.requests)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)


def serve_api(settings: Settings, timeout: float = 20.0) -> str:
    """The status API in a thread (as `surgegate up` runs it) on a free loopback port, once it answers
    /healthz; its base URL, without a trailing slash."""
    import urllib.request

    from surgegate.cli.api import serve_api_in_thread
    from surgegate.devtools.embedded import free_port

    port = free_port()
    serve_api_in_thread(settings, "127.0.0.1", port)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while True:
        try:
            urllib.request.urlopen(url + "/healthz", timeout=1)
            return url
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def start_thread(target: Callable[[], object]) -> tuple[threading.Thread, list[BaseException]]:
    """Run ``target`` in a daemon thread; what it raised lands in the returned list, for the test to check."""
    raised: list[BaseException] = []

    def run() -> None:
        try:
            target()
        except BaseException as exc:  # the thread's outcome, checked by the caller
            raised.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, raised


def lint(text: str) -> list[str]:
    """What promtool's naming rules and the exposition's types say against a /metrics page, parsed by
    prometheus_client: our prefix, counters ending in _total, no _created series, the quantile label on
    summaries only, base units (seconds, not milliseconds)."""
    problems = []
    for family in text_string_to_metric_families(text):
        if not family.name.startswith("surgegate_"):
            problems.append(f"{family.name}: not under surgegate_")
        if family.name.endswith(("_ms", "_milliseconds")):
            problems.append(f"{family.name}: not in base units")
        for sample in family.samples:
            if sample.name.endswith("_created"):
                problems.append(f"{sample.name}: a _created series")
            if family.type == "counter" and not sample.name.endswith("_total"):
                problems.append(f"{sample.name}: a counter not ending in _total")
            if "quantile" in sample.labels and family.type != "summary":
                problems.append(f"{sample.name}: the quantile label on a {family.type}")
        if family.type == "histogram":
            problems.extend(_histogram_problems(family))
    return sorted(set(problems))


def _histogram_problems(family) -> list[str]:
    """A histogram's buckets per label set: cumulative in ``le`` order, ``+Inf`` last and equal to ``_count``."""
    problems = []
    series: dict[tuple, list[tuple[float, float]]] = {}
    counts: dict[tuple, float] = {}
    for sample in family.samples:
        key = tuple(sorted((k, v) for k, v in sample.labels.items() if k != "le"))
        if sample.name.endswith("_bucket"):
            series.setdefault(key, []).append((float(sample.labels["le"]), sample.value))
        elif sample.name.endswith("_count"):
            counts[key] = sample.value
    for key, buckets in series.items():
        values = [v for _, v in sorted(buckets)]
        if values != sorted(values):
            problems.append(f"{family.name}{dict(key)}: buckets not cumulative")
        if sorted(buckets)[-1][0] != float("inf") or counts.get(key) != values[-1]:
            problems.append(f"{family.name}{dict(key)}: +Inf is not the count")
    return problems
