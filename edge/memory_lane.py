"""Deferred batch work held in the edge's own memory, behind the durable lane's interface.

Without Redis (or with ``--deferral memory``) an edge keeps the tasks it
deferred in a bounded queue and runs them itself, each once its batch work
is admitted again, at most ``concurrency`` at a time. The gateway treats it
exactly as it treats :class:`~surgegate.edge.lane.DeferralLane`: ``submit`` a
task (``202`` with its id, or :class:`~surgegate.edge.lane.LaneUnavailable`
when the queue is full), ``view`` its state as a
:class:`~surgegate.schemas.deferral.TaskView`. What a process holds dies with
it; the durable lane is for work that must outlive an edge.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import time
from collections import Counter
from collections.abc import Awaitable, Callable

from surgegate.admission.actions import ADMIT
from surgegate.admission.gate import Verdict
from surgegate.edge.lane import LaneUnavailable
from surgegate.schemas.deferral import DeferredTask, TaskView
from surgegate.streams.tasks import view_of

#: Finished tasks' views kept for lookups.
KEPT_VIEWS = 10_000

Admit = Callable[[DeferredTask], Verdict]
Run = Callable[[DeferredTask, Verdict], Awaitable[tuple[int, bytes]]]


class MemoryLane:
    """A bounded in-process queue of deferred tasks, drained by this edge (see the module docstring).

    ``admit(task)`` asks admission whether the task's batch work may run now; ``run(task, verdict)`` runs it
    upstream and returns the status and body of the answer.
    """

    def __init__(self, *, capacity: int, admit: Admit, run: Run, concurrency: int = 16) -> None:
        if capacity < 1 or concurrency < 1:
            raise ValueError(f"capacity={capacity!r} concurrency={concurrency!r}: both must be >= 1")
        self.capacity = capacity
        self._admit = admit
        self._run = run
        self._queue: asyncio.Queue[DeferredTask] = asyncio.Queue(maxsize=capacity)
        self._views: collections.OrderedDict[str, TaskView] = collections.OrderedDict()
        self._slots = asyncio.Semaphore(concurrency)
        self._running: set[asyncio.Task] = set()
        self._drainer: asyncio.Task | None = None
        self.counts: Counter[str] = Counter()

    @property
    def queued(self) -> int:
        """Tasks waiting to run."""
        return self._queue.qsize()

    async def start(self) -> None:
        if self._drainer is None:
            self._drainer = asyncio.create_task(self._drain())

    async def close(self) -> None:
        if self._drainer is not None:
            self._drainer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._drainer
            self._drainer = None

    async def submit(self, task: DeferredTask) -> TaskView:
        """Queue ``task``; its ``queued`` view, or :class:`LaneUnavailable` when the queue is full."""
        try:
            self._queue.put_nowait(task)
        except asyncio.QueueFull:
            self.counts["full"] += 1
            raise LaneUnavailable(f"the queue for deferred batch work is full ({self.capacity} tasks)") from None
        self.counts["accepted"] += 1
        return self._keep(view_of(task, "queued"))

    async def view(self, task_id: str) -> TaskView | None:
        """The task's state, or None (unknown, or dropped from the views kept)."""
        return self._views.get(task_id)

    def _keep(self, view: TaskView) -> TaskView:
        self._views[view.id] = view
        self._views.move_to_end(view.id)
        while len(self._views) > KEPT_VIEWS:
            self._views.popitem(last=False)
        return view

    async def _drain(self) -> None:
        """Run queued tasks in order, each once batch work is admitted again."""
        while True:
            task = await self._queue.get()
            for attempt in itertools.count():
                if time.time() * 1000 > task.deadline:
                    self._keep(view_of(task, "expired", attempts=attempt, reason="its deadline passed in the queue"))
                    self.counts["expired"] += 1
                    break
                verdict = self._admit(task)
                if verdict.action == ADMIT:
                    await self._slots.acquire()
                    running = asyncio.create_task(self._one(task, verdict, attempt + 1))
                    self._running.add(running)  # a reference, so the task is not collected mid-flight
                    running.add_done_callback(self._running.discard)
                    break
                await asyncio.sleep(min(1.0, 0.05 * 2 ** min(attempt, 5)))

    async def _one(self, task: DeferredTask, verdict: Verdict, attempts: int) -> None:
        try:
            self._keep(view_of(task, "running", attempts=attempts))
            status, payload = await self._run(task, verdict)
            self._keep(view_of(task, "done", attempts=attempts, status=status,
                               result=payload.decode("utf-8", "replace")))
            self.counts["done"] += 1
        except Exception as exc:  # the task's own failure, kept as its answer; the lane goes on
            self._keep(view_of(task, "failed", attempts=attempts, reason=f"{type(exc).__name__}: {exc}"))
            self.counts["failed"] += 1
        finally:
            self._slots.release()
