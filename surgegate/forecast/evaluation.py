"""Offline evaluation of the forecasters on request-arrival traces.

The very objects the forecast agent uses run over a trace, window by window:
after learning window t, every model and the selector forecast windows
t+1..t+H; each forecast is scored when its window arrives. Reported per
horizon: MASE (mean absolute error over the mean absolute one-step change of
the series), sMAPE, and for the selector the share of actual values inside its
bounds, plus microseconds per update+forecast.

Forecasts are also judged by what they would cost, at the scaling policy's
lead (``lead`` windows: a cold start and a window) where capacity is decided:

- the interval score (Winkler) of each model's bounds: its width, plus
  ``2 / alpha`` times how far the actual fell outside (``alpha`` = 1 -
  coverage), scaled like MASE. Every model's bounds are its point plus or
  minus a rolling conformal quantile of its own residuals at that horizon,
  as the selector's are for the model it picks;
- the *burst shortfall*: in burst windows (above :data:`BURST_FACTOR` times
  the trailing :data:`BURST_TRAIL` windows' median), the share of demand above
  the upper bound, which is what capacity held for it would have missed;
- the coverage and burst shortfall of the scaling policy's burst envelopes
  (:class:`~surgegate.control.burst.BurstEnvelope`, at its default coverage
  for the service's load and at the worst rise seen, as for the top tier's):
  the upper bounds it holds capacity for. They have no lower bound, so no
  interval score.

A window whose data is missing (``None``, a collection gap) is neither learned
nor scored, as the forecast agent treats a missing window; the series' scale
is its mean one-step change between windows that both have data.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

from surgegate.control.burst import BurstEnvelope
from surgegate.forecast.conformal import RollingQuantile
from surgegate.forecast.daily import DailyProfile
from surgegate.forecast.scope import rate_models
from surgegate.forecast.selector import OnlineSelector
from surgegate.settings import DEFAULT_WINDOW_S
from surgegate.telemetry.traces import missing_windows, read_trace, to_windows

HORIZONS = (1, 6, 30)
#: Windows learned before scoring starts.
WARMUP = 30
#: The scaling policy's lead in 10 s windows: a 15 s cold start and the decision's window.
LEAD = 3
#: A burst window is above this multiple of the median of the windows before it.
BURST_FACTOR, BURST_TRAIL = 2.0, 30
#: The burst envelopes scored: the scaling policy's defaults for the service's load and for the top tier's.
ENVELOPES = {"burst envelope (90%)": 0.9, "burst envelope (worst)": 1.0}


@dataclasses.dataclass
class TraceReport:
    """Scores of every model on one trace."""

    name: str
    step_ms: int
    windows: int
    mase: dict[str, dict[int, float]]
    smape: dict[str, dict[int, float]]
    coverage: dict[int, float]
    us_per_update: float
    burst_windows: int
    gaps: int
    actual: list[float | None]
    selector_h: dict[int, list[float | None]]
    lower_h: dict[int, list[float | None]]
    upper_h: dict[int, list[float | None]]
    #: at the lead: each model's (and the selector's and the envelope's) interval score and burst shortfall
    lead: int = LEAD
    interval_score: dict[str, float] = dataclasses.field(default_factory=dict)
    burst_shortfall: dict[str, float] = dataclasses.field(default_factory=dict)
    lead_coverage: dict[str, float] = dataclasses.field(default_factory=dict)
    burst_windows_scored: int = 0


def evaluate_series(name: str, series: list[float | None], step_ms: int, *, horizon: int = 30,
                    coverage: float = 0.9, t0: int = 0, lead: int = LEAD,
                    progress: Callable[[int, int], None] | None = None) -> TraceReport:
    """Run the selector and its models over ``series`` and score them.

    ``progress(done, total)`` is called every 1,000 windows and at the end.

    ``ValueError`` if too few windows have data to score the longest horizon after the warm-up.
    """
    profile = DailyProfile()
    selector = OnlineSelector(rate_models(step_ms, profile), step_ms=step_ms, horizon=horizon, coverage=coverage)
    n = len(series)
    horizons = tuple(h for h in HORIZONS if h <= horizon)
    known = sum(v is not None for v in series)
    if known <= WARMUP + horizons[-1]:
        raise ValueError(f"{name}: {known} windows with data; scoring {horizons[-1]} windows ahead after a "
                         f"{WARMUP}-window warm-up needs at least {WARMUP + horizons[-1] + 1}")
    preds: dict[str, dict[int, list[float | None]]] = defaultdict(lambda: {h: [None] * n for h in horizons})
    lower: dict[int, list[float | None]] = {h: [None] * n for h in horizons}
    upper: dict[int, list[float | None]] = {h: [None] * n for h in horizons}
    lead = min(lead, horizon)
    # at the lead: every model's bounds (its point +- its own residuals' conformal quantile), and the envelope
    widths: dict[str, RollingQuantile] = {}
    pending: dict[str, list[float | None]] = defaultdict(lambda: [None] * n)  # the lead's point, by window
    bounds_at: dict[str, list[tuple[float, float] | None]] = defaultdict(lambda: [None] * n)
    envelopes = {name: BurstEnvelope(horizon=lead, coverage=c) for name, c in ENVELOPES.items()}
    burst = 0
    spent = 0.0
    learned = 0
    for i, y in enumerate(series):
        if progress is not None and i % 1000 == 0:
            progress(i, n)
        if y is None:
            selector.forget_pending()
            continue
        learned += 1
        for model, points in pending.items():  # the lead's forecasts for this window: residuals, then widths
            if (p := points[i]) is not None:
                widths.setdefault(model, RollingQuantile(coverage=coverage)).update(y - p)
        t = t0 + i * step_ms
        started = time.perf_counter()
        selector.learn_one(y, t)
        profile.add(y, t)
        current = selector.current()
        spent += time.perf_counter() - started
        burst += current.regime == "burst"
        for label, envelope in envelopes.items():
            if (held := envelope.envelope(y)) is not None and i + lead < n:
                for j in range(i + 1, i + lead + 1):  # it holds for every window within the lead
                    bounds_at[label][j] = (0.0, max(held, (bounds_at[label][j] or (0.0, 0.0))[1]))
            envelope.learn(y)
        if i + lead < n:
            leads = {**{m: v[lead - 1] for m, v in selector.model_forecasts.items()}}
            for model, p in leads.items():
                pending[model][i + lead] = p
                if model in widths and widths[model].ready:
                    w = widths[model].width
                    bounds_at[model][i + lead] = (max(0.0, p - w), p + w)
            bounds_at["selector"][i + lead] = (current.lower[lead - 1], current.upper[lead - 1])
        for h in horizons:
            j = i + h
            if j >= n:
                continue
            for model, values in selector.model_forecasts.items():
                preds[model][h][j] = values[h - 1]
            preds["selector"][h][j] = current.point[h - 1]
            lower[h][j] = current.lower[h - 1]
            upper[h][j] = current.upper[h - 1]
    changes = [abs(b - a) for a, b in zip(series, series[1:]) if a is not None and b is not None]
    scale = sum(changes) / max(1, len(changes)) or 1.0
    mase: dict[str, dict[int, float]] = {}
    smape: dict[str, dict[int, float]] = {}
    for model, by_h in preds.items():
        mase[model], smape[model] = {}, {}
        for h, predicted in by_h.items():
            pairs = [(v, y) for j, (v, y) in enumerate(zip(predicted, series))
                     if v is not None and y is not None and j >= WARMUP]
            # no pairs only where gaps cover every scored window of this horizon
            mase[model][h] = sum(abs(v - y) for v, y in pairs) / len(pairs) / scale if pairs else math.nan
            terms = [2 * abs(v - y) / (abs(v) + abs(y)) for v, y in pairs if abs(v) + abs(y) > 0]
            smape[model][h] = 100 * sum(terms) / len(terms) if terms else 0.0
    cover = {}
    for h in horizons:
        inside = [lo <= y <= hi for lo, y, hi in zip(lower[h][WARMUP:], series[WARMUP:], upper[h][WARMUP:])
                  if lo is not None and y is not None and hi is not None]
        cover[h] = sum(inside) / len(inside) if inside else math.nan
    if progress is not None:
        progress(n, n)
    report = TraceReport(name, step_ms, n, mase, smape, cover, spent / max(1, learned) * 1e6, burst, n - learned,
                         series, {h: preds["selector"][h] for h in horizons}, lower, upper, lead=lead)
    _score_bounds(report, bounds_at, scale, 1.0 - coverage)
    return report


def burst_windows(series: list[float | None]) -> list[int]:
    """Windows above :data:`BURST_FACTOR` times the median of the :data:`BURST_TRAIL` windows with data before."""
    out = []
    for i in range(BURST_TRAIL, len(series)):
        y = series[i]
        before = [v for v in series[i - BURST_TRAIL:i] if v is not None]
        if y is not None and before and y > BURST_FACTOR * sorted(before)[len(before) // 2]:
            out.append(i)
    return out


def _score_bounds(report: TraceReport, bounds_at: dict[str, list[tuple[float, float] | None]], scale: float,
                  alpha: float) -> None:
    """Interval score, coverage and burst shortfall at the lead, for every model with bounds."""
    series = report.actual
    bursts = [j for j in burst_windows(series) if j >= WARMUP]
    report.burst_windows_scored = len(bursts)
    for model, bounds in bounds_at.items():
        scored = [(b, y) for j, (b, y) in enumerate(zip(bounds, series)) if j >= WARMUP and b is not None
                  and y is not None]
        if not scored:
            continue
        score = [(hi - lo) + 2 / alpha * (max(0.0, lo - y) + max(0.0, y - hi)) for (lo, hi), y in scored]
        report.interval_score[model] = sum(score) / len(score) / scale
        report.lead_coverage[model] = sum(lo <= y <= hi for (lo, hi), y in scored) / len(scored)
        demand = short = 0.0
        for j in bursts:
            b, y = bounds[j], series[j]
            if b is None or y is None:
                continue
            demand += y
            short += max(0.0, y - b[1])
        report.burst_shortfall[model] = short / demand if demand else math.nan


def trace_series(path: Path, *, gaps_as_zeros: bool = False,
                 window_ms: int = DEFAULT_WINDOW_S * 1000) -> tuple[list[float | None], int]:
    """A trace's request rate per window (``None`` for a collection gap, unless ``gaps_as_zeros``)
    and the window length in ms: ``window_ms``, or the trace's own bin where coarser."""
    bins = read_trace(path)
    step_ms = max(window_ms, round(bins[0].length_s * 1000))
    rate, _ = to_windows(bins, step_ms)
    if gaps_as_zeros:
        return list(rate), step_ms
    return [None if gap else v for v, gap in zip(rate, missing_windows(bins, step_ms))], step_ms


