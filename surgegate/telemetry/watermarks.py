"""The watermark of a partials partition when several ingest members write to it (pure).

Every ingest member sends its own Watermark to every partials partition: "all
I have read with an event time before this is published". The partition's
watermark is the lowest claim among the members still speaking, not the
newest claim of any one: a member reading a backlog (or taking over a dead
member's partitions) holds every window its backlog may touch, while a member
read to its end would otherwise close them.

A member that stops speaking (it died, or was left without partitions) keeps
holding the watermark at its last claim for ``silent_ms`` of the partition's
own clock, long enough for the consumer group to hand its partitions to
another member, which then claims from that backlog; after that it no longer
counts. The partition's clock is the newest record time read on it, so a
restarted merge stage replaying the log decides the same way, and one host's
clock ahead of another's does not silence it.

>>> marks = MemberMarks(silent_ms=20_000)
>>> marks.heard("a", 5_000, at=100_000), marks.heard("b", 9_000, at=100_500)
(5000, 5000)
>>> marks.heard("b", 12_000, at=119_000)   # a still holds it: silent for 19 s
5000
>>> marks.heard("b", 13_000, at=121_000)   # a silent for over 20 s: it no longer counts
13000
>>> sorted(marks.members)
['b']
"""

from __future__ import annotations

import msgspec


class MemberMarks(msgspec.Struct):
    """Each ingest member's last claim on one partials partition, and when it was heard.

    ``members`` maps a member id to ``(watermark, heard_at)``, ``heard_at``
    being the partition's clock when its claim was read. Serialisable, so the
    merge agent keeps it in its table and a worker taking the partition over
    knows who had claimed what.
    """

    silent_ms: int
    members: dict[str, tuple[int, int]] = msgspec.field(default_factory=dict)
    #: the partition's clock: the newest record time read on it (epoch ms)
    clock: int = 0

    def heard(self, member: str, watermark: int, at: int) -> int:
        """Take ``member``'s claim, read in a record stamped ``at``; returns the partition's watermark."""
        self.clock = max(self.clock, at)
        self.members[member] = (watermark, self.clock)
        return self.low()

    def low(self) -> int:
        """The lowest claim among members heard within ``silent_ms`` (-1: none); the silent ones are forgotten."""
        since = self.clock - self.silent_ms
        silent = [m for m, (_, at) in self.members.items() if at < since]
        for member in silent:
            del self.members[member]
        return min((mark for mark, _ in self.members.values()), default=-1)
