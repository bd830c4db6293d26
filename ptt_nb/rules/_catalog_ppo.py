"""Online RL, KL and PPO: KL runaway, negative KL, PPO ratio, approx-KL, clip fraction, value head."""

from __future__ import annotations

import math

from ptt_nb.rules._catalog_common import _g
from ptt_nb.rules._engine import Context, Finding, Rule
from ptt_nb.rules._references import cite
from ptt_nb.rules._windows import Baseline, Trend, Window, finite

# ============================================================================================================
# B. Online RL
# ============================================================================================================

REWARD_KEY = {"grpo": "reward", "rloo": "reward", "ppo": "objective/scores", "online_dpo": "objective/scores"}
KL_KEY = {"grpo": "kl", "rloo": "kl", "ppo": "objective/kl", "online_dpo": "objective/kl"}


class RlKlRunaway(Rule):
    """Reading chosen here ([F]): branch (b) compares the W5 KL mean with the one at 75% of the current step and
    needs KL >= 0.01 now and >= 1e-3 then (KL starts at 0, so "x3" alone would fire at once)."""

    id = "rl_kl_runaway"
    title = "KL to the reference running away"
    severity = "high"
    keys = ("objective/kl", "kl")
    algorithms = frozenset({"ppo", "online_dpo", "grpo", "rloo"})
    action = "Raise the KL coefficient (or use an adaptive KL target), early-stop, lower the LR."
    reference, url = cite("trl_docs", "rm_overoptimization", "stiennon2020", "ziegler2019")
    panels = ("ppo_kl", "odpo_kl", "rl_kl", "rl_reward", "ppo_scores", "odpo_scores")

    def __init__(self) -> None:
        self.kl = Window(5)
        self.reward = Window(5)
        self.marks: list[tuple[int, float, float]] = []  # (step, kl mean, reward mean) every 4 logs
        self.n = 0
        self.kl_key = "kl"
        self.reward_key = "reward"

    def on_start(self, ctx: Context) -> Finding | None:
        self.kl_key = KL_KEY.get(ctx.algorithm, "kl")
        self.reward_key = REWARD_KEY.get(ctx.algorithm, "reward")
        return None

    def check(self, ctx: Context) -> Finding | None:
        v = ctx.values
        kl = v.get(self.kl_key)
        if kl is None or not finite(kl):
            return None
        self.kl.push(kl)
        r = v.get(self.reward_key)
        if r is not None and finite(r):
            self.reward.push(r)
        self.n += 1
        if self.n % 4 == 0:
            self.marks.append((ctx.step, self.kl.mean, self.reward.mean))
        if self.kl_key == "objective/kl" and kl > 10:
            return Finding(f"Sequence KL objective/kl = {_g(kl)} > 10 (TRL: keep it between 0 and 10).", {"kl": kl})
        if self.n < 20 or len(self.marks) < 2:
            return None
        # (b) KL ×3 over the last 25% of steps while the reward has not improved
        target = 0.75 * ctx.step
        marks = self.marks
        lo, hi = 0, len(marks) - 1
        while lo < hi:  # first mark at or after `target` (bisect on steps)
            mid = (lo + hi) // 2
            if marks[mid][0] < target:
                lo = mid + 1
            else:
                hi = mid
        step0, kl0, r0 = marks[lo]
        kl_now = self.kl.mean
        if step0 >= ctx.step or kl0 <= 1e-3 or kl_now < 3 * kl0 or kl_now < 0.01:
            return None
        if self.reward.count and self.reward.mean > r0:
            return None
        return Finding(f"KL rose {_g(kl_now / kl0)}x (from {_g(kl0)} at step {step0} to {_g(kl_now)}) over the last "
                       f"25% of steps while the reward did not improve ({_g(r0)} → {_g(self.reward.mean)}).",
                       {"kl_mean_w5": kl_now, "kl_then": kl0, "reward_now": self.reward.mean, "reward_then": r0})


class PpoNegativeKl(Rule):
    id = "ppo_negative_kl"
    title = "Negative KL estimate"
    severity = "high"
    keys = ("objective/kl",)
    algorithms = frozenset({"ppo", "online_dpo"})
    action = ("Generation is not pure sampling (top_k, min_length, temperature mismatch) and the policy can earn "
              "reward by driving KL negative: use top_k=0, top_p=1.0, no min_length.")
    reference, url = cite("trl_docs")
    panels = ("ppo_kl", "odpo_kl")

    def __init__(self) -> None:
        self.kl = Window(5)

    def check(self, ctx: Context) -> Finding | None:
        kl = ctx.values["objective/kl"]
        if finite(kl):
            self.kl.push(kl)
        if self.kl.full and self.kl.mean < -0.1:
            return Finding(f"Mean objective/kl over the last 5 logs is {_g(self.kl.mean)} < −0.1.",
                           {"kl_mean_w5": self.kl.mean})
        return None