def evaluate_trace(path: Path, *, horizon: int = 30, coverage: float = 0.9, gaps_as_zeros: bool = False,
                   window_ms: int = DEFAULT_WINDOW_S * 1000,
                   progress: Callable[[int, int], None] | None = None) -> TraceReport:
    """Evaluate on a trace file at ``window_ms`` windows, or at its own bin where coarser.

    Collection gaps (see :func:`surgegate.telemetry.traces.read_trace`) are missing
    windows, unless ``gaps_as_zeros`` reads them as the zeros the file holds.
    """
    series, step_ms = trace_series(path, gaps_as_zeros=gaps_as_zeros, window_ms=window_ms)
    return evaluate_series(Path(path).name.split(".")[0], series, step_ms, horizon=horizon, coverage=coverage,
                           t0=1_767_225_600_000, progress=progress)


def markdown(report: TraceReport) -> str:
    """The report as a markdown table: one row per model, MASE and sMAPE per horizon."""
    hs = sorted(report.coverage)
    head = "| model | " + " | ".join(f"MASE h={h}" for h in hs) + " | " + " | ".join(f"sMAPE h={h}" for h in hs) + " |"
    lines = [f"### {report.name} (step {report.step_ms // 1000} s, {report.windows} windows)", "", head,
             "|---" * (1 + 2 * len(hs)) + "|"]
    order = sorted(report.mase, key=lambda m: (m != "selector", m != "last_value", m))
    for model in order:
        lines.append(f"| {model} | " + " | ".join(f"{report.mase[model][h]:.3f}" for h in hs) + " | "
                     + " | ".join(f"{report.smape[model][h]:.1f}%" for h in hs) + " |")
    naive6 = report.mase["last_value"].get(6)
    sel6 = report.mase["selector"].get(6)
    gain = f"{100 * (1 - sel6 / naive6):.1f}%" if naive6 and sel6 is not None else "n/a"
    lines += ["", "coverage of the 90% bounds: " + ", ".join(f"h={h}: {100 * c:.1f}%" for h, c in
                                                           report.coverage.items())
              + f"; selector MASE at h=6 is {gain} below last value; "
              f"{report.us_per_update:.0f} us per update+forecast; {report.burst_windows} windows in burst regime; "
              f"{report.gaps} windows missing (collection gaps, neither learned nor scored)", ""]
    if report.interval_score:
        lines += [f"At the scaling lead (h={report.lead}): interval score (Winkler, scaled like MASE; lower is "
                  f"better), coverage of the bounds, and the share of demand in the {report.burst_windows_scored} "
                  f"burst windows above the upper bound (what capacity held for it would miss):", "",
                  f"| model | interval score h={report.lead} | coverage h={report.lead} | burst shortfall |",
                  "|---|---|---|---|"]
        ranked = sorted(report.interval_score, key=lambda m: (m != "selector", m not in ENVELOPES, m))
        for model in ranked:
            score = "-" if model in ENVELOPES else f"{report.interval_score[model]:.2f}"
            cover = report.lead_coverage[model]
            what = "under the bound" if model in ENVELOPES else "inside"
            lines.append(f"| {model} | {score} | {100 * cover:.1f}% {what} | "
                         f"{_share(report.burst_shortfall.get(model, math.nan))} |")
        lines.append("")
    return "\n".join(lines)


