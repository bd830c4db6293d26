"""The built-in heuristics catalog: every rule of shared/reference/heuristics-catalog.md that TRL's logs or the
run config can feed, as engine ``Rule`` objects.

Cost. Each rule is incremental: it keeps running sums over small rings (``windows.py``) and does O(1) plain
float arithmetic per log point; anything heavier (a median absolute deviation) runs only after a cheap bound
says the point may be an outlier. No rule reads ``MetricHistory`` on the hot path.

Not implemented here: ``pref_length_exploitation`` (TRL logs no chosen/rejected or generation lengths; it needs
tool-side data), the gold-metric half of ``rl_reward_overopt`` (needs a held-out judge; its no-gold half needs a
completion length, which only GRPO/RLOO log), PPO's ``val/num_eos_tokens`` half of ``rl_truncation`` (a count
without its batch size), and the distributed rules (``straggler_rank``, ``memory_imbalance``:
``rules.distributed_rules``). ``nonfinite_values`` is ``builtin``'s rule with a fast path added here.

Calibration (the catalog marks most thresholds [F], folklore). Thresholds were replayed against real TRL 1.16
runs of every trainer on the tiny 2-layer Llama (``tests/data/healthy_*.jsonl``: several seeds and learning
rates DPO/KTO/CPO 1e-5..1e-4, ORPO 1e-4..3e-4, SFT 1e-4..1e-3, GRPO/RLOO/Online DPO 3e-5..1e-4, reward 1e-4..1e-3)
and against provoked pathologies (DPO with lr=0, GRPO with a constant reward, an injected NaN). Changes from
the catalog's cut-offs, and why:

- dpo_loss_at_ln2: the catalog's |mean_W10(loss)−ln2|<0.01 and |mean_W10(margins)|<0.01 fired on a healthy
  DPO run at lr=1e-5 (step 50: loss 0.6903, margin 0.0056, accuracy 1.0): a slow run, not a stuck one. It now
  also needs the policy not to be separating pairs: mean_W10(margins) < 1e-3 or mean_W10(accuracies) < 0.6.
  The lr=0 run (loss 0.69315, margin 0, accuracy 0) still fires, critical.
- pref_margin_inverted: rewards tie at 0 before the policy moves (margin exactly 0, accuracy 0: the lr=0 run),
  which the catalog's "accuracies < 0.45" read as inverted; it now needs mean_W10(margins) < 0 together with a
  win rate < 0.5 (or < 0.45 alone with a negative margin). KTO logs no accuracies and its healthy tiny runs wander
  ±0.005 around 0, so there the mean margin must be below −0.01.
- orpo_odds_not_separating: accuracies are computed on 4-8 pairs per step, so a W10 mean below 0.55 is common in
  the first ~25 steps of a healthy tiny ORPO run (0.525 at step 23 of 55 at lr 1e-4, log odds +0.009; it separated
  from step ~28). It needs a full window of 10 logs and step >= 20 (and frac >= 0.1), and opens as medium; it is
  high (the catalog's severity) once the condition has held for 20 logs in a row.
- dpo_likelihood_displacement: the catalog's bare signs (chosen reward < 0, slope < 0, margin slope > 0) flapped
  on noise around 0 in healthy tiny KTO runs (5 episodes in 70 steps); both slopes must now be significant
  (|t| > 2 over W20) and the window's mean chosen reward negative.
- loss_spike / grad_norm_spike: the robust-z scale has a floor of 2% of the window median for the loss (DPO's loss
  sits at exactly ln 2 for the first steps, MAD = 0, so any change would be an "infinite z") and of 0.05 in
  log(grad_norm) (a 5% change); a window needs 20 points before it judges. The exact median/MAD is computed only
  when a Huber-clipped running level/scale says the point is 2.5 scales high (tested to find exactly the spikes
  the brute-force computation finds on noisy, trending, heavy-tailed and stepped series).
- grad_norm_spike: robust z(log g) > 6 alone fired on the real GRPO recording replayed over a longer window (a
  1.9x jump, 1.78 vs median 0.92, scored z 6.1: the tiny run's other norms sit within ±7%); it now also needs
  g >= 2.5x the W50 median (the catalog's 10x branch is unchanged).
- rl_truncation: the catalog's "> 0.2 for W10" is read as the W10 mean; critical needs every one of the 10
  values > 0.8 (healthy tiny GRPO runs sit at a 0.5-0.8 mean with 16-token completions; a run whose every
  completion is cut off for 10 logs is the wasting-compute case).
- config rules (pref_hparams_out_of_range): the published learning rates are for 7B-scale full fine-tuning.
  When the model's size is known (``n_params`` in the config, filled by the callback) the rule is medium only
  for models >= 1B parameters and low below; unknown size is low. LoRA/PEFT (``peft`` in the config) raises
  the cut-off 10x. lr_warmup_missing is low.
Everything else uses the catalog's numbers as written. Where the catalog leaves a trigger open, the reading
chosen here ([F], not calibrated on a real pathology): "X for Wn" = n consecutive logs (streak counters) for
kto_kl_degenerate, ppo_*; "rose" in rl_reward_overopt = a >= 10% rise of the OLS trend over W50 for reward, KL
and length alike; rl_kl_runaway (b) compares the W5 KL mean with the one at 75% of the current step and needs
KL >= 0.01 then >= 1e-3 (KL starts at 0, so "x3" alone fires at once); rl_entropy "monotone fall" = t < −2 over
W50 and below half its start, with the reward's W50 trend moving < 5%; rl_length_hacking uses no downgrade for
rule-based rewards (the rule cannot tell them from a learned reward model).
"""

from __future__ import annotations

import math
from typing import Any

from ptt_nb.rules._builtin import NonFiniteValues
from ptt_nb.rules._engine import HOLD, Context, Finding, Rule
from ptt_nb.rules._references import cite
from ptt_nb.rules._windows import Baseline, PairWindow, Trend, Window, finite

LN2 = math.log(2.0)

