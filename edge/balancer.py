"""The edge's choice of replica: least outstanding requests over a pool that changes under it.

A :class:`Balancer` holds the pool's serving replicas and, for each call,
picks the better of two chosen at random (Envoy's ``LEAST_REQUEST``, "power of
two choices"): fewer requests outstanding from this edge, plus what the
replica itself reports waiting (its queue, shared by every edge), with a
replica whose KV cache is nearly full taken only when nothing else is.

- A replica that fails (no connection, a 5xx, a 502/503/504 the relay
  answered for it) is ejected for ``eject_s``, doubling with each failure in a
  row up to ``max_eject_s``; a success clears its record. When every replica
  is ejected, all are tried again (Envoy's panic mode): refusing every call
  because each replica failed once would be worse.
- The replicas come from a static list (``--upstream a,b``), or from the
  Redis registry a local pool writes (:class:`PoolWatcher`, ``--pool-replicas
  POOL``), read every second; an entry older than ``stale_s`` is dropped.
- Replicas that leave keep the calls already sent to them; they are just not
  chosen again.

>>> b = Balancer(["http://a", "http://b"], rng=random.Random(1))
>>> first = b.pick(); second = b.pick()
>>> sorted([first.url, second.url])   # the second call goes to the idle replica
['http://a', 'http://b']
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Protocol

import msgspec

log = logging.getLogger(__name__)

#: KV-cache use above which a replica is taken only when nothing else is
KV_FULL = 0.95


class Endpoint:
    """One replica as this edge sees it."""

    __slots__ = ("url", "outstanding", "waiting", "kv_cache", "failures", "ejected_until")

    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/")
        self.outstanding = 0
        self.waiting = 0
        self.kv_cache = 0.0
        self.failures = 0
        self.ejected_until = 0.0

    def load(self) -> float:
        return self.outstanding + self.waiting + (1e6 if self.kv_cache >= KV_FULL else 0.0)


class Balancer:
    """Picks a replica per call (see the module docstring)."""

    def __init__(self, urls: Iterable[str] = (), *, eject_s: float = 5.0, max_eject_s: float = 60.0,
                 clock: Callable[[], float] = time.monotonic, rng: random.Random | None = None) -> None:
        if not 0 < eject_s <= max_eject_s:
            raise ValueError(f"eject_s={eject_s!r}: must be > 0 and <= max_eject_s={max_eject_s!r}")
        self.eject_s, self.max_eject_s = eject_s, max_eject_s
        self.clock = clock
        self.rng = rng or random.Random()
        self.endpoints: dict[str, Endpoint] = {}
        self.counts = {"picked": 0, "ejected": 0, "panic": 0, "none": 0}
        self.set_endpoints({u: None for u in urls})

    def set_endpoints(self, reports: Mapping[str, tuple[int, float] | None]) -> None:
        """The serving replicas now: URL -> (waiting, KV-cache use) as reported, or None where not reported.
        A replica kept keeps its outstanding calls and its ejection."""
        kept = {}
        for url, report in reports.items():
            url = url.rstrip("/")
            ep = self.endpoints.get(url) or Endpoint(url)
            if report is not None:
                ep.waiting, ep.kv_cache = report
            kept[url] = ep
        self.endpoints = kept

    def pick(self) -> Endpoint | None:
        """The replica for the next call (its outstanding count taken), or None when the pool has none."""
        if not self.endpoints:
            self.counts["none"] += 1
            return None
        now = self.clock()
        healthy = [ep for ep in self.endpoints.values() if ep.ejected_until <= now]
        if not healthy:
            self.counts["panic"] += 1
            healthy = list(self.endpoints.values())
        if len(healthy) == 1:
            chosen = healthy[0]
        else:
            a, b = self.rng.sample(healthy, 2)
            chosen = a if a.load() <= b.load() else b
        chosen.outstanding += 1
        self.counts["picked"] += 1
        return chosen

    def done(self, ep: Endpoint, ok: bool) -> None:
        """A call to ``ep`` ended; ``ok`` False when the replica failed it."""
        ep.outstanding = max(0, ep.outstanding - 1)
        if ok:
            ep.failures = 0
            return
        ep.failures += 1
        ep.ejected_until = self.clock() + min(self.max_eject_s, self.eject_s * 2 ** (ep.failures - 1))
        self.counts["ejected"] += 1
        log.info("replica %s ejected for %.0f s (%d failures in a row)", ep.url, ep.ejected_until - self.clock(),
                 ep.failures)


class _Report(msgspec.Struct):
    ts: int
    waiting: int = 0
    kv_cache: float = 0.0


_REPORT = msgspec.json.Decoder(_Report)


class ReplicaSource(Protocol):
    """What keeps a :class:`Balancer` on a changing pool: a local pool's registry (:class:`PoolWatcher`) or a
    Kubernetes Service's endpoints (:class:`~surgegate.edge.k8s_endpoints.EndpointSliceWatcher`)."""

    async def start(self) -> None: ...

    async def close(self) -> None: ...


class Polling:
    """A :class:`ReplicaSource` that reads its source once at start, then every ``every_s`` (``refresh``)."""

    every_s: float = 1.0
    _task: asyncio.Task | None = None

    async def refresh(self) -> None:
        raise NotImplementedError

    async def start(self) -> None:
        await self.refresh()
        self._task = asyncio.create_task(self._loop(), name=f"replicas-{type(self).__name__}")

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.every_s)
            await self.refresh()

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


class PoolWatcher(Polling):
    """Keeps a :class:`Balancer` on the replicas a pool's registry (a Redis hash) lists, read every ``every_s``."""

    def __init__(self, balancer: Balancer, redis, key: str, *, every_s: float = 1.0, stale_s: float = 5.0) -> None:
        self.balancer = balancer
        self.redis = redis
        self.key = key
        self.every_s, self.stale_s = every_s, stale_s
        self.counts = {"reads": 0, "read_failures": 0}

    async def refresh(self) -> None:
        """Read the registry once; Redis away keeps the replicas known."""
        try:
            raw = await self.redis.hgetall(self.key)
        except Exception as exc:
            self.counts["read_failures"] += 1
            if self.counts["read_failures"] == 1:
                log.warning("the pool registry %s could not be read (%s); keeping the replicas known", self.key, exc)
            return
        self.counts["reads"] += 1
        now_ms = time.time() * 1000
        reports: dict[str, tuple[int, float] | None] = {}
        for url, value in raw.items():
            try:
                r = _REPORT.decode(value)
            except msgspec.DecodeError:
                continue
            if now_ms - r.ts <= self.stale_s * 1000:
                reports[url.decode() if isinstance(url, bytes) else url] = (r.waiting, r.kv_cache)
        self.balancer.set_endpoints(reports)
