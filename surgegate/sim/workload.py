"""Workloads for the simulator: per-second arrival rates and the traffic mix.

A workload is a rate per simulated second, plus what happens to the service
meanwhile (slow requests doubling, replicas failing). Traces in
../shared/traces format are scaled to a target peak: the busiest 10 s window
becomes ``peak_rps``. Their shape is kept as it is. Synthetic scenarios are
named as synthetic.
"""

from __future__ import annotations

import dataclasses
import math
import random
from pathlib import Path

from surgegate.schemas.telemetry import RequestType
from surgegate.telemetry.traces import read_trace, to_windows

#: Traffic mix by (tier, request type): shares of all requests.
DEFAULT_MIX: dict[tuple[str, RequestType], float] = {
    ("enterprise", "realtime"): 0.16, ("enterprise", "batch"): 0.04,
    ("pro", "realtime"): 0.24, ("pro", "batch"): 0.06,
    ("free", "realtime"): 0.40, ("free", "batch"): 0.10,
}


@dataclasses.dataclass
class Workload:
    """``rate[t]`` requests/s in second ``t``; events that change the service."""

    name: str
    rate: list[float]
    synthetic: bool
    mix: dict[tuple[str, RequestType], float] = dataclasses.field(default_factory=lambda: dict(DEFAULT_MIX))
    #: second -> factor on the slow requests' service time (a long-tail shift)
    slow_factor: dict[int, float] = dataclasses.field(default_factory=dict)
    #: second -> share of the ready replicas that fail at that second
    failures: dict[int, float] = dataclasses.field(default_factory=dict)
    #: second the burst begins, when the scenario has one
    onset_s: int | None = None

    @property
    def seconds(self) -> int:
        return len(self.rate)

    def peak_10s(self) -> float:
        """The busiest 10 s window's mean rate."""
        return max(sum(self.rate[i:i + 10]) / len(self.rate[i:i + 10]) for i in range(0, self.seconds, 10))


def scaled(name: str, rate: list[float], peak_rps: float, *, synthetic: bool, **kw) -> Workload:
    """``rate`` multiplied so its busiest 10 s window is ``peak_rps``."""
    if not peak_rps > 0:
        raise ValueError(f"peak_rps={peak_rps!r}: must be > 0")
    w = Workload(name, rate, synthetic, **kw)
    top = w.peak_10s()
    if top <= 0:
        raise ValueError(f"workload {name}: no traffic to scale")
    w.rate = [r * peak_rps / top for r in rate]
    return w


def from_trace(path: Path, peak_rps: float = 120_000.0, hours: float | None = None) -> Workload:
    """A trace at 1 s resolution (coarser bins spread evenly), scaled to ``peak_rps``.

    ``hours`` keeps only the start of a long trace.
    """
    if hours is not None and not hours > 0:
        raise ValueError(f"hours={hours!r}: must be > 0")
    bins = read_trace(path)
    rate, _ = to_windows(bins, 1000)
    if hours is not None:
        rate = rate[: int(hours * 3600)]
    name = path.name.split(".")[0]
    return scaled(name, rate, peak_rps, synthetic=False)


def burst(peak_rps: float = 120_000.0, base_rps: float = 5_000.0, *, hold_s: int = 3 * 3600, ramp_s: int = 180,
          before_s: int = 600, after_s: int = 600, seed: int = 0) -> Workload:
    """Synthetic: the source analysis's burst, base to peak within minutes, held for hours.

    Poisson-like noise of 2% on top; ``hold_s`` is the plateau (three hours by default).
    """
    if not 0 < base_rps <= peak_rps:
        raise ValueError(f"burst: need 0 < base_rps ({base_rps!r}) <= peak_rps ({peak_rps!r})")
    rng = random.Random(seed)
    rate = []
    for t in range(before_s + ramp_s + hold_s + after_s):
        if t < before_s:
            r = base_rps
        elif t < before_s + ramp_s:
            r = base_rps + (peak_rps - base_rps) * (t - before_s) / ramp_s
        elif t < before_s + ramp_s + hold_s:
            r = peak_rps
        else:
            r = base_rps
        rate.append(max(0.0, r * (1 + 0.02 * rng.gauss(0, 1))))
    return Workload("burst", rate, True, onset_s=before_s)


def daily(peak_rps: float = 120_000.0, *, hours: float = 24.0, trough: float = 0.25, seed: int = 0) -> Workload:
    """Synthetic: a daily cycle, trough at 04:00 and peak at 16:00, with 3% noise."""
    rng = random.Random(seed)
    n = int(hours * 3600)
    rate = [peak_rps * (trough + (1 - trough) * 0.5 * (1 - math.cos(2 * math.pi * (t / 86_400 - 4 / 24))))
            * (1 + 0.03 * rng.gauss(0, 1)) for t in range(n)]
    return Workload("daily", [max(0.0, r) for r in rate], True)


def flash_crowd(peak_rps: float = 120_000.0, base_rps: float = 10_000.0, *, seed: int = 0) -> Workload:
    """Synthetic: base load, a jump to peak within 20 s, decaying over 20 minutes."""
    rng = random.Random(seed)
    rate = []
    for t in range(3600):
        r = base_rps
        if t >= 900:
            k = t - 900
            r = base_rps + (peak_rps - base_rps) * min(1.0, k / 20) * math.exp(-max(0, k - 20) / 600)
        rate.append(max(0.0, r * (1 + 0.02 * rng.gauss(0, 1))))
    return Workload("flash_crowd", rate, True, onset_s=900)


def long_tail_shift(rps: float = 60_000.0, *, seed: int = 0) -> Workload:
    """Synthetic: steady load; after 20 minutes the slow requests take twice as long."""
    rng = random.Random(seed)
    rate = [rps * (1 + 0.02 * rng.gauss(0, 1)) for _ in range(3600)]
    return Workload("long_tail_shift", rate, True, slow_factor={1200: 2.0}, onset_s=1200)


def replica_failures(rps: float = 80_000.0, *, seed: int = 0) -> Workload:
    """Synthetic: steady load; a third of the fleet fails at 20 minutes, more at 40."""
    rng = random.Random(seed)
    rate = [rps * (1 + 0.02 * rng.gauss(0, 1)) for _ in range(3600)]
    return Workload("replica_failures", rate, True, failures={1200: 1 / 3, 2400: 0.25}, onset_s=1200)


#: name -> builder(peak_rps, seed)
SCENARIOS = {
    "burst": lambda peak, seed: burst(peak, peak / 24, seed=seed),
    "daily": lambda peak, seed: daily(peak, seed=seed),
    "flash_crowd": lambda peak, seed: flash_crowd(peak, peak / 12, seed=seed),
    "long_tail_shift": lambda peak, seed: long_tail_shift(peak / 2, seed=seed),
    "replica_failures": lambda peak, seed: replica_failures(peak * 2 / 3, seed=seed),
}
