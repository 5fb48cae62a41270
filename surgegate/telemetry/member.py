"""One ingest member's claim on event time: how far every event it has yet to publish lies behind (pure).

A member reads source partitions and publishes what it read, cut by cut; with
each cut it claims a watermark: "all I have read with an event time before
this is published". The merge stage closes windows at the lowest claim among
the members (:mod:`surgegate.telemetry.watermarks`), so a claim must never
run ahead of what the member still has to read:

- while any partition it reads has a backlog (not read to its end, and
  records came from it lately), the claim is the lowest event time read from
  those partitions: windows close only as fast as the slowest backlog is read;
- once every partition is read to its end (the broker says so, or nothing
  has come from it for ``quiet_s``), the claim is the newest event time read,
  and once the input has been idle for ``idle_after_s`` the ingest's clock
  when it last asked for records and got none, unless the broker was
  unreachable within ``broker_grace_s``: quiet then means nothing could be
  read, not that nothing was sent. Idle is what the consumer saw while it
  asked, not time passing: a member held up elsewhere (a flush waiting on a
  slow broker) has not looked at what arrived meanwhile, and its clock would
  close windows whose events wait unread;
- it never passes the ingest's clock, and never goes back, except when the
  member takes over a partition another member read last: that partition's
  backlog may lie behind the claim, so the claim starts again from what is
  read (given back a partition where this member itself left it, it keeps it);
- a member without partitions claims nothing new.

Time is passed in: ``clock_ms`` the ingest's clock (epoch ms, for event time),
``now`` a monotonic clock in seconds (for quiet and idle).

>>> m = MemberWatermark(idle_after_s=2.0)
>>> m.assign({("r", 0): 0, ("r", 1): 0}, now=0.0)
[('r', 0), ('r', 1)]
>>> m.read(("r", 0), offset=0, ts=5_000, now=0.1); m.read(("r", 1), offset=0, ts=9_000, now=0.1)
>>> m.claim(clock_ms=10_000, now=0.2)   # both still have backlogs: the slower one holds it
5000
>>> m.end_of_partition(("r", 0), now=0.3); m.end_of_partition(("r", 1), now=0.3)
>>> m.claim(clock_ms=10_000, now=0.4)   # read to their ends: the newest event read
9000
>>> m.claim(clock_ms=12_000, now=2.5)   # 2 s since a record, but nobody asked for more meanwhile
9000
>>> m.polled_empty(now=2.6, clock_ms=12_100)   # asked, and nothing came: idle, as of then
>>> m.claim(clock_ms=12_500, now=3.0)
12100
"""

from __future__ import annotations

import math
from collections.abc import Callable

#: A partition nothing has come from for this long counts as read to its end even without the broker's
#: end-of-partition signal (at least ``idle_after_s``).
QUIET_AS_CAUGHT_UP_S = 5.0
#: After the broker was last unreachable, this long passes before quiet counts as idle again: the senders'
#: backlog (queued while it was away, sent by renewed producers) is on its way, and the clock must not close its
#: windows first.
BROKER_GRACE_S = 20.0

Key = tuple[str, int]


class PartitionProgress:
    """How far a member has read one source partition: offsets, event time, and whether it is at the end."""

    __slots__ = ("read", "began", "max_ts", "caught_up", "last_at")

    def __init__(self, began: int, now: float) -> None:
        #: the last offset read (-1: none yet), kept across cuts: an offset below it means the log was replaced
        self.read = -1
        #: the offset reading began at when the partition was assigned (-1: not known)
        self.began = began
        #: the newest event time read from it
        self.max_ts = 0
        #: read to its end (the broker said so)
        self.caught_up = False
        #: when a record last came from it (or it was assigned), monotonic seconds
        self.last_at = now

    def resume_offset(self) -> int:
        """Where reading would go on: after the last record read, else where it began."""
        return self.read + 1 if self.read >= self.began else self.began


