"""Preference optimisation (DPO and its family): loss at ln 2, margins, likelihood displacement, overfitting,
hyper-parameters."""

from __future__ import annotations

import math

from ptt_nb.rules._catalog_common import LN2, PREF, _g, _loss_types, _lr, _past, log_interval
from ptt_nb.rules._engine import Context, Finding, Rule
from ptt_nb.rules._references import cite
from ptt_nb.rules._windows import Baseline, Trend, Window, finite

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
    """Calibrated: the catalog's |mean_W10(loss) − ln 2| < 0.01 and |mean_W10(margins)| < 0.01 fired on a healthy
    DPO run at lr=1e-5 (step 50: loss 0.6903, margin 0.0056, accuracy 1.0): a slow run, not a stuck one. It also
    needs the policy not to be separating pairs: mean_W10(margins) < 1e-3 or mean_W10(accuracies) < 0.6. The lr=0
    run (loss 0.69315, margin 0, accuracy 0) still fires, critical."""

    id = "dpo_loss_at_ln2"
    title = "DPO loss stuck at ln 2"
    severity = "high"
    keys = ("loss",)
    algorithms = frozenset({"dpo", "online_dpo"})
    action = ("Check learning_rate > 0, grad_norm > 0, that parameters (or the PEFT adapter) are trainable, that "
              "chosen != rejected and that completion tokens are not all masked; then raise the LR (DPO paper: 1e-6 "
              "full fine-tuning; TRL docs: about 1e-5 with LoRA). Not 'reduce beta': at init dL/dΔ = −β/2.")
    reference, url = cite("dpo", "§4, App. B")
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
        return Finding(f"DPO loss has stayed at ln 2 (mean of last 10: {ml:.5f}, margin {mm:.2e}) at step "
                       f"{ctx.step}{why}: the policy has not moved off the reference.", ev, severity=sev)


class PrefEmptyCompletion(Rule):
    id = "pref_empty_completion"
    title = "Empty completions (log-probs exactly 0)"
    severity = "critical"
    keys = ("logps/chosen", "logps/rejected")
    algorithms = frozenset({"dpo", "kto", "cpo", "orpo"})
    action = "Fix truncation (max_length / max_prompt_length), the chat template, or the completion label mask."
    reference, url = cite("trl_docs", "ETO#14")
    panels = ("pref_logps", "kto_logps")
    for_logs = 2

    def check(self, ctx: Context) -> Finding | None:
        v = ctx.values
        c = v.get("logps/chosen")
        r = v.get("logps/rejected")
        zero = (c is None or abs(c) < 1e-6) and (r is None or abs(r) < 1e-6) and (c is not None or r is not None)
        if not zero:
            return None
        return Finding(f"logps/chosen = {c} and logps/rejected = {r} for {self.held_logs} logs: the summed log-prob "
                       "covers 0 completion tokens.", {"logps/chosen": c if c is not None else math.nan,
                                                        "logps/rejected": r if r is not None else math.nan,
                                                        "logs": self.held_logs})


class PrefMarginInverted(Rule):
    """Calibrated: rewards tie at 0 before the policy moves (margin exactly 0, accuracy 0: the lr=0 run), which the
    catalog's "accuracies < 0.45" read as inverted; it needs mean_W10(margins) < 0 together with a win rate < 0.5
    (or < 0.45 alone with a negative margin). KTO logs no accuracies and its healthy tiny runs wander ±0.005
    around 0, so there the mean margin must be below −0.01."""

    id = "pref_margin_inverted"
    title = "Model prefers the rejected responses"
    severity = "high"
    keys = ("rewards/margins",)
    algorithms = PREF
    action = ("Check for swapped chosen/rejected columns or label noise, lower the LR (trl#1236: margins flip "
              "negative early), check that the reference is the SFT policy. ORPO/CPO 'rewards' are β·log π with "
              "no reference model.")
    reference, url = cite("dpo", "§5", "trl#1236")
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
            return Finding(f"Over the last 10 logs the model prefers the rejected responses ({text}) at step "
                           f"{ctx.step}.", ev)
        return None


