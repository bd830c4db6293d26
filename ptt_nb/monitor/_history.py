"""Metric history: one growable numpy column pair (step, value) per key and split.

Appends are O(1) amortised and windows are zero-copy views, so rules can read the last N points without
copying the whole run. ``MetricHistory.add`` only queues the log point (the per-step budget of the whole
callback is ~20 µs, and two numpy scalar stores per key cost ~6 µs for 25 keys); the queue is moved into
the numpy columns in bulk, one array assignment per key, every 128 points or when anything reads the history.
Memory is bounded: past ``cap`` points the oldest half of a series is min/max decimated (extremes survive,
which is what a spike or NaN check needs).
"""

from __future__ import annotations

import threading
from array import array
from operator import itemgetter

import numpy as np

from ptt_nb.monitor._decimate import minmax_decimate

DEFAULT_CAP = 262_144
_STEP = itemgetter(0)


class Series:
    __slots__ = ("steps", "values", "n", "cap", "compacted")

    def __init__(self, cap: int = DEFAULT_CAP, initial: int = 256) -> None:
        self.steps = np.empty(initial, dtype=np.int64)
        self.values = np.empty(initial, dtype=np.float64)
        self.n = 0
        self.cap = cap
        self.compacted = 0

    def append(self, step: int, value: float) -> None:
        n = self.n
        if n == self.values.shape[0]:
            self._grow()
            n = self.n
        self.steps[n] = step
        self.values[n] = value
        self.n = n + 1

    def extend(self, steps: np.ndarray, values: np.ndarray) -> None:
        """Append many points at once (one slice assignment per column and chunk)."""
        m = len(values)
        n = self.n
        if n + m <= self.values.shape[0]:  # the common case: room left
            self.steps[n:n + m] = steps
            self.values[n:n + m] = values
            self.n = n + m
            return
        off = 0
        while off < m:
            if self.n == self.values.shape[0]:
                self._grow()
            n = self.n
            k = min(self.values.shape[0] - n, m - off)
            self.steps[n:n + k] = steps[off:off + k]
            self.values[n:n + k] = values[off:off + k]
            self.n = n + k
            off += k

    def _grow(self) -> None:
        size = self.values.shape[0]
        if size >= self.cap:
            half = self.n // 2
            steps, values = minmax_decimate(self.steps[:half], self.values[:half], max(2, half // 4))
            keep = self.n - half
            k = steps.shape[0]
            self.steps[:k] = steps
            self.values[:k] = values
            self.steps[k:k + keep] = self.steps[half:self.n]
            self.values[k:k + keep] = self.values[half:self.n]
            self.n = k + keep
            self.compacted += 1
            return
        new = min(size * 2, self.cap)
        self.steps = np.concatenate([self.steps, np.empty(new - size, dtype=np.int64)])
        self.values = np.concatenate([self.values, np.empty(new - size, dtype=np.float64)])

    def window(self, n: int) -> np.ndarray:
        """The last ``n`` values (a view)."""
        return self.values[max(0, self.n - n):self.n]

    def step_window(self, n: int) -> np.ndarray:
        return self.steps[max(0, self.n - n):self.n]

    def last(self) -> float:
        return float(self.values[self.n - 1]) if self.n else float("nan")

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        return self.steps[:self.n], self.values[:self.n]

    def __len__(self) -> int:
        return self.n


class MetricHistory:
    """All series of one run, keyed by (split, key). ``latest`` holds the newest value per train key."""

    def __init__(self, cap: int = DEFAULT_CAP) -> None:
        self.cap = cap
        self._series: dict[tuple[str, str], Series] = {}
        self._pending: list[tuple[int, str, dict[str, float], tuple[str, ...]]] = []
        # the queued values as C doubles, point after point in each dict's order: read while the floats are
        # still in the CPU cache (TRL made them a moment ago), so a flush moves memory instead of chasing
        # 128 x n_keys Python objects that a training step has evicted since
        self._flat = array("d")
        # readers (widget flush thread, magics) and the training thread both flush: one lock, uncontended
        # on the hot path (~0.1 µs), keeps a swap of the queue from dropping a concurrent append
        self._lock = threading.Lock()
        self._latest: dict[str, float] = {}
        self._latest_eval: dict[str, float] = {}
        self.summary: dict[str, float] = {}
        self.last_step = 0

    def add(self, step: int, split: str, values: dict[str, float], keys: tuple[str, ...] | None = None) -> None:
        """Queue one log point (the dict is kept, not copied: callers pass a fresh one per point). ``keys`` is
        ``tuple(values)``; a caller that passes the same tuple object for the same key set saves a comparison
        per point when the queue is moved into the columns."""
        if split == "summary":
            self.summary.update(values)
            return
        with self._lock:
            flat = self._flat
            n = len(flat)
            try:
                flat.extend(values.values())
            except TypeError:  # not a number: the queue stays as it was (extend may have taken a prefix)
                del flat[n:]
                raise TypeError(f"metric values at step {step} must be numbers, got {values!r}") from None
            pending = self._pending
            pending.append((step, split, values, tuple(values) if keys is None else keys))
            full = len(pending) >= 128
        if step > self.last_step:
            self.last_step = step
        if full:
            self.flush()

    @property
    def latest(self) -> dict[str, float]:
        """Newest value of every train key (kept up to date when the queue is moved into the columns)."""
        self.flush()
        return self._latest

    @property
    def latest_eval(self) -> dict[str, float]:
        self.flush()
        return self._latest_eval

    def flush(self) -> None:
        """Move queued points into the columns: a run of points with the same keys becomes one 2-D array
        (values read in one C pass) whose columns are appended in bulk."""
        with self._lock:
            self._flush_locked()

    def _flush_locked(self) -> None:
        pending = self._pending
        if not pending:
            return
        flat = np.frombuffer(self._flat, dtype=np.float64)
        self._pending = []
        self._flat = array("d")
        series = self._series
        i, total, offset = 0, len(pending), 0
        while i < total:
            step0, split, first, keys = pending[i]
            j = i + 1
            while j < total and pending[j][1] == split and (pending[j][3] is keys or pending[j][3] == keys):
                j += 1
            (self._latest if split == "train" else self._latest_eval).update(pending[j - 1][2])
            cols = []
            for key in keys:
                s = series.get((split, key))
                if s is None:
                    s = series[(split, key)] = Series(self.cap)
                cols.append(s)
            size = (j - i) * len(keys)
            if j - i == 1:
                for s, key in zip(cols, keys, strict=True):
                    s.append(step0, first[key])
            else:
                steps = np.fromiter(map(_STEP, pending[i:j]), dtype=np.int64, count=j - i)
                rows = flat[offset:offset + size].reshape(j - i, len(keys))  # same keys, same order per row
                for c, s in enumerate(cols):
                    s.extend(steps, rows[:, c])
            offset += size
            i = j

    @property
    def series(self) -> dict[tuple[str, str], Series]:
        self.flush()
        return self._series

    def get(self, key: str, split: str = "train") -> Series | None:
        return self.series.get((split, key))

    def keys(self, split: str = "train") -> list[str]:
        with self._lock:
            self._flush_locked()
            return [k for (s, k) in self._series if s == split]

    def __contains__(self, key: str) -> bool:
        return ("train", key) in self.series
