"""Online RL rewards and rollouts (GRPO, RLOO, PPO, Online DPO): over-optimisation, length, truncation, entropy,
GRPO groups."""

from __future__ import annotations

from ptt_nb.rules._catalog_common import RL, _g, _loss_types
from ptt_nb.rules._catalog_ppo import KL_KEY, REWARD_KEY
from ptt_nb.rules._engine import Context, Finding, Rule
from ptt_nb.rules._references import cite
from ptt_nb.rules._windows import Baseline, PairWindow, Trend, Window, finite


class RlRewardOveropt(Rule):
    """Reading chosen here ([F]): "rose" = a >= 10% rise of the OLS trend over W50, for reward, KL and length alike.
    The gold-metric half is not implemented (it needs a held-out judge); the no-gold half needs a completion
    length, which only GRPO/RLOO log."""

    id = "rl_reward_overopt"
    title = "Reward, KL and length rising together (possible over-optimisation)"
    severity = "medium"
    keys = ("reward", "objective/scores")
    algorithms = frozenset({"ppo", "rloo", "grpo", "online_dpo"})
    action = ("Check a held-out / gold metric: if it has peaked, early-stop there; raise the KL penalty, improve "
              "the reward model.")
    reference, url = cite("rm_overoptimization", "stiennon2020", "rlhf_secrets_ppo")
    panels = ("rl_reward", "rl_kl", "rl_lengths", "ppo_scores", "odpo_scores")

    def __init__(self) -> None:
        self.reward = Trend(50)
        self.kl = Trend(50)
        self.length = Trend(50)

    def check(self, ctx: Context) -> Finding | None:
        v = ctx.values
        r = v.get(REWARD_KEY.get(ctx.algorithm, "reward"))
        kl = v.get(KL_KEY.get(ctx.algorithm, "kl"))
        ln = v.get("completions/mean_length")
        if r is None or kl is None or ln is None or not (finite(r) and finite(kl) and finite(ln)):
            return None
        self.reward.push(r)
        self.kl.push(kl)
        self.length.push(ln)
        if not self.reward.full:
            return None
        n = self.reward.n
        # relative rise over the window: slope * n / |mean|
        up_r = self.reward.slope * n / (abs(self.reward.mean) + 1e-12)
        up_k = self.kl.slope * n / (abs(self.kl.mean) + 1e-12)
        up_l = self.length.slope * n / (abs(self.length.mean) + 1e-12)
        if up_r >= 0.1 and up_k >= 0.1 and up_l >= 0.1:
            return Finding(f"Over the last 50 logs reward (+{up_r:.0%}), KL (+{up_k:.0%}) and completion length "
                           f"(+{up_l:.0%}) rose together: the reward may be over-optimised.",
                           {"reward_rise_w50": up_r, "kl_rise_w50": up_k, "length_rise_w50": up_l})
        return None


class RlLengthHacking(Rule):
    """Reading chosen here ([F]): no downgrade for rule-based rewards (the rule cannot tell them from a learned
    reward model)."""

    id = "rl_length_hacking"
    title = "Reward gains driven by completion length"
    severity = "medium"
    keys = ("completions/mean_length",)
    algorithms = RL
    action = "Add a length penalty or normalisation; balance lengths in the reward model's data."
    reference, url = cite("rlhf_length_correlations", "rlhf_secrets_ppo")
    panels = ("rl_lengths", "rl_reward")

    def __init__(self) -> None:
        self.pair = PairWindow(50)
        self.base = Baseline(3)

    def check(self, ctx: Context) -> Finding | None:
        v = ctx.values
        ln = v["completions/mean_length"]
        r = v.get("reward")
        if r is None or not finite(ln) or not finite(r):
            return None
        self.pair.push(r, ln)
        b = self.base.value
        if b is None:
            self.base.push(ln)
            return None
        if b <= 0 or ln < 1.5 * b or not self.pair.full:
            return None
        corr = self.pair.corr
        if corr < 0.7:
            return None
        return Finding(f"Mean completion length {_g(ln)} is {_g(ln / b)}x its start ({_g(b)}) and corr(reward, "
                       f"length) over 50 logs is {corr:.2f} ≥ 0.7: reward gains come mostly from length.",
                       {"completions/mean_length": ln, "baseline": b, "corr_w50": corr})


