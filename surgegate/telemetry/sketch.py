"""A mergeable latency sketch with bounded relative error (DDSketch-style).

Values are mapped to logarithmic buckets ``(gamma**(i-1), gamma**i]`` with
``gamma = (1 + a) / (1 - a)``; a bucket's representative value is within a
relative error ``a`` of every value in it, so every quantile is too. Merging two
sketches adds their bucket counts, which is exact, commutative and associative:
the two-stage aggregation and the per-second RequestSummary path give the very
same sketch as adding the raw values one by one.

>>> s = LogHistogram()
>>> for v in range(1, 101):
...     s.add(float(v))
>>> abs(s.quantile(0.5) - 50) / 50 <= RELATIVE_ACCURACY
True
>>> s.count, s.max
(100, 100.0)
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

#: Guaranteed relative error of every quantile.
RELATIVE_ACCURACY = 0.01
GAMMA = (1 + RELATIVE_ACCURACY) / (1 - RELATIVE_ACCURACY)
INV_LOG_GAMMA = 1.0 / math.log(GAMMA)
#: Values at or below this (milliseconds) count in the zero bucket.
MIN_VALUE = 1e-3


def bucket_value(index: int) -> float:
    """Representative value of bucket ``index`` (relative error <= a)."""
    return 2.0 * GAMMA**index / (GAMMA + 1.0)


class LogHistogram:
    """Sparse log-bucket histogram of non-negative values.

    ``bins`` maps bucket index to count; ``zeros`` counts values at or below
    :data:`MIN_VALUE`; ``max`` is exact.
    """

    __slots__ = ("bins", "zeros", "max")

    def __init__(self) -> None:
        self.bins: dict[int, int] = {}
        self.zeros = 0
        self.max = 0.0

    @property
    def count(self) -> int:
        """Number of values added."""
        return self.zeros + sum(self.bins.values())

    def add(self, value: float) -> None:
        """Add one non-negative value."""
        if value <= MIN_VALUE:
            self.zeros += 1
        else:
            i = math.ceil(math.log(value) * INV_LOG_GAMMA)
            bins = self.bins
            bins[i] = bins.get(i, 0) + 1
            if value > self.max:
                self.max = value

    def extend(self, values: Iterable[float]) -> None:
        """Add many values."""
        for v in values:
            self.add(v)

    def merge_parts(self, bins: Mapping[int, int], zeros: int, maximum: float) -> None:
        """Merge another sketch given by its parts (as carried on the wire)."""
        own = self.bins
        for i, n in bins.items():
            own[i] = own.get(i, 0) + n
        self.zeros += zeros
        if maximum > self.max:
            self.max = maximum

    def merge(self, other: LogHistogram) -> None:
        """Merge another sketch into this one."""
        self.merge_parts(other.bins, other.zeros, other.max)

    def at_most(self, bounds: Iterable[float]) -> list[int]:
        """How many values are at most each of ``bounds`` (ascending), a value taken at its bucket's
        representative value: exact but for values within the relative accuracy of a bound.

        >>> s = LogHistogram()
        >>> s.extend([0.0, 5.0, 50.0, 500.0])
        >>> s.at_most([1.0, 100.0, 1000.0])
        [1, 3, 4]
        """
        bins = sorted(self.bins.items())
        out, seen, k = [], self.zeros, 0
        for bound in bounds:
            while k < len(bins) and bucket_value(bins[k][0]) <= bound:
                seen += bins[k][1]
                k += 1
            out.append(seen)
        return out

    def total(self) -> float:
        """The sum of the values, each taken at its bucket's representative value (within the relative accuracy).

        >>> s = LogHistogram()
        >>> s.extend([10.0, 20.0, 30.0])
        >>> abs(s.total() - 60.0) <= 60.0 * RELATIVE_ACCURACY
        True
        """
        return sum(n * bucket_value(i) for i, n in self.bins.items())

    def quantile(self, q: float) -> float:
        """The ``q``-quantile (0 <= q <= 1), 0.0 for an empty sketch."""
        if not 0.0 <= q <= 1.0:
            raise ValueError(f"quantile q={q!r} must be within [0, 1]")
        total = self.count
        if total == 0:
            return 0.0
        rank = q * (total - 1)
        seen = self.zeros
        if seen > rank:
            return 0.0
        for i in sorted(self.bins):
            seen += self.bins[i]
            if seen > rank:
                return min(bucket_value(i), self.max)
        return self.max
