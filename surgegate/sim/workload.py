"""Workloads for the simulator: per-second arrival rates and the traffic mix.

A workload is a rate per simulated second with the requests' mean prompt and
output lengths in tokens, plus what happens to the service meanwhile
(replicas failing, a GPU quota, slow cold starts). Lengths come from a
trace's token columns where it has them (per minute, count-weighted), else
the Azure conversation trace's means (:data:`DEFAULT_PROMPT`,
:data:`DEFAULT_OUTPUT`). Traces in
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
from surgegate.sim.bursty import NASA_1995_JUL, BurstStats, fit, generate
from surgegate.telemetry.traces import read_trace, to_windows

#: Traffic mix by (tier, request type): shares of all requests.
DEFAULT_MIX: dict[tuple[str, RequestType], float] = {
    ("enterprise", "realtime"): 0.16, ("enterprise", "batch"): 0.04,
    ("pro", "realtime"): 0.24, ("pro", "batch"): 0.06,
    ("free", "realtime"): 0.40, ("free", "batch"): 0.10,
}


#: Mean prompt and output tokens of the Azure LLM conversation trace (2023), for workloads without token counts.
DEFAULT_PROMPT, DEFAULT_OUTPUT = 1155.0, 211.0


@dataclasses.dataclass
class Workload:
    """``rate[t]`` requests/s in second ``t``, their mean lengths; events that change the service."""

    name: str
    rate: list[float]
    synthetic: bool
    mix: dict[tuple[str, RequestType], float] = dataclasses.field(default_factory=lambda: dict(DEFAULT_MIX))
    #: mean prompt / output tokens per second (None: the defaults throughout)
    prompt: list[float] | None = None
    output: list[float] | None = None
    #: second -> share of the ready replicas that fail at that second
    failures: dict[int, float] = dataclasses.field(default_factory=dict)
    #: second the burst begins, when the scenario has one
    onset_s: int | None = None
    #: the GPU quota as a share of what the peak needs (None: room to grow)
    quota_share: float | None = None
    #: a model load that takes this long (None: the service model's cold start)
    cold_start_s: float | None = None
    #: the lengths the operator sized and set the SLOs for (None: the workload's own means)
    reference: tuple[float, float] | None = None

    @property
    def seconds(self) -> int:
        return len(self.rate)

    def lengths(self, t: int) -> tuple[float, float]:
        """Mean prompt and output tokens of the requests arriving in second ``t``."""
        return (self.prompt[t] if self.prompt is not None else DEFAULT_PROMPT,
                self.output[t] if self.output is not None else DEFAULT_OUTPUT)

    def mean_lengths(self) -> tuple[float, float]:
        """The lengths the service is sized for: ``reference``, else the request-weighted means."""
        if self.reference is not None:
            return self.reference
        total = sum(self.rate) or 1.0
        return (sum(r * self.lengths(t)[0] for t, r in enumerate(self.rate)) / total,
                sum(r * self.lengths(t)[1] for t, r in enumerate(self.rate)) / total)

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
    prompt, output = _lengths(bins, len(rate))
    return scaled(name, rate, peak_rps, synthetic=False, prompt=prompt, output=output)


def _lengths(bins: list, seconds: int, block_s: int = 60) -> tuple[list[float] | None, list[float] | None]:
    """Per second, the count-weighted mean prompt and output tokens of its minute (None without token columns)."""
    if not any(b.input_tokens or b.output_tokens for b in bins):
        return None, None
    t0 = bins[0].start_s
    blocks = seconds // block_s + 1
    sums = [[0.0, 0.0, 0.0] for _ in range(blocks)]
    for b in bins:
        i = int((b.start_s - t0) // block_s)
        if i < blocks:
            sums[i][0] += b.count
            sums[i][1] += b.input_tokens
            sums[i][2] += b.output_tokens
    prompt, output = [], []
    last = (DEFAULT_PROMPT, DEFAULT_OUTPUT)
    for n, tin, tout in sums:
        if n > 0:
            last = (max(1.0, tin / n), max(1.0, tout / n))
        prompt.append(last[0])
        output.append(last[1])
    return ([prompt[t // block_s] for t in range(seconds)], [output[t // block_s] for t in range(seconds)])


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
    """Synthetic: steady load; after 20 minutes answers run twice as long (output tokens x 2)."""
    return _lengths_shift("long_tail_shift", rps, seed, output_factor=2.0)


def token_heavy(rps: float = 60_000.0, *, seed: int = 0) -> Workload:
    """Synthetic: steady request rate; after 20 minutes prompts are 2.5 times as long (documents pasted in)."""
    return _lengths_shift("token_heavy", rps, seed, prompt_factor=2.5)


def _lengths_shift(name: str, rps: float, seed: int, *, prompt_factor: float = 1.0, output_factor: float = 1.0,
                   at_s: int = 1200, seconds: int = 3600) -> Workload:
    """Steady load with 2% noise whose request lengths change at ``at_s``; sized and SLO'd for the lengths before."""
    rng = random.Random(seed)
    rate = [rps * (1 + 0.02 * rng.gauss(0, 1)) for _ in range(seconds)]
    prompt = [DEFAULT_PROMPT * (prompt_factor if t >= at_s else 1.0) for t in range(seconds)]
    output = [DEFAULT_OUTPUT * (output_factor if t >= at_s else 1.0) for t in range(seconds)]
    return Workload(name, rate, True, prompt=prompt, output=output, onset_s=at_s,
                    reference=(DEFAULT_PROMPT, DEFAULT_OUTPUT))


