"""The GPU-worker side of scaling: follow a pool's ScalingDecisions and carry them out.

:class:`ScalingSubscriber` reads the compacted sg.decisions.scaling from the
beginning (partitions assigned, no group to join), keeps only its pool's newest
version and calls a pluggable :class:`Scaler` whenever the desired replica
count, the warm pool or the overflow replicas change:

- :class:`LogScaler` (the default) only logs;
- :class:`CommandScaler` runs a command with the decision in its environment
  (``SG_POOL``, ``SG_DESIRED_REPLICAS``, ``SG_WARM_POOL``, ``SG_VERSION``, ``SG_REASON``);
- :class:`KubernetesScaler` sets a Deployment's replicas through the scale
  subresource with the ``kubernetes`` client, and those of a standby
  Deployment (the warm pool) and of the overflow pool's Deployment; it refuses a
  Deployment an HPA scales (use ``surgegate keda`` there).

:class:`WorkerReporter` is what a GPU worker runs beside its model server: a
MetricEvent per interval with its state (cold-starting, ready, draining),
utilisation, queue depth and running requests. The scaling policy learns the
pool's lead time from these reports.
"""

from __future__ import annotations

import logging
import os
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Protocol

import msgspec
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

from surgegate.errors import SurgegateError
from surgegate.gpu.pools import PoolBook, PoolCollector
from surgegate.schemas.decisions import ScalingDecision
from surgegate.schemas.telemetry import MetricEvent, WorkerState
from surgegate.settings import Settings
from surgegate.streams.kafka import follow_from_start
from surgegate.streams.producer import TelemetryProducer
from surgegate.streams.topics import Topics

log = logging.getLogger(__name__)


class Scaler(Protocol):
    """Carries out one pool's decision; may raise, which is counted and retried on the next change.

    A scaler may also have ``keep_warm(decision)``: called every keep-warm
    interval with the newest decision, to keep ``warm_pool`` idle replicas
    loaded (a tiny request each, or the platform's own signal).
    """

    def scale(self, decision: ScalingDecision) -> None: ...


class LogScaler:
    """Logs each decision; the default, and what shadow mode uses."""

    def scale(self, decision: ScalingDecision) -> None:
        log.info("pool %s: %d replicas, %d warm (v%d): %s", decision.pool, decision.desired_replicas,
                 decision.warm_pool, decision.version, decision.reason)

    def keep_warm(self, decision: ScalingDecision) -> None:
        log.debug("pool %s: keep %d replicas warm", decision.pool, decision.warm_pool)


class CommandScaler:
    """Runs ``command`` with the decision in its environment; a non-zero exit raises."""

    def __init__(self, command: Sequence[str], timeout_s: float = 30.0,
                 keep_warm_command: Sequence[str] | None = None) -> None:
        if not command:
            raise ValueError("command: give the program to run")
        self.command = list(command)
        self.keep_warm_command = list(keep_warm_command) if keep_warm_command else None
        self.timeout_s = timeout_s

    def scale(self, decision: ScalingDecision) -> None:
        self._run(self.command, decision)

    def keep_warm(self, decision: ScalingDecision) -> None:
        if self.keep_warm_command is not None:
            self._run(self.keep_warm_command, decision)

    def _run(self, command: list[str], decision: ScalingDecision) -> None:
        env = {**os.environ, "SG_POOL": decision.pool, "SG_DESIRED_REPLICAS": str(decision.desired_replicas),
               "SG_WARM_POOL": str(decision.warm_pool), "SG_VERSION": str(decision.version),
               "SG_REASON": decision.reason}
        done = subprocess.run(command, env=env, timeout=self.timeout_s, capture_output=True, text=True)
        if done.returncode != 0:
            raise SurgegateError(f"command {command[0]} exited {done.returncode}: {done.stderr.strip()}")


