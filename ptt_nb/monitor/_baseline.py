"""A baseline run: loaded once (``ptt_nb.load_run``), aligned to the current run's steps, with rolling bands.

Alignment. Two runs with equal samples per optimizer step (``per_device_train_batch_size`` x
``gradient_accumulation_steps`` x world size, from the run config) compare step by step. When those differ,
step k of the baseline is put where the current run has seen as many samples (x = k * s_base / s_cur); when
the config cannot tell but both runs log ``num_tokens``, by tokens seen instead (the ratio of the two runs'
tokens per step, known once the current run has logged it). What can't be told is said, never guessed:
``Baseline.note``.

Band. Around each baseline log point: the 10th and 90th percentiles of the ``2 * HALF_WINDOW + 1`` neighbouring
values (a rolling band: it follows the baseline's trend and its step-to-step noise). ``rules/_catalog_baseline``
says how far outside it counts as "far".
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np

HALF_WINDOW = 5  # log points each side of a baseline point in its band
QUANTILES = (0.1, 0.5, 0.9)


def samples_per_step(config: dict[str, Any], world_size: int = 1) -> float | None:
    bs = config.get("per_device_train_batch_size")
    if not isinstance(bs, (int, float)) or isinstance(bs, bool) or bs <= 0:
        return None
    ga = config.get("gradient_accumulation_steps") or 1
    return float(bs) * float(ga) * float(world_size or 1)


def _rolling_band(values: np.ndarray, half: int) -> np.ndarray:
    """(n, 3) array: the QUANTILES of each point's neighbourhood (NaNs ignored; all-NaN rows stay NaN)."""
    n = len(values)
    if n == 0:
        return np.empty((0, 3))
    padded = np.concatenate([np.full(half, np.nan), values, np.full(half, np.nan)])
    windows = np.lib.stride_tricks.sliding_window_view(padded, 2 * half + 1)
    finite = np.isfinite(windows).any(axis=1)
    out = np.full((n, 3), np.nan)
    if finite.any():
        out[finite] = np.nanquantile(windows[finite], QUANTILES, axis=1).T
    return out


@dataclass
class BaselineSeries:
    steps: np.ndarray  # the baseline's own steps
    values: np.ndarray
    band: np.ndarray  # (n, 3): q10, q50, q90 around each point


@dataclass
class Baseline:
    """The baseline's train and eval series with their bands; ``scale`` maps its steps onto the current run's
    (x = step * scale), set by ``align``."""

    run_id: str
    path: str
    algorithm: str
    config: dict[str, Any]
    world_size: int
    series: dict[tuple[str, str], BaselineSeries] = field(default_factory=dict)
    scale: float = 1.0
    align_by: str = "step"
    note: str = ""
    _tokens_per_step: float | None = None

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Baseline:
        """Any run ``ptt_nb.load_run`` reads; a missing or unreadable one fails here, naming the path."""
        from ptt_nb.sources._reader import load_run

        try:
            monitor = load_run(path)
        except FileNotFoundError as exc:
            raise FileNotFoundError(f"baseline {os.fspath(path)!r}: {exc}") from exc
        run = monitor.run
        out = cls(run_id=run.run_id if run else os.path.basename(os.fspath(path)), path=os.fspath(path),
                  algorithm=run.algorithm if run else "generic", config=dict(run.config) if run else {},
                  world_size=run.world_size if run else 1)
        for (split, key), s in monitor.history.series.items():
            if split not in ("train", "eval"):
                continue
            steps, values = (np.array(a) for a in s.arrays())
            if len(steps) == 0:
                continue
            out.series[(key, split)] = BaselineSeries(steps, values, _rolling_band(values, HALF_WINDOW))
        tokens = out.series.get(("num_tokens", "train"))
        if tokens is not None and len(tokens.steps) > 1 and tokens.steps[-1] > 0:
            out._tokens_per_step = float(tokens.values[-1]) / float(tokens.steps[-1])
        return out

    def align(self, config: dict[str, Any], world_size: int = 1) -> str:
        """Set ``scale`` from the current run's config; returns the mode ("step", "samples" or "tokens?")."""
        mine, theirs = samples_per_step(config, world_size), samples_per_step(self.config, self.world_size)
        if mine and theirs:
            self.scale = theirs / mine
            self.align_by = "step" if mine == theirs else "samples"
            if self.align_by == "samples":
                self.note = (f"baseline {self.run_id}: {theirs:g} samples/step vs {mine:g} here; aligned by "
                             "samples seen")
        elif self._tokens_per_step is not None:
            self.align_by = "tokens?"  # settled by align_tokens once the current run logs num_tokens
            self.note = f"baseline {self.run_id}: no batch size in a config; aligning by tokens seen"
        else:
            self.align_by = "step"
            self.note = (f"baseline {self.run_id}: batch sizes unknown (no per_device_train_batch_size in a "
                         "config, no num_tokens logged); aligned by step")
        return self.align_by

    def align_tokens(self, step: int, num_tokens: float) -> None:
        """The current run's first ``num_tokens`` log: fixes the tokens-seen alignment."""
        if self.align_by == "tokens?" and step > 0 and num_tokens > 0 and self._tokens_per_step:
            self.scale = self._tokens_per_step / (num_tokens / step)
            self.align_by = "tokens"

    def keys(self, split: str = "train") -> list[str]:
        return [k for (k, s) in self.series if s == split]

    def x(self, key: str, split: str = "train") -> np.ndarray | None:
        """The baseline's steps of ``key`` in the current run's step units."""
        s = self.series.get((key, split))
        return None if s is None else s.steps * self.scale

    def band_at(self, key: str, split: str, step: float) -> tuple[float, float, float, float] | None:
        """(q10, q50, q90, baseline step) at the current run's ``step``: the nearest aligned baseline point,
        or None past either end of the baseline (no extrapolation)."""
        s = self.series.get((key, split))
        if s is None or len(s.steps) == 0:
            return None
        b = step / self.scale
        steps = s.steps
        gap = np.median(np.diff(steps)) if len(steps) > 1 else 1.0
        if b < steps[0] - gap or b > steps[-1] + gap:
            return None
        i = int(np.searchsorted(steps, b))
        if i == len(steps) or (i > 0 and b - steps[i - 1] <= steps[i] - b):
            i -= 1
        lo, mid, hi = s.band[i]
        return float(lo), float(mid), float(hi), float(steps[i])


def load_baseline(path: str | os.PathLike[str], config: dict[str, Any] | None = None,
                  world_size: int = 1) -> Baseline:
    """Load and align in one call (the callback, ``%ptt compare`` and ``ptt-nb report --baseline``)."""
    baseline = Baseline.load(path)
    baseline.align(config or {}, world_size)
    return baseline