class MemberWatermark:
    """The claim of one ingest member over the partitions it reads (see the module docstring)."""

    def __init__(self, *, idle_after_s: float, quiet_s: float = QUIET_AS_CAUGHT_UP_S,
                 broker_grace_s: float = BROKER_GRACE_S,
                 make: Callable[[int, float], PartitionProgress] = PartitionProgress) -> None:
        #: what a partition's progress is made with (the ingest adds its uncut aggregate to it)
        self.make = make
        self.idle_after_s = idle_after_s
        self.quiet_s = max(quiet_s, idle_after_s)
        self.broker_grace_s = broker_grace_s
        self.parts: dict[Key, PartitionProgress] = {}
        #: where this member stopped reading the partitions the last revocation took
        self._left: dict[Key, int] = {}
        self.mark = 0
        self._last_message_at = -math.inf
        self._unreachable_at = -math.inf
        #: when the consumer last asked for records and got none (monotonic), and the ingest's clock then
        self._empty_at = -math.inf
        self._empty_clock = 0

    # ------------------------------------------------------------ assignment

    def assign(self, began: dict[Key, int], now: float) -> list[Key]:
        """Partitions given to this member, each with the offset reading begins at; the ones taken over from
        another member (the claim then starts again from what is read)."""
        for key, start in began.items():
            part = self.parts.get(key)
            if part is None:
                part = self.parts[key] = self.make(start, now)
            part.began, part.last_at = start, now  # not read to its end yet: quiet and idle count from now
        self._last_message_at = now
        taken = sorted(k for k, start in began.items() if self._left.get(k) != start)
        self._left = {}
        if taken:
            self.mark = 0
        return taken

    def revoke(self, keys: list[Key]) -> dict[Key, PartitionProgress]:
        """Partitions taken from this member; their progress, which it no longer holds."""
        gone = {}
        self._left = {}
        for key in keys:
            part = self.parts.pop(key, None)
            if part is not None:
                self._left[key] = part.resume_offset()
                gone[key] = part
        return gone

    # ------------------------------------------------------------ reading

    def progress(self, key: Key, now: float) -> PartitionProgress:
        """The partition's progress (made on its first record or signal, if the assignment did not)."""
        part = self.parts.get(key)
        if part is None:
            part = self.parts[key] = self.make(-1, now)
        return part

    def read(self, key: Key, offset: int, ts: int | None, now: float) -> None:
        """A record at ``offset`` (event time ``ts``, None for one that did not decode) came from ``key``.

        The ingest's hot loop does the same on :class:`PartitionProgress` directly; this is its readable form.
        """
        part = self.progress(key, now)
        part.read, part.caught_up, part.last_at = offset, False, now
        if ts is not None and ts > part.max_ts:
            part.max_ts = ts
        self._last_message_at = now

    def received(self, now: float) -> None:
        """A batch of records arrived (the input is not idle)."""
        self._last_message_at = now

    def polled_empty(self, now: float, clock_ms: int) -> None:
        """The consumer asked for records and none came: the input is quiet as of ``now`` (``clock_ms`` on the
        ingest's clock)."""
        self._empty_at, self._empty_clock = now, clock_ms

    def end_of_partition(self, key: Key, now: float) -> None:
        """The broker says ``key`` is read to its end."""
        self.progress(key, now).caught_up = True

    def unreachable(self, now: float) -> None:
        """The broker could not be reached."""
        self._unreachable_at = now

    # ------------------------------------------------------------ the claim

    def claim(self, clock_ms: int, now: float) -> int:
        """The watermark this member may claim now; never backwards (between take-overs), never past
        ``clock_ms``."""
        parts = self.parts.values()
        if not parts:
            return self.mark  # nothing assigned (a restart joining its group): no progress to claim
        quiet = now - self.quiet_s
        behind = [p.max_ts for p in parts if not p.caught_up and p.last_at > quiet]
        if behind:
            mark = min(behind)
        else:
            mark = max(p.max_ts for p in parts)
            # idle: the consumer asked and got nothing for idle_after_s, the broker reachable before that long enough
            empty_at = self._empty_at
            if empty_at - self._last_message_at >= self.idle_after_s and \
                    empty_at - self._unreachable_at >= self.broker_grace_s:
                mark = max(mark, self._empty_clock)
        self.mark = max(self.mark, min(mark, clock_ms))
        return self.mark