class KubernetesScaler:
    """Sets Deployments' replicas through their ``scale`` subresource (the official ``kubernetes`` client).

    ``deployment`` gets the desired replicas; ``warm_deployment`` (optional) is a
    standby Deployment of loaded, idle replicas and gets the warm pool;
    ``overflow_deployment`` (optional) is the secondary pool's and gets the
    overflow replicas (0 when the decision asks none). A replica count already
    in place is not written again.

    A Deployment that a HorizontalPodAutoscaler scales is refused at start, by
    name: patching it would fight the HPA; follow the decision through KEDA
    (``surgegate keda``) instead. Credentials: in-cluster, else the kubeconfig;
    ``api_client`` overrides both.
    """

    def __init__(self, deployment: str, namespace: str = "default", *, warm_deployment: str | None = None,
                 overflow_deployment: str | None = None, api_client: object | None = None) -> None:
        try:
            from kubernetes import client, config
        except ImportError:
            raise SurgegateError("KubernetesScaler needs the kubernetes client: pip install kubernetes") from None
        if api_client is None:
            try:
                config.load_incluster_config()
            except config.ConfigException:
                config.load_kube_config()
            api_client = client.ApiClient()
        self._apps = client.AppsV1Api(api_client)
        self._autoscaling = client.AutoscalingV2Api(api_client)
        self.deployment = deployment
        self.namespace = namespace
        self.warm_deployment = warm_deployment
        self.overflow_deployment = overflow_deployment
        self._refuse_hpa_owned()

    def _targets(self) -> list[str]:
        return [d for d in (self.deployment, self.warm_deployment, self.overflow_deployment) if d]

    def _refuse_hpa_owned(self) -> None:
        hpas = self._autoscaling.list_namespaced_horizontal_pod_autoscaler(self.namespace).items
        for hpa in hpas:
            ref = hpa.spec.scale_target_ref
            if ref.kind == "Deployment" and ref.name in self._targets():
                name = hpa.metadata.name if hpa.metadata is not None else "?"
                raise SurgegateError(
                    f"deployment {self.namespace}/{ref.name} is scaled by HorizontalPodAutoscaler {name}: "
                    "patching it would fight the HPA; point a KEDA ScaledObject at `surgegate keda` instead "
                    "(docs/control.md)")

    def scale(self, decision: ScalingDecision) -> None:
        self._set(self.deployment, decision.desired_replicas)
        if self.warm_deployment:
            self._set(self.warm_deployment, decision.warm_pool)
        if self.overflow_deployment:
            self._set(self.overflow_deployment, decision.overflow.replicas if decision.overflow is not None else 0)

    def _set(self, deployment: str, replicas: int) -> None:
        current = self._apps.read_namespaced_deployment_scale(deployment, self.namespace)
        if current.spec is not None and current.spec.replicas == replicas:
            return
        self._apps.patch_namespaced_deployment_scale(deployment, self.namespace, {"spec": {"replicas": replicas}})