def _share(x: float) -> str:
    return "n/a" if math.isnan(x) else f"{100 * x:.1f}%"


def plot(report: TraceReport, path: Path, horizon: int = 6, span: int = 120) -> Path:
    """PNG of actual vs the selector's h-step forecast and bounds around the largest burst."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    y = [float("nan") if v is None else v for v in report.actual]
    trail = 30
    jumps = [(y[i] - sum(y[i - trail:i]) / trail, i) for i in range(trail, len(y))]
    jumps = [(jump, i) for jump, i in jumps if not math.isnan(jump)]  # not next to a missing window
    centre = max(jumps)[1] if jumps else len(y) // 2
    lo, hi = max(0, centre - span // 2), min(len(y), centre + span // 2)
    xs = list(range(lo, hi))
    minutes = [(x - centre) * report.step_ms / 60_000 for x in xs]
    fig, ax = plt.subplots(figsize=(10, 4))
    ax.plot(minutes, [y[x] for x in xs], color="black", lw=1.2, label="actual")
    f = report.selector_h[horizon]
    ax.plot(minutes, [v if (v := f[x]) is not None else float("nan") for x in xs], color="tab:blue", lw=1,
            label=f"selector, {horizon} windows ahead")
    ax.fill_between(minutes, [report.lower_h[horizon][x] or 0 for x in xs],
                    [report.upper_h[horizon][x] or 0 for x in xs], color="tab:blue", alpha=0.2, label="90% bounds")
    ax.set_xlabel("minutes from the largest burst")
    ax.set_ylabel("requests/s")
    ax.set_title(f"{report.name}: forecast {horizon} windows ahead ({report.step_ms // 1000} s windows)")
    ax.legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