PREF = frozenset({"dpo", "kto", "orpo", "cpo", "online_dpo"})
RL = frozenset({"grpo", "rloo"})
LOSS_PANELS = ("loss", "sft_loss", "dpo_loss", "kto_loss", "orpo_loss", "cpo_loss", "odpo_loss", "rm_loss")
GRAD_PANELS = ("optim_grad_norm",)
LR_PANELS = ("optim_lr",)


def _g(x: float) -> str:
    """Compact number for messages."""
    return f"{x:.4g}"


def _past(ctx: Context, steps: int, frac: float) -> bool:
    """step >= steps and, when the run's length is known, step >= frac * max_steps."""
    if ctx.step < steps:
        return False
    m = ctx.max_steps
    return not m or ctx.step >= frac * m


def _lr(values: dict[str, float]) -> float | None:
    lr = values.get("learning_rate")
    return values.get("lr") if lr is None else lr


def _loss_types(config: dict[str, Any]) -> list[str] | None:
    lt = config.get("loss_type")
    if lt is None:
        return None
    return [str(t) for t in lt] if isinstance(lt, (list, tuple)) else [str(lt)]


def run_facts(model: Any = None, train_dataloader: Any = None) -> dict[str, Any]:
    """Facts for the config-time rules that ``TrainingArguments`` lacks: model size, PEFT, KTO label counts.

    Duck-typed (no torch import); any failure just leaves a fact out, and the rules fall back to low severity.
    """
    facts: dict[str, Any] = {}
    try:
        if model is not None and hasattr(model, "parameters"):
            total = trainable = 0
            for p in model.parameters():
                n = p.numel()
                total += n
                if p.requires_grad:
                    trainable += n
            facts["n_params"] = total
            facts["n_trainable_params"] = trainable
            peft = hasattr(model, "peft_config") or any("lora_" in name for name, _ in model.named_parameters())
            facts["peft"] = bool(peft)
    except Exception:  # a fact we cannot get is a fact we do not use
        pass
    try:
        dataset = getattr(train_dataloader, "dataset", None)
        names = getattr(dataset, "column_names", None) or []
        if "label" in names and len(dataset) <= 5_000_000:
            labels = dataset["label"]
            n_d = sum(1 for x in labels if x)
            facts["n_desirable"] = n_d
            facts["n_undesirable"] = len(labels) - n_d
    except Exception:
        pass
    return facts


# ============================================================================================================
# A. Preference optimisation
# ============================================================================================================


class PrefFeatures:
    """Windows several preference rules read (margin, win rate), pushed once per log point by whichever of them
    runs first: sharing them saves a third of the preference rules' cost."""

    __slots__ = ("step", "split", "margin10", "margin20", "acc10")

    def __init__(self) -> None:
        self.step = -1
        self.split = ""
        self.margin10 = Window(10)
        self.margin20 = Trend(20)
        self.acc10 = Window(10)

    def update(self, ctx: Context) -> PrefFeatures:
        if ctx.step != self.step or ctx.split != self.split:
            self.step = ctx.step
            self.split = ctx.split
            if ctx.split == "train":
                v = ctx.values
                m = v.get("rewards/margins")
                if m is not None and m - m == 0.0:
                    self.margin10.push(m)
                    self.margin20.push(m)
                a = v.get("rewards/accuracies")
                if a is not None and a - a == 0.0:
                    self.acc10.push(a)
        return self


class DpoLossAtLn2(Rule):
    id = "dpo_loss_at_ln2"
    title = "DPO loss stuck at ln 2"
    severity = "high"
    keys = ("loss",)
    algorithms = frozenset({"dpo", "online_dpo"})
    action = ("Check learning_rate > 0, grad_norm > 0, that parameters (or the PEFT adapter) are trainable, that "
              "chosen != rejected and that completion tokens are not all masked; then raise the LR (DPO paper: 1e-6 "
              "full fine-tuning; TRL docs: about 1e-5 with LoRA). Not 'reduce beta': at init dL/dΔ = −β/2.")
    reference, url = cite(1, "§4, App. B")
    panels = ("dpo_loss", "odpo_loss", "pref_margin", "optim_lr", "optim_grad_norm")

    def __init__(self, feat: PrefFeatures | None = None) -> None:
        self.loss = Window(10)
        self.feat = feat or PrefFeatures()
        self.enabled = True

    def on_start(self, ctx: Context) -> Finding | None:
        types = _loss_types(ctx.config)
        self.enabled = types is None or types == ["sigmoid"]
        self.inert = not self.enabled
        return None

    def check(self, ctx: Context) -> Finding | None:
        v = ctx.values
        x = v["loss"]
        m = v.get("rewards/margins")
        if m is None or x - x != 0.0 or m - m != 0.0:  # inline finite(): this runs on every DPO log point
            return None
        loss = self.loss
        loss.push(x)
        f = self.feat.update(ctx)
        if not self.enabled or loss.count < loss.n or not _past(ctx, 50, 0.05):
            return None
        ml, mm = loss.mean, f.margin10.mean
        if abs(ml - LN2) >= 0.01 or abs(mm) >= 0.01:
            return None
        # calibrated: a slow but separating run (accuracy ~1, small positive margin) is not stuck
        separating = f.acc10.count >= 5 and f.acc10.mean >= 0.6
        if abs(mm) >= 1e-3 and separating:
            return None
        g = v.get("grad_norm")
        lr = _lr(v)
        ev = {"loss_mean_w10": ml, "margin_mean_w10": mm}
        why = ""
        sev = None
        if g is not None:
            ev["grad_norm"] = g
        if lr is not None:
            ev["learning_rate"] = lr
        if (g is not None and g == 0.0) or (lr is not None and lr == 0.0):
            sev = "critical"
            why = " with learning_rate = 0" if lr == 0.0 else " with grad_norm = 0"
        if self.is_active and sev is None:
            return HOLD
        return Finding(f"DPO loss has stayed at ln 2 (mean of last 10: {ml:.5f}, margin {mm:.2e}) at step "
                       f"{ctx.step}{why}: the policy has not moved off the reference.", ev, severity=sev)


