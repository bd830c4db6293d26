"""SFT and general optimisation: loss and gradient spikes, zero gradients, clipping, learning-rate schedule,
memorisation."""

from __future__ import annotations

import math

from ptt_nb.rules._catalog_common import GRAD_PANELS, LOSS_PANELS, LR_PANELS, _g, _lr, log_interval
from ptt_nb.rules._engine import Context, Finding, Rule
from ptt_nb.rules._nonfinite import NonFiniteValues
from ptt_nb.rules._references import cite
from ptt_nb.rules._windows import Window, finite

# ============================================================================================================
# C. SFT and general optimisation
# ============================================================================================================


class _SpikeDetector:
    """Robust z of one series against the median/MAD of its previous ``n`` points, computed only for candidates.

    A Huber-clipped running mean and mean absolute deviation (O(1), a few float ops) track the level and scale;
    only a point more than 2.5 running scales above the level is a candidate, and only then is the exact median
    and MAD of the ring computed (O(n log n), ~5 µs, on well under 1% of healthy points). A robust z of 6 is
    about 6 sigma while the pre-filter passes from about 2 sigma, so the cheap bound does not hide spikes.
    """

    __slots__ = ("n", "ring", "i", "m", "s", "alpha", "z", "floor", "abs_floor", "min_points")

    def __init__(self, n: int = 50, z: float = 6.0, floor: float = 0.02, min_points: int = 20,
                 abs_floor: float = 1e-12) -> None:
        self.n = n
        self.ring: list[float] = []
        self.i = 0
        self.m = 0.0
        self.s = 0.0
        self.alpha = 2.0 / (n + 1)
        self.z = z
        self.floor = floor
        self.abs_floor = abs_floor
        self.min_points = min_points

    def exact(self) -> tuple[float, float]:
        """(median, scale) of the ring: scale = max(1.4826 MAD, floor * |median|)."""
        vals = sorted(self.ring)
        c = len(vals)
        h = c // 2
        med = vals[h] if c % 2 else 0.5 * (vals[h - 1] + vals[h])
        devs = sorted(abs(v - med) for v in vals)
        mad = devs[h] if c % 2 else 0.5 * (devs[h - 1] + devs[h])
        return med, max(1.4826 * mad, self.floor * abs(med), self.abs_floor)

    def candidate(self, x: float) -> bool:
        return len(self.ring) >= self.min_points and x - self.m > 2.5 * self.s

    def push(self, x: float, check: bool = True) -> tuple[float, float] | None:
        """Returns (z, median) when ``x`` is a spike against the window before it; then pushes ``x``."""
        ring = self.ring
        k = len(ring)
        out = None
        if k >= self.min_points:
            m, s = self.m, self.s
            d = x - m
            if check and d > 2.5 * s:
                med, scale = self.exact()
                z = (x - med) / scale
                if z > self.z:
                    out = (z, med)
            lim = 3.0 * s
            cd = lim if d > lim else (-lim if d < -lim else d)
            a = self.alpha
            self.m = m + a * cd
            self.s = s + a * ((-cd if cd < 0 else cd) - s)
        if k < self.n:
            ring.append(x)
            if k + 1 == self.min_points:
                self.m, scale = self.exact()
                self.s = scale / 1.4826 * 0.8 + 1e-12
        else:
            i = self.i
            ring[i] = x
            i += 1
            self.i = 0 if i == self.n else i
        return out


