"""Preference variants with their own terms: KTO, ORPO, CPO, SimPO."""

from __future__ import annotations

import math

from ptt_nb.rules._catalog_common import _g, _loss_types, _past
from ptt_nb.rules._engine import Context, Finding, Rule
from ptt_nb.rules._references import cite
from ptt_nb.rules._windows import Trend, Window, finite


class KtoKlDegenerate(Rule):
    """Reading chosen here ([F], not calibrated on a real pathology): the catalog's "for Wn" = n consecutive logs."""

    id = "kto_kl_degenerate"
    title = "KTO KL reference point stuck at 0"
    severity = "medium"
    keys = ("kl",)
    algorithms = frozenset({"kto"})
    action = ("The KL reference point needs mismatched pairs: per-device batch > 1 (≥4; effective 16–128); "
              "loss_type='apo_zero_unpaired' has none by design. z0 is clamped ≥ 0, so 0 early on is normal.")
    reference, url = cite("kto", "trl_docs")
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
        return Finding(f"kl = 0 for the last {self.zeros} logs while rewards/chosen = {_g(c)}: the KL reference "
                       "point is not being estimated.", {"kl": kl, "zero_logs": self.zeros, "rewards/chosen": c})


class OrpoOddsNotSeparating(Rule):
    """Calibrated: accuracies are computed on 4-8 pairs per step, so a W10 mean below 0.55 is common in the first
    ~25 steps of a healthy tiny ORPO run (0.525 at step 23 of 55 at lr 1e-4, log odds +0.009; it separated from
    step ~28). It needs a full window of 10 logs and step >= 20 (and frac >= 0.1), and opens as medium; it is
    high (the catalog's severity) once the condition has held for 20 logs in a row (the Engine's count,
    ``held_logs``: the escalation reopens the episode as high)."""

    id = "orpo_odds_not_separating"
    title = "ORPO odds ratio not separating chosen from rejected"
    severity = "high"
    keys = ("log_odds_chosen",)
    algorithms = frozenset({"orpo"})
    action = "Check the data (chosen/rejected), raise λ (TRL `beta`; paper 0.1), check the LR (paper 5e-6)."
    reference, url = cite("orpo", "trl_docs")
    panels = ("orpo_log_odds", "pref_accuracy")

    def __init__(self) -> None:
        self.odds = Window(10)
        self.acc = Window(10)

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
            # calibrated: a healthy tiny ORPO run (lr 1e-4) was not separating yet at step 23 of 55 (W10 win rate
            # 0.525, log odds +0.009) and separated from step ~28: medium first, high once it persists 20 logs
            sev = "high" if self.held_logs >= 20 else "medium"
            ev = {"log_odds_chosen_mean_w10": mo, "logs": self.held_logs}
            if ma is not None:
                ev["accuracy_mean_w10"] = ma
            acc = f", win rate {_g(ma)}" if ma is not None else ""
            return Finding(f"Mean log odds ratio over the last 10 logs is {_g(mo)}{acc} at step {ctx.step} "
                           f"({self.held_logs} logs in a row): the odds-ratio term is not separating chosen from "
                           "rejected.", ev, severity=sev)
        return None


class OrpoCpoNllDiverging(Rule):
    id = "orpo_cpo_nll_diverging"
    title = "SFT (NLL) term rising while the preference margin grows"
    severity = "medium"
    keys = ("nll_loss",)
    algorithms = frozenset({"orpo", "cpo"})
    action = "Lower λ/β, raise cpo_alpha (CPO), lower the LR."
    reference, url = cite("orpo", "cpo")
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
    reference, url = cite("simpo")
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
            return Finding(f"Mean margin over the last 20 logs {_g(mm)} < simpo_gamma {_g(self.gamma)} at step "
                           f"{ctx.step} (30% of training done).", {"margin_mean_w20": mm, "simpo_gamma": self.gamma})
        return None
