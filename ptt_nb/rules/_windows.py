"""Incremental window statistics for rules: O(1) work per log point, plain Python floats.

A rule sees one log point at a time and must not re-scan history (the whole callback has a ~20 µs budget per
step). These classes keep running sums over a ring of the last ``n`` values; the sums are recomputed exactly
once per wrap of the ring, so floating-point drift never accumulates. Non-finite values must not be pushed
(``finite(x)`` is the cheap guard): one NaN would poison a running sum for good.
"""

from __future__ import annotations

from bisect import bisect_left, insort
from operator import mul


def finite(x: float) -> bool:
    """True for a finite float (NaN and ±inf give NaN under subtraction)."""
    return x - x == 0.0


class Window:
    """Mean of the last ``n`` values."""

    __slots__ = ("n", "buf", "i", "count", "total")

    def __init__(self, n: int) -> None:
        self.n = n
        self.buf = [0.0] * n
        self.i = 0
        self.count = 0
        self.total = 0.0

    def push(self, x: float) -> None:
        i = self.i
        buf = self.buf
        n = self.n
        if self.count == n:
            self.total += x - buf[i]
        else:
            self.count += 1
            self.total += x
        buf[i] = x
        i += 1
        if i == n:
            self.i = 0
            self.total = sum(buf)
        else:
            self.i = i

    @property
    def full(self) -> bool:
        return self.count == self.n

    @property
    def mean(self) -> float:
        return self.total / self.count if self.count else 0.0

    def exact_mean(self) -> float:
        """The mean summed afresh from the buffer, free of the running total's rounding: for small windows whose
        mean a threshold can meet exactly (five 1.0s must read 1.0)."""
        if self.count == self.n:
            return sum(self.buf) * (1.0 / self.n)
        return sum(self.buf[:self.count]) / self.count if self.count else 0.0

    def ordered(self) -> list[float]:
        """The window, oldest first (O(n): for rare exact computations only)."""
        if self.count < self.n:
            return self.buf[:self.count]
        return self.buf[self.i:] + self.buf[:self.i]


class Trend(Window):
    """Mean, OLS slope (per log point) and the slope's t statistic over the last ``n`` values."""

    __slots__ = ("sxy", "syy")

    def __init__(self, n: int) -> None:
        super().__init__(n)
        self.sxy = 0.0  # sum of position * value, positions 0 (oldest) .. count-1
        self.syy = 0.0  # sum of squared values

    def push(self, x: float) -> None:
        i = self.i
        buf = self.buf
        n = self.n
        if self.count == n:
            old = buf[i]
            total = self.total - old + x
            # shifting every position down by one subtracts the new total; the newcomer sits at n-1
            self.sxy += n * x - total
            self.syy += x * x - old * old
            self.total = total
        else:
            self.sxy += self.count * x
            self.syy += x * x
            self.count += 1
            self.total += x
        buf[i] = x
        i += 1
        if i == n:
            self.i = 0
            self.total = sum(buf)
            self.sxy = sum(map(mul, range(n), buf))
            self.syy = sum(map(mul, buf, buf))
        else:
            self.i = i

    @property
    def slope(self) -> float:
        c = self.count
        if c < 2:
            return 0.0
        sx = c * (c - 1) / 2.0
        sxx = (c - 1) * c * (2 * c - 1) / 6.0
        return (c * self.sxy - sx * self.total) / (c * sxx - sx * sx)

    @property
    def tstat(self) -> float:
        """slope / its standard error: |t| > 2 is a trend, not noise (0 for fewer than 4 points)."""
        c = self.count
        if c < 4:
            return 0.0
        b = self.slope
        mean = self.total / c
        sxx_c = c * (c * c - 1) / 12.0  # sum of (x - mean x)^2 for x = 0..c-1
        sse = self.syy - c * mean * mean - b * b * sxx_c
        scale = self.syy + 1e-300
        if sse <= 1e-12 * scale:
            return 0.0 if b == 0 else (1e12 if b > 0 else -1e12)
        return b / (sse / (c - 2) / sxx_c) ** 0.5


class PairWindow:
    """Pearson correlation of two series over their last ``n`` paired values."""

    __slots__ = ("n", "xs", "ys", "i", "count", "sx", "sy", "sxx", "syy", "sxy")

    def __init__(self, n: int) -> None:
        self.n = n
        self.xs = [0.0] * n
        self.ys = [0.0] * n
        self.i = 0
        self.count = 0
        self.sx = self.sy = self.sxx = self.syy = self.sxy = 0.0

    def push(self, x: float, y: float) -> None:
        i = self.i
        if self.count == self.n:
            ox = self.xs[i]
            oy = self.ys[i]
            self.sx += x - ox
            self.sy += y - oy
            self.sxx += x * x - ox * ox
            self.syy += y * y - oy * oy
            self.sxy += x * y - ox * oy
        else:
            self.count += 1
            self.sx += x
            self.sy += y
            self.sxx += x * x
            self.syy += y * y
            self.sxy += x * y
        self.xs[i] = x
        self.ys[i] = y
        i += 1
        if i == self.n:
            i = 0
            xs, ys = self.xs, self.ys
            self.sx, self.sy = sum(xs), sum(ys)
            self.sxx = sum(map(mul, xs, xs))
            self.syy = sum(map(mul, ys, ys))
            self.sxy = sum(map(mul, xs, ys))
        self.i = i

    @property
    def full(self) -> bool:
        return self.count == self.n

    @property
    def corr(self) -> float:
        c = self.count
        if c < 3:
            return 0.0
        vx = c * self.sxx - self.sx * self.sx
        vy = c * self.syy - self.sy * self.sy
        if vx <= 1e-12 * (1.0 + self.sxx * c) or vy <= 1e-12 * (1.0 + self.syy * c):
            return 0.0  # a (numerically) constant series correlates with nothing
        return (c * self.sxy - self.sx * self.sy) / (vx * vy) ** 0.5


class SortedWindow:
    """The last ``n`` values kept sorted as well (bisect in C): exact median in O(1), MAD on demand."""

    __slots__ = ("n", "ring", "sorted", "i")

    def __init__(self, n: int) -> None:
        self.n = n
        self.ring: list[float] = []
        self.sorted: list[float] = []
        self.i = 0

    def push(self, x: float) -> None:
        ring = self.ring
        s = self.sorted
        if len(ring) == self.n:
            old = ring[self.i]
            del s[bisect_left(s, old)]
            ring[self.i] = x
            self.i = (self.i + 1) % self.n
        else:
            ring.append(x)
        insort(s, x)

    def __len__(self) -> int:
        return len(self.ring)

    @property
    def median(self) -> float:
        s = self.sorted
        c = len(s)
        if not c:
            return 0.0
        h = c // 2
        return s[h] if c % 2 else 0.5 * (s[h - 1] + s[h])

    def mad(self) -> float:
        """Median absolute deviation from the median (O(n log n): call it only for a candidate outlier)."""
        med = self.median
        devs = sorted(abs(v - med) for v in self.sorted)
        c = len(devs)
        if not c:
            return 0.0
        h = c // 2
        return devs[h] if c % 2 else 0.5 * (devs[h - 1] + devs[h])


class Baseline:
    """B(k): the median of the first ``k`` values pushed (after a rule's warm-up)."""

    __slots__ = ("k", "vals", "value")

    def __init__(self, k: int = 3) -> None:
        self.k = k
        self.vals: list[float] = []
        self.value: float | None = None

    def push(self, x: float) -> None:
        if self.value is None:
            self.vals.append(x)
            if len(self.vals) == self.k:
                self.value = sorted(self.vals)[self.k // 2]
