"""`surgegate drain`: runs deferred tasks from ``sg.deferred`` at the batch rate the throttle decision allows.

A drainer is a member of the consumer group ``<prefix>drain.<service>``; run
more of them to drain faster (each with ``--share`` = its part of the batch
rate), and the group spreads the partitions among them. Each one:

- holds up to ``hold`` tasks (the partitions are paused beyond that) in a
  :class:`~surgegate.admission.backlog.Backlog`: highest tier first, earliest
  deadline first within a tier;
- offers the head of each tier's queue to its own edge gate, which follows the
  service's throttle decisions like any edge, as batch work; the first one
  admitted runs, so tasks start at the decision's batch rate;
- sends the request upstream (with its token cap at a degraded level) and
  writes its final state to Redis: ``done`` with the upstream's status and body,
  or, after ``max_attempts`` tries of overload answers (408, 429, 5xx, timeouts,
  refused connections) with exponential backoff, ``failed`` with the reason;
  a task whose deadline passes first is ``expired``;
- commits a partition's offset only up to its lowest unfinished task, so a
  drainer that dies loses nothing: the tasks it held are read again by the
  member that takes the partition, and one whose final state is already
  written is not run again (at least once; answered once).

What it ran is reported like an edge's traffic (``replayed`` request events),
so the windows see deferred work run and not as new demand. Every
:data:`REPORT_S` it reports its backlog (tasks held and not yet read, their
tokens, the oldest one's age, and the rate that starts every held task by its
deadline) as a ``drainer`` MetricEvent for the service's pool: the pool's
windows carry the backlog, and the scaling policy plans capacity to drain it
in time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar, cast

import msgspec
import redis
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from surgegate.admission.actions import ADMIT
from surgegate.admission.backlog import Backlog, Held, OffsetBook, retry_delay_s
from surgegate.admission.gate import UnknownTier
from surgegate.edge.gate import EdgeGate
from surgegate.edge.relay import Relay
from surgegate.llm.openai_wire import INFERENCE_PATHS, with_token_cap
from surgegate.schemas.deadletter import DeadLetter
from surgegate.schemas.deferral import FINAL_STATES, DeferredTask, TaskState, TaskView
from surgegate.schemas.telemetry import MetricEvent, Status
from surgegate.settings import Settings
from surgegate.streams.kafka import consumer_config
from surgegate.streams.producer import TelemetryProducer
from surgegate.streams.store import Keys
from surgegate.streams.tasks import TaskBook, view_of
from surgegate.streams.topics import Topics

log = logging.getLogger(__name__)
T = TypeVar("T")

#: Upstream answers that mean "not now" (overload, or the request timed out there): tried again later.
RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
#: How often offsets are committed, and how long the scheduler waits when no task may start.
COMMIT_S = 1.0
IDLE_S = 0.02
#: How often the backlog is reported (to the pool's windows) and the partitions' unread tasks counted.
REPORT_S = 5.0


class Drainer:
    """Drains one service's deferred tasks (see the module docstring)."""

    def __init__(self, settings: Settings, service: str, upstream: str, *, drainer_id: str = "drain-1",
                 share: float = 1.0, concurrency: int = 16, max_attempts: int = 5, hold: int = 1000,
                 timeout_s: float = 300.0, upstream_key: str | None = None, gate: EdgeGate | None = None) -> None:
        if not settings.redis:
            raise ValueError("the drainer writes task states to Redis: settings.redis is empty")
        self.settings = settings
        self.service = service
        self.upstream = upstream.rstrip("/")
        self.drainer_id = drainer_id
        self.topics = Topics(settings.topic_prefix)
        self.gate = gate or EdgeGate(settings, service, edge_id=drainer_id, share=share)
        self._own_gate = gate is None
        self.concurrency = concurrency
        self.max_attempts = max_attempts
        self.hold = hold
        # the gateway's relay: the upstream's own credential, timeouts on silence, decoded answers, usage read
        self.relay = Relay(self.upstream, upstream_key=upstream_key or "", first_byte_s=timeout_s, idle_s=timeout_s,
                           connections=concurrency)
        self.backlog = Backlog(self.gate.admission.tier_order)
        self.offsets = OffsetBook()
        self.book = TaskBook(settings.redis, prefix=Keys.for_topic_prefix(settings.topic_prefix).prefix)
        self.counts: Counter[str] = Counter()
        self._lock = threading.Lock()  # the offset book, between the consumer thread and the loop
        self._stop = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._arrived: asyncio.Event | None = None
        self._decoder = msgspec.json.Decoder(DeferredTask)
        self._producer = TelemetryProducer(settings, client_id=drainer_id)
        self._sender = self._producer.sender
        self.pool = self.gate.config.pool
        self.unread = 0  # tasks on the assigned partitions not read yet (counted by the consumer thread)
        self._consumer_thread: threading.Thread | None = None
        self.failure: BaseException | None = None  # what ended the consumer thread, if anything did

    # ------------------------------------------------------------ the consumer thread

    def _consume(self) -> None:
        from confluent_kafka import Consumer

        consumer = Consumer(consumer_config(self.settings, f"{self.settings.topic_prefix}drain.{self.service}",
                                            self.drainer_id))

        def revoked(c: Any, partitions: list) -> None:
            gone = {tp.partition for tp in partitions}
            self._commit(c, only=gone)
            with self._lock:
                self.offsets.forget(gone)
            assert self._loop is not None
            self._loop.call_soon_threadsafe(self._revoked, gone)

        consumer.subscribe([self.topics.deferred], on_revoke=revoked, on_lost=revoked)
        paused = False
        committed_at = counted_at = time.monotonic()
        try:
            while not self._stop.is_set():
                for msg in consumer.consume(100, 0.2):
                    if msg.error() is not None:
                        self.counts["consumer_errors"] += 1
                        continue
                    partition, offset, value = cast(int, msg.partition()), cast(int, msg.offset()), msg.value() or b""
                    with self._lock:
                        self.offsets.hold(partition, offset)
                    assert self._loop is not None
                    self._loop.call_soon_threadsafe(self._arrive, partition, offset, value, msg.key())
                held = len(self.backlog)
                if not paused and held >= self.hold:
                    consumer.pause(consumer.assignment())
                    paused = True
                elif paused and held < self.hold // 2:
                    consumer.resume(consumer.assignment())
                    paused = False
                if time.monotonic() - committed_at >= COMMIT_S:
                    self._commit(consumer)
                    committed_at = time.monotonic()
                if time.monotonic() - counted_at >= REPORT_S:
                    self.unread = self._count_unread(consumer)
                    counted_at = time.monotonic()
            self._commit(consumer)
        except BaseException as exc:
            self.failure = exc
            log.error("drainer %s: the consumer stopped: %s", self.drainer_id, exc)
            raise
        finally:
            consumer.close()

    def _count_unread(self, consumer: Any) -> int:
        """Tasks on the assigned partitions past what was read (the broker's end offsets, asked)."""
        from confluent_kafka import KafkaException

        try:
            unread = 0
            for tp in consumer.position(consumer.assignment()):
                _, high = consumer.get_watermark_offsets(tp, timeout=1.0)
                unread += max(0, high - tp.offset) if tp.offset >= 0 else 0
            return unread
        except KafkaException:
            return self.unread  # the broker away: the last count stands

    def _report(self) -> None:
        """The backlog as a drainer MetricEvent for the pool's windows."""
        now = int(time.time() * 1000)
        tasks, tokens, oldest_ms = self.backlog.stats(now)
        per_task = tokens / tasks if tasks else 0.0
        self._producer.send_metric(MetricEvent(
            ts=now, pool=self.pool, worker_id=self.drainer_id, utilisation=0.0, kind="drainer",
            queue_depth=tasks + self.unread, backlog_tokens=round(tokens + per_task * self.unread),
            backlog_oldest_ms=min(float(oldest_ms), 86_400_000.0),
            backlog_required_rps=round(self.backlog.required_rps(now), 3)))

    def _commit(self, consumer: Any, only: set[int] | None = None) -> None:
        from confluent_kafka import KafkaException, TopicPartition

        with self._lock:
            offsets = self.offsets.committable()
        positions = [TopicPartition(self.topics.deferred, p, o) for p, o in offsets.items()
                     if only is None or p in only]
        if not positions:
            return
        try:
            consumer.commit(offsets=positions, asynchronous=False)
        except KafkaException as exc:  # committed again on the next round; at worst a task is read twice
            self.counts["commit_errors"] += 1
            log.info("drainer %s: commit failed (%s)", self.drainer_id, exc)

    # ------------------------------------------------------------ the loop

    def _arrive(self, partition: int, offset: int, raw: bytes, key: bytes | None) -> None:
        try:
            task = self._decoder.decode(raw)
        except msgspec.DecodeError as exc:
            self._dead_letter(partition, offset, raw, key, str(exc))
            self._release(partition, offset)
            return
        if task.service != self.service:  # another service's drainers run it
            self._release(partition, offset)
            return
        self.counts["read"] += 1
        if task.id in self.backlog:  # read again after a handover while still held: the held one answers
            self._release(partition, offset)
            return
        self.backlog.add(Held(task.id, task.tier, task.deadline, task.created_at, task.tokens,
                              (task, partition, offset)))
        if self._arrived is not None:
            self._arrived.set()

    def _revoked(self, partitions: set[int]) -> None:
        dropped = self.backlog.drop(lambda h: h.item[1] in partitions)
        self.counts["handed_over"] += len(dropped)

    def _release(self, partition: int, offset: int) -> None:
        with self._lock:
            self.offsets.release(partition, offset)

    def _dead_letter(self, partition: int, offset: int, raw: bytes, key: bytes | None, error: str) -> None:
        import base64

        letter = DeadLetter(source_topic=self.topics.deferred, partition=partition, offset=offset,
                            reason="undecodable", error=error[:500], value_b64=base64.b64encode(raw[:4096]).decode(),
                            key_b64=base64.b64encode(key).decode() if key else None, at=int(time.time() * 1000),
                            value_bytes=len(raw), truncated=len(raw) > 4096)
        self._sender.send(self.topics.deadletter, msgspec.json.encode(letter), key=self.topics.deferred.encode())
        self.counts["dead_lettered"] += 1

    async def run(self) -> None:
        """Drain until :meth:`stop`; raises what stopped the consumer thread, if it died."""
        self._loop = asyncio.get_running_loop()
        self._arrived = asyncio.Event()
        if self._own_gate:
            self.gate.start()
        self._consumer_thread = threading.Thread(target=self._consume, name=f"{self.drainer_id}-consumer",
                                                 daemon=True)
        self._consumer_thread.start()
        slots = asyncio.Semaphore(self.concurrency)
        running: set[asyncio.Task] = set()
        reported_at = 0.0
        await self.relay.start()
        try:
            while not self._stop.is_set():
                if not self._consumer_thread.is_alive():
                    raise RuntimeError(f"the drainer's consumer stopped: {self.failure!r}")
                self._sender.poll()
                if time.monotonic() - reported_at >= REPORT_S:
                    self._report()
                    reported_at = time.monotonic()
                started = await self._start_one(slots, running)
                if not started:
                    self._arrived.clear()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._arrived.wait(), IDLE_S)
        finally:
            for t in running:
                t.cancel()
            await asyncio.gather(*running, return_exceptions=True)
            self._stop.set()
            self._consumer_thread.join(10)
            await self.book.close()
            await self.relay.close()
            with contextlib.suppress(Exception):
                self._sender.flush(5)
            if self._own_gate:
                self.gate.close()

    def stop(self) -> None:
        self._stop.set()

    async def _start_one(self, slots: asyncio.Semaphore, running: set[asyncio.Task]) -> bool:
        """Start the first task admission lets through (highest tier first); False if none may start."""
        if slots.locked():
            return False
        now = int(time.time() * 1000)
        for held in self.backlog.heads(now):
            task: DeferredTask = held.item[0]
            if task.deadline <= now:
                self.backlog.take(held.id)
                await self._finish(held, "expired", reason=f"deadline passed before it could run "
                                                           f"({held.attempts} tries)")
                return True
            try:
                verdict = self.gate.admission.admit(task.tenant, task.tier, "batch", task.tokens, requeued=True)
            except UnknownTier as exc:  # the service's tiers changed since the edge took it: it cannot run
                self.backlog.take(held.id)
                await self._finish(held, "failed", reason=str(exc))
                return True
            if verdict.action != ADMIT:
                continue
            self.backlog.take(held.id)
            await slots.acquire()
            job = asyncio.create_task(self._run(held, verdict.max_tokens, slots))
            running.add(job)
            job.add_done_callback(running.discard)
            return True
        return False

    async def _run(self, held: Held, max_tokens: int | None, slots: asyncio.Semaphore) -> None:
        try:
            await self._try(held, max_tokens)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # not the upstream's doing: the task is tried again, and fails in the end
            log.exception("drainer %s: task %s: %s", self.drainer_id, held.id, exc)
            self.counts["errors"] += 1
            if held.attempts >= self.max_attempts:
                await self._finish(held, "failed", reason=f"the drainer failed: {type(exc).__name__}: {exc}")
            else:
                held.not_before = int(time.time() * 1000) + int(retry_delay_s(held.attempts + 1) * 1000)
                held.attempts += 1
                self.backlog.add(held)
        finally:
            slots.release()

    async def _try(self, held: Held, max_tokens: int | None) -> None:
        """One try of a held task: skipped if already final, else run, then finished or held for a retry."""
        task: DeferredTask = held.item[0]
        known = await self._state(task.id)
        if known is not None and known.state in FINAL_STATES:  # finished by a drainer before a handover
            self.counts["already_final"] += 1
            self._release(held.item[1], held.item[2])
            return
        held.attempts += 1
        await self._write(view_of(task, "running", held.attempts))
        status, payload, why = await self._call(task, max_tokens)
        if why is None:
            await self._finish(held, "done", status=status, result=payload.decode("utf-8", "replace"))
            return
        now = int(time.time() * 1000)
        delay_ms = int(retry_delay_s(held.attempts) * 1000)
        if held.attempts >= self.max_attempts:
            await self._finish(held, "failed", status=status, reason=f"{why} ({held.attempts} tries)")
        elif now + delay_ms >= task.deadline:
            await self._finish(held, "expired", status=status,
                               reason=f"{why}; the deadline comes before the next try ({held.attempts} tries)")
        else:
            self.counts["retried"] += 1
            held.not_before = now + delay_ms
            self.backlog.add(held)

    async def _call(self, task: DeferredTask, max_tokens: int | None) -> tuple[int | None, bytes, str | None]:
        """(status, body, why it should be tried again or None)."""
        body = task.body
        if max_tokens is not None and task.path.split("?")[0] in INFERENCE_PATHS and body.strip():
            with contextlib.suppress(ValueError):
                body = with_token_cap(body, max_tokens, task.path)
        started = time.perf_counter()
        result, _, payload = await self.relay.fetch(task.method, task.path, task.headers, body, lambda: 0)
        status: int | None = result.status
        outcome: Status = result.outcome
        why: str | None = None
        if not result.answered:
            status = None
            why = "the upstream did not answer in time" if outcome == "timeout" else \
                f"the upstream failed: {msgspec.json.decode(payload)['error']['message']}"
        elif status in RETRY_STATUSES:
            outcome, why = "error", f"the upstream answered {status}"
        self.gate.record(task.tenant, task.tier, "batch", outcome, (time.perf_counter() - started) * 1000,
                         input_tokens=result.input_tokens if why is None else 0,
                         output_tokens=result.output_tokens if why is None else 0, replayed=True)
        return status, payload, why

    async def _finish(self, held: Held, state: TaskState, **fields: Any) -> None:
        task: DeferredTask = held.item[0]
        final = await self._write(view_of(task, state, held.attempts, **fields))
        self.counts[state] += 1
        if final.state != state or final.status != fields.get("status"):
            self.counts["answered_before"] += 1  # another drainer's answer stands
        self._release(held.item[1], held.item[2])

    async def _state(self, task_id: str) -> TaskView | None:
        return await self._outlasting_redis(lambda: self.book.get(task_id))

    async def _write(self, view: TaskView) -> TaskView:
        """Write a state, waiting out a Redis outage: a finished task's offset is released only once written."""
        return await self._outlasting_redis(lambda: self.book.put(view))

    async def _outlasting_redis(self, call: Callable[[], Awaitable[T]]) -> T:
        """``call()``'s answer, asked again every second while Redis does not answer (until the drainer stops)."""
        while True:
            try:
                return await call()
            except (redis.RedisError, OSError) as exc:
                self.counts["redis_errors"] += 1
                log.warning("drainer %s: Redis does not answer (%s); trying again in 1 s", self.drainer_id, exc)
                if self._stop.is_set():
                    raise asyncio.CancelledError from exc
                await asyncio.sleep(1.0)