class PrefEmptyCompletion(Rule):
    id = "pref_empty_completion"
    title = "Empty completions (log-probs exactly 0)"
    severity = "critical"
    keys = ("logps/chosen", "logps/rejected")
    algorithms = frozenset({"dpo", "kto", "cpo", "orpo"})
    action = "Fix truncation (max_length / max_prompt_length), the chat template, or the completion label mask."
    reference, url = cite(37, "ETO#14")
    panels = ("pref_logps", "kto_logps")

    def __init__(self) -> None:
        self.streak = 0

    def check(self, ctx: Context) -> Finding | None:
        v = ctx.values
        c = v.get("logps/chosen")
        r = v.get("logps/rejected")
        zero = (c is None or abs(c) < 1e-6) and (r is None or abs(r) < 1e-6) and (c is not None or r is not None)
        self.streak = self.streak + 1 if zero else 0
        if self.streak < 2:
            return None
        if self.is_active:
            return HOLD
        return Finding(f"logps/chosen = {c} and logps/rejected = {r} for {self.streak} logs: the summed log-prob "
                       "covers 0 completion tokens.", {"logps/chosen": c if c is not None else math.nan,
                                                        "logps/rejected": r if r is not None else math.nan,
                                                        "logs": self.streak})


class PrefMarginInverted(Rule):
    id = "pref_margin_inverted"
    title = "Model prefers the rejected responses"
    severity = "high"
    keys = ("rewards/margins",)
    algorithms = PREF
    action = ("Check for swapped chosen/rejected columns or label noise, lower the LR (trl#1236: margins flip "
              "negative early), check that the reference is the SFT policy. ORPO/CPO 'rewards' are β·log π with "
              "no reference model.")
    reference, url = cite(1, "§5", "trl#1236")
    panels = ("pref_margin", "pref_accuracy")

    def __init__(self, feat: PrefFeatures | None = None) -> None:
        self.feat = feat or PrefFeatures()

    def check(self, ctx: Context) -> Finding | None:
        f = self.feat.update(ctx)
        if ctx.step < 50 or f.margin10.count < f.margin10.n:
            return None
        mm = f.margin10.mean
        ma = f.acc10.mean if f.acc10.full else None
        # calibrated: margin exactly 0 with accuracy 0 is a tie (π = π_ref), not an inversion; without accuracies
        # (KTO) a mean margin within ±0.01 is noise on tiny healthy runs
        if mm < 0 and (mm < -0.01 if ma is None else ma < 0.5) or (ma is not None and ma < 0.45 and mm < 0):
            ev = {"margin_mean_w10": mm}
            text = f"mean reward margin {_g(mm)}"
            if ma is not None:
                ev["accuracy_mean_w10"] = ma
                text += f", win rate {_g(ma)}"
            if self.is_active:
                return HOLD
            return Finding(f"Over the last 10 logs the model prefers the rejected responses ({text}) at step "
                           f"{ctx.step}.", ev)
        return None


class DpoLikelihoodDisplacement(Rule):
    id = "dpo_likelihood_displacement"
    title = "Chosen likelihood falls while the margin grows"
    severity = "medium"
    keys = ("rewards/chosen",)
    algorithms = frozenset({"dpo", "online_dpo", "kto"})
    action = ("Add an NLL term (rpo_alpha=1.0, or loss_type=['sigmoid','sft']), try DPOP, filter near-identical "
              "pairs (CHES), lower the LR. Medium by default: falling chosen rewards are common and not degenerate "
              "by themselves.")
    reference, url = cite(3, "Fig. 1", 4)
    panels = ("pref_rewards", "pref_margin", "pref_logps", "kto_rewards")

    def __init__(self, feat: PrefFeatures | None = None) -> None:
        self.chosen = Trend(20)
        self.feat = feat or PrefFeatures()
        self.base = Baseline(3)
        self.beta = 0.1

    def on_start(self, ctx: Context) -> Finding | None:
        beta = ctx.config.get("beta")
        if isinstance(beta, (int, float)) and beta > 0:
            self.beta = float(beta)
        return None

    def check(self, ctx: Context) -> Finding | None:
        v = ctx.values
        c = v["rewards/chosen"]
        m = v.get("rewards/margins")
        if m is None or c - c != 0.0 or m - m != 0.0:  # finite(), inline: every DPO/KTO log point
            return None
        chosen = self.chosen
        chosen.push(c)
        margin = self.feat.update(ctx).margin20
        lp = v.get("logps/chosen")
        if lp is not None and self.base.value is None and lp - lp == 0.0 and ctx.step >= 10:
            self.base.push(lp)
        if c >= 0 or chosen.count < chosen.n:
            return None
        sc, sm = self.chosen.slope, margin.slope
        # calibrated: both trends must be significant (|t| > 2) and the window's mean chosen reward < 0; the
        # catalog's bare signs flapped on noise around 0 in healthy tiny KTO runs
        if not (sc < 0 < sm) or self.chosen.mean >= 0 or self.chosen.tstat > -2 or margin.tstat < 2:
            return None
        ev = {"rewards/chosen": c, "chosen_slope_w20": sc, "margin_slope_w20": sm}
        sev = None
        detail = ""
        b = self.base.value
        if c / self.beta < -5:
            sev = "high"
            detail = f"; chosen log-ratio {_g(c / self.beta)} nats < −5"
        elif b is not None and lp is not None and b < 0 and lp < 1.2 * b:
            sev = "high"
            ev["logps/chosen"] = lp
            ev["logps_chosen_baseline"] = b
            detail = f"; logps/chosen {_g(lp)} is >20% below its baseline {_g(b)}"
        if self.is_active and sev is None:
            return HOLD
        return Finding(f"rewards/chosen = {_g(c)} and falling (slope {_g(sc)}/log) while the margin grows (slope "
                       f"{_g(sm)}/log){detail}: likelihood displacement.", ev, severity=sev)


