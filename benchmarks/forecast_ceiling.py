"""How much better than the last value can a linear forecast be, 6 windows ahead?

    python benchmarks/forecast_ceiling.py ../shared/traces/*.csv.gz

A ceiling, not a forecaster: for each trace (windows as `surgegate
eval-forecast` makes them, collection gaps left out) it fits by least absolute
error, in hindsight on the whole trace, the value 6 windows ahead on the last
`p` values (and, where the trace spans days, on the hour of day and on the same
change yesterday), and prints how far below the last value's mean absolute
error that fit gets. An online linear forecaster sees only the past and cannot
fit the windows it is scored on, so it is not expected to do better; where the
ceiling is under 20%, a 20% gain over the last value is out of reach of linear
models on that trace. Beside it: the same regression learned online, as a
forecaster would have to (recursive least squares, the exact ridge fit on the
past at every window), and the best single smoother in hindsight (an EWMA with
its alpha chosen on the trace).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from surgegate.forecast.evaluation import trace_series

H = 6
DAY_MS = 86_400_000


def series(path: Path) -> tuple[np.ndarray, int]:
    """The windows `eval-forecast` scores, with collection gaps as NaN."""
    values, step_ms = trace_series(path)
    return np.array([np.nan if v is None else v for v in values], dtype=float), step_ms


def features(y: np.ndarray, i: int, lags: int, day: int | None) -> np.ndarray | None:
    """The regressors at window ``i``: the last ``lags`` values, and where the trace spans days
    the hour of day and yesterday's change over the next 6 windows; None where data is missing."""
    if i < lags - 1 or (day is not None and i < day):
        return None
    x = list(y[i - lags + 1:i + 1])
    if day is not None:
        hour = np.zeros(24)
        hour[int((i % day) * 24 // day)] = 1.0
        x += [y[i + H - day] - y[i - day], *hour]
    x.append(1.0)
    out = np.array(x)
    return None if np.isnan(out).any() else out


def spans_days(y: np.ndarray, step_ms: int) -> int | None:
    day = DAY_MS // step_ms
    return day if len(y) > 2 * day else None


def ceiling(y: np.ndarray, step_ms: int, lags: int) -> float:
    """Gain over the last value of the least-absolute-error fit in hindsight."""
    day = spans_days(y, step_ms)
    rows, targets, naive = [], [], []
    for i in range(len(y) - H):
        x = features(y, i, lags, day)
        if x is None or np.isnan(y[i + H]):
            continue
        rows.append(x)
        targets.append(y[i + H])
        naive.append(y[i])
    a, b, n = np.array(rows), np.array(targets), np.array(naive)
    w, *_ = np.linalg.lstsq(a, b, rcond=None)
    # least absolute error (the score is MAE), by iteratively reweighted least squares
    floor = 1e-6 * max(1.0, float(np.abs(b).mean()))
    for _ in range(50):
        root = 1.0 / np.sqrt(np.maximum(np.abs(b - a @ w), floor))
        w, *_ = np.linalg.lstsq(a * root[:, None], b * root, rcond=None)
    return 1.0 - np.abs(b - a @ w).mean() / np.abs(b - n).mean()


def online(y: np.ndarray, step_ms: int, lags: int, ridge: float = 1.0) -> float:
    """Gain over the last value of the same regression learned online (recursive least
    squares: at each window, the exact ridge fit on every pair whose target has arrived)."""
    day = spans_days(y, step_ms)
    z = y / (float(np.nanmedian(y[:30])) or 1.0)  # scaled at warm-up, so the ridge is scale-free
    dim = len(features(np.ones(len(z)), len(z) - H - 1, lags, day))
    w = np.zeros(dim)
    w[lags - 1] = 1.0  # start as the last value
    p = np.eye(dim) / ridge
    errs, naive = [], []
    for i in range(len(z) - H):
        x = features(z, i - H, lags, day) if i >= H else None  # the pair whose target (window i) just arrived
        if x is not None and not np.isnan(z[i]):
            px = p @ x
            k = px / (1.0 + x @ px)
            w += k * (z[i] - x @ w)
            p -= np.outer(k, px)
        x = features(z, i, lags, day)
        if i >= 30 and x is not None and not np.isnan(z[i + H]):
            errs.append(abs(z[i + H] - x @ w))
            naive.append(abs(z[i + H] - z[i]))
    return 1.0 - np.mean(errs) / np.mean(naive)


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
    print(f"| trace | least absolute error fit in hindsight, 6 / 12 / 24 lags | the same lags learned online "
          f"(recursive least squares) | best EWMA in hindsight (h={H}) |")
    print("|---|---|---|---|")
    for trace in args.traces:
        y, step_ms = series(Path(trace))
        hindsight = [ceiling(y, step_ms, p) for p in (6, 12, 24)]
        learned = [online(y, step_ms, p) for p in (6, 12, 24)]
        alpha, gain = best_ewma(y)
        name = Path(trace).name.split(".")[0]
        print(f"| {name} | " + " / ".join(f"{100 * g:.1f}%" for g in hindsight) + " | "
              + " / ".join(f"{100 * g:.1f}%" for g in learned) + f" | {100 * gain:.1f}% (alpha {alpha:g}) |",
              flush=True)


if __name__ == "__main__":
    main()
