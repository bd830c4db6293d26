"""``baseline_band:<key>``: this metric, at this step, is far outside what the baseline run did at the same point.

One rule per compared metric (``BAND_KEYS`` the baseline has), built by ``baseline_rules`` when a run is given
a baseline (``DiagnosticsCallback(baseline=...)``, ``ptt-nb report --baseline``); none otherwise.

Band and thresholds ([F]: chosen, then checked on real tiny TRL runs, tests/test_baseline.py). The band at the
aligned step is the 10th..90th percentile of the baseline's 11 neighbouring log points (``monitor/_baseline``).
A value is far outside when it lies more than ``K`` band widths beyond the band's edge, the width floored at
``FLOOR_REL`` of the band's median (plus ``FLOOR_ABS``): a flat baseline (DPO's loss at exactly ln 2 for the
first steps, a width of 0) would otherwise call any change "infinitely far". K = 2 because two healthy runs of
one config with different seeds differ by their own noise and a little drift (a twin at seed 1 stays within
about one band width of seed 0 on every DPO key); a run that is really off its baseline's course (a learning
rate 100x too high or zero) is tens of widths away. It must hold for ``for_logs`` = 3 consecutive logs so that
one noisy point (4-pair batches) cannot open an episode, and it ignores the first ``WARMUP`` logged points
(``WARMUP`` x logging_steps steps), where both runs sit near their shared initial values. Medium severity: a
baseline says "different", not "broken"; the loss gets high.
"""

from __future__ import annotations

import math
from typing import Any

from ptt_nb.events import Alert
from ptt_nb.monitor._baseline import Baseline, load_baseline
from ptt_nb.rules._catalog_common import _g, log_interval
from ptt_nb.rules._engine import Context, Engine, Finding, Rule

K = 2.0
FLOOR_REL = 0.02
FLOOR_ABS = 1e-6
WARMUP = 3

# The metrics worth comparing (the loss and the quantities that say whether learning happens); others (lr,
# epoch, token counts, runtimes) differ by design between a run and its baseline.
BAND_KEYS = (
    "loss", "grad_norm", "rewards/margins", "rewards/accuracies", "rewards/chosen", "logps/chosen", "reward",
    "reward_std", "kl", "entropy", "objective/kl", "objective/entropy", "completions/mean_length",
    "mean_token_accuracy", "eval_loss",
)


class BaselineBand(Rule):
    """One metric against the baseline's rolling band at the aligned step (see the module docstring)."""

    severity = "medium"
    for_logs = 3
    warmup_steps = WARMUP
    action = ("Compare the two runs' configs and data (diff the run headers); if the baseline is the run to "
              "match, look for what changed: learning rate, batch size, dataset, seed-independent settings.")
    reference = "Baseline comparison (W&B baseline runs; trackio#168): a known-good run's band, ptt_nb [F]"

    def __init__(self, baseline: Baseline, key: str) -> None:
        self.baseline = baseline
        self.key = key
        self.id = f"baseline_band:{key}"
        self.title = f"{key} far outside the baseline's band"
        self.keys = (key, "num_tokens") if baseline.align_by == "tokens?" else (key,)
        self.splits = ("eval",) if key.startswith("eval_") else ("train",)
        if key == "loss" or key == "eval_loss":
            self.severity = "high"
        self.panels = ()

    def on_start(self, ctx: Context) -> Finding | None:
        self.warmup_steps = WARMUP * log_interval(ctx)  # WARMUP logs: 3 steps at logging_steps=1, 150 at 50
        return None

    def check(self, ctx: Context) -> Finding | None:
        values = ctx.values
        baseline = self.baseline
        if baseline.align_by == "tokens?" and "num_tokens" in values:
            baseline.align_tokens(ctx.step, values["num_tokens"])
        value = values.get(self.key)
        if value is None or not math.isfinite(value):  # non-finite values are nonfinite_values' job
            return None
        band = baseline.band_at(self.key, ctx.split, ctx.step)
        if band is None:
            return None
        lo, mid, hi, at = band
        if not (math.isfinite(lo) and math.isfinite(hi)):
            return None
        width = max(hi - lo, FLOOR_REL * abs(mid) + FLOOR_ABS)
        if value > hi + K * width:
            distance = (value - hi) / width
        elif value < lo - K * width:
            distance = (lo - value) / width
        else:
            return None
        side = "above" if value > hi else "below"
        return Finding(
            f"{self.key} = {_g(value)} at step {ctx.step} is {_g(distance)} band widths {side} baseline "
            f"{baseline.run_id}'s band [{_g(lo)}, {_g(hi)}] (median {_g(mid)}) at its step {int(at)} "
            f"(aligned by {baseline.align_by}).",
            evidence={"value": value, "baseline_q10": lo, "baseline_median": mid, "baseline_q90": hi,
                      "baseline_step": at, "band_widths_away": distance},
        )


def baseline_rules(baseline: Baseline) -> list[Rule]:
    """One ``BaselineBand`` per ``BAND_KEYS`` entry the baseline logged."""
    have = {k for (k, split) in baseline.series if split in ("train", "eval")}
    out: list[Rule] = []
    for key in BAND_KEYS:
        split = "eval" if key.startswith("eval_") else "train"
        if key in have and (key, split) in baseline.series:
            out.append(BaselineBand(baseline, key))
    return out


def compare_alerts(monitor: Any, baseline: Baseline) -> list[Alert]:
    """The band rules run over a recorded run (``ptt-nb report --baseline``, ``%ptt compare``): the run's logged
    points of the compared keys in step order, through an ``Engine`` of these rules alone (the live path's
    episodes, persistence and warm-up)."""
    rules = baseline_rules(baseline)
    run = monitor.run
    ctx = Context(history=monitor.history, algorithm=run.algorithm if run else "generic",
                  config=dict(run.config) if run else {}, max_steps=monitor.max_steps)
    engine = Engine(rules, ctx)
    out = engine.start()
    points: dict[tuple[int, int], dict[str, float]] = {}
    wanted = {r.key for r in rules} | {"num_tokens"}
    for (split, key), series in monitor.history.series.items():
        if key not in wanted or split not in ("train", "eval"):
            continue
        steps, values = series.arrays()
        order = 0 if split == "train" else 1
        for step, value in zip(steps.tolist(), values.tolist(), strict=True):
            points.setdefault((step, order), {})[key] = value
    for (step, order), values in sorted(points.items()):
        out.extend(engine.evaluate(step, "train" if order == 0 else "eval", values))
    return out


def attach_baseline(monitor: Any, path: Any, *, evaluate: bool = True) -> Baseline:
    """Load ``path`` as ``monitor``'s baseline (drawn by the report and the dashboard); with ``evaluate`` its
    band alerts join the run's alerts."""
    run = monitor.run
    baseline = load_baseline(path, dict(run.config) if run else {}, run.world_size if run else 1)
    monitor.baseline = baseline
    if evaluate:
        for alert in compare_alerts(monitor, baseline):
            monitor.add_alert(alert)
    return baseline
