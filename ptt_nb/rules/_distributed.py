"""Distributed heuristics (catalog section D), run on ``RankStats`` intervals, live on rank 0 and in a replay.

The Monitor hands each interval to the engine as split ``"rank"`` with flat keys ``rank/<metric>/<rank>`` plus
``rank/world_size`` (``rank_values``), so these rules are ordinary engine rules: episodes, mute, replay.

Why compute time and not step time: a synchronous gradient all-reduce makes every rank's step as long as the
slowest one's, so step times are equal by construction (the predecessor's straggler check compared them and
missed a rank made 3x slower). The local forward+backward time is what differs.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ptt_nb.events import RankStats
from ptt_nb.rules._engine import Context, Finding, Rule

RANK_SPLIT = "rank"
WORLD_KEY = "rank/world_size"

FAIL_SLOW_REF = ("MegaScale (Jiang et al., NSDI'24); Falcon (Wu et al. 2024, arXiv:2410.12588: fail-slows last "
                 "seconds to ~10 h and delay jobs 1.34x); Lin et al. 2025, arXiv:2505.05713")
FAIL_SLOW_URL = "https://arxiv.org/abs/2410.12588"


def rank_values(stats: RankStats) -> dict[str, float]:
    """Flatten one interval for the engine: ``rank/<metric>/<r>`` and ``rank/world_size``."""
    out = {WORLD_KEY: float(stats.world_size)}
    for metric, values in stats.per_rank.items():
        for r, v in enumerate(values):
            out[f"rank/{metric}/{r}"] = math.nan if v is None else float(v)
    return out


def per_rank(values: dict[str, float], metric: str) -> np.ndarray | None:
    """One metric across ranks from the flat values; None when this interval does not carry it."""
    world = int(values.get(WORLD_KEY, 0))
    if world < 2 or f"rank/{metric}/0" not in values:
        return None
    return np.array([values.get(f"rank/{metric}/{r}", math.nan) for r in range(world)], dtype=np.float64)


def _memory(values: dict[str, float]) -> tuple[str, np.ndarray] | None:
    """Peak allocated memory where reported (CUDA ``max_memory_allocated``, CPU peak RSS), else current."""
    for name in ("mem_peak_mb", "mem_allocated_mb"):
        arr = per_rank(values, name)
        if arr is not None and np.isfinite(arr).sum() >= 2:
            return name, arr
    return None


class _RankRule(Rule):
    keys = (WORLD_KEY,)
    splits = (RANK_SPLIT,)
    algorithms = None
    panels = ()


class StragglerRank(_RankRule):
    """One rank's local compute is much slower than the others', for several intervals: it gates every step."""

    id = "straggler_rank"
    title = "Straggler rank"
    severity = "medium"
    action = ("Find out why that rank is slow: its host's CPU load, thermals/clocks (nvidia-smi -q -d CLOCK), NIC, a "
              "data shard with longer sequences (compare tokens_per_s), or a process sharing its GPU; cordon the "
              "node if it persists.")
    reference = FAIL_SLOW_REF
    url = FAIL_SLOW_URL
    ratio = 1.2            # [F] catalog D: max/median rank time > 1.2
    min_steps = 5          # [F] catalog D: for >= 5 consecutive steps
    min_intervals = 3      # one or two noisy intervals (a GC pause, a checkpoint, CPU contention) are not
    min_excess_ms = 2.0    # ignore sub-millisecond differences on very fast steps
    persistent_intervals = 10
    calm_intervals = 2     # hysteresis: the episode ends after this many calm intervals
    noise_k = 2.5          # ... and the excess must stand out of the measured jitter (2.5 robust sigmas)
    noise_window = 8

    def __init__(self) -> None:
        self.compute_history: dict[int, list[float]] = {}
        self.streak: dict[int, int] = {}
        self.streak_steps: dict[int, int] = {}
        self.calm = 0
        self.active_rank: int | None = None
        self.last_step: int | None = None
        self.slow_intervals: dict[int, int] = {}
        self.intervals = 0

    def check(self, ctx: Context) -> Finding | None:
        compute = per_rank(ctx.values, "compute_ms")
        if compute is None or np.isfinite(compute).sum() < 2:
            return None
        steps = ctx.step - self.last_step if self.last_step is not None else 1  # first interval: count 1 step
        self.last_step = ctx.step
        self.intervals += 1
        n = len(compute)
        ratios = np.full(n, math.nan)
        refs = np.full(n, math.nan)
        for r in range(n):
            others = np.delete(compute, r)
            others = others[np.isfinite(others)]
            if others.size and math.isfinite(compute[r]):
                refs[r] = float(np.median(others))
                ratios[r] = compute[r] / refs[r] if refs[r] > 0 else math.nan
        if self.intervals == 1:
            return None  # warm-up: the first interval holds compilation, allocator growth, the first batches
        for r in range(n):
            if math.isfinite(compute[r]):
                hist = self.compute_history.setdefault(r, [])
                hist.append(float(compute[r]))
                del hist[:-self.noise_window]
        sigma = {r: self._noise(exclude=r) for r in range(n)}
        slow = {r for r in range(n)
                if ratios[r] > max(self.ratio, 1.0 + self.noise_k * sigma[r])
                and compute[r] - refs[r] >= self.min_excess_ms}
        for r in range(n):
            if r in slow:
                self.streak[r] = self.streak.get(r, 0) + 1
                self.streak_steps[r] = self.streak_steps.get(r, 0) + int(max(steps, 1))
                self.slow_intervals[r] = self.slow_intervals.get(r, 0) + 1
            else:
                self.streak[r] = 0
                self.streak_steps[r] = 0
        candidates = [r for r in slow
                      if self.streak[r] >= self.min_intervals and self.streak_steps[r] >= self.min_steps]
        if not candidates:
            if self.active_rank is None:
                return None
            self.calm += 1
            if self.calm >= self.calm_intervals:
                self.active_rank = None
                self.calm = 0
                return None
            candidates = [self.active_rank]
        else:
            self.calm = 0
        r = max(candidates, key=lambda k: ratios[k] if math.isfinite(ratios[k]) else 0.0)
        self.active_rank = r
        k, k_steps = self.streak.get(r, 0), self.streak_steps.get(r, 0)
        persistent = k >= self.persistent_intervals
        wait = per_rank(ctx.values, "wait_ms")
        others_wait = float(np.nanmedian(np.delete(wait, r))) if wait is not None and n > 1 else math.nan
        kind = (f"persistent ({k} consecutive intervals, {k_steps} steps)" if persistent else
                f"transient so far ({k} consecutive intervals, {k_steps} steps; slow in "
                f"{self.slow_intervals.get(r, 0)} of {self.intervals} intervals)")
        message = (f"Rank {r} is a straggler: its forward+backward compute takes {compute[r]:.1f} ms per step, "
                   f"{ratios[r]:.2f}x the median of the other ranks ({refs[r]:.1f} ms); {kind}. Every other rank "
                   f"waits for it at the gradient all-reduce")
        message += f" (median wait {others_wait:.1f} ms per step)." if math.isfinite(others_wait) else "."
        return Finding(message, severity="high" if persistent else None, evidence={
            "rank": float(r), "ratio": float(ratios[r]), "compute_ms": float(compute[r]),
            "median_other_ms": float(refs[r]), "intervals": float(k), "steps": float(k_steps),
            "persistent": float(persistent), "noise_sigma": float(sigma[r])})

    def _noise(self, exclude: int) -> float:
        """Relative jitter of the other ranks' own compute time over the last intervals (robust: 1.4826 MAD/median).

        On a quiet GPU node it is a few percent and the 1.2 threshold rules; on an oversubscribed CPU host it is
        0.2-0.5, and a 1.5x "straggler" that changes rank every interval is noise, not a fail-slow. The other
        ranks' own series is used (not their ratio to the candidate, which would measure the candidate itself).
        """
        sigmas = []
        for r, hist in self.compute_history.items():
            if r != exclude and len(hist) >= 2:
                med = float(np.median(hist))
                if med > 0:  # from successive differences: a slow drift (growing batches, memory) is not jitter
                    jumps = np.abs(np.diff(np.asarray(hist)))
                    sigmas.append(1.4826 * float(np.median(jumps)) / math.sqrt(2.0) / med)
        return float(np.median(sigmas)) if sigmas else 0.0


class MemoryImbalance(_RankRule):
    """One rank holds much more memory than another: the heaviest one will OOM first."""

    id = "memory_imbalance"
    title = "Memory imbalance across ranks"
    severity = "low"
    action = ("Rebalance what the heaviest rank holds (pipeline stage 0, a colocated vLLM engine, the reference or "
              "reward model, a bigger data shard) or offload it.")
    reference = "BPipe (Kim et al., ICML'23); catalog D memory_imbalance [F threshold]"
    url = None
    ratio = 1.3            # [F] catalog D: max/min across ranks > 1.3
    min_diff_mb = 256.0    # tiny absolute differences are not a risk

    def check(self, ctx: Context) -> Finding | None:
        found = _memory(ctx.values)
        if found is None:
            return None
        name, mem = found
        ok = np.isfinite(mem)
        hi = int(np.nanargmax(mem))
        lo = int(np.nanargmin(np.where(ok, mem, np.inf)))
        if mem[lo] <= 0 or mem[hi] / mem[lo] <= self.ratio or mem[hi] - mem[lo] < self.min_diff_mb:
            return None
        label = {"mem_peak_mb": "peak memory", "mem_allocated_mb": "memory"}[name]
        return Finding(
            f"Rank {hi} uses {mem[hi] / mem[lo]:.2f}x the {label} of rank {lo} ({mem[hi]:.0f} MB vs "
            f"{mem[lo]:.0f} MB): rank {hi} is the first to run out of memory.",
            evidence={"rank_max": float(hi), "rank_min": float(lo), "max_mb": float(mem[hi]),
                      "min_mb": float(mem[lo]), "ratio": float(mem[hi] / mem[lo])})


class MemoryGrowth(_RankRule):
    """A rank's memory keeps growing across intervals; at this rate it hits its limit before training ends."""

    id = "memory_growth_oom"
    title = "Memory growing toward OOM"
    severity = "high"
    action = ("Look for tensors kept across steps on that rank (a list of losses or logits not .detach()ed/"
              ".item()ed, growing caches, a metric buffer), or lower its batch/sequence length; "
              "torch.cuda.memory._record_memory_history shows who allocates.")
    reference = "tool heuristic [F]: OLS slope of per-rank memory over the last intervals vs the device limit"
    url = None
    window = 8             # intervals in the fit
    min_points = 4
    min_r2 = 0.8           # [F] steady growth, not a one-off jump
    min_rising = 0.7       # [F] share of interval-to-interval increases
    min_growth_mb = 64.0   # [F] and at least this much growth over the window
    horizon_steps = 10_000  # when max_steps is unknown: alert if the limit would be hit within this many steps

    def __init__(self) -> None:
        self.points: dict[int, list[tuple[int, float]]] = {}

    def check(self, ctx: Context) -> Finding | None:
        found = _memory(ctx.values)
        limits = per_rank(ctx.values, "mem_limit_mb")
        if found is None:
            return None
        _name, mem = found
        worst: tuple[float, int, float, float, float, float] | None = None
        for r, value in enumerate(mem):
            if not math.isfinite(value):
                continue
            pts = self.points.setdefault(r, [])
            if pts and pts[-1][0] == ctx.step:
                pts[-1] = (ctx.step, float(value))
            else:
                pts.append((ctx.step, float(value)))
            del pts[:-self.window]
            limit = float(limits[r]) if limits is not None and r < len(limits) else math.nan
            if len(pts) < self.min_points or not math.isfinite(limit) or limit <= 0:
                continue
            x = np.array([p[0] for p in pts], dtype=np.float64)
            y = np.array([p[1] for p in pts], dtype=np.float64)
            if np.ptp(x) <= 0:
                continue
            slope, intercept = np.polyfit(x, y, 1)
            resid = y - (slope * x + intercept)
            ss = float(np.sum((y - y.mean()) ** 2))
            r2 = 1.0 - float(np.sum(resid ** 2)) / ss if ss > 0 else 0.0
            rising = float(np.mean(np.diff(y) > 0))
            growth = float(y[-1] - y[0])
            if slope <= 0 or r2 < self.min_r2 or rising < self.min_rising or growth < self.min_growth_mb:
                continue
            oom_step = ctx.step + max(limit - y[-1], 0.0) / slope
            end = ctx.max_steps if ctx.max_steps else ctx.step + self.horizon_steps
            if oom_step > end:
                continue
            if worst is None or oom_step < worst[0]:
                worst = (oom_step, r, float(slope), float(y[-1]), limit, r2)
        if worst is None:
            return None
        oom_step, r, slope, current, limit, r2 = worst
        when = f"before the last step ({ctx.max_steps})" if ctx.max_steps else "within the horizon"
        return Finding(
            f"Rank {r}'s memory grows {slope:.1f} MB per step (R²={r2:.2f} over the last {len(self.points[r])} "
            f"intervals; now {current:.0f} MB of {limit:.0f} MB): at this rate it runs out at about step "
            f"{oom_step:.0f}, {when}.",
            evidence={"rank": float(r), "mb_per_step": slope, "current_mb": current, "limit_mb": limit,
                      "oom_step": float(oom_step), "r2": r2})


