"""A pool that runs: replica processes on this host, started and stopped as the pool's decisions ask.

:class:`LocalPool` is a :class:`~surgegate.gpu.scaler.Scaler` for ``surgegate
scaler --local``. Each replica is one OpenAI-compatible server process, by
default ``surgegate fake-llm`` (one simulated GPU replica), or any command
with a ``{port}`` placeholder (say one ``vllm serve ... --port {port}`` per GPU,
with ``CUDA_VISIBLE_DEVICES`` set by a wrapper).

- **Cold start.** A new replica serves once its server answers ``/health``
  and ``cold_start_s`` has passed since it was started (a model load; a real
  server's own load time adds to it). Until then it is ``cold_starting``.
- **Warm pool.** ``warm_pool`` replicas are started and loaded but serve
  nothing; a scale-up takes them first, and they serve after
  ``warm_start_s``.
- **Scale-down.** Replicas still starting go first (newest first), then
  ready ones: a stopped replica leaves the registry at once (edges stop
  sending to it), then gets ``drain_s`` to finish what it holds before it is
  terminated.
- **Reports.** Every ``report_s`` the pool scrapes each serving replica's
  ``/metrics`` (vLLM's names) and publishes a MetricEvent per replica with its
  state (cold_starting, ready, draining): the pool's windows count ready and
  starting replicas from them, and the scaling policy learns the lead time.
  The serving replicas, with their queue and KV-cache use, are written to
  Redis (:meth:`~surgegate.streams.store.Keys.pool_replicas`), where edges
  find them (:mod:`surgegate.edge.balancer`).
- A replica process that exits on its own is counted and replaced.
- Every replica dies with the pool (:func:`~surgegate.children.die_with_parent`).
"""

from __future__ import annotations

import dataclasses
import logging
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from typing import Literal

import msgspec

from surgegate.children import die_with_parent
from surgegate.llm.server_metrics import FLAVOURS, MissingMetric, ServerSample, metric_event, parse_server_metrics
from surgegate.schemas.decisions import ScalingDecision
from surgegate.schemas.telemetry import MetricEvent, WorkerState

log = logging.getLogger(__name__)

State = Literal["cold_starting", "ready", "warming", "warm", "promoting", "draining"]
#: the states that count toward the replicas the decision asks for (the rest are the warm pool)
SERVING: frozenset[str] = frozenset({"cold_starting", "promoting", "ready"})
HEALTH_TIMEOUT_S = 0.5


class ReplicaReport(msgspec.Struct, frozen=True):
    """What the registry holds for one serving replica: edges balance on it."""

    state: str
    ts: int
    waiting: int = 0
    running: int = 0
    kv_cache: float = 0.0


def fake_llm_command(time_scale: float = 1.0, output_median: int = 200, extra: Sequence[str] = ()) -> list[str]:
    """``surgegate fake-llm`` on ``{port}``: one simulated replica."""
    return [sys.executable, "-m", "surgegate.cli", "fake-llm", "--host", "127.0.0.1", "--port", "{port}",
            "--time-scale", f"{time_scale:g}", "--output-median", str(output_median), *extra]


@dataclasses.dataclass
class Replica:
    name: str
    port: int
    proc: subprocess.Popen
    state: State
    started: float
    #: when it may serve (cold start or warm start done), and when a draining one is terminated
    due: float
    previous: tuple[ServerSample, float] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@dataclasses.dataclass(frozen=True)
class PoolSample:
    """The serving replicas' latest scrapes, summed: what an autoscaler on the servers' metrics reads."""

    ready: int
    #: share of ready replicas holding at least one request (DCGM's GPU utilisation, as the simulator takes it)
    busy: float
    running: float
    waiting: float
    #: KV-cache use, averaged over the ready replicas
    kv_cache: float


