"""A bursty workload generator fitted to a public trace's statistics, so no burst pattern is a fixed target.

Real LLM traffic often comes in spikes on a low, uneven base: at a service's own
scale most seconds may be empty, and its busiest second many times its mean.
:func:`fit` measures, on any trace at one-second resolution, what such a
service looks like:

- the mean rate at its own scale (which decides how many seconds are empty:
  arrivals are counted, not poured);
- its bursts: minutes whose rate exceeds ``threshold`` times the trailing
  hour's median, joined into runs; how often they come (per hour), how high
  they rise over that median (log-normal), how long they last (log-normal,
  with the share of one-minute spikes kept apart from longer surges);
- the base's own drift (log-normal minute-to-minute variation).

:func:`generate` draws a new series from those figures for any seed: a drifting
base, bursts arriving as a Poisson process with heights and lengths drawn
from the fitted distributions (a fast rise, a plateau, an exponential decay),
and per-second arrivals counted as Poisson at the trace's own scale. The
simulator then scales it like any trace (its busiest 10 s to the target peak).

:data:`NASA_1995_JUL` holds what :func:`fit` measures on the NASA HTTP trace
(../shared/traces/nasa_http_1995_jul.csv.gz, 27.6 days); ``surgegate
simulate --bursty-from TRACE`` fits any other trace at run time.

>>> stats = BurstStats(mean_rps=0.7, bursts_per_hour=2.0, height_mu=1.2, height_sigma=0.5, spike_share=0.5,
...                    spike_s=40.0, surge_mu=5.5, surge_sigma=0.6, drift_sigma=0.2)
>>> rate = generate(stats, seconds=3600, seed=1)
>>> len(rate), round(sum(rate) / len(rate), 1) > 0, sum(1 for r in rate if r == 0) > 1000
(3600, True, True)
"""

from __future__ import annotations

import dataclasses
import math
import random
import statistics

from surgegate.checks import check


@dataclasses.dataclass(frozen=True)
class BurstStats:
    """What a bursty service looks like (see the module docstring); every field is what :func:`fit` measures."""

    #: requests a second at the service's own scale
    mean_rps: float
    #: bursts an hour
    bursts_per_hour: float
    #: log of a burst's height over the base (its rate at the peak over the base's), mean and spread
    height_mu: float
    height_sigma: float
    #: the share of bursts that are one-minute spikes, and how long those last (s)
    spike_share: float
    spike_s: float
    #: log of a longer surge's length in seconds, mean and spread
    surge_mu: float
    surge_sigma: float
    #: the base's minute-to-minute variation (log-normal spread)
    drift_sigma: float

    def __post_init__(self) -> None:
        check(self.mean_rps > 0, "mean_rps", self.mean_rps, "must be > 0")
        check(self.bursts_per_hour >= 0, "bursts_per_hour", self.bursts_per_hour, "must be >= 0")
        check(0 <= self.spike_share <= 1, "spike_share", self.spike_share, "must be within [0, 1]")
        for name in ("height_sigma", "surge_sigma", "drift_sigma"):
            check(getattr(self, name) >= 0, name, getattr(self, name), "must be >= 0")
        check(self.spike_s > 0, "spike_s", self.spike_s, "must be > 0")


#: :func:`fit` of the NASA HTTP trace (July 1995), rounded: 0.36 bursts an hour about 3x the base, four in five
#: of them one-minute spikes, the rest surges of about 3 minutes; the base drifts by about 50% a minute.
NASA_1995_JUL = BurstStats(mean_rps=0.79, bursts_per_hour=0.36, height_mu=1.12, height_sigma=0.21, spike_share=0.8,
                           spike_s=40.0, surge_mu=5.12, surge_sigma=0.56, drift_sigma=0.49)


def fit(rate: list[float], *, threshold: float = 2.5, baseline_min: int = 60) -> BurstStats:
    """The burst statistics of a one-second series (at least two hours; its own scale)."""
    check(len(rate) >= 7200, "rate", len(rate), "needs at least two hours of seconds")
    minutes = [sum(rate[i:i + 60]) / 60 for i in range(0, len(rate) - 59, 60)]
    runs: list[tuple[int, int, float]] = []  # (start minute, length, peak over base)
    drift: list[float] = []
    i = baseline_min
    while i < len(minutes):
        base = statistics.median(minutes[i - baseline_min:i]) or 1e-9
        if minutes[i] > threshold * base:
            start, peak = i, minutes[i]
            while i < len(minutes) and minutes[i] > threshold * base:
                peak = max(peak, minutes[i])
                i += 1
            runs.append((start, i - start, peak / base))
            continue
        if minutes[i] > 0 and minutes[i - 1] > 0:
            drift.append(math.log(minutes[i] / minutes[i - 1]))
        i += 1
    hours = (len(minutes) - baseline_min) / 60
    heights = [math.log(h) for _, _, h in runs] or [math.log(threshold)]
    spikes = [r for r in runs if r[1] == 1]
    surges = [math.log(60 * length) for _, length, _ in runs if length > 1] or [math.log(300.0)]
    return BurstStats(
        mean_rps=sum(rate) / len(rate), bursts_per_hour=len(runs) / hours if hours > 0 else 0.0,
        height_mu=statistics.fmean(heights), height_sigma=statistics.pstdev(heights),
        spike_share=len(spikes) / len(runs) if runs else 0.0, spike_s=40.0,
        surge_mu=statistics.fmean(surges), surge_sigma=statistics.pstdev(surges),
        drift_sigma=statistics.pstdev(drift) if len(drift) > 1 else 0.0)


def generate(stats: BurstStats, *, seconds: int, seed: int) -> list[float]:
    """A new series with ``stats``' shape: arrivals per second at the service's own scale."""
    rng = random.Random(seed)
    # the base: a log-normal random walk by the minute, pulled back to its mean
    base, log_b = [], 0.0
    for _ in range(seconds // 60 + 1):
        log_b = 0.9 * log_b + rng.gauss(0.0, stats.drift_sigma)
        base.append(math.exp(log_b))
    level = [base[t // 60] for t in range(seconds)]
    shape = [1.0] * seconds
    t = 0.0
    rate_per_s = stats.bursts_per_hour / 3600
    while rate_per_s > 0:
        t += rng.expovariate(rate_per_s)
        if t >= seconds:
            break
        height = math.exp(rng.gauss(stats.height_mu, stats.height_sigma))
        length = stats.spike_s if rng.random() < stats.spike_share else \
            math.exp(rng.gauss(stats.surge_mu, stats.surge_sigma))
        rise = min(10.0, length / 4)
        start = int(t)
        for s in range(start, min(seconds, start + int(length * 2))):
            k = s - start
            if k < rise:
                f = k / rise
            elif k < length:
                f = 1.0
            else:  # decays over the burst's own length after its plateau
                f = math.exp(-3 * (k - length) / length)
            shape[s] = max(shape[s], 1.0 + (height - 1.0) * f)
    # scaled so the mean is the trace's own, then counted: at a few requests a second most seconds are empty
    raw = [lv * sh for lv, sh in zip(level, shape)]
    scale = stats.mean_rps * seconds / sum(raw)
    return [float(poisson(rng, r * scale)) for r in raw]


def poisson(rng: random.Random, mean: float) -> int:
    """A Poisson draw (Knuth's for small means, a rounded normal beyond)."""
    if mean <= 0:
        return 0
    if mean > 30:
        return max(0, round(rng.gauss(mean, math.sqrt(mean))))
    limit, k, p = math.exp(-mean), 0, 1.0
    while True:
        p *= rng.random()
        if p <= limit:
            return k
        k += 1