class DrainerCollector(Collector):
    """A drainer's backlog and outcomes for Prometheus."""

    def __init__(self, drainer: Drainer) -> None:
        self.drainer = drainer

    def collect(self) -> Iterator[Any]:
        d = self.drainer
        tasks, tokens, oldest_ms = d.backlog.stats(int(time.time() * 1000))
        labels = [d.service, d.drainer_id]
        for name, doc, value in (("tasks", "Deferred tasks this drainer holds", tasks),
                                 ("tokens", "Output tokens the held tasks asked for", tokens),
                                 ("oldest_age_seconds", "Age of the oldest held task", oldest_ms / 1000)):
            g = GaugeMetricFamily(f"surgegate_drain_backlog_{name}", doc, labels=["service", "drainer"])
            g.add_metric(labels, value)
            yield g
        c = CounterMetricFamily("surgegate_drain_tasks", "Deferred tasks finished, by final state",
                                labels=["service", "drainer", "state"])
        for state in ("done", "failed", "expired"):
            c.add_metric([*labels, state], d.counts[state])
        yield c
        r = CounterMetricFamily("surgegate_drain_retries", "Tries of deferred tasks that will be tried again",
                                labels=["service", "drainer"])
        r.add_metric(labels, d.counts["retried"])
        yield r