class LocalPool:
    """Runs ``pool``'s replicas as local processes (see the module docstring)."""

    def __init__(self, pool: str, *, command: Sequence[str] | None = None, cold_start_s: float = 15.0,
                 warm_start_s: float = 0.8, drain_s: float = 2.0, report_s: float = 1.0, max_replicas: int = 64,
                 ports: Callable[[], int] | None = None, publish: Callable[[MetricEvent], object] | None = None,
                 registry: Callable[[dict[str, bytes], list[str]], object] | None = None,
                 flavour: str = "vllm", max_num_seqs: int = 256, log_dir: str | None = None) -> None:
        for name, value in (("cold_start_s", cold_start_s), ("warm_start_s", warm_start_s), ("drain_s", drain_s)):
            if value < 0:
                raise ValueError(f"{name}={value!r}: must be >= 0")
        if report_s <= 0:
            raise ValueError(f"report_s={report_s!r}: must be > 0")
        if max_replicas < 1:
            raise ValueError(f"max_replicas={max_replicas!r}: must be >= 1")
        self.command = list(command) if command is not None else fake_llm_command()
        if not any("{port}" in part for part in self.command):
            raise ValueError(f"command={' '.join(self.command)!r}: needs a {{port}} placeholder")
        self.pool = pool
        self.cold_start_s, self.warm_start_s, self.drain_s = cold_start_s, warm_start_s, drain_s
        self.report_s = report_s
        self.max_replicas = max_replicas
        self.names = FLAVOURS[flavour]
        self.max_num_seqs = max_num_seqs
        self.log_dir = log_dir
        self._ports = ports or _free_port
        self._publish = publish
        self._registry = registry
        self.replicas: list[Replica] = []
        self.desired = 0
        self.warm = 0
        self.counts = {"started": 0, "stopped": 0, "exited": 0, "promoted": 0, "reports": 0, "scrape_failures": 0}
        self._serial = 0
        #: terminated processes not reaped yet, with when to kill them if they linger
        self._stopping: list[tuple[subprocess.Popen, float]] = []
        #: replicas gone since the registry was last written
        self._gone: list[str] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_report = 0.0
        #: seconds of replica processes held (starting, warm, serving, draining: each holds its GPU)
        self.replica_seconds = 0.0
        self._last_step: float | None = None
        #: the latest round of scrapes (None before the first)
        self.sample: PoolSample | None = None

    # ------------------------------------------------------------ the Scaler protocol

    def scale(self, decision: ScalingDecision) -> None:
        """Take the decision's replicas and warm pool as the targets (the pool's own thread reconciles)."""
        self.set_targets(decision.desired_replicas, decision.warm_pool)

    def keep_warm(self, decision: ScalingDecision) -> None:
        """Warm replicas are loaded processes: nothing to send them."""

    def set_targets(self, desired: int, warm: int = 0) -> None:
        with self._lock:
            self.desired = max(0, min(self.max_replicas, desired))
            self.warm = max(0, min(self.max_replicas - self.desired, warm))

    # ------------------------------------------------------------ running

    def start(self) -> LocalPool:
        """Start the pool's thread: replicas are started from it, so they die with it (and with the process)."""
        self._thread = threading.Thread(target=self._run, name=f"pool-{self.pool}", daemon=True)
        self._thread.start()
        return self

    def alive(self) -> bool:
        """Whether the pool's thread still runs its replicas."""
        return self._thread is not None and self._thread.is_alive()

    def close(self) -> None:
        """Stop every replica and the thread."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def _run(self) -> None:
        try:
            while not self._stop.wait(0.1):
                self.step(time.monotonic())
        except Exception:  # a pool that stops managing its replicas must not look alive
            log.exception("pool %s: the local pool stopped", self.pool)
            raise
        finally:
            for r in self.replicas:
                _terminate(r.proc)
            for proc, _ in self._stopping:
                _terminate(proc)
            self._gone += [r.url for r in self.replicas]
            self.replicas.clear()
            self._write_registry()

    def step(self, now: float) -> None:
        """One round: notice exits, advance states, start and stop replicas, report."""
        if self._last_step is not None:
            self.replica_seconds += (now - self._last_step) * len(self.replicas)
        self._last_step = now
        for r in list(self.replicas):
            if r.proc.poll() is not None and r.state != "draining":
                self.counts["exited"] += 1
                log.warning("pool %s: replica %s exited with %s; replacing it", self.pool, r.name, r.proc.returncode)
                self.replicas.remove(r)
                self._gone.append(r.url)
        for r in self.replicas:
            if r.state in ("cold_starting", "warming") and now >= r.due and _healthy(r.url):
                r.state = "ready" if r.state == "cold_starting" else "warm"
                log.info("pool %s: replica %s %s after %.1f s", self.pool, r.name, r.state, now - r.started)
            elif r.state == "promoting" and now >= r.due:
                r.state = "ready"
        for r in [r for r in self.replicas if r.state == "draining" and now >= r.due]:
            self._terminate(r, now)
        self._reap(now)
        self._reconcile(now)
        if now - self._last_report >= self.report_s:
            self._last_report = now
            self._report()

    def _reconcile(self, now: float) -> None:
        with self._lock:
            desired, warm = self.desired, self.warm
        serving = [r for r in self.replicas if r.state in SERVING]
        standby = [r for r in self.replicas if r.state in ("warming", "warm")]
        if len(serving) < desired:
            short = desired - len(serving)
            for r in sorted((r for r in standby if r.state == "warm"), key=lambda r: r.started)[:short]:
                r.state, r.due = "promoting", now + self.warm_start_s
                self.counts["promoted"] += 1
                standby.remove(r)
                short -= 1
            for _ in range(short):
                self._start("cold_starting", now)
        elif len(serving) > desired:
            # the ones still starting first (newest first), then the ready ones (newest first)
            order = sorted(serving, key=lambda r: (r.state == "ready", -r.started))
            for r in order[:len(serving) - desired]:
                self._drain(r, now)
        if len(standby) < warm:
            for _ in range(warm - len(standby)):
                self._start("warming", now)
        elif len(standby) > warm:
            for r in sorted(standby, key=lambda r: (r.state == "warm", -r.started))[:len(standby) - warm]:
                self._terminate(r, now)
                self.counts["stopped"] += 1

    def _start(self, state: State, now: float) -> None:
        port = self._ports()
        self._serial += 1
        name = f"{self.pool}-{self._serial}"
        command = [part.replace("{port}", str(port)) for part in self.command]
        out = open(f"{self.log_dir}/{name}.log", "wb") if self.log_dir else subprocess.DEVNULL  # noqa: SIM115
        try:
            proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    preexec_fn=die_with_parent)
        finally:
            if out is not subprocess.DEVNULL:
                out.close()  # type: ignore[union-attr]
        self.replicas.append(Replica(name, port, proc, state, now, now + self.cold_start_s))
        self.counts["started"] += 1
        log.info("pool %s: started replica %s on port %d (%s)", self.pool, name, port, state)

    def _terminate(self, r: Replica, now: float) -> None:
        """SIGTERM now, SIGKILL if it is still there 5 s later (never waiting here)."""
        if r.proc.poll() is None:
            r.proc.terminate()
            self._stopping.append((r.proc, now + 5.0))
        self.replicas.remove(r)
        self._gone.append(r.url)

    def _reap(self, now: float) -> None:
        still = []
        for proc, kill_at in self._stopping:
            if proc.poll() is not None:
                continue
            if now >= kill_at:
                proc.kill()
                proc.wait()
                continue
            still.append((proc, kill_at))
        self._stopping = still

    def _drain(self, r: Replica, now: float) -> None:
        r.state, r.due = "draining", now + self.drain_s
        self.counts["stopped"] += 1
        log.info("pool %s: draining replica %s", self.pool, r.name)

    # ------------------------------------------------------------ reports

    def _report(self) -> None:
        now_ms = int(time.time() * 1000)
        serving: dict[str, bytes] = {}
        scraped: list[ServerSample] = []
        for r in self.replicas:
            if r.state in ("warming", "warm"):
                continue  # a warm replica serves nothing and is no worker of the pool's yet
            sample = self._scrape(r) if r.state in ("ready", "promoting", "draining") else None
            if self._publish is not None:
                state: WorkerState = "ready" if r.state in ("ready", "promoting") else \
                    "draining" if r.state == "draining" else "cold_starting"
                if sample is not None:
                    now = time.monotonic()
                    previous, elapsed = (r.previous[0], now - r.previous[1]) if r.previous else (None, 0.0)
                    r.previous = (sample, now)
                    event = metric_event(sample, previous, elapsed_s=elapsed, ts=now_ms, pool=self.pool,
                                         worker_id=r.name, max_num_seqs=self.max_num_seqs)
                    event = msgspec.structs.replace(event, state=state)
                else:
                    event = MetricEvent(ts=now_ms, pool=self.pool, worker_id=r.name, utilisation=0.0, state=state)
                self._publish(event)
                self.counts["reports"] += 1
            if r.state == "ready" and sample is not None:
                scraped.append(sample)
                serving[r.url] = msgspec.json.encode(ReplicaReport(
                    state="ready", ts=now_ms, waiting=round(sample.waiting), running=round(sample.running),
                    kv_cache=round(min(1.0, sample.kv_cache_usage or 0.0), 4)))
        n = len(scraped)
        self.sample = PoolSample(
            ready=n, busy=sum(1 for x in scraped if x.running > 0) / n if n else 0.0,
            running=sum(x.running for x in scraped), waiting=sum(x.waiting for x in scraped),
            kv_cache=sum(min(1.0, x.kv_cache_usage or 0.0) for x in scraped) / n if n else 0.0)
        self._write_registry(serving)

    def _write_registry(self, serving: dict[str, bytes] | None = None) -> None:
        if self._registry is None:
            return
        serving = serving or {}
        gone = [r.url for r in self.replicas if r.url not in serving] + self._gone
        self._gone = []
        try:
            self._registry(serving, gone)
        except Exception as exc:  # Redis away: edges keep the replicas they know until the entries age out
            log.warning("pool %s: the replica registry could not be written: %s", self.pool, exc)

    def _scrape(self, r: Replica) -> ServerSample | None:
        try:
            with urllib.request.urlopen(r.url + "/metrics", timeout=HEALTH_TIMEOUT_S) as resp:
                return parse_server_metrics(resp.read().decode("utf-8", "replace"), self.names)
        except (OSError, urllib.error.URLError, MissingMetric, ValueError):
            self.counts["scrape_failures"] += 1
            return None

    # ------------------------------------------------------------ views

    def states(self) -> dict[str, int]:
        """Replicas by state."""
        out: dict[str, int] = {}
        for r in self.replicas:
            out[r.state] = out.get(r.state, 0) + 1
        return out


def redis_registry(client, key: str, ttl_s: float = 30.0) -> Callable[[dict[str, bytes], list[str]], None]:
    """The pool's registry writer for a Redis hash ``key``: serving replicas set, the others removed."""
    def write(serving: dict[str, bytes], gone: list[str]) -> None:
        pipe = client.pipeline()
        if serving:
            pipe.hset(key, mapping=serving)
        if gone:
            pipe.hdel(key, *gone)
        pipe.expire(key, int(ttl_s))
        pipe.execute()
    return write


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/health", timeout=HEALTH_TIMEOUT_S) as resp:
            return resp.status == 200
    except (OSError, urllib.error.URLError):
        return False


def _terminate(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