class PrefOverfit(Rule):
    id = "pref_overfit"
    title = "Near-perfect preference separation early (overfitting)"
    severity = "medium"
    keys = ("rewards/accuracies", "eval_rewards/accuracies")
    splits = ("train", "eval")
    algorithms = frozenset({"dpo", "kto", "orpo", "cpo"})
    action = "Early-stop on eval, raise β, try loss_type='ipo', train fewer epochs."
    reference, url = cite(2)
    panels = ("pref_accuracy", "pref_margin", "dpo_loss")

    def __init__(self, feat: PrefFeatures | None = None) -> None:
        self.feat = feat or PrefFeatures()
        self.gap: float | None = None

    def check(self, ctx: Context) -> Finding | None:
        v = ctx.values
        f = self.feat.update(ctx)
        acc = f.acc10
        if ctx.split == "eval":
            ea = v["eval_rewards/accuracies"]
            self.gap = acc.mean - ea if acc.full and finite(ea) else None
        if self.gap is not None and self.gap > 0.15:
            if self.is_active:
                return HOLD
            return Finding(f"Train win rate (mean of last 10: {_g(acc.mean)}) exceeds the eval win rate by "
                           f"{_g(self.gap)} (> 0.15).", {"train_accuracy_w10": acc.mean, "gap": self.gap})
        if ctx.split != "train" or not acc.full:
            return None
        epoch = v.get("epoch")
        loss = v.get("loss")
        if epoch is None or epoch >= 0.5 or loss is None or loss >= 0.1 or acc.mean < 0.95:
            return None
        low = min(acc.buf)
        if low >= 0.95 and f.margin20.slope > 0:
            if self.is_active:
                return HOLD
            return Finding(f"Win rate ≥ 0.95 for 10 logs before half of the first epoch (epoch {_g(epoch)}), "
                           f"loss {_g(loss)} < 0.1 and the margin still growing.",
                           {"accuracy_min_w10": low, "loss": loss, "epoch": epoch})
        return None


# learning-rate cut-offs for full fine-tuning (catalog: [P] values, [F] cut-off)
LR_CUTOFF = {"dpo": 1e-5, "orpo": 1e-5, "cpo": 1e-5, "online_dpo": 1e-5, "kto": 5e-6, "simpo": 1e-6}


class PrefHparamsOutOfRange(Rule):
    id = "pref_hparams_out_of_range"
    title = "Preference-optimisation hyper-parameters outside reported ranges"
    severity = "medium"
    algorithms = PREF
    action = ("Reported settings: DPO β 0.1 (0.5 TL;DR), lr 1e-6, 150-step warm-up; SimPO lr grid 3e-7–1e-6 "
              "(1e-5 'can significantly degrade performance'), β 2–2.5; KTO lr 5e-7–5e-6 (≤1e-6 at β=0.1). LoRA "
              "tolerates ~10x higher LRs. Small models need higher LRs than these 7B recipes.")
    reference, url = cite(1, "App. B", 8, 5, 37)
    panels = ("optim_lr",)

    def on_start(self, ctx: Context) -> Finding | None:
        cfg = ctx.config
        algo = ctx.algorithm
        types = _loss_types(cfg) or []
        kind = "simpo" if "simpo" in types else algo
        problems: list[str] = []
        ev: dict[str, float] = {}
        lr = cfg.get("learning_rate")
        peft = bool(cfg.get("peft"))
        cutoff = LR_CUTOFF.get(kind)
        if cutoff is not None and isinstance(lr, (int, float)):
            limit = cutoff * (10 if peft else 1)
            if lr > limit:
                problems.append(f"learning_rate {lr:g} > {limit:g} ({kind}{', LoRA' if peft else ', full FT'})")
                ev["learning_rate"] = float(lr)
                ev["lr_cutoff"] = limit
        beta = cfg.get("beta")
        if algo in ("dpo", "online_dpo") and kind == algo and isinstance(beta, (int, float)) and not (
                0.01 <= beta <= 0.5) and (not types or types == ["sigmoid"]):
            problems.append(f"beta {beta:g} outside [0.01, 0.5]")
            ev["beta"] = float(beta)
        if not problems:
            return None
        n = cfg.get("n_params")
        sev = "medium" if isinstance(n, (int, float)) and n >= 1e9 else "low"
        size = f"{n / 1e6:.3g}M-parameter model" if isinstance(n, (int, float)) else "model of unknown size"
        if isinstance(n, (int, float)):
            ev["n_params"] = float(n)
        note = "" if sev == "medium" else " (low: the published ranges are for ≥1B models; small models need more)"
        return Finding(f"{'; '.join(problems)} for a {size}{note}.", ev, severity=sev)


class KtoWeightImbalance(Rule):
    id = "kto_weight_imbalance"
    title = "KTO desirable/undesirable weighting outside [1, 4/3]"
    severity = "medium"
    algorithms = frozenset({"kto"})
    action = "Set desirable_weight/undesirable_weight so that (w_D·n_D)/(w_U·n_U) lies in [1, 4/3]: upweight the " \
             "minority class."
    reference, url = cite(5, 37)
    panels = ("kto_rewards",)

    def on_start(self, ctx: Context) -> Finding | None:
        cfg = ctx.config
        wd = float(cfg.get("desirable_weight", 1.0))
        wu = float(cfg.get("undesirable_weight", 1.0))
        nd, nu = cfg.get("n_desirable"), cfg.get("n_undesirable")
        known = isinstance(nd, int) and isinstance(nu, int) and nd > 0 and nu > 0
        if not known:
            nd = nu = 1
        if wu <= 0:
            return None
        ratio = (wd * nd) / (wu * nu)
        if 1.0 <= ratio <= 4.0 / 3.0 + 1e-9:
            return None
        ev = {"desirable_weight": wd, "undesirable_weight": wu, "ratio": ratio}
        if known:
            ev.update(n_desirable=float(nd), n_undesirable=float(nu))
            counts = f"{nd} desirable / {nu} undesirable examples"
        else:
            counts = "example counts unknown, assumed balanced"
        return Finding(f"(w_D·n_D)/(w_U·n_U) = {ratio:.3g} is outside [1, 4/3] (weights {wd:g}/{wu:g}, {counts}).",
                       ev, severity=None if known else "low")


