"""A simulated run's outcome: one row per window, and the scores read from them (SLO attainment per tier,
replica-hours and cost, utilisation, shed shares, goodput, how fast a burst's onset was answered)."""

from __future__ import annotations

import dataclasses

from surgegate.settings import DEFAULT_WINDOW_S
from surgegate.sim.service import TIER_ORDER

PRICE_RESERVED, PRICE_ON_DEMAND = 2.0, 4.0
#: a window meets a tier's SLO when at most this share of its realtime requests missed
MISS_BUDGET = 0.01
#: every policy starts at its minimum fleet; the first minutes are not scored
WARMUP_S = 300


@dataclasses.dataclass
class WindowRow:
    """One window of a run."""

    t: int
    demand: float
    admitted: float
    served: float
    rejected: dict[str, float]
    deferred: float
    deferred_by_tier: dict[str, float]
    timed_out: float
    ttft_p99_ms: dict[str, float | None]
    tpot_p99_ms: float | None
    #: realtime requests of each tier, and how many missed their SLO
    demand_by_tier: dict[str, float]
    missed_by_tier: dict[str, float]
    all_by_tier: dict[str, float]
    good: float
    ready: int
    paid: int
    desired: int
    warm: int
    level: int
    utilisation: float
    capacity_rps: float
    kv_cache: float
    waiting: float
    #: requests of each tier sent to another region this window (served, and scored, there)
    spilled: dict[str, float] = dataclasses.field(default_factory=dict)

    def met(self, tier: str) -> bool:
        return self.missed_by_tier.get(tier, 0.0) <= MISS_BUDGET * self.demand_by_tier.get(tier, 0.0) + 1e-9


@dataclasses.dataclass
class Result:
    """A run's windows; every score skips the first :data:`WARMUP_S` (``all_rows`` keeps them)."""

    workload: str
    policy: str
    all_rows: list[WindowRow]
    onset_s: int | None
    window_s: int = DEFAULT_WINDOW_S
    knob: str = ""
    knob_value: float = 0.0
    knob_text: str = ""

    @property
    def rows(self) -> list[WindowRow]:
        scored = [r for r in self.all_rows if r.t >= WARMUP_S]
        return scored or self.all_rows

    # ------------------------------------------------------------ scores

    def slo_attainment(self, tier: str) -> float:
        """Share of windows with realtime demand of ``tier`` in which it met its SLO (rejections are misses)."""
        seen = [r for r in self.rows if r.demand_by_tier.get(tier, 0) > 0]
        if not seen:
            return 1.0
        return sum(1 for r in seen if r.met(tier)) / len(seen)

    @property
    def replica_hours(self) -> float:
        return sum(r.paid for r in self.rows) * self.window_s / 3600

    def cost(self, reserved: int = 5) -> float:
        return sum(min(r.paid, reserved) * PRICE_RESERVED + max(0, r.paid - reserved) * PRICE_ON_DEMAND
                   for r in self.rows) * self.window_s / 3600

    @property
    def mean_utilisation(self) -> float:
        return sum(r.utilisation for r in self.rows) / len(self.rows)

    def steady_utilisation(self) -> float:
        """Mean utilisation over windows whose demand is within 5% of the last 30 windows' mean."""
        vals = []
        for i in range(30, len(self.rows)):
            recent = [r.demand for r in self.rows[i - 30:i]]
            mean = sum(recent) / len(recent)
            if mean > 0 and all(abs(d - mean) <= 0.05 * mean for d in recent[-6:]) \
                    and abs(self.rows[i].demand - mean) <= 0.05 * mean:
                vals.append(self.rows[i].utilisation)
        return sum(vals) / len(vals) if vals else float("nan")

    def share(self, what: str) -> float:
        demand = sum(r.demand for r in self.rows) * self.window_s or 1.0
        if what == "rejected":
            return sum(sum(r.rejected.values()) for r in self.rows) / demand
        if what == "deferred":
            return sum(r.deferred for r in self.rows) / demand
        if what == "timed_out":
            return sum(r.timed_out for r in self.rows) / demand
        raise ValueError(what)

    def tier_share(self, what: str, tier: str) -> float:
        """Share of ``tier``'s requests (realtime and batch) that were rejected or deferred."""
        demand = sum(r.all_by_tier.get(tier, 0) for r in self.rows) or 1.0
        by = {"rejected": lambda r: r.rejected.get(tier, 0), "deferred": lambda r: r.deferred_by_tier.get(tier, 0)}
        return sum(by[what](r) for r in self.rows) / demand

    @property
    def goodput_rps(self) -> float:
        """Requests served within their SLO, per second."""
        return sum(r.good for r in self.rows) / (len(self.rows) * self.window_s)

    def onset_response(self) -> tuple[float | None, float | None]:
        """Seconds from the burst onset to the first reaction (more replicas or a level) and to SLO recovery.

        Recovery: the first window from which the top tier meets the SLO for six windows running,
        after a violation; 0 when it never broke.
        """
        if self.onset_s is None:
            return None, None
        after = [r for r in self.rows if r.t >= self.onset_s]
        if not after:
            return None, None
        base = next((r.desired for r in reversed(self.rows) if r.t < self.onset_s), after[0].desired)
        first = next((r.t - self.onset_s for r in after if r.desired > base or r.level > 0), None)
        top = TIER_ORDER[0]
        broke = [i for i, r in enumerate(after) if not r.met(top)]
        if not broke:
            return first, 0.0
        for i in range(broke[0], len(after) - 5):
            if all(r.met(top) for r in after[i:i + 6]):
                return first, after[i].t - self.onset_s
        return first, None
