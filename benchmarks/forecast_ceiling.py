"""How much better than the last value can any linear forecast be, 6 windows ahead?

    python benchmarks/forecast_ceiling.py ../shared/traces/*.csv.gz

A ceiling, not a forecaster: for each trace (windows as `surgegate
eval-forecast` makes them, collection gaps left out) it fits by least squares,
in hindsight on the whole trace, the value 6 windows ahead on the last `p`
values (and, where the trace spans days, on the hour of day and on the same
change yesterday), and prints how far below the last value's mean absolute
error that fit gets. An online forecaster sees only the past and cannot fit
the test windows, so it does no better than this; where the ceiling is under
20%, a 20% gain over the last value is out of reach of linear models on that
trace. The best single smoother in hindsight (an EWMA with its alpha chosen on
the trace) is printed beside it.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from surgegate.traces import missing_windows, read_trace, to_windows

H = 6
DAY_MS = 86_400_000


def series(path: Path) -> tuple[np.ndarray, int]:
    bins = read_trace(path)
    step_ms = max(10_000, int(round(bins[0].length_s * 1000)))
    rate, _ = to_windows(bins, step_ms)
    y = np.array(rate, dtype=float)
    y[np.array(missing_windows(bins, step_ms))] = np.nan
    return y, step_ms


def ceiling(y: np.ndarray, step_ms: int, lags: int) -> float:
    """Gain over the last value of the least-squares fit on ``lags`` lags (and the day's features)."""
    day = DAY_MS // step_ms
    daily = len(y) > 2 * day
    rows, targets, naive = [], [], []
    for i in range(max(lags, day + 1 if daily else 0), len(y) - H):
        x = list(y[i - lags + 1:i + 1])
        if daily:
            hour = np.zeros(24)
            hour[int((i % day) * 24 // day)] = 1.0
            x += [y[i + H - day] - y[i - day], *hour]
        x.append(1.0)
        if np.isnan(x).any() or np.isnan(y[i + H]):
            continue
        rows.append(x)
        targets.append(y[i + H])
        naive.append(y[i])
    a, b, n = np.array(rows), np.array(targets), np.array(naive)
    w, *_ = np.linalg.lstsq(a, b, rcond=None)
    return 1.0 - np.abs(b - a @ w).mean() / np.abs(b - n).mean()


def best_ewma(y: np.ndarray) -> tuple[float, float]:
    """The best EWMA's alpha and its gain over the last value, both chosen on the whole trace."""
    best = (0.0, -np.inf)
    for alpha in (0.02, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 0.7):
        level, errs, naive = None, [], []
        for i in range(len(y) - H):
            if np.isnan(y[i]):
                continue
            level = y[i] if level is None else level + alpha * (y[i] - level)
            if i >= 30 and not np.isnan(y[i + H]):
                errs.append(abs(y[i + H] - level))
                naive.append(abs(y[i + H] - y[i]))
        gain = 1.0 - np.mean(errs) / np.mean(naive)
        best = max(best, (alpha, gain), key=lambda ag: ag[1])
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("traces", nargs="+")
    args = ap.parse_args()
    print(f"| trace | in-hindsight least squares, 6 / 12 / 24 lags | best EWMA in hindsight (h={H}) |")
    print("|---|---|---|")
    for trace in args.traces:
        y, step_ms = series(Path(trace))
        gains = [ceiling(y, step_ms, p) for p in (6, 12, 24)]
        alpha, gain = best_ewma(y)
        name = Path(trace).name.split(".")[0]
        print(f"| {name} | " + " / ".join(f"{100 * g:.1f}%" for g in gains)
              + f" | {100 * gain:.1f}% (alpha {alpha:g}) |", flush=True)


if __name__ == "__main__":
    main()