class RankDesync(_RankRule):
    """Ranks report different global steps at the same gather: they are not training the same step."""

    id = "rank_desync"
    title = "Ranks at different steps"
    severity = "high"
    action = ("Check that every rank resumed from the same checkpoint and runs the same number of optimizer steps "
              "per epoch (equal dataset shards, drop_last, the same gradient_accumulation_steps and max_steps).")
    reference = "tool invariant: a data-parallel job's ranks share the optimizer step count"
    url = None

    def check(self, ctx: Context) -> Finding | None:
        steps = per_rank(ctx.values, "step")
        if steps is None:
            return None
        ok = steps[np.isfinite(steps)]
        if ok.size < 2 or ok.min() == ok.max():
            return None
        by_step: dict[int, list[int]] = {}
        for r, s in enumerate(steps):
            if math.isfinite(s):
                by_step.setdefault(int(s), []).append(r)
        parts = "; ".join(f"step {s}: rank{'s' if len(rs) > 1 else ''} {_ranges(rs)}"
                          for s, rs in sorted(by_step.items()))
        return Finding(f"Ranks are at different global steps in the same gather ({parts}).",
                       evidence={"min_step": float(ok.min()), "max_step": float(ok.max()),
                                 "spread": float(ok.max() - ok.min())})


def _ranges(ranks: list[int]) -> str:
    """[0, 1, 2, 5] -> '0-2, 5' (readable for large worlds)."""
    out: list[str] = []
    start = prev = ranks[0]
    for r in ranks[1:] + [None]:  # type: ignore[list-item]
        if r is not None and r == prev + 1:
            prev = r
            continue
        out.append(str(start) if start == prev else f"{start}-{prev}")
        if r is not None:
            start = prev = r
    return ", ".join(out)


def distributed_rules() -> list[Rule]:
    """Fresh instances (rules keep per-run state)."""
    return [StragglerRank(), MemoryImbalance(), MemoryGrowth(), RankDesync()]


def describe() -> list[dict[str, Any]]:
    return [{"id": r.id, "title": r.title, "severity": r.severity} for r in distributed_rules()]