class LossSpike(Rule):
    """Calibrated: the robust-z scale has a floor of 2% of the window median (DPO's loss sits at exactly ln 2 for
    the first steps, MAD = 0, so any change would be an "infinite z"); a window needs 20 points before it judges.
    The exact median/MAD is computed only when a Huber-clipped running level/scale says the point is 2.5 scales
    high (tested to find exactly the spikes the brute-force computation finds on noisy, trending, heavy-tailed
    and stepped series). A spike still above 1.1x the pre-spike median after 20 logs escalates to high."""

    id = "loss_spike"
    title = "Loss spike"
    severity = "medium"
    keys = ("loss", "eval_loss")
    splits = ("train", "eval")
    algorithms = frozenset({"sft", "dpo", "kto", "orpo", "cpo", "online_dpo", "reward", "generic"})  # not GRPO/RLOO
    action = ("Roll back ≈100 steps and skip the 200–500 batches around the spike (PaLM), lower the LR, inspect the "
              "data. Pretraining: z-loss / QK-norm.")
    reference, url = cite("palm", "ml_engineering_instabilities", "olmo2")
    panels = LOSS_PANELS

    def __init__(self) -> None:
        self.det = {"train": _SpikeDetector(), "eval": _SpikeDetector(min_points=10)}
        self.pending: dict[str, tuple[int, float, float, int] | None] = {"train": None, "eval": None}
        self.spikes: list[int] = []  # log indices of recent train spikes
        self.n = 0
        self.last_spike_step: int | None = None

    def check(self, ctx: Context) -> Finding | None:
        split = ctx.split
        key = "loss" if split == "train" else "eval_loss"
        x = ctx.values.get(key)
        if x is None or x - x != 0.0:  # not finite
            return None
        if split == "train":
            self.n += 1
        hit = self.det[split].push(x)
        if hit is not None:
            z, med = hit
            self.pending[split] = (ctx.step, med, z, 0)
            self.last_spike_step = ctx.step
            if split == "train":
                self.spikes.append(self.n)
                while self.spikes and self.spikes[0] <= self.n - 200:
                    self.spikes.pop(0)
            many = split == "train" and len(self.spikes) >= 3
            return Finding(f"{key} spiked to {_g(x)} at step {ctx.step} (robust z {z:.1f} > 6 against the median "
                           f"{_g(med)} of the last 50 logs){'; 3+ spikes in 200 logs' if many else ''}.",
                           {key: x, "median_w50": med, "robust_z": z, "spikes_w200": len(self.spikes)},
                           severity="high" if many else None)
        p = self.pending[split]
        if p is None:
            return None
        step0, med, z, waited = p
        if x <= med + 0.1 * abs(med):  # back within 1.1x the pre-spike median
            self.pending[split] = None
            return None
        waited += 1
        self.pending[split] = (step0, med, z, waited)
        sev = "high" if waited >= 20 else None
        return Finding(f"{key} spiked at step {step0} (robust z {z:.1f}) and is still {_g(x)}, above 1.1x the "
                       f"pre-spike median {_g(med)}{' after 20 logs: not recovering' if sev else ''}.",
                       {key: x, "median_w50": med, "robust_z": z, "logs_since_spike": waited}, severity=sev)


class GradNormSpike(Rule):
    """Calibrated: on log(grad_norm), with a robust-z scale floor of 0.05 (a 5% change) and 20 points before it
    judges. Robust z(log g) > 6 alone fired on the real GRPO recording replayed over a longer window (a 1.9x
    jump, 1.78 vs median 0.92, scored z 6.1: the tiny run's other norms sit within ±7%); it also needs
    g >= 2.5x the W50 median (the catalog's 10x branch is unchanged)."""

    id = "grad_norm_spike"
    title = "Gradient-norm spike"
    severity = "medium"
    keys = ("grad_norm",)
    action = "Same actions as for a loss spike; check gradient clipping (max_grad_norm)."
    reference, url = cite("olmo2")
    panels = GRAD_PANELS + LOSS_PANELS

    def __init__(self, loss_rule: LossSpike | None = None) -> None:
        self.det = _SpikeDetector(floor=0.0, abs_floor=0.05)  # on log(grad_norm): scale-free, >= 5% changes
        self.loss_rule = loss_rule
        self.spike_step: int | None = None
        self.since = 0

    def check(self, ctx: Context) -> Finding | None:
        g = ctx.values["grad_norm"]
        if not g > 0 or g == math.inf:
            return None
        lg = math.log(g)
        det = self.det
        hit = None
        med = None
        if len(det.ring) >= 20 and (lg - det.m > 2.5 * det.s or lg > det.m + 2.302585):
            mlog, scale = det.exact()
            med = math.exp(mlog)
            z = (lg - mlog) / scale
            # calibrated: z > 6 alone fired on a real GRPO run's 1.9x jump (1.78 vs median 0.92: RL gradient norms
            # are that noisy); a spike must also be >= 2.5x the median (or >= 10x by the catalog's other branch)
            if (z > det.z and g > 2.5 * med) or g > 10 * med:
                hit = (z, mlog)
        det.push(lg, False)
        lr = self.loss_rule
        if self.spike_step is not None:
            self.since += 1
            if self.since > 10:
                self.spike_step = None
            elif lr is not None and lr.last_spike_step is not None and lr.last_spike_step >= self.spike_step:
                step0 = self.spike_step
                self.spike_step = None
                return Finding(f"A loss spike at step {lr.last_spike_step} followed the grad_norm spike at step "
                               f"{step0}.", {"grad_norm": g, "grad_spike_step": step0,
                                             "loss_spike_step": lr.last_spike_step}, severity="high")
        ratio = g / med if med else 0.0
        if hit is None and ratio <= 10:
            return None
        z = hit[0] if hit else math.nan
        self.spike_step = ctx.step
        self.since = 0
        return Finding(f"grad_norm = {_g(g)} at step {ctx.step} is {_g(ratio)}x the median of the last 50 logs"
                       f"{f' (robust z of log g {z:.1f})' if hit else ''}.",
                       {"grad_norm": g, "median_w50": med if med else math.nan, "ratio": ratio, "robust_z_log": z})