class RlTruncation(Rule):
    """Calibrated: the catalog's "> 0.2 for W10" is read as the W10 mean; critical needs every one of the 10 values
    > 0.8 (healthy tiny GRPO runs sit at a 0.5-0.8 mean with 16-token completions; a run whose every completion
    is cut off for 10 logs is the wasting-compute case). PPO's ``val/num_eos_tokens`` half is not implemented (a
    count without its batch size)."""

    id = "rl_truncation"
    title = "Many completions truncated"
    severity = "medium"
    keys = ("completions/clipped_ratio", "val/contain_eos_token")
    algorithms = frozenset({"grpo", "rloo", "online_dpo"})
    action = ("Raise max_completion_length, set mask_truncated_completions=True (overlong filtering), add a soft "
              "overlong punishment or missing_eos_penalty.")
    reference, url = cite("dapo", "trl_docs", "rlhf_n_implementation_details")
    panels = ("rl_truncation", "rl_lengths", "odpo_eos")

    def __init__(self) -> None:
        self.clip = Window(10)
        self.eos = Window(10)
        self.over80 = 0  # consecutive logs with clipped_ratio > 0.8
        self.clipped = 0.0
        # This condition often holds for a whole GRPO run: one Finding per severity, its text read from the
        # rule's state only when the Engine opens an episode (Finding's docstring), so a holding check is free.
        self.findings = {sev: Finding(self._clip_message, self._clip_evidence, severity=sev)
                         for sev in (None, "critical")}

    def _clip_message(self) -> str:
        every = " (every log > 80%)" if self.over80 >= 10 else ""
        return f"{self.clip.mean:.0%} of completions were truncated over the last 10 logs{every}: rewards are noisy."

    def _clip_evidence(self) -> dict[str, float]:
        return {"clipped_ratio_mean_w10": self.clip.mean, "clipped_ratio": self.clipped}

    def check(self, ctx: Context) -> Finding | None:
        v = ctx.values
        c = v.get("completions/clipped_ratio")
        if c is not None and c - c == 0.0:
            w = self.clip
            w.push(c)
            self.clipped = c
            self.over80 = self.over80 + 1 if c > 0.8 else 0
            if w.count == 10 and w.total > 2.0:
                return self.findings["critical" if self.over80 >= 10 else None]
            return None
        e = v.get("val/contain_eos_token")
        if e is not None and finite(e):
            self.eos.push(e)
            if self.eos.full and self.eos.mean < 0.5:
                return Finding(f"Only {self.eos.mean:.0%} of completions end with EOS (mean of the last 10 logs).",
                               {"eos_fraction_w10": self.eos.mean})
        return None


class RlEntropyOutOfBand(Rule):
    """Reading chosen here ([F]): "monotone fall" = t < −2 over W50 and below half its start, with the reward's W50
    trend moving < 5%."""

    id = "rl_entropy_out_of_band"
    title = "Policy entropy collapsing or blowing up"
    severity = "high"
    keys = ("entropy", "policy/entropy_avg")
    algorithms = frozenset({"grpo", "rloo", "ppo"})
    action = ("Collapse: epsilon_high=0.28 (Clip-Higher), top_entropy_quantile, raise the temperature, Clip-Cov/"
              "KL-Cov. Blow-up (incoherent text): lower the LR.")
    reference, url = cite("rl_entropy_mechanism", "dapo")
    panels = ("rl_entropy", "ppo_entropy", "rl_reward")

    def __init__(self) -> None:
        self.ent = Trend(50)
        self.reward = Trend(50)
        self.base = Baseline(3)
        self.reward_key = "reward"

    def on_start(self, ctx: Context) -> Finding | None:
        self.reward_key = REWARD_KEY.get(ctx.algorithm, "reward")
        return None

    def check(self, ctx: Context) -> Finding | None:
        v = ctx.values
        h = v.get("entropy")
        if h is None:
            h = v.get("policy/entropy_avg")
        if h is None or h - h != 0.0:
            return None
        self.ent.push(h)
        if self.base.value is None:
            self.base.push(h)
        r = v.get(self.reward_key)
        if r is not None and r - r == 0.0:
            self.reward.push(r)
        b = self.base.value
        if b is None or b <= 0:
            return None
        if h < 0.3 * b and (not ctx.max_steps or ctx.step <= 0.25 * ctx.max_steps):
            return Finding(f"Entropy {_g(h)} fell below 0.3x its start ({_g(b)}) within the first quarter of "
                           "training: entropy collapse caps performance.", {"entropy": h, "baseline": b})
        if h < 0.5 * b and self.ent.full and self.ent.tstat < -2:
            rr = abs(self.reward.slope) * self.reward.n / (abs(self.reward.mean) + 1e-12)
            if rr < 0.05:
                return Finding(f"Entropy has fallen steadily to {_g(h)} (start {_g(b)}) over 50 logs with a flat "
                               "reward: collapse.", {"entropy": h, "baseline": b, "reward_change_w50": rr})
        if h > 2 * b and self.ent.count >= 20 and self.ent.slope > 0 and self.reward.slope < 0:
            return Finding(f"Entropy {_g(h)} is >2x its start ({_g(b)}) and rising while the reward falls: the policy "
                           "is producing incoherent text.", {"entropy": h, "baseline": b,
                                                             "reward_slope_w50": self.reward.slope})
        return None