class PpoRatioOutOfBand(Rule):
    """Reading chosen here ([F], not calibrated on a real pathology): the catalog's "for W3" = 3 consecutive logs
    (``for_logs``)."""

    id = "ppo_ratio_out_of_band"
    title = "PPO probability ratio out of band"
    severity = "high"
    keys = ("val/ratio",)
    algorithms = frozenset({"ppo"})
    action = "Lower the LR, use fewer num_ppo_epochs or more num_mini_batches."
    reference, url = cite("trl_docs", "ppo")
    panels = ("ppo_ratio",)
    for_logs = 3

    def check(self, ctx: Context) -> Finding | None:
        v = ctx.values
        ratio = v["val/ratio"]
        var = v.get("val/ratio_var", 0.0)
        if not (ratio > 2.0 or ratio < 0.5 or var > 1.0 or not finite(ratio)):
            return None
        return Finding(f"val/ratio = {_g(ratio)} (ratio_var {_g(var)}) outside [0.5, 2] / var > 1 for {self.held_logs} "
                       "logs: consecutive policies differ too much.", {"val/ratio": ratio, "val/ratio_var": var})


class PpoApproxklHigh(Rule):
    """Reading chosen here ([F], not calibrated on a real pathology): "for W5" = 5 consecutive logs (``for_logs``);
    1.5·d_targ is the PPO paper's adaptive-KL trigger with its d_targ = 0.02."""

    id = "ppo_approxkl_high"
    title = "PPO approximate KL per update too large"
    severity = "medium"
    keys = ("policy/approxkl_avg",)
    algorithms = frozenset({"ppo"})
    action = "Lower the LR or num_ppo_epochs (the PPO paper's adaptive rule doubles β above 1.5·d_targ)."
    reference, url = cite("ppo", "trl_docs")
    panels = ("ppo_kl",)
    d_targ = 0.02
    for_logs = 5

    def check(self, ctx: Context) -> Finding | None:
        x = ctx.values["policy/approxkl_avg"]
        if not x > 1.5 * self.d_targ:
            return None
        return Finding(f"policy/approxkl_avg = {_g(x)} > 1.5·d_targ = {_g(1.5 * self.d_targ)} for {self.held_logs} "
                       "logs.",
                       {"policy/approxkl_avg": x, "d_targ": self.d_targ})


class PpoClipfracHigh(Rule):
    """Reading chosen here ([F], not calibrated on a real pathology): "for W10" = 10 consecutive logs
    (``for_logs``)."""

    id = "ppo_clipfrac_high"
    title = "Most PPO updates hit the clip"
    severity = "medium"
    keys = ("policy/clipfrac_avg",)
    algorithms = frozenset({"ppo"})
    action = "Lower the LR or num_ppo_epochs."
    reference, url = cite("ppo", "trl_docs")
    panels = ("ppo_clipfrac",)
    for_logs = 10

    def check(self, ctx: Context) -> Finding | None:
        x = ctx.values["policy/clipfrac_avg"]
        if not x > 0.2:
            return None
        return Finding(f"policy/clipfrac_avg = {_g(x)} > 0.2 for {self.held_logs} logs.", {"policy/clipfrac_avg": x})


class PpoValueInstability(Rule):
    id = "ppo_value_instability"
    title = "PPO value function diverging"
    severity = "medium"
    keys = ("loss/value_avg",)
    algorithms = frozenset({"ppo"})
    action = "Normalise/clip rewards, clip the value loss, whiten_rewards=True, lower vf_coef or the LR."
    reference, url = cite("rlhf_secrets_ppo", "rlhf_n_implementation_details")
    panels = ("ppo_losses", "ppo_clipfrac")

    def __init__(self) -> None:
        self.value = Trend(20)
        self.base = Baseline(3)

    def check(self, ctx: Context) -> Finding | None:
        v = ctx.values
        x = v["loss/value_avg"]
        if not finite(x):
            return None
        self.value.push(x)
        self.base.push(x)
        clip = v.get("val/clipfrac_avg")
        if clip is None or clip <= 0.5:
            return None
        b = self.base.value
        big = b is not None and b > 0 and x > 10 * b
        rising = self.value.full and self.value.slope > 0
        if not (big or rising):
            return None
        return Finding(f"loss/value_avg = {_g(x)} ({'>10x its baseline ' + _g(b) if big else 'rising over 20 logs'}) "
                       f"with val/clipfrac_avg = {_g(clip)} > 0.5: the critic is diverging.",
                       {"loss/value_avg": x, "val/clipfrac_avg": clip, "baseline": b if b is not None else math.nan})