class GradNormZero(Rule):
    id = "grad_norm_zero"
    title = "No gradient flowing"
    severity = "critical"
    keys = ("grad_norm",)
    action = ("Check for frozen parameters (requires_grad / PEFT target modules), labels that are all masked, or "
              "zero advantages (GRPO groups with identical rewards).")
    reference, url = cite("trl#3857")
    panels = GRAD_PANELS
    for_logs = 3

    def check(self, ctx: Context) -> Finding | None:
        v = ctx.values
        g = v["grad_norm"]
        if not -1e-12 < g < 1e-12:  # also for NaN
            return None
        lr = _lr(v)
        if lr is not None and lr <= 0:  # lr = 0 is lr_schedule_anomaly's finding
            return None
        lr_text = _g(lr) if lr is not None else "?"
        return Finding(f"grad_norm = {g:g} for {self.held_logs} logs while learning_rate = {lr_text}: no gradient "
                       "flows.",
                       {"grad_norm": g, "learning_rate": lr if lr is not None else math.nan, "logs": self.held_logs})


class GradClipSaturation(Rule):
    """Window in logged points, scaled with the logging interval: the catalog's W50 is 50 steps, read at
    logging_steps=1 as the last 50 logs. At logging_steps=k a logged grad_norm is one step's norm sampled every
    k steps, so the window is the logs that cover 50 steps, at least 20 (a fraction needs a sample) and at most
    50: W50 at k=1, W20 from k=3 on. A 50-log window would need 2,500 steps at logging_steps=50, longer than
    most runs, and never judge. Hysteresis (calibrated): it opens at >= 50% clipped and stays open down to 35%;
    a healthy ORPO run at 1e-4 whose norms hover at max_grad_norm (1.0-1.2) sat at 50% +- one log and opened 4
    episodes in 1,000 steps with a single cut-off."""

    id = "grad_clip_saturation"
    title = "Gradient clipping active on most steps"
    severity = "medium"
    keys = ("grad_norm",)
    action = "Clipping is doing the step-size control: lower the LR."
    reference, url = cite("small_scale_proxies")
    reference = f"No direct source (catalog: unverified); {reference} trains with clip 1.0"
    panels = GRAD_PANELS

    def __init__(self) -> None:
        self.mask = 0  # bit i set: the log i points ago was clipped (last ``n`` logs)
        self.count = 0
        self.max_norm = 1.0
        self.n = 50
        self.on = False  # the last check held (the episode is open): hysteresis

    def on_start(self, ctx: Context) -> Finding | None:
        m = ctx.config.get("max_grad_norm", 1.0)
        self.max_norm = float(m) if isinstance(m, (int, float)) else 1.0
        self.n = min(50, max(20, math.ceil(50 / log_interval(ctx))))
        return None

    def check(self, ctx: Context) -> Finding | None:
        if self.max_norm <= 0:
            return None
        g = ctx.values["grad_norm"]
        if g - g != 0.0:
            return None
        n = self.n
        self.mask = ((self.mask << 1) | (g > self.max_norm)) & ((1 << n) - 1)
        if self.count < n:
            self.count += 1
            if self.count < n:
                return None
        clipped = self.mask.bit_count()
        self.on = clipped >= (0.35 * n if self.on else 0.5 * n)
        if self.on:
            return Finding(f"grad_norm exceeded max_grad_norm = {_g(self.max_norm)} in {clipped / n:.0%} of the "
                           f"last {n} logs (now {_g(g)}).", {f"clipped_fraction_w{n}": clipped / n,
                                                             "grad_norm": g, "max_grad_norm": self.max_norm})
        return None