class KtoKlDegenerate(Rule):
    id = "kto_kl_degenerate"
    title = "KTO KL reference point stuck at 0"
    severity = "medium"
    keys = ("kl",)
    algorithms = frozenset({"kto"})
    action = ("The KL reference point needs mismatched pairs: per-device batch > 1 (≥4; effective 16–128); "
              "loss_type='apo_zero_unpaired' has none by design. z0 is clamped ≥ 0, so 0 early on is normal.")
    reference, url = cite(5, 37)
    panels = ("kto_kl",)

    def __init__(self) -> None:
        self.zeros = 0

    def check(self, ctx: Context) -> Finding | None:
        v = ctx.values
        kl = v["kl"]
        self.zeros = self.zeros + 1 if kl == 0.0 else 0
        if self.zeros < 10 or not _past(ctx, 10, 0.1):
            return None
        c = v.get("rewards/chosen")
        if c is None or c == 0.0 or not finite(c):
            return None
        if self.is_active:
            return HOLD
        return Finding(f"kl = 0 for the last {self.zeros} logs while rewards/chosen = {_g(c)}: the KL reference "
                       "point is not being estimated.", {"kl": kl, "zero_logs": self.zeros, "rewards/chosen": c})


class OrpoOddsNotSeparating(Rule):
    id = "orpo_odds_not_separating"
    title = "ORPO odds ratio not separating chosen from rejected"
    severity = "high"
    keys = ("log_odds_chosen",)
    algorithms = frozenset({"orpo"})
    action = "Check the data (chosen/rejected), raise λ (TRL `beta`; paper 0.1), check the LR (paper 5e-6)."
    reference, url = cite(6, 37)
    panels = ("orpo_log_odds", "pref_accuracy")

    def __init__(self) -> None:
        self.odds = Window(10)
        self.acc = Window(10)
        self.streak = 0

    def check(self, ctx: Context) -> Finding | None:
        v = ctx.values
        x = v["log_odds_chosen"]
        if finite(x):
            self.odds.push(x)
        a = v.get("rewards/accuracies")
        if a is not None and finite(a):
            self.acc.push(a)
        if not self.odds.full or not _past(ctx, 20, 0.1):
            return None
        mo = self.odds.mean
        ma = self.acc.mean if self.acc.full else None
        if mo <= 0 or (ma is not None and ma < 0.55):
            self.streak += 1
            # calibrated: a healthy tiny ORPO run (lr 1e-4) was not separating yet at step 23 of 55 (W10 win rate
            # 0.525, log odds +0.009) and separated from step ~28: medium first, high once it persists 20 logs
            sev = "high" if self.streak >= 20 else "medium"
            if self.is_active and sev == "medium":
                return HOLD
            ev = {"log_odds_chosen_mean_w10": mo, "logs": self.streak}
            if ma is not None:
                ev["accuracy_mean_w10"] = ma
            acc = f", win rate {_g(ma)}" if ma is not None else ""
            return Finding(f"Mean log odds ratio over the last 10 logs is {_g(mo)}{acc} at step {ctx.step} "
                           f"({self.streak} logs in a row): the odds-ratio term is not separating chosen from "
                           "rejected.", ev, severity=sev)
        self.streak = 0
        return None


class OrpoCpoNllDiverging(Rule):
    id = "orpo_cpo_nll_diverging"
    title = "SFT (NLL) term rising while the preference margin grows"
    severity = "medium"
    keys = ("nll_loss",)
    algorithms = frozenset({"orpo", "cpo"})
    action = "Lower λ/β, raise cpo_alpha (CPO), lower the LR."
    reference, url = cite(6, 7)
    panels = ("orpo_loss", "cpo_loss", "orpo_log_odds", "pref_margin")

    def __init__(self) -> None:
        self.nll_min = math.inf
        self.above = 0
        self.margin = Trend(20)

    def check(self, ctx: Context) -> Finding | None:
        v = ctx.values
        nll = v["nll_loss"]
        m = v.get("log_odds_chosen", v.get("rewards/margins"))
        if not finite(nll):
            return None
        if m is not None and finite(m):
            self.margin.push(m)
        if nll < self.nll_min:
            self.nll_min = nll
        self.above = self.above + 1 if nll > 1.1 * self.nll_min and self.nll_min > 0 else 0
        if self.above < 20 or not self.margin.full or self.margin.slope <= 0:
            return None
        if self.is_active:
            return HOLD
        return Finding(f"nll_loss = {_g(nll)} has stayed >1.1x its minimum {_g(self.nll_min)} for {self.above} logs "
                       f"while the preference margin rises (slope {_g(self.margin.slope)}/log).",
                       {"nll_loss": nll, "nll_min": self.nll_min, "margin_slope_w20": self.margin.slope})


class SimpoMarginBelowGamma(Rule):
    id = "simpo_margin_below_gamma"
    title = "SimPO margin below its target γ"
    severity = "medium"
    keys = ("rewards/margins",)
    algorithms = frozenset({"cpo"})
    action = ("Tune γ/β (γ/β in [0, 1], start at 0.5) and the LR; keep length normalisation (removing it is the "
              "most damaging ablation).")
    reference, url = cite(8)
    panels = ("pref_margin",)

    def __init__(self) -> None:
        self.margin = Window(20)
        self.gamma: float | None = None

    def on_start(self, ctx: Context) -> Finding | None:
        if "simpo" in (_loss_types(ctx.config) or []):
            g = ctx.config.get("simpo_gamma", 0.5)
            self.gamma = float(g) if isinstance(g, (int, float)) else 0.5
        self.inert = self.gamma is None
        return None

    def check(self, ctx: Context) -> Finding | None:
        if self.gamma is None:
            return None
        m = ctx.values["rewards/margins"]
        if finite(m):
            self.margin.push(m)
        if not self.margin.full or not _past(ctx, 20, 0.3):
            return None
        mm = self.margin.mean
        if mm < self.gamma:
            if self.is_active:
                return HOLD
            return Finding(f"Mean margin over the last 20 logs {_g(mm)} < simpo_gamma {_g(self.gamma)} at step "
                           f"{ctx.step} (30% of training done).", {"margin_mean_w20": mm, "simpo_gamma": self.gamma})
        return None


# ============================================================================================================
# B. Online RL
# ============================================================================================================

