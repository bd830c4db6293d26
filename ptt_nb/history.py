"""Metric history: one growable numpy column pair (step, value) per key and split.

Appends are O(1) amortised and windows are zero-copy views, so rules can read the last N points without
copying the whole run. Memory is bounded: past ``cap`` points the oldest half of a series is min/max
decimated (extremes survive, which is what a spike or NaN check needs).
"""

from __future__ import annotations

import numpy as np

from .decimate import minmax_decimate

DEFAULT_CAP = 262_144


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
        self.series: dict[tuple[str, str], Series] = {}
        self.latest: dict[str, float] = {}
        self.latest_eval: dict[str, float] = {}
        self.summary: dict[str, float] = {}
        self.last_step = 0

    def add(self, step: int, split: str, values: dict[str, float]) -> None:
        if split == "summary":
            self.summary.update(values)
            return
        series = self.series
        for key, value in values.items():
            s = series.get((split, key))
            if s is None:
                s = series[(split, key)] = Series(self.cap)
            s.append(step, value)
        (self.latest if split == "train" else self.latest_eval).update(values)
        if step > self.last_step:
            self.last_step = step

    def get(self, key: str, split: str = "train") -> Series | None:
        return self.series.get((split, key))

    def keys(self, split: str = "train") -> list[str]:
        return [k for (s, k) in self.series if s == split]

    def __contains__(self, key: str) -> bool:
        return ("train", key) in self.series
