"""Min/max decimation: shrink a series to about ``buckets * 2`` points while keeping every extreme.

A plain stride would hide exactly the spikes and NaNs a user is looking for; min/max buckets keep them
(the approach W&B and trackio use). NaN values are kept as their own points so gaps stay visible.
"""

from __future__ import annotations

import numpy as np


def minmax_decimate(steps: np.ndarray, values: np.ndarray, buckets: int) -> tuple[np.ndarray, np.ndarray]:
    n = values.shape[0]
    if n <= 2 * buckets:
        return steps.copy(), values.copy()
    edges = np.linspace(0, n, buckets + 1).astype(np.int64)
    bad = ~np.isfinite(values)
    filled_hi = np.where(bad, -np.inf, values)
    filled_lo = np.where(bad, np.inf, values)
    starts = edges[:-1]
    lo_idx = np.empty(buckets, dtype=np.int64)
    hi_idx = np.empty(buckets, dtype=np.int64)
    # reduceat gives per-bucket extremes; argmin/argmax positions are recovered with a second pass.
    lo_val = np.minimum.reduceat(filled_lo, starts)
    hi_val = np.maximum.reduceat(filled_hi, starts)
    bucket_of = np.repeat(np.arange(buckets), np.diff(edges))
    is_lo = filled_lo == lo_val[bucket_of]
    is_hi = filled_hi == hi_val[bucket_of]
    first_lo = np.full(buckets, -1, dtype=np.int64)
    first_hi = np.full(buckets, -1, dtype=np.int64)
    idx = np.arange(n)
    # last write wins in fancy assignment, so reverse to keep the first occurrence
    first_lo[bucket_of[is_lo][::-1]] = idx[is_lo][::-1]
    first_hi[bucket_of[is_hi][::-1]] = idx[is_hi][::-1]
    lo_idx[:] = np.where(first_lo < 0, starts, first_lo)
    hi_idx[:] = np.where(first_hi < 0, starts, first_hi)
    keep = np.zeros(n, dtype=bool)
    keep[lo_idx] = True
    keep[hi_idx] = True
    keep |= bad
    return steps[keep], values[keep]


def decimate_range(steps: np.ndarray, values: np.ndarray, x0: float | None, x1: float | None,
                   max_points: int = 2000) -> tuple[np.ndarray, np.ndarray]:
    """Decimate only the part of a series inside [x0, x1] (a zoomed view), with one neighbour each side."""
    if x0 is not None or x1 is not None:
        lo = 0 if x0 is None else max(0, int(np.searchsorted(steps, x0, "left")) - 1)
        hi = steps.shape[0] if x1 is None else min(steps.shape[0], int(np.searchsorted(steps, x1, "right")) + 1)
        steps, values = steps[lo:hi], values[lo:hi]
    return minmax_decimate(steps, values, max(1, max_points // 2))