class ScalingSubscriber:
    """Follows one pool's decisions and hands each change to ``scaler``."""

    def __init__(self, settings: Settings, pool: str, scaler: Scaler | None = None,
                 keep_warm_interval_s: float = 10.0) -> None:
        self.settings = settings
        self.pool = pool
        self.scaler = scaler or LogScaler()
        self.keep_warm_interval_s = keep_warm_interval_s
        self.decision: ScalingDecision | None = None
        self.counts = {"records": 0, "applied": 0, "stale_versions": 0, "other_pools": 0, "bad_records": 0,
                       "scaler_errors": 0, "keep_warm": 0}
        self.last_error: str | None = None
        #: the pool's newest decision with when it came, for /metrics
        self.book = PoolBook()
        self._applied: tuple[int, int, int] | None = None
        self._decoder = msgspec.json.Decoder(ScalingDecision)
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def offer(self, raw: bytes) -> bool:
        """Take one encoded decision; True if the scaler was called."""
        self.counts["records"] += 1
        try:
            d = self._decoder.decode(raw)
        except msgspec.DecodeError as exc:
            self.counts["bad_records"] += 1
            self.last_error = f"bad scaling record: {exc}"
            return False
        if d.pool != self.pool:
            self.counts["other_pools"] += 1
            return False
        if self.decision is not None and d.version <= self.decision.version:
            self.counts["stale_versions"] += d.version < self.decision.version
            return False
        self.decision = d
        self.book.offer(raw)
        wanted = (d.desired_replicas, d.warm_pool, d.overflow.replicas if d.overflow is not None else 0)
        if self._applied == wanted:
            return False
        try:
            self.scaler.scale(d)
        except Exception as exc:  # the next change retries; say why this one failed
            self.counts["scaler_errors"] += 1
            self.last_error = f"scaler: {exc}"
            log.warning("pool %s: scaler failed on v%d: %s", self.pool, d.version, exc)
            return False
        self._applied = wanted
        self.counts["applied"] += 1
        return True

    def keep_warm(self) -> bool:
        """Send the keep-warm signal for the newest decision, if the scaler has one."""
        signal = getattr(self.scaler, "keep_warm", None)
        decision = self.decision
        if signal is None or decision is None or decision.warm_pool == 0:
            return False
        try:
            signal(decision)
        except Exception as exc:
            self.counts["scaler_errors"] += 1
            self.last_error = f"keep-warm: {exc}"
            return False
        self.counts["keep_warm"] += 1
        return True

    def start(self) -> ScalingSubscriber:
        self._threads = [threading.Thread(target=self._follow, name=f"scaling-{self.pool}", daemon=True),
                         threading.Thread(target=self._keep_warm_loop, name=f"warm-{self.pool}", daemon=True)]
        for t in self._threads:
            t.start()
        return self

    def close(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=10)

    def _keep_warm_loop(self) -> None:
        while not self._stop.wait(self.keep_warm_interval_s):
            self.keep_warm()

    def __enter__(self) -> ScalingSubscriber:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _follow(self) -> None:
        try:
            follow_from_start(self.settings, Topics(self.settings.topic_prefix).scaling, f"scaler-{self.pool}",
                              self._stop, self.offer, self._on_error, fetch_wait_ms=100)
        except Exception as exc:
            self.last_error = f"scaling feed stopped: {exc}"
            log.exception("pool %s: scaling feed stopped", self.pool)

    def _on_error(self, err: object) -> None:
        self.last_error = str(err)


#: ScalingSubscriber.counts key -> (metric, help)
SCALER_COUNTERS = {
    "records": ("surgegate_scaler_records", "Scaling records read (every pool's)"),
    "applied": ("surgegate_scaler_decisions_applied", "Decisions carried out (the replicas or warm pool changed)"),
    "stale_versions": ("surgegate_scaler_stale_versions", "Records older than the decision in force, ignored"),
    "bad_records": ("surgegate_scaler_bad_records", "Records that did not decode"),
    "scaler_errors": ("surgegate_scaler_errors", "Scale or keep-warm calls that failed"),
    "keep_warm": ("surgegate_scaler_keep_warm", "Keep-warm signals sent"),
}


class ScalerCollector(Collector):
    """A pool scaler's counts and its pool's newest decision, as Prometheus metrics."""

    def __init__(self, subscriber: ScalingSubscriber) -> None:
        self.subscriber = subscriber
        self.pools = PoolCollector(subscriber.book)

    def collect(self) -> Iterator[Metric]:
        counts = self.subscriber.counts
        for key, (name, text) in SCALER_COUNTERS.items():
            yield CounterMetricFamily(name, text, value=counts[key])
        yield from self.pools.collect()


class WorkerReporter:
    """Sends a GPU worker's MetricEvent every ``interval_s``; ``probe`` reads its current state."""

    def __init__(self, producer: TelemetryProducer, pool: str, worker_id: str,
                 probe: Callable[[], dict], interval_s: float = 1.0) -> None:
        self.producer = producer
        self.pool = pool
        self.worker_id = worker_id
        self.probe = probe
        self.interval_s = interval_s
        self.sent = 0
        self._stop = threading.Event()

    def report(self, state: WorkerState | None = None) -> MetricEvent:
        """One report now: ``probe()`` gives utilisation, queue_depth, running_requests, state, ..."""
        fields = dict(self.probe())
        if state is not None:
            fields["state"] = state
        event = self.producer.send_metric({"ts": int(time.time() * 1000), "pool": self.pool,
                                           "worker_id": self.worker_id, "kind": "gpu_worker", **fields})
        self.sent += 1
        return event

    def run(self) -> None:
        """Report until :meth:`stop`, then a last ``draining`` report."""
        while not self._stop.wait(self.interval_s):
            self.report()
            self.producer.poll()
        self.report(state="draining")
        self.producer.flush()

    def stop(self) -> None:
        self._stop.set()
