"""Cost of one scope's forecast step: learn a window, forecast 30 windows ahead.

    python benchmarks/forecast_cost.py [--scopes 200] [--windows 400]

Prints per scope and window, in microseconds: the update plus forecast
(median, p99), the checkpoint (the forecaster's typed state, encoded as the
forecast agent writes it to its table) and its size, and how many scopes one
core keeps up with at 10 s windows.
"""

from __future__ import annotations

import argparse
import math
import random
import statistics
import time

from surgegate.forecast import state as forecaster_state
from surgegate.forecast.scope import ScopeForecaster

STEP = 10_000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--scopes", type=int, default=200)
    ap.add_argument("--windows", type=int, default=400, help="windows learned per scope (half of them warm-up)")
    args = ap.parse_args()
    rng = random.Random(0)
    scopes = [ScopeForecaster(f"service=s{i}", step_ms=STEP) for i in range(args.scopes)]
    levels = [rng.uniform(5, 5000) for _ in scopes]
    step_us: list[float] = []
    ckpt_us: list[float] = []
    sizes: list[int] = []
    for w in range(args.windows):
        t = w * STEP
        for fc, level in zip(scopes, levels):
            y = max(0.0, rng.gauss(level, math.sqrt(level)))
            start = time.perf_counter()
            fc.observe(t, y, y * 350)
            fc.forecast()
            mid = time.perf_counter()
            if w >= args.windows // 2:
                blob = forecaster_state.encode(fc.state())
                ckpt_us.append((time.perf_counter() - mid) * 1e6)
                sizes.append(len(blob))
                step_us.append((mid - start) * 1e6)
    q = statistics.quantiles(step_us, n=100)
    median = statistics.median(step_us)
    print(f"update + forecast (H=30, rate and tokens/s): median {median:.0f} us, p99 {q[98]:.0f} us "
          f"per scope and window ({len(step_us)} samples)")
    print(f"checkpoint (typed state, MessagePack): median {statistics.median(ckpt_us):.0f} us, "
          f"size median {statistics.median(sizes) / 1024:.1f} KiB")
    every = 6  # the forecast agent's default SURGEGATE_FORECAST_CHECKPOINT_WINDOWS
    total = median + statistics.median(ckpt_us) / every
    print(f"one core keeps up with about {10e6 / total:,.0f} scopes at 10 s windows "
          f"(a checkpoint every {every} windows)")


if __name__ == "__main__":
    main()
