"""The whole loop on one host: a local pool of replicas, edges in front of it, load through the edges.

:class:`LiveStack` starts, beside a broker, Redis and a worker it is given:

- a :class:`~surgegate.gpu.local_pool.LocalPool` of ``surgegate fake-llm``
  replicas following the pool's scaling decisions (a
  :class:`~surgegate.gpu.scaler.ScalingSubscriber`), each with its cold start,
  registered in Redis and reported on the broker;
- ``edges`` gateways (:func:`~surgegate.edge.app.create_edge_app`), each in
  its own thread and event loop, balancing over the pool's serving replicas,
  with keys for one tenant per tier, shares of the service's rates from their
  demand, reporting summaries;

so that :func:`surgegate.devtools.load.run` sends OpenAI calls through real
edges, a real pipeline and replicas that really start and stop.
``surgegate up --demo`` runs it with the load; the live end-to-end test runs it
on short windows.
"""

from __future__ import annotations

import asyncio
import dataclasses
import threading
from collections.abc import Mapping

from surgegate.edge.app import create_edge_app
from surgegate.edge.balancer import Balancer, PoolWatcher
from surgegate.edge.gate import EdgeGate
from surgegate.edge.identity import Identity, KeyRing
from surgegate.edge.relay import Relay
from surgegate.gpu.local_pool import LocalPool, fake_llm_command, redis_registry
from surgegate.gpu.scaler import ScalingSubscriber
from surgegate.settings import Settings
from surgegate.streams.producer import TelemetryProducer
from surgegate.streams.redis_client import async_client, sync_client
from surgegate.streams.store import Keys

#: one tenant per tier, and its key
DEMO_KEYS = {"sk-demo-enterprise": Identity("acme", "enterprise"), "sk-demo-pro": Identity("globex", "pro"),
             "sk-demo-free": Identity("initech", "free")}


def keys_by_tier(keys: Mapping[str, Identity] = DEMO_KEYS) -> dict[str, str]:
    return {who.tier: key for key, who in keys.items()}


@dataclasses.dataclass(frozen=True)
class ReplicaSpec:
    """The simulated replica each process of the pool runs (``surgegate fake-llm`` options)."""

    time_scale: float = 2.0
    output_median: int = 24
    max_num_seqs: int = 8

    def command(self) -> list[str]:
        return fake_llm_command(self.time_scale, self.output_median, ("--max-num-seqs", str(self.max_num_seqs)))


class EdgeServer:
    """One gateway on ``port``, in a thread with its own event loop."""

    def __init__(self, settings: Settings, service: str, pool: str, edge_id: str, port: int, *,
                 keys: Mapping[str, Identity] = DEMO_KEYS, shadow: bool = False) -> None:
        self.settings, self.service, self.pool, self.edge_id, self.port = settings, service, pool, edge_id, port
        self.keys, self.shadow = keys, shadow
        self.gate: EdgeGate | None = None
        self.balancer = Balancer()
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._stopped = asyncio.Event()
        self._thread = threading.Thread(target=self._run, name=f"edge-{edge_id}", daemon=True)
        self.error: BaseException | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> EdgeServer:
        self.gate = EdgeGate(self.settings, self.service, edge_id=self.edge_id, shadow=self.shadow,
                             share_from_demand=True).start()
        self._thread.start()
        if not self._ready.wait(20) or self.error is not None:
            raise RuntimeError(f"edge {self.edge_id} did not start: {self.error}")
        return self

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._serve())
        except BaseException as exc:
            self.error = exc
            self._ready.set()

    async def _serve(self) -> None:
        from aiohttp import web

        assert self.gate is not None
        watcher = PoolWatcher(self.balancer, async_client(self.settings.redis_target(), timeout_s=1.0),
                              Keys.for_topic_prefix(self.settings.topic_prefix).pool_replicas(self.pool))
        app = create_edge_app(self.gate, Relay(self.balancer, first_byte_s=60.0, idle_s=30.0),
                              keys=KeyRing.of(self.keys), watcher=watcher)
        runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", self.port).start()
        self._ready.set()
        await self._stopped.wait()
        await runner.cleanup()

    def close(self) -> None:
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stopped.set)
            self._thread.join(timeout=20)
        if self.gate is not None:
            self.gate.close()


class LiveStack:
    """A local pool and edges in front of it (see the module docstring)."""

    def __init__(self, settings: Settings, *, service: str = "chat", pool: str = "gpu-a", edges: int = 1,
                 edge_ports: list[int] | None = None, cold_start_s: float = 15.0, warm_start_s: float = 0.8,
                 initial_replicas: int = 2, max_replicas: int = 16, replica: ReplicaSpec | None = None,
                 shadow: bool = False, follow_decisions: bool = True, log_dir: str | None = None) -> None:
        """``shadow``: the edges admit everything (and say what they would have refused);
        ``follow_decisions=False``: the pool keeps ``initial_replicas`` until someone else sets its targets."""
        from surgegate.devtools.embedded import free_port

        self.settings, self.service, self.pool_name = settings, service, pool
        ports = edge_ports or [free_port() for _ in range(edges)]
        self.edges = [EdgeServer(settings, service, pool, f"edge-{i + 1}", port, shadow=shadow)
                      for i, port in enumerate(ports)]
        self.producer = TelemetryProducer(settings, client_id=f"pool-{pool}")
        key = Keys.for_topic_prefix(settings.topic_prefix).pool_replicas(pool)
        self.pool = LocalPool(pool, command=(replica or ReplicaSpec()).command(), cold_start_s=cold_start_s,
                              warm_start_s=warm_start_s, max_replicas=max_replicas, publish=self._publish,
                              registry=redis_registry(sync_client(settings.redis_target(), timeout_s=1.0), key),
                              log_dir=log_dir)
        self.pool.set_targets(initial_replicas)
        self.subscriber = ScalingSubscriber(settings, pool, self.pool) if follow_decisions else None

    def _publish(self, event) -> None:
        self.producer.send_metric(event)
        self.producer.poll()

    def start(self) -> LiveStack:
        self.pool.start()
        if self.subscriber is not None:
            self.subscriber.start()
        for edge in self.edges:
            edge.start()
        return self

    def close(self) -> None:
        for edge in self.edges:
            edge.close()
        if self.subscriber is not None:
            self.subscriber.close()
        self.pool.close()
        self.producer.flush(timeout=5)

    def __enter__(self) -> LiveStack:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