REWARD_KEY = {"grpo": "reward", "rloo": "reward", "ppo": "objective/scores", "online_dpo": "objective/scores"}
KL_KEY = {"grpo": "kl", "rloo": "kl", "ppo": "objective/kl", "online_dpo": "objective/kl"}


class RlKlRunaway(Rule):
    id = "rl_kl_runaway"
    title = "KL to the reference running away"
    severity = "high"
    keys = ("objective/kl", "kl")
    algorithms = frozenset({"ppo", "online_dpo", "grpo", "rloo"})
    action = "Raise the KL coefficient (or use an adaptive KL target), early-stop, lower the LR."
    reference, url = cite(37, 16, 12, 11)
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
            if self.is_active:
                return HOLD
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
        if self.is_active:
            return HOLD
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
    reference, url = cite(37)
    panels = ("ppo_kl", "odpo_kl")

    def __init__(self) -> None:
        self.kl = Window(5)

    def check(self, ctx: Context) -> Finding | None:
        kl = ctx.values["objective/kl"]
        if finite(kl):
            self.kl.push(kl)
        if self.kl.full and self.kl.mean < -0.1:
            if self.is_active:
                return HOLD
            return Finding(f"Mean objective/kl over the last 5 logs is {_g(self.kl.mean)} < −0.1.",
                           {"kl_mean_w5": self.kl.mean})
        return None


class PpoRatioOutOfBand(Rule):
    id = "ppo_ratio_out_of_band"
    title = "PPO probability ratio out of band"
    severity = "high"
    keys = ("val/ratio",)
    algorithms = frozenset({"ppo"})
    action = "Lower the LR, use fewer num_ppo_epochs or more num_mini_batches."
    reference, url = cite(37, 10)
    panels = ("ppo_ratio",)

    def __init__(self) -> None:
        self.streak = 0

    def check(self, ctx: Context) -> Finding | None:
        v = ctx.values
        ratio = v["val/ratio"]
        var = v.get("val/ratio_var", 0.0)
        bad = ratio > 2.0 or ratio < 0.5 or var > 1.0 or not finite(ratio)
        self.streak = self.streak + 1 if bad else 0
        if self.streak < 3:
            return None
        if self.is_active:
            return HOLD
        return Finding(f"val/ratio = {_g(ratio)} (ratio_var {_g(var)}) outside [0.5, 2] / var > 1 for {self.streak} "
                       "logs: consecutive policies differ too much.", {"val/ratio": ratio, "val/ratio_var": var})


class PpoApproxklHigh(Rule):
    id = "ppo_approxkl_high"
    title = "PPO approximate KL per update too large"
    severity = "medium"
    keys = ("policy/approxkl_avg",)
    algorithms = frozenset({"ppo"})
    action = "Lower the LR or num_ppo_epochs (the PPO paper's adaptive rule doubles β above 1.5·d_targ)."
    reference, url = cite(10, 37)
    panels = ("ppo_kl",)
    d_targ = 0.02

    def __init__(self) -> None:
        self.streak = 0

    def check(self, ctx: Context) -> Finding | None:
        x = ctx.values["policy/approxkl_avg"]
        self.streak = self.streak + 1 if x > 1.5 * self.d_targ else 0
        if self.streak < 5:
            return None
        if self.is_active:
            return HOLD
        return Finding(f"policy/approxkl_avg = {_g(x)} > 1.5·d_targ = {_g(1.5 * self.d_targ)} for {self.streak} logs.",
                       {"policy/approxkl_avg": x, "d_targ": self.d_targ})


class PpoClipfracHigh(Rule):
    id = "ppo_clipfrac_high"
    title = "Most PPO updates hit the clip"
    severity = "medium"
    keys = ("policy/clipfrac_avg",)
    algorithms = frozenset({"ppo"})
    action = "Lower the LR or num_ppo_epochs."
    reference, url = cite(10, 37)
    panels = ("ppo_clipfrac",)

    def __init__(self) -> None:
        self.streak = 0

    def check(self, ctx: Context) -> Finding | None:
        x = ctx.values["policy/clipfrac_avg"]
        self.streak = self.streak + 1 if x > 0.2 else 0
        if self.streak < 10:
            return None
        if self.is_active:
            return HOLD
        return Finding(f"policy/clipfrac_avg = {_g(x)} > 0.2 for {self.streak} logs.", {"policy/clipfrac_avg": x})


class PpoValueInstability(Rule):
    id = "ppo_value_instability"
    title = "PPO value function diverging"
    severity = "medium"
    keys = ("loss/value_avg",)
    algorithms = frozenset({"ppo"})
    action = "Normalise/clip rewards, clip the value loss, whiten_rewards=True, lower vf_coef or the LR."
    reference, url = cite(14, 15)
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
        if self.is_active:
            return HOLD
        return Finding(f"loss/value_avg = {_g(x)} ({'>10x its baseline ' + _g(b) if big else 'rising over 20 logs'}) "
                       f"with val/clipfrac_avg = {_g(clip)} > 0.5: the critic is diverging.",
                       {"loss/value_avg": x, "val/clipfrac_avg": clip, "baseline": b if b is not None else math.nan})


class RlRewardOveropt(Rule):
    id = "rl_reward_overopt"
    title = "Reward, KL and length rising together (possible over-optimisation)"
    severity = "medium"
    keys = ("reward", "objective/scores")
    algorithms = frozenset({"ppo", "rloo", "grpo", "online_dpo"})
    action = ("Check a held-out / gold metric: if it has peaked, early-stop there; raise the KL penalty, improve "
              "the reward model.")
    reference, url = cite(16, 12, 14)
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
            if self.is_active:
                return HOLD
            return Finding(f"Over the last 50 logs reward (+{up_r:.0%}), KL (+{up_k:.0%}) and completion length "
                           f"(+{up_l:.0%}) rose together: the reward may be over-optimised.",
                           {"reward_rise_w50": up_r, "kl_rise_w50": up_k, "length_rise_w50": up_l})
        return None