class GrpoZeroVarianceGroups(Rule):
    id = "grpo_zero_variance_groups"
    title = "Groups with identical rewards (no gradient signal)"
    severity = "high"
    keys = ("frac_reward_zero_std",)
    algorithms = RL
    action = ("Dynamic sampling (DAPO; not in TRL), adjust prompt difficulty, more num_generations, a higher "
              "temperature, a denser reward.")
    reference, url = cite("dapo", "trl_docs", "trl#3857")
    panels = ("rl_zero_std", "rl_reward_std", "optim_grad_norm")

    def __init__(self) -> None:
        self.frac = Window(10)

    def check(self, ctx: Context) -> Finding | None:
        v = ctx.values
        f = v["frac_reward_zero_std"]
        if finite(f):
            self.frac.push(f)
        if self.frac.count < 5:
            return None
        m = self.frac.mean
        if m <= 0.5:
            return None
        g = v.get("grad_norm")
        ev = {"frac_reward_zero_std_mean": m}
        sev = None
        if g is not None:
            ev["grad_norm"] = g
            if m >= 1.0 and abs(g) < 1e-8:
                sev = "critical"
        return Finding(f"{m:.0%} of groups had identical rewards over the last {self.frac.count} logs"
                       f"{' and grad_norm is 0: no learning signal at all' if sev else ''}.", ev, severity=sev)


class GrpoLossNotASignal(Rule):
    """A suppression, not an alarm: GRPO/RLOO ``loss`` ≈ β·KL is not a learning signal, so no built-in rule may
    alert on it (``loss_spike`` excludes these profiles). It reads no key and never fires."""

    id = "grpo_loss_not_a_signal"
    title = "GRPO/RLOO loss is not a learning signal (suppression)"
    severity = "low"
    keys = ()
    algorithms = RL
    action = "Watch `reward` instead of `loss`."
    reference, url = cite("trl#2703", "trl#3452")
    panels = ("rl_loss",)
    suppresses = ("loss_spike",)

    def check(self, ctx: Context) -> Finding | None:
        return None


class GrpoLengthBias(Rule):
    id = "grpo_length_bias"
    title = "Completions lengthen while the reward does not improve (GRPO length bias)"
    severity = "medium"
    keys = ("completions/mean_length",)
    algorithms = frozenset({"grpo"})
    action = "Use loss_type='dr_grpo' or 'dapo' (TRL's default) and scale_rewards='none' or 'batch'."
    reference, url = cite("dr_grpo", "trl_docs")
    panels = ("rl_lengths", "rl_reward")

    def __init__(self) -> None:
        self.length = Trend(50)
        self.reward = Trend(50)
        self.enabled = False

    def on_start(self, ctx: Context) -> Finding | None:
        types = _loss_types(ctx.config)
        scale = ctx.config.get("scale_rewards", "group")
        self.enabled = types == ["grpo"] and scale in ("group", True, "true")
        self.inert = not self.enabled
        return None

    def check(self, ctx: Context) -> Finding | None:
        if not self.enabled:
            return None
        v = ctx.values
        ln = v["completions/mean_length"]
        r = v.get("reward")
        if r is None or not finite(ln) or not finite(r):
            return None
        self.length.push(ln)
        self.reward.push(r)
        if self.length.full and self.length.tstat > 2 and self.reward.slope <= 0:
            return Finding(f"Over 50 logs completions grow ({_g(self.length.slope)} tokens/log) while the reward does "
                           f"not (slope {_g(self.reward.slope)}): loss_type='grpo' length bias.",
                           {"length_slope_w50": self.length.slope, "reward_slope_w50": self.reward.slope})
        return None


