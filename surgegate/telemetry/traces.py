"""Request-arrival traces (``timestamp_s,count[,window_s][,input_tokens,output_tokens]``).

Reading is pure (no Kafka): the replay command, the forecast evaluation and
the simulator share it.
"""

from __future__ import annotations

import csv
import gzip
import io
import math
from pathlib import Path

#: In a trace of rates estimated from many clients (ServeGen's ``rate_rps``), a
#: bin below this share of the trace's median is a collection gap, not quiet:
#: the busy services such a trace sums never drop under a quarter of their
#: median otherwise.
GAP_SHARE = 0.02
_COLUMNS = ("timestamp_s", "count", "window_s", "input_tokens", "output_tokens")


class TraceBin:
    """One row of a trace: start (s from trace start), length (s), requests, tokens,
    and whether its data is missing (a collection gap)."""

    __slots__ = ("start_s", "length_s", "count", "input_tokens", "output_tokens", "missing")

    def __init__(self, start_s: float, length_s: float, count: float, input_tokens: float, output_tokens: float,
                 missing: bool = False):
        self.start_s = start_s
        self.length_s = length_s
        self.count = count
        self.input_tokens = input_tokens
        self.output_tokens = output_tokens
        self.missing = missing


def read_trace(path: Path) -> list[TraceBin]:
    """Read a trace CSV (optionally gzipped); ``ValueError`` naming the line on bad rows.

    In a trace of estimated rates (a ``rate_rps`` column), a near-zero bin
    means the collection failed: it is marked ``missing``. In per-second count
    traces a zero is a real quiet second.
    """
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rt", newline="") as fh:
        text = fh.read()
    reader = csv.DictReader(io.StringIO(text))
    fields = reader.fieldnames or []
    if "timestamp_s" not in fields or "count" not in fields:
        raise ValueError(f"{path}: needs columns timestamp_s,count (has {','.join(fields)})")
    rows = []
    for line, row in enumerate(reader, start=2):
        empty = [name for name in ("timestamp_s", "count") if not row.get(name)]
        if empty:
            raise ValueError(f"{path}:{line}: no value for {', '.join(empty)}")
        try:
            values = (float(row["timestamp_s"]), float(row["count"]), float(row.get("window_s") or 0),
                      float(row.get("input_tokens") or 0), float(row.get("output_tokens") or 0))
        except ValueError as exc:
            raise ValueError(f"{path}:{line}: {exc}") from None
        bad = next((f"{name}={v!r}" for name, v in zip(_COLUMNS, values) if not (math.isfinite(v) and v >= 0)), None)
        if bad:
            raise ValueError(f"{path}:{line}: {bad} must be a finite number >= 0")
        rows.append(values)
    if not rows:
        raise ValueError(f"{path}: no rows")
    steps = [b[0] - a[0] for a, b in zip(rows, rows[1:]) if b[0] > a[0]]
    step = min(steps) if steps else 1.0
    floor = -1.0
    if "rate_rps" in fields:
        floor = GAP_SHARE * sorted(r[1] for r in rows)[len(rows) // 2]
    return [TraceBin(ts, w or step, count, tin, tout, count < floor) for ts, count, w, tin, tout in rows]


def missing_windows(bins: list[TraceBin], step_ms: int) -> list[bool]:
    """Per window (as in :func:`to_windows`), whether a missing bin overlaps it.

    >>> missing_windows([TraceBin(0, 3, 3, 0, 0), TraceBin(3, 3, 0, 0, 0, missing=True)], 2000)
    [False, True, True]
    """
    t0 = bins[0].start_s
    step_s = step_ms / 1000
    n = _window_count(bins, step_ms)
    missing = [False] * n
    for b in bins:
        if b.missing:
            start = b.start_s - t0
            for w in range(int(start // step_s), min(n, int(-(-(start + b.length_s) // step_s)))):
                missing[w] = True
    return missing


def _window_count(bins: list[TraceBin], step_ms: int) -> int:
    end_s = max(b.start_s + b.length_s for b in bins) - bins[0].start_s
    return max(1, int(-(-end_s * 1000 // step_ms)))


def to_windows(bins: list[TraceBin], step_ms: int) -> tuple[list[float], list[float]]:
    """Per-window request rate (rps) and tokens/s, each bin spread evenly over its length.

    >>> rate, _ = to_windows([TraceBin(0, 3, 3, 0, 0), TraceBin(3, 3, 6, 0, 0)], 2000)
    >>> [round(r, 3) for r in rate]
    [1.0, 1.5, 2.0]
    """
    if step_ms <= 0:
        raise ValueError(f"step_ms={step_ms!r} must be > 0")
    t0 = bins[0].start_s
    n = _window_count(bins, step_ms)
    counts = [0.0] * n
    tokens = [0.0] * n
    step_s = step_ms / 1000
    for b in bins:
        start = b.start_s - t0
        stop = start + b.length_s
        total_tokens = b.input_tokens + b.output_tokens
        w = int(start // step_s)
        while w < n and w * step_s < stop:
            lo, hi = max(start, w * step_s), min(stop, (w + 1) * step_s)
            share = (hi - lo) / b.length_s if b.length_s else 1.0
            counts[w] += b.count * share
            tokens[w] += total_tokens * share
            w += 1
    return [c / step_s for c in counts], [x / step_s for x in tokens]