class RlLengthHacking(Rule):
    id = "rl_length_hacking"
    title = "Reward gains driven by completion length"
    severity = "medium"
    keys = ("completions/mean_length",)
    algorithms = RL
    action = "Add a length penalty or normalisation; balance lengths in the reward model's data."
    reference, url = cite(17, 14)
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
        if self.is_active:
            return HOLD
        return Finding(f"Mean completion length {_g(ln)} is {_g(ln / b)}x its start ({_g(b)}) and corr(reward, "
                       f"length) over 50 logs is {corr:.2f} ≥ 0.7: reward gains come mostly from length.",
                       {"completions/mean_length": ln, "baseline": b, "corr_w50": corr})


class RlTruncation(Rule):
    id = "rl_truncation"
    title = "Many completions truncated"
    severity = "medium"
    keys = ("completions/clipped_ratio", "val/contain_eos_token")
    algorithms = frozenset({"grpo", "rloo", "online_dpo"})
    action = ("Raise max_completion_length, set mask_truncated_completions=True (overlong filtering), add a soft "
              "overlong punishment or missing_eos_penalty.")
    reference, url = cite(19, 37, 15)
    panels = ("rl_truncation", "rl_lengths", "odpo_eos")

    def __init__(self) -> None:
        self.clip = Window(10)
        self.eos = Window(10)
        self.over80 = 0  # consecutive logs with clipped_ratio > 0.8

    def check(self, ctx: Context) -> Finding | None:
        v = ctx.values
        c = v.get("completions/clipped_ratio")
        if c is not None and c - c == 0.0:
            w = self.clip
            w.push(c)
            self.over80 = self.over80 + 1 if c > 0.8 else 0
            if w.count == 10 and w.total > 2.0:
                sev = "critical" if self.over80 >= 10 else None
                if self.is_active and sev is None:
                    return HOLD
                return Finding(f"{self.clip.mean:.0%} of completions were truncated over the last 10 logs"
                               f"{' (every log > 80%)' if sev else ''}: rewards are noisy.",
                               {"clipped_ratio_mean_w10": self.clip.mean, "clipped_ratio": c}, severity=sev)
            return None
        e = v.get("val/contain_eos_token")
        if e is not None and finite(e):
            self.eos.push(e)
            if self.eos.full and self.eos.mean < 0.5:
                if self.is_active:
                    return HOLD
                return Finding(f"Only {self.eos.mean:.0%} of completions end with EOS (mean of the last 10 logs).",
                               {"eos_fraction_w10": self.eos.mean})
        return None


class RlEntropyOutOfBand(Rule):
    id = "rl_entropy_out_of_band"
    title = "Policy entropy collapsing or blowing up"
    severity = "high"
    keys = ("entropy", "policy/entropy_avg")
    algorithms = frozenset({"grpo", "rloo", "ppo"})
    action = ("Collapse: epsilon_high=0.28 (Clip-Higher), top_entropy_quantile, raise the temperature, Clip-Cov/"
              "KL-Cov. Blow-up (incoherent text): lower the LR.")
    reference, url = cite(21, 19)
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
            if self.is_active:
                return HOLD
            return Finding(f"Entropy {_g(h)} fell below 0.3x its start ({_g(b)}) within the first quarter of "
                           "training: entropy collapse caps performance.", {"entropy": h, "baseline": b})
        if h < 0.5 * b and self.ent.full and self.ent.tstat < -2:
            rr = abs(self.reward.slope) * self.reward.n / (abs(self.reward.mean) + 1e-12)
            if rr < 0.05:
                if self.is_active:
                    return HOLD
                return Finding(f"Entropy has fallen steadily to {_g(h)} (start {_g(b)}) over 50 logs with a flat "
                               "reward: collapse.", {"entropy": h, "baseline": b, "reward_change_w50": rr})
        if h > 2 * b and self.ent.count >= 20 and self.ent.slope > 0 and self.reward.slope < 0:
            if self.is_active:
                return HOLD
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
    reference, url = cite(19, 37, "trl#3857")
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
        if self.is_active and sev is None:
            return HOLD
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
    reference, url = cite(20, 37)
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
            if self.is_active:
                return HOLD
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
    reference, url = cite(19, 37)
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
            if self.is_active:
                return HOLD
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
    reference, url = cite(22, 37)
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
            if self.is_active:
                return HOLD
            return Finding(f"Importance-sampling ratio out of [0.5, 2] (min {_g(self.lo.mean)}, max "
                           f"{_g(self.hi.mean)}, means of 5 logs): training is silently off-policy.",
                           {"is_ratio_min_w5": self.lo.mean, "is_ratio_max_w5": self.hi.mean})
        b = self.base.value
        if d is not None and self.diff.full and self.diff.slope > 0 and b is not None and d > 2 * b and d > 1e-3:
            if self.is_active:
                return HOLD
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
    reference, url = cite(19, 23)
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
    id = "loss_spike"
    title = "Loss spike"
    severity = "medium"
    keys = ("loss", "eval_loss")
    splits = ("train", "eval")
    algorithms = frozenset({"sft", "dpo", "kto", "orpo", "cpo", "online_dpo", "reward", "generic"})  # not GRPO/RLOO
    action = ("Roll back ≈100 steps and skip the 200–500 batches around the spike (PaLM), lower the LR, inspect the "
              "data. Pretraining: z-loss / QK-norm.")
    reference, url = cite(25, 27, 26)
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
        if self.is_active and sev is None:
            return HOLD
        return Finding(f"{key} spiked at step {step0} (robust z {z:.1f}) and is still {_g(x)}, above 1.1x the "
                       f"pre-spike median {_g(med)}{' after 20 logs: not recovering' if sev else ''}.",
                       {key: x, "median_w50": med, "robust_z": z, "logs_since_spike": waited}, severity=sev)