class GrpoClipRatio(Rule):
    id = "grpo_clip_ratio"
    title = "Large clipped fraction in GRPO/RLOO updates"
    severity = "medium"
    keys = ("clip_ratio/region_mean",)
    algorithms = RL
    action = "Lower the LR or num_iterations; set epsilon_high=0.28 (Clip-Higher)."
    reference, url = cite("dapo", "trl_docs")
    panels = ("rl_clip", "rl_entropy")

    def __init__(self) -> None:
        self.region = Window(10)
        self.high = Window(10)
        self.ent_base = Baseline(3)
        self.enabled = True

    def on_start(self, ctx: Context) -> Finding | None:
        cfg = ctx.config
        iters = cfg.get("num_iterations", 1)
        spg = cfg.get("steps_per_generation")
        ga = cfg.get("gradient_accumulation_steps", 1)
        known = "num_iterations" in cfg
        self.enabled = not known or iters > 1 or (isinstance(spg, int) and isinstance(ga, int) and spg > ga)
        self.inert = not self.enabled
        return None

    def check(self, ctx: Context) -> Finding | None:
        if not self.enabled:
            return None
        v = ctx.values
        x = v["clip_ratio/region_mean"]
        if finite(x):
            self.region.push(x)
        hi = v.get("clip_ratio/high_mean")
        if hi is not None and finite(hi):
            self.high.push(hi)
        h = v.get("entropy")
        if h is not None and finite(h):
            self.ent_base.push(h)
        if self.region.full and self.region.mean > 0.2:
            return Finding(f"{self.region.mean:.0%} of tokens were clipped (clip_ratio/region_mean, mean of 10 logs): "
                           "updates are too off-policy or the LR is too high.", {"region_mean_w10": self.region.mean})
        b = self.ent_base.value
        if (h is not None and b and self.high.full and self.high.mean < 1e-4 and h < 0.3 * b):
            return Finding(f"clip_ratio/high_mean ≈ 0 while entropy collapsed to {_g(h)} (start {_g(b)}): the "
                           "symmetric clip suppresses exploratory tokens.", {"high_mean_w10": self.high.mean,
                                                                              "entropy": h}, severity="low")
        return None


class GrpoRolloutMismatch(Rule):
    id = "grpo_rollout_mismatch"
    title = "vLLM and trainer token probabilities disagree"
    severity = "medium"
    keys = ("sampling/importance_sampling_ratio/min", "sampling/importance_sampling_ratio/max",
            "sampling/sampling_logp_difference/mean")
    algorithms = frozenset({"grpo"})
    action = "Keep vllm_importance_sampling_correction=True (TIS); match dtype and kernels between vLLM and training."
    reference, url = cite("off_policy_rl_blog", "trl_docs")
    panels = ()

    def __init__(self) -> None:
        self.lo = Window(5)
        self.hi = Window(5)
        self.diff = Trend(20)
        self.base = Baseline(3)

    def check(self, ctx: Context) -> Finding | None:
        v = ctx.values
        lo = v.get("sampling/importance_sampling_ratio/min")
        hi = v.get("sampling/importance_sampling_ratio/max")
        d = v.get("sampling/sampling_logp_difference/mean")
        if lo is not None and finite(lo):
            self.lo.push(lo)
        if hi is not None and finite(hi):
            self.hi.push(hi)
        if d is not None and finite(d):
            self.diff.push(d)
            self.base.push(d)
        if (self.lo.full and self.lo.mean < 0.5) or (self.hi.full and self.hi.mean > 2.0):
            return Finding(f"Importance-sampling ratio out of [0.5, 2] (min {_g(self.lo.mean)}, max "
                           f"{_g(self.hi.mean)}, means of 5 logs): training is silently off-policy.",
                           {"is_ratio_min_w5": self.lo.mean, "is_ratio_max_w5": self.hi.mean})
        b = self.base.value
        if d is not None and self.diff.full and self.diff.slope > 0 and b is not None and d > 2 * b and d > 1e-3:
            return Finding(f"The vLLM/trainer log-prob difference is trending up ({_g(b)} → {_g(d)}).",
                           {"logp_difference": d, "baseline": b})
        return None


class GrpoKlUnmonitored(Rule):
    id = "grpo_kl_unmonitored"
    title = "KL to the reference is not logged (beta = 0)"
    severity = "low"
    keys = ("reward",)
    algorithms = frozenset({"grpo"})
    once = True
    action = ("Legitimate (DAPO drops the KL term; R1 uses β=0.001), but reference drift is unmonitored: lean on "
              "the entropy and length panels, or set beta > 0 to log `kl`.")
    reference, url = cite("dapo", "deepseek_r1")
    panels = ("rl_kl", "rl_entropy")

    def __init__(self) -> None:
        self.n = 0
        self.seen = False

    def check(self, ctx: Context) -> Finding | None:
        if self.seen:
            return None
        if "kl" in ctx.values:
            self.seen = True
            return None
        self.n += 1
        if self.n < 3:
            return None
        return Finding(f"No `kl` in the first {self.n} logs (beta = {ctx.config.get('beta', 0)}): drift from the "
                       "reference model is not monitored.", {"logs": self.n})
