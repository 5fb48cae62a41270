"""The slow view: a series' mean per 10-minute slot over the last two days,
and its typical day.

A 10 s step cannot learn a daily cycle by itself; the models ask this profile
for "the same time yesterday", and for the typical change between two times
of day, so a daily rise is expected rather than chased.

>>> p = DailyProfile()
>>> p.add(5.0, 0); p.add(7.0, 60_000)
>>> p.yesterday(86_400_000 + 30_000)
6.0
>>> p.yesterday(86_400_000 + 700_000) is None
True
>>> p.add(9.0, 600_000)  # the first slot is over: it joins the typical day
>>> p.typical(86_400_000), p.typical(86_400_000 + 3_600_000)
(6.0, None)
"""

from __future__ import annotations

from array import array

from surgegate.forecast.state import ProfileState, StateMismatch

DAY_MS = 86_400_000
SLOT_MS = 600_000
_SLOTS = 2 * DAY_MS // SLOT_MS
_DAY_SLOTS = DAY_MS // SLOT_MS
#: The typical day is the mean of the days seen, up to this many (two weeks,
#: so weekdays and weekends both count); older days fade (an exponential mean
#: with this memory).
TYPICAL_DAYS = 14
#: A typical value is the mean of this many slots either side (a 90-minute
#: span): a single day's spike at one slot must not read as a daily change.
TYPICAL_SPAN = 4


class DailyProfile:
    """Mean value per 10-minute slot, for the last two days, and per slot of a typical day."""

    def __init__(self) -> None:
        # arrays, not lists: a checkpoint of this profile stays a few KB
        self._slot = array("q", [-1]) * _SLOTS
        self._sum = array("d", [0.0]) * _SLOTS
        self._n = array("q", [0]) * _SLOTS
        self._typical = array("d", [0.0]) * _DAY_SLOTS
        self._days = array("q", [0]) * _DAY_SLOTS
        self._open = -1

    def add(self, y: float, t: int) -> None:
        """Record the value of the window starting at ``t``."""
        slot = t // SLOT_MS
        i = slot % _SLOTS
        if self._slot[i] != slot:
            self._slot[i], self._sum[i], self._n[i] = slot, 0.0, 0
        self._sum[i] += y
        self._n[i] += 1
        if slot != self._open:
            self._fold(self._open)
            self._open = slot

    def _fold(self, slot: int) -> None:
        """Fold a finished slot's mean into the typical day."""
        mean = self.at(slot * SLOT_MS) if slot >= 0 else None
        if mean is None:
            return
        k = slot % _DAY_SLOTS
        days = min(self._days[k] + 1, TYPICAL_DAYS)
        self._typical[k] += (mean - self._typical[k]) / days
        self._days[k] = days

    def typical(self, t: int) -> float | None:
        """The typical day's value around the time of day of ``t``, if that slot was seen."""
        k = t // SLOT_MS % _DAY_SLOTS
        if not self._days[k]:
            return None
        values = [self._typical[j % _DAY_SLOTS] for j in range(k - TYPICAL_SPAN, k + TYPICAL_SPAN + 1)
                  if self._days[j % _DAY_SLOTS]]
        return sum(values) / len(values)

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

    def state(self) -> ProfileState:
        """The slots of the last two days and the typical day."""
        return ProfileState(slot=list(self._slot), sums=list(self._sum), counts=list(self._n),
                            typical=list(self._typical), days=list(self._days), open=self._open)

    def load(self, state: ProfileState) -> None:
        """Take up ``state`` (from :meth:`state`)."""
        if (len(state.slot), len(state.typical)) != (_SLOTS, _DAY_SLOTS):
            raise StateMismatch(f"daily profile of {len(state.slot)} slots; this one keeps {_SLOTS}")
        self._slot, self._sum, self._n = array("q", state.slot), array("d", state.sums), array("q", state.counts)
        self._typical, self._days = array("d", state.typical), array("q", state.days)
        self._open = state.open
