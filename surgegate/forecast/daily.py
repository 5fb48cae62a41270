"""The slow view: a series' mean per 10-minute slot over the last two days.

A 10 s step cannot learn a daily cycle by itself; the models ask this profile
for "the same time yesterday" so a daily rise is expected rather than chased.

>>> p = DailyProfile()
>>> p.add(5.0, 0); p.add(7.0, 60_000)
>>> p.yesterday(86_400_000 + 30_000)
6.0
>>> p.yesterday(86_400_000 + 700_000) is None
True
"""

from __future__ import annotations

from array import array

DAY_MS = 86_400_000
SLOT_MS = 600_000
_SLOTS = 2 * DAY_MS // SLOT_MS


class DailyProfile:
    """Mean value per 10-minute slot, for the last two days."""

    def __init__(self) -> None:
        # arrays, not lists: a checkpoint of this profile stays a few KB
        self._slot = array("q", [-1]) * _SLOTS
        self._sum = array("d", [0.0]) * _SLOTS
        self._n = array("q", [0]) * _SLOTS

    def add(self, y: float, t: int) -> None:
        """Record the value of the window starting at ``t``."""
        slot = t // SLOT_MS
        i = slot % _SLOTS
        if self._slot[i] != slot:
            self._slot[i], self._sum[i], self._n[i] = slot, 0.0, 0
        self._sum[i] += y
        self._n[i] += 1

    def at(self, t: int) -> float | None:
        """Mean of the slot holding ``t``, if that slot was seen."""
        slot = t // SLOT_MS
        i = slot % _SLOTS
        if self._slot[i] != slot or not self._n[i]:
            return None
        return self._sum[i] / self._n[i]

    def yesterday(self, t: int) -> float | None:
        """The mean of the same 10 minutes one day before ``t``."""
        return self.at(t - DAY_MS)