class LrWarmupMissing(Rule):
    """Low severity, a calibration choice: a missing warm-up is a risk, not a failure."""

    id = "lr_warmup_missing"
    title = "No learning-rate warm-up"
    severity = "low"
    keys = ("learning_rate", "lr")
    once = True
    action = "Use a 3–10% warm-up (warmup_steps / warmup_ratio); the DPO paper used 150 steps."
    reference, url = cite("large_minibatch_sgd", "why_warmup", "dpo", "App. B")
    panels = LR_PANELS

    def __init__(self) -> None:
        self.peak: float | None = None
        self.warm: bool | None = None
        self.decided = False

    def on_start(self, ctx: Context) -> Finding | None:
        cfg = ctx.config
        lr = cfg.get("learning_rate")
        self.peak = float(lr) if isinstance(lr, (int, float)) and lr > 0 else None
        if "warmup_steps" in cfg or "warmup_ratio" in cfg:
            ws = cfg.get("warmup_steps") or 0
            wr = cfg.get("warmup_ratio") or 0
            self.warm = (isinstance(ws, (int, float)) and ws > 0) or (isinstance(wr, (int, float)) and wr > 0)
            if self.warm:
                self.inert = True  # a warm-up is configured: nothing to check in the logs
            elif self.peak is not None:
                # config-time: no warm-up configured, so the first step already runs at ~the peak LR
                self.decided = True
                return Finding(f"No learning-rate warm-up is configured (warmup_steps = {ws}, warmup_ratio = {wr}); "
                               f"training starts at the peak learning rate {self.peak:g}.",
                               {"learning_rate": self.peak, "warmup_steps": float(ws)})
        return None

    def check(self, ctx: Context) -> Finding | None:
        if self.decided:
            return None
        self.decided = True
        lr = _lr(ctx.values)
        if lr is None or self.peak is None or self.warm:
            return None
        if lr >= 0.9 * self.peak:
            return Finding(f"The first logged learning rate {lr:g} is already ≥ 0.9x the peak {self.peak:g} and no "
                           "warm-up is configured.", {"learning_rate": lr, "peak": self.peak})
        return None


CONSTANT_SCHEDULERS = {"constant", "constant_with_warmup", "reduce_lr_on_plateau", "warmup_stable_decay"}


class LrScheduleAnomaly(Rule):
    id = "lr_schedule_anomaly"
    title = "Learning-rate schedule anomaly"
    severity = "critical"
    keys = ("learning_rate", "lr")
    action = "Check the scheduler: e.g. warmup_steps ≥ max_steps, learning_rate=0, or a wrong lr_scheduler_type."
    reference = "No source (catalog: mechanistic check)"
    url = None
    panels = LR_PANELS

    def __init__(self) -> None:
        self.zeros = 0
        self.same = 0
        self.prev: float | None = None
        self.scheduler: str | None = None
        self.warmup = 0.0

    def on_start(self, ctx: Context) -> Finding | None:
        s = ctx.config.get("lr_scheduler_type")
        self.scheduler = str(s) if s is not None else None
        ws = ctx.config.get("warmup_steps") or 0
        wr = ctx.config.get("warmup_ratio") or 0
        m = ctx.max_steps or 0
        if isinstance(ws, (int, float)) and 0 < ws < 1:  # transformers 5: a float < 1 is a ratio
            ws = ws * m
        if isinstance(wr, (int, float)) and wr > 0:
            ws = max(ws, wr * m)
        self.warmup = float(ws) if isinstance(ws, (int, float)) else 0.0
        return None

    def check(self, ctx: Context) -> Finding | None:
        v = ctx.values
        lr = v.get("learning_rate")
        if lr is None:
            lr = v.get("lr")
            if lr is None:
                return None
        prev = self.prev
        self.prev = lr
        if lr == 0.0:
            self.zeros += 1
            self.same = 0
        else:
            self.zeros = 0
            self.same = self.same + 1 if lr == prev else 0
        if self.zeros < 3 and self.same < 10:
            return None
        m = ctx.max_steps
        if self.zeros >= 3 and (not m or ctx.step < 0.99 * m):
            return Finding(f"learning_rate = 0 for {self.zeros} logs at step {ctx.step}"
                           f"{f' of {m}' if m else ''}: nothing is being learned.",
                           {"learning_rate": lr, "zero_logs": self.zeros})
        if (self.same >= 10 and self.scheduler is not None and self.scheduler not in CONSTANT_SCHEDULERS
                and ctx.step > self.warmup):
            return Finding(f"learning_rate has stayed at {lr:g} for {self.same + 1} logs although lr_scheduler_type "
                           f"is {self.scheduler!r}.", {"learning_rate": lr, "constant_logs": self.same + 1},
                           severity="low")
        return None