class DpoLikelihoodDisplacement(Rule):
    """Calibrated: the catalog's bare signs (chosen reward < 0, slope < 0, margin slope > 0) flapped on noise around 0
    in healthy tiny KTO runs (5 episodes in 70 steps); both slopes must be significant (|t| > 2 over W20) and the
    window's mean chosen reward negative."""

    id = "dpo_likelihood_displacement"
    title = "Chosen likelihood falls while the margin grows"
    severity = "medium"
    keys = ("rewards/chosen",)
    algorithms = frozenset({"dpo", "online_dpo", "kto"})
    action = ("Add an NLL term (rpo_alpha=1.0, or loss_type=['sigmoid','sft']), try DPOP, filter near-identical "
              "pairs (CHES), lower the LR. Medium by default: falling chosen rewards are common and not degenerate "
              "by themselves.")
    reference, url = cite("likelihood_displacement", "Fig. 1", "dpo_positive")
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
        return Finding(f"rewards/chosen = {_g(c)} and falling (slope {_g(sc)}/log) while the margin grows (slope "
                       f"{_g(sm)}/log){detail}: likelihood displacement.", ev, severity=sev)


class PrefOverfit(Rule):
    """The early branch ("win rate >= 0.95 for W10 before half of the first epoch") counts steps of evidence:
    a logged accuracy is the mean of the ``logging_steps`` batches since the last log, so it needs the last
    ceil(10 / logging_steps) logs (at least 2), not 10. Ten logs at logging_steps=50 are 500 steps, more than
    half an epoch of most preference datasets: the branch could never fire."""

    id = "pref_overfit"
    title = "Near-perfect preference separation early (overfitting)"
    severity = "medium"
    keys = ("rewards/accuracies", "eval_rewards/accuracies")
    splits = ("train", "eval")
    algorithms = frozenset({"dpo", "kto", "orpo", "cpo"})
    action = "Early-stop on eval, raise β, try loss_type='ipo', train fewer epochs."
    reference, url = cite("ipo")
    panels = ("pref_accuracy", "pref_margin", "dpo_loss")

    def __init__(self, feat: PrefFeatures | None = None) -> None:
        self.feat = feat or PrefFeatures()
        self.gap: float | None = None
        self.logs = 10  # logs of evidence for the early branch: 10 steps' worth (on_start)

    def on_start(self, ctx: Context) -> Finding | None:
        self.logs = min(10, max(2, math.ceil(10 / log_interval(ctx))))
        return None

    def check(self, ctx: Context) -> Finding | None:
        v = ctx.values
        f = self.feat.update(ctx)
        acc = f.acc10
        if ctx.split == "eval":
            ea = v["eval_rewards/accuracies"]
            self.gap = acc.mean - ea if acc.full and finite(ea) else None
        if self.gap is not None and self.gap > 0.15:
            return Finding(f"Train win rate (mean of last 10: {_g(acc.mean)}) exceeds the eval win rate by "
                           f"{_g(self.gap)} (> 0.15).", {"train_accuracy_w10": acc.mean, "gap": self.gap})
        if ctx.split != "train" or acc.count < self.logs:
            return None
        epoch = v.get("epoch")
        loss = v.get("loss")
        if epoch is None or epoch >= 0.5 or loss is None or loss >= 0.1:
            return None
        low = min(acc.ordered()[-self.logs:])
        if low >= 0.95 and f.margin20.count >= 2 and f.margin20.slope > 0:
            return Finding(f"Win rate ≥ 0.95 for {self.logs} logs before half of the first epoch (epoch "
                           f"{_g(epoch)}), loss {_g(loss)} < 0.1 and the margin still growing.",
                           {"accuracy_min": low, "logs": self.logs, "loss": loss, "epoch": epoch})
        return None


# learning-rate cut-offs for full fine-tuning (catalog: [P] values, [F] cut-off)
LR_CUTOFF = {"dpo": 1e-5, "orpo": 1e-5, "cpo": 1e-5, "online_dpo": 1e-5, "kto": 5e-6, "simpo": 1e-6}


class PrefHparamsOutOfRange(Rule):
    """Calibrated: the published learning rates are for 7B-scale full fine-tuning. When the model's size is known
    (``n_params`` in the config, filled by the callback) the rule is medium only for models >= 1B parameters and
    low below; unknown size is low. LoRA/PEFT (``peft`` in the config) raises the cut-off 10x."""

    id = "pref_hparams_out_of_range"
    title = "Preference-optimisation hyper-parameters outside reported ranges"
    severity = "medium"
    algorithms = PREF
    action = ("Reported settings: DPO β 0.1 (0.5 TL;DR), lr 1e-6, 150-step warm-up; SimPO lr grid 3e-7–1e-6 "
              "(1e-5 'can significantly degrade performance'), β 2–2.5; KTO lr 5e-7–5e-6 (≤1e-6 at β=0.1). LoRA "
              "tolerates ~10x higher LRs. Small models need higher LRs than these 7B recipes.")
    reference, url = cite("dpo", "App. B", "simpo", "kto", "trl_docs")
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
    reference, url = cite("kto", "trl_docs")
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
