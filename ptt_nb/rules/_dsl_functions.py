"""Run-time side of the rule expression language: the function table, number semantics and window functions.

Window functions read zero-copy views of the metric history; one whose window is not yet full raises NotReady
(the whole condition is then "not ready": false, and it breaks a ``for N steps`` streak).
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from ptt_nb.rules._dsl_scan import DslRuntimeError, NotReady
from ptt_nb.rules._engine import Context

MAD_SCALE = 1.4826  # MAD of a normal distribution -> its standard deviation

Value = Any  # float | bool | str at run time
Fn = Callable[[Context], Value]


# -- function table -------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class _FnSpec:
    window: bool  # first argument is a metric, second an integer window
    min_args: int
    max_args: int
    doc: str


FUNCTIONS: dict[str, _FnSpec] = {
    "mean": _FnSpec(True, 2, 2, "mean(x, n): mean of the last n values"),
    "min": _FnSpec(True, 2, 2, "min(x, n): smallest of the last n values"),
    "max": _FnSpec(True, 2, 2, "max(x, n): largest of the last n values"),
    "std": _FnSpec(True, 2, 2, "std(x, n): sample standard deviation (ddof=1) of the last n values"),
    "median": _FnSpec(True, 2, 2, "median(x, n): median of the last n values"),
    "slope": _FnSpec(True, 2, 2, "slope(x, n): OLS slope per step over the last n values"),
    "zscore": _FnSpec(True, 2, 2, "zscore(x, n): robust z of the latest value vs the n before it (median/MAD)"),
    "last": _FnSpec(True, 1, 2, "last(x, k=0): the value k log points before the latest"),
    "delta": _FnSpec(True, 1, 2, "delta(x, n=1): latest minus the value n log points earlier"),
    "pct_change": _FnSpec(True, 1, 2, "pct_change(x, n=1): (latest - earlier) / |earlier|, as a fraction"),
    "count": _FnSpec(True, 1, 2, "count(x): values logged so far; count(x, n): finite values among the last n"),
    "abs": _FnSpec(False, 1, 1, "abs(v)"),
    "log": _FnSpec(False, 1, 1, "log(v): natural log; log(0) = -inf, negative raises"),
    "exp": _FnSpec(False, 1, 1, "exp(v); overflow gives inf"),
    "sqrt": _FnSpec(False, 1, 1, "sqrt(v); negative raises"),
    "isnan": _FnSpec(False, 1, 1, "isnan(v)"),
    "isfinite": _FnSpec(False, 1, 1, "isfinite(v): not NaN and not +-inf"),
}
SPECIAL_CALLS = ("m", "cfg")
NAMES = {"step": "the current global step", "frac": "fraction of training done (step / max_steps; 0 if unknown)",
         "inf": "infinity", "nan": "not a number"}
RESERVED = frozenset({*FUNCTIONS, *SPECIAL_CALLS, *NAMES, "config", "value"})


# -- runtime helpers ------------------------------------------------------------------------------------------------

def _num(v: Value) -> float:
    if type(v) is float:
        return v
    if isinstance(v, (bool, int)):
        return float(v)
    raise DslRuntimeError(f"{v!r} is text; text can only be compared with == or !=")


def _truth(v: Value) -> bool:
    if type(v) is float:
        return v == v and v != 0.0
    return bool(v)


def _div(a: float, b: float) -> float:
    if b == 0.0:
        if a == 0.0 or a != a:
            return math.nan
        return math.copysign(math.inf, a) * math.copysign(1.0, b)
    return a / b


def _mod(a: float, b: float) -> float:
    return math.nan if b == 0.0 else a % b


def _pow(a: float, b: float) -> float:
    try:
        return math.pow(a, b)
    except OverflowError:
        return math.inf if a > 0 or float(b).is_integer() and int(b) % 2 == 0 else -math.inf
    except (ValueError, ZeroDivisionError):
        if a == 0.0:
            return math.inf
        raise DslRuntimeError(f"{a!r} ** {b!r} is not a real number") from None


def _log(v: float) -> float:
    if v > 0 or v != v:
        return math.log(v)
    if v == 0:
        return -math.inf
    raise DslRuntimeError(f"log() of a negative number ({v!r})")


def _sqrt(v: float) -> float:
    if v >= 0 or v != v:
        return math.sqrt(v)
    raise DslRuntimeError(f"sqrt() of a negative number ({v!r})")


def _exp(v: float) -> float:
    try:
        return math.exp(v)
    except OverflowError:
        return math.inf


_SCALAR: dict[str, Callable[[float], Value]] = {
    "abs": abs, "log": _log, "exp": _exp, "sqrt": _sqrt, "isnan": math.isnan, "isfinite": math.isfinite,
}


def _series(ctx: Context, split: str, key: str):
    s = ctx.history.series.get((split, key))
    if s is None or s.n == 0:
        raise NotReady(key)
    return s


def _win(ctx: Context, split: str, key: str, n: int) -> np.ndarray:
    s = _series(ctx, split, key)
    if s.n < n:
        raise NotReady(key)
    return s.values[s.n - n:s.n]


# Small windows (the usual 5-100 points) are faster as Python lists than through numpy's per-call overhead
# (median of 50: ~4 us sorted() vs ~30 us np.median); NaN is handled explicitly since sorted() can't order it.
SMALL = 128


def _median_list(xs: list[float]) -> float:
    xs = sorted(xs)
    n = len(xs)
    h = n // 2
    return xs[h] if n % 2 else (xs[h - 1] + xs[h]) / 2


def _np_median(a: np.ndarray) -> float:
    """np.median without its per-call overhead (partition only), NaN if any NaN (as np.median)."""
    total = float(a.sum())
    if total != total and np.isnan(a).any():
        return math.nan
    n = a.shape[0]
    h = n // 2
    if n % 2:
        return float(np.partition(a, h)[h])
    p = np.partition(a, (h - 1, h))
    return (float(p[h - 1]) + float(p[h])) / 2


def _has_nan(xs: list[float]) -> bool:
    total = sum(xs)  # C-fast; NaN only if a NaN is there (or +inf and -inf both are: then look closer)
    return total != total and any(x != x for x in xs)


def _w_mean(ctx, sp, k, n):
    w = _win(ctx, sp, k, n)
    return sum(w.tolist()) / n if n <= SMALL else float(w.mean())


def _w_min(ctx, sp, k, n):
    return float(_win(ctx, sp, k, n).min())


def _w_max(ctx, sp, k, n):
    return float(_win(ctx, sp, k, n).max())


def _w_std(ctx, sp, k, n):
    w = _win(ctx, sp, k, n)
    if n < 2:
        return 0.0
    if n > SMALL:
        return float(w.std(ddof=1))
    xs = w.tolist()
    m = sum(xs) / n
    return math.sqrt(sum((x - m) * (x - m) for x in xs) / (n - 1))


def _w_median(ctx, sp, k, n):
    w = _win(ctx, sp, k, n)
    if n > SMALL:
        return _np_median(w)
    xs = w.tolist()
    return math.nan if _has_nan(xs) else _median_list(xs)


def _w_slope(ctx, sp, k, n):
    s = _series(ctx, sp, k)
    if s.n < n or n < 2:
        raise NotReady(k)
    if n <= SMALL:
        x0 = int(s.steps[s.n - n])
        xs = [x - x0 for x in s.steps[s.n - n:s.n].tolist()]  # small offsets keep the sums exact
        ys = s.values[s.n - n:s.n].tolist()
        mx, my = sum(xs) / n, sum(ys) / n
        den = sum(map(operator.mul, xs, xs)) - n * mx * mx
        num = sum(map(operator.mul, xs, [y - my for y in ys]))  # centred y: no cancellation for large values
        return num / den if den > 0 else math.nan
    x = s.steps[s.n - n:s.n].astype(np.float64)
    y = s.values[s.n - n:s.n]
    x = x - x.mean()
    den = float(x @ x)
    return float(x @ (y - y.mean())) / den if den > 0 else math.nan


def _w_zscore(ctx, sp, k, n):
    w = _win(ctx, sp, k, n + 1)
    latest = float(w[-1])
    if n > SMALL:
        prev = w[:-1]
        med = _np_median(prev)
        mad = _np_median(np.abs(prev - med))
    else:
        prev = w[:-1].tolist()
        if _has_nan(prev):
            return math.nan
        med = _median_list(prev)
        mad = _median_list([abs(x - med) for x in prev])
    diff = latest - med
    if mad == 0.0:
        return 0.0 if diff == 0.0 else (math.nan if diff != diff else math.copysign(math.inf, diff))
    return diff / (MAD_SCALE * mad)


def _w_last(ctx, sp, k, n):
    w = _win(ctx, sp, k, n + 1)
    return float(w[0])


def _w_delta(ctx, sp, k, n):
    w = _win(ctx, sp, k, n + 1)
    return float(w[-1] - w[0])


def _w_pct_change(ctx, sp, k, n):
    w = _win(ctx, sp, k, n + 1)
    return _div(float(w[-1] - w[0]), abs(float(w[0])))


def _w_count(ctx, sp, k, n):
    s = ctx.history.series.get((sp, k))
    if s is None:
        return 0.0
    if n is None:
        return float(s.n)
    return float(np.isfinite(s.values[max(0, s.n - n):s.n]).sum())


_WINDOW: dict[str, Callable[..., float]] = {
    "mean": _w_mean, "min": _w_min, "max": _w_max, "std": _w_std, "median": _w_median, "slope": _w_slope,
    "zscore": _w_zscore, "last": _w_last, "delta": _w_delta, "pct_change": _w_pct_change, "count": _w_count,
}
_WINDOW_DEFAULT = {"last": 0, "delta": 1, "pct_change": 1, "count": None}


def split_of(key: str) -> str:
    """Where a metric lives in the history: ``eval_*`` keys in the eval split, the rest in train."""
    return "eval" if key.startswith("eval_") else "train"


def _latest(key: str) -> Fn:
    split = split_of(key)

    def get(ctx: Context) -> float:
        s = ctx.history.series.get((split, key))
        if s is None or s.n == 0:
            raise NotReady(key)
        return float(s.values[s.n - 1])

    return get


def _compare(sym: str, a: Value, b: Value) -> bool:
    if isinstance(a, str) or isinstance(b, str):
        if sym == "==":
            return a == b
        if sym == "!=":
            return a != b
        raise DslRuntimeError(f"cannot order text with {sym}: {a!r} {sym} {b!r}")
    a, b = _num(a), _num(b)
    if sym == "<":
        return a < b
    if sym == ">":
        return a > b
    if sym == "<=":
        return a <= b
    if sym == ">=":
        return a >= b
    if sym == "==":
        return a == b
    return a != b