class SftMemorization(Rule):
    """Epoch boundaries come from the logged ``epoch``; the post-boundary window is in steps (2% of the run) and
    at least 3 logged points, so that it holds more than the boundary's own log at logging_steps 5-50."""

    id = "sft_memorization"
    title = "Epoch-boundary memorisation"
    severity = "medium"
    keys = ("loss", "eval_loss")
    splits = ("train", "eval")
    algorithms = frozenset({"sft", "generic"})
    action = ("Do not auto-stop: InstructGPT's SFT overfit validation loss after 1 epoch yet more epochs still "
              "helped reward-model score and human preference. Judge by a downstream eval.")
    reference, url = cite("fastai_single_example", "instructgpt")
    panels = ("sft_loss", "sft_acc", "loss")

    def __init__(self) -> None:
        self.loss = Window(5)
        self.epoch_floor: int | None = None
        self.boundary: tuple[int, float] | None = None  # (step, loss mean before the boundary)
        self.eval_min = math.inf
        self.eval_last: float | None = None
        self.dropped = False

    def check(self, ctx: Context) -> Finding | None:
        v = ctx.values
        if ctx.split == "eval":
            e = v["eval_loss"]
            if finite(e):
                self.eval_last = e
                self.eval_min = min(self.eval_min, e)
        else:
            x = v["loss"]
            epoch = v.get("epoch")
            if epoch is not None and finite(x) and finite(epoch):
                ep = int(epoch)
                if self.epoch_floor is not None and ep > self.epoch_floor and self.loss.full:
                    self.boundary = (ctx.step, self.loss.mean)
                    self.dropped = False
                self.epoch_floor = ep
                self.loss.push(x)
                if self.boundary is not None:
                    step0, before = self.boundary
                    # in steps (2% of the run), but at least 3 logged points: at logging_steps=50 a 20-step
                    # window would hold the boundary's own log alone
                    ls = log_interval(ctx)
                    window = max(3 * ls, int(0.02 * ctx.max_steps)) if ctx.max_steps else 10 * ls
                    if ctx.step - step0 <= window:
                        if x <= 0.7 * before:
                            self.dropped = True
                    else:
                        self.boundary = None
        if self.dropped and self.eval_last is not None and self.eval_last >= 1.05 * self.eval_min:
            return Finding(f"Train loss fell ≥30% right after an epoch boundary while eval_loss {_g(self.eval_last)} "
                           f"is ≥5% above its minimum {_g(self.eval_min)}: memorising the training set.",
                           {"eval_loss": self.eval_last, "eval_loss_min": self.eval_min})
        acc = v.get("mean_token_accuracy")
        epoch = v.get("epoch")
        if acc is not None and epoch is not None and epoch >= 1.0 and acc >= 0.98:
            return Finding(f"Train token accuracy {_g(acc)} ≥ 0.98 in epoch {int(epoch) + 1}: the model has memorised "
                           "the training set.", {"mean_token_accuracy": acc, "epoch": epoch}, severity="low")
        return None


class FastNonFiniteValues(NonFiniteValues):
    """``builtin.NonFiniteValues`` with an O(1) fast path for the common all-finite log point (same findings)."""

    def check(self, ctx: Context) -> Finding | None:
        v = ctx.values
        g = v.get("grad_norm", 0.0)
        x = v.get("loss", 0.0)
        e = v.get("eval_loss", 0.0)
        if g - g == 0.0 and x - x == 0.0 and e - e == 0.0:
            if "grad_norm" in v:
                self.grad_streak = 0
            return None
        return super().check(ctx)