def gpu_quota(peak_rps: float = 120_000.0, *, seed: int = 0) -> Workload:
    """Synthetic: the seed burst (one hour held) with a GPU quota of 70% of what its peak needs."""
    w = burst(peak_rps, peak_rps / 24, hold_s=3600, seed=seed)
    return dataclasses.replace(w, name="gpu_quota", quota_share=0.7)


def slow_cold_start(peak_rps: float = 120_000.0, *, seed: int = 0) -> Workload:
    """Synthetic: a flash crowd on a model that takes 180 s to load (0.8 s from the warm pool)."""
    w = flash_crowd(peak_rps, peak_rps / 12, seed=seed)
    return dataclasses.replace(w, name="slow_cold_start", cold_start_s=180.0)


def replica_failures(rps: float = 80_000.0, *, seed: int = 0) -> Workload:
    """Synthetic: steady load; a third of the fleet fails at 20 minutes, more at 40."""
    rng = random.Random(seed)
    rate = [rps * (1 + 0.02 * rng.gauss(0, 1)) for _ in range(3600)]
    return Workload("replica_failures", rate, True, failures={1200: 1 / 3, 2400: 0.25}, onset_s=1200)


#: a sparse service's mean rate at its own scale: about three seconds in four without a request
SPARSE_RPS = 0.3


def bursty(peak_rps: float = 120_000.0, *, stats: BurstStats = NASA_1995_JUL, name: str = "bursty",
           hours: float = 1.0, seed: int = 0) -> Workload:
    """Synthetic: a new series with ``stats``' bursts (:mod:`surgegate.sim.bursty`), scaled as a trace is."""
    return scaled(name, generate(stats, seconds=int(hours * 3600), seed=seed), peak_rps, synthetic=True)


def bursty_from(path: Path, peak_rps: float = 120_000.0, *, seed: int = 0, hours: float = 1.0) -> Workload:
    """Synthetic: bursts with the statistics :func:`~surgegate.sim.bursty.fit` measures on a trace."""
    rate, _ = to_windows(read_trace(path), 1000)
    return bursty(peak_rps, stats=fit(rate), name=f"bursty-{path.name.split('.')[0]}", hours=hours, seed=seed)


#: name -> builder(peak_rps, seed)
SCENARIOS = {
    "burst": lambda peak, seed: burst(peak, peak / 24, seed=seed),
    "daily": lambda peak, seed: daily(peak, seed=seed),
    "flash_crowd": lambda peak, seed: flash_crowd(peak, peak / 12, seed=seed),
    "long_tail_shift": lambda peak, seed: long_tail_shift(peak / 2, seed=seed),
    "replica_failures": lambda peak, seed: replica_failures(peak * 2 / 3, seed=seed),
    "token_heavy": lambda peak, seed: token_heavy(peak / 2, seed=seed),
    "gpu_quota": lambda peak, seed: gpu_quota(peak, seed=seed),
    "slow_cold_start": lambda peak, seed: slow_cold_start(peak, seed=seed),
    "bursty": lambda peak, seed: bursty(peak, seed=seed),
    "sparse_bursts": lambda peak, seed: bursty(peak, stats=dataclasses.replace(NASA_1995_JUL, mean_rps=SPARSE_RPS),
                                               name="sparse_bursts", seed=seed),
}