class GradNormSpike(Rule):
    id = "grad_norm_spike"
    title = "Gradient-norm spike"
    severity = "medium"
    keys = ("grad_norm",)
    action = "Same actions as for a loss spike; check gradient clipping (max_grad_norm)."
    reference, url = cite(26)
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
        if self.is_active:
            return HOLD
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

    def __init__(self) -> None:
        self.streak = 0

    def check(self, ctx: Context) -> Finding | None:
        v = ctx.values
        g = v["grad_norm"]
        if not -1e-12 < g < 1e-12:  # also for NaN
            self.streak = 0
            return None
        lr = _lr(v)
        if lr is not None and lr <= 0:  # lr = 0 is lr_schedule_anomaly's finding
            self.streak = 0
            return None
        self.streak += 1
        if self.streak < 3:
            return None
        if self.is_active:
            return HOLD
        lr_text = _g(lr) if lr is not None else "?"
        return Finding(f"grad_norm = {g:g} for {self.streak} logs while learning_rate = {lr_text}: no gradient flows.",
                       {"grad_norm": g, "learning_rate": lr if lr is not None else math.nan, "logs": self.streak})


class GradClipSaturation(Rule):
    id = "grad_clip_saturation"
    title = "Gradient clipping active on most steps"
    severity = "medium"
    keys = ("grad_norm",)
    action = "Clipping is doing the step-size control: lower the LR."
    reference, url = cite(24)
    reference = f"No direct source (catalog: unverified); {reference} trains with clip 1.0"
    panels = GRAD_PANELS

    def __init__(self) -> None:
        self.mask = 0  # bit i set: the log i points ago was clipped (last 50 logs)
        self.count = 0
        self.max_norm = 1.0

    def on_start(self, ctx: Context) -> Finding | None:
        m = ctx.config.get("max_grad_norm", 1.0)
        self.max_norm = float(m) if isinstance(m, (int, float)) else 1.0
        return None

    def check(self, ctx: Context) -> Finding | None:
        if self.max_norm <= 0:
            return None
        g = ctx.values["grad_norm"]
        if g - g != 0.0:
            return None
        self.mask = ((self.mask << 1) | (g > self.max_norm)) & 0x3FFFFFFFFFFFF  # 50 bits
        if self.count < 50:
            self.count += 1
            if self.count < 50:
                return None
        clipped = self.mask.bit_count()
        if clipped >= 25:
            if self.is_active:
                return HOLD
            return Finding(f"grad_norm exceeded max_grad_norm = {_g(self.max_norm)} in {clipped / 50:.0%} of the "
                           f"last 50 logs (now {_g(g)}).", {"clipped_fraction_w50": clipped / 50,
                                                            "grad_norm": g, "max_grad_norm": self.max_norm})
        return None


class LrWarmupMissing(Rule):
    id = "lr_warmup_missing"
    title = "No learning-rate warm-up"
    severity = "low"
    keys = ("learning_rate", "lr")
    once = True
    action = "Use a 3–10% warm-up (warmup_steps / warmup_ratio); the DPO paper used 150 steps."
    reference, url = cite(29, 30, 1, "App. B")
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
            if self.is_active:
                return HOLD
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
        self.kind = ""
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
            if self.is_active and self.kind == "zero":
                return HOLD
            self.kind = "zero"
            return Finding(f"learning_rate = 0 for {self.zeros} logs at step {ctx.step}"
                           f"{f' of {m}' if m else ''}: nothing is being learned.",
                           {"learning_rate": lr, "zero_logs": self.zeros})
        if (self.same >= 10 and self.scheduler is not None and self.scheduler not in CONSTANT_SCHEDULERS
                and ctx.step > self.warmup):
            if self.is_active and self.kind == "constant":
                return HOLD
            self.kind = "constant"
            return Finding(f"learning_rate has stayed at {lr:g} for {self.same + 1} logs although lr_scheduler_type "
                           f"is {self.scheduler!r}.", {"learning_rate": lr, "constant_logs": self.same + 1},
                           severity="low")
        return None


class SftMemorization(Rule):
    id = "sft_memorization"
    title = "Epoch-boundary memorisation"
    severity = "medium"
    keys = ("loss", "eval_loss")
    splits = ("train", "eval")
    algorithms = frozenset({"sft", "generic"})
    action = ("Do not auto-stop: InstructGPT's SFT overfit validation loss after 1 epoch yet more epochs still "
              "helped reward-model score and human preference. Judge by a downstream eval.")
    reference, url = cite(31, 13)
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
            if epoch is not None and finite(x):
                ep = int(epoch)
                if self.epoch_floor is not None and ep > self.epoch_floor and self.loss.full:
                    self.boundary = (ctx.step, self.loss.mean)
                    self.dropped = False
                self.epoch_floor = ep
                self.loss.push(x)
                if self.boundary is not None:
                    step0, before = self.boundary
                    window = max(3, int(0.02 * ctx.max_steps)) if ctx.max_steps else 10
                    if ctx.step - step0 <= window:
                        if x <= 0.7 * before:
                            self.dropped = True
                    else:
                        self.boundary = None
        if self.dropped and self.eval_last is not None and self.eval_last >= 1.05 * self.eval_min:
            if self.is_active:
                return HOLD
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


def catalog_rules() -> list[Rule]:
    """Fresh instances of every catalog rule (rules keep per-run state)."""
    loss_spike = LossSpike()
    pref = PrefFeatures()
    return [
        DpoLossAtLn2(pref), PrefEmptyCompletion(), PrefMarginInverted(pref), DpoLikelihoodDisplacement(pref),
        PrefOverfit(pref),
        PrefHparamsOutOfRange(), KtoWeightImbalance(), KtoKlDegenerate(), OrpoOddsNotSeparating(),
        OrpoCpoNllDiverging(), SimpoMarginBelowGamma(),
        RlKlRunaway(), PpoNegativeKl(), PpoRatioOutOfBand(), PpoApproxklHigh(), PpoClipfracHigh(),
        PpoValueInstability(), RlRewardOveropt(), RlLengthHacking(), RlTruncation(), RlEntropyOutOfBand(),
        GrpoZeroVarianceGroups(), GrpoLossNotASignal(), GrpoLengthBias(), GrpoClipRatio(), GrpoRolloutMismatch(),
        GrpoKlUnmonitored(),
        loss_spike, GradNormSpike(loss_spike), GradNormZero(), GradClipSaturation(), LrWarmupMissing(),
        LrScheduleAnomaly(), SftMemorization(), FastNonFiniteValues(),
    ]
