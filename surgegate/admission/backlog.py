"""The drainer's pure parts: which deferred task goes next, which offsets may be committed, when to retry.

:class:`Backlog` keeps the tasks a drainer holds, one queue per tier, each in
deadline order (then arrival): the drainer offers the head of each tier's
queue, highest tier first, to admission, and runs the first one admitted. A
task waiting for a retry is held back until its time comes.

:class:`OffsetBook` says how far a partition may be committed: up to (not
including) its lowest offset still in hand, so a drainer that dies loses no
task: whatever it had not finished is read again by whoever takes the
partition (at least once; the task's final state in Redis is written once).

>>> b = Backlog(("enterprise", "pro", "free"))
>>> b.add(Held("t1", "free", deadline=5_000, created=1, tokens=10, item=None))
>>> b.add(Held("t2", "pro", deadline=9_000, created=2, tokens=10, item=None))
>>> b.add(Held("t3", "pro", deadline=7_000, created=3, tokens=10, item=None))
>>> [h.id for h in b.heads(now_ms=0)]
['t3', 't1']
>>> b.take("t3").id, len(b), b.stats(now_ms=10)
('t3', 2, (2, 20, 9))
>>> round(b.required_rps(now_ms=0), 3)  # t1 due in 5 s (1 / 5 s), both by 9 s (2 / 9 s): the more
0.222
>>> book = OffsetBook()
>>> for offset in (4, 5, 6):
...     book.hold(0, offset)
>>> book.release(0, 5); book.committable()
{0: 4}
>>> book.release(0, 4); book.committable()
{0: 6}
>>> book.release(0, 6); book.committable()
{0: 7}
>>> [retry_delay_s(n) for n in range(1, 8)]
[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 60.0]
"""

from __future__ import annotations

import dataclasses
import heapq
import itertools
from typing import Any

#: The first retry's delay and the longest one, in seconds.
RETRY_BASE_S = 1.0
RETRY_MAX_S = 60.0


def retry_delay_s(attempt: int) -> float:
    """How long to wait before the next try, after ``attempt`` failed tries (exponential, capped)."""
    return min(RETRY_MAX_S, RETRY_BASE_S * 2 ** max(0, attempt - 1))


@dataclasses.dataclass
class Held:
    """A task in the drainer's hands: its order keys, its admission cost, and the task itself (``item``)."""

    id: str
    tier: str
    deadline: int
    created: int
    tokens: int
    item: Any
    attempts: int = 0
    #: epoch ms before which it is not offered again (a retry's backoff)
    not_before: int = 0


class Backlog:
    """Held tasks, one deadline-ordered queue per tier (see the module docstring)."""

    def __init__(self, tiers: tuple[str, ...]) -> None:
        self.tiers = tiers  # highest first
        self._queues: dict[str, list[tuple[int, int, int, str]]] = {}
        self._held: dict[str, Held] = {}
        self._seq = itertools.count()

    def __len__(self) -> int:
        return len(self._held)

    def __contains__(self, task_id: str) -> bool:
        return task_id in self._held

    def add(self, held: Held) -> None:
        """Hold a task (again, after a failed try); one already held is left as it is."""
        if held.id in self._held:
            return
        self._held[held.id] = held
        heapq.heappush(self._queues.setdefault(held.tier, []),
                       (max(held.deadline, 0), held.created, next(self._seq), held.id))

    def heads(self, now_ms: int) -> list[Held]:
        """The first task of each tier that may be tried now, highest tier first (unknown tiers last)."""
        order = [*self.tiers, *sorted(set(self._queues) - set(self.tiers))]
        out = []
        for tier in order:
            queue = self._queues.get(tier)
            if not queue:
                continue
            waiting = []
            head = None
            while queue:  # tasks in backoff step aside for the next one of the same tier
                entry = heapq.heappop(queue)
                held = self._held.get(entry[3])
                if held is None:
                    continue  # taken already
                waiting.append(entry)
                if held.not_before <= now_ms:
                    head = held
                    break
            for entry in waiting:
                heapq.heappush(queue, entry)
            if head is not None:
                out.append(head)
        return out

    def take(self, task_id: str) -> Held:
        """Remove a held task (it runs now)."""
        return self._held.pop(task_id)

    def drop(self, predicate: Any) -> list[Held]:
        """Remove every held task ``predicate`` is true of (their partitions were taken away)."""
        gone = [h for h in self._held.values() if predicate(h)]
        for h in gone:
            del self._held[h.id]
        return gone

    def required_rps(self, now_ms: int) -> float:
        """The start rate that gets every held task going by its deadline: the most tasks due by any deadline
        over the time left until it (a deadline already passed counts as one second away)."""
        deadlines = sorted(h.deadline for h in self._held.values())
        return max(((i + 1) / max(1.0, (d - now_ms) / 1000) for i, d in enumerate(deadlines)), default=0.0)

    def stats(self, now_ms: int) -> tuple[int, int, int]:
        """(tasks, tokens, age in ms of the oldest) of the held tasks."""
        if not self._held:
            return 0, 0, 0
        oldest = min(h.created for h in self._held.values())
        return len(self._held), sum(h.tokens for h in self._held.values()), max(0, now_ms - oldest)


class OffsetBook:
    """The offsets in hand per partition, and how far each partition may be committed."""

    def __init__(self) -> None:
        self._held: dict[int, set[int]] = {}
        self._next: dict[int, int] = {}  # one past the highest offset seen

    def hold(self, partition: int, offset: int) -> None:
        self._held.setdefault(partition, set()).add(offset)
        self._next[partition] = max(self._next.get(partition, 0), offset + 1)

    def release(self, partition: int, offset: int) -> None:
        """The task at ``offset`` is finished (its final state written) or was never one to run."""
        self._held.get(partition, set()).discard(offset)

    def forget(self, partitions: set[int]) -> None:
        """Partitions taken away: their offsets are someone else's now."""
        for p in partitions:
            self._held.pop(p, None)
            self._next.pop(p, None)

    def committable(self) -> dict[int, int]:
        """Per partition, the offset to commit: the lowest still held, else one past the highest seen."""
        return {p: min(self._held[p]) if self._held.get(p) else n for p, n in self._next.items()}
