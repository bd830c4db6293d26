"""``nonfinite_values``: the one rule every run gets, catalog or not (the catalog adds a fast path to it)."""

from __future__ import annotations

import math

from ptt_nb.rules._engine import Context, Finding, Rule

_INF = math.inf


def _nonfinite(value: float) -> bool:
    return value != value or value == _INF or value == -_INF


class NonFiniteValues(Rule):
    """NaN/Inf in the loss or gradient norm: the run is producing garbage from here on.

    transformers' ``logging_nan_inf_filter`` hides a NaN training loss behind the window mean, so a NaN
    gradient norm is often the only sign; both are checked. Under fp16 loss scaling a non-finite gradient
    norm on its own is routine (the scaler skips that step), so it must persist for 3 logs there.
    """

    id = "nonfinite_values"
    title = "Non-finite loss or gradient norm"
    severity = "critical"
    keys = ("loss", "grad_norm", "eval_loss")
    splits = ("train", "eval")
    action = ("Use bf16 rather than fp16 (fp16 often overflows on bf16-pretrained models), lower the learning "
              "rate, compute the loss in fp32, look for bad rows in the batch; fp16 needs fp32 master weights "
              "and loss scaling.")
    reference = ("Micikevicius et al. 2018, Mixed Precision Training, arXiv:1710.03740; Bekman, ML Engineering, "
                 "training/instabilities")
    url = "https://arxiv.org/abs/1710.03740"
    panels = ("dpo_loss", "sft_loss", "optim_grad_norm")

    def __init__(self) -> None:
        self.grad_streak = 0

    def check(self, ctx: Context) -> Finding | None:
        values = ctx.values
        bad = {k: values[k] for k in ("loss", "grad_norm", "eval_loss") if k in values and _nonfinite(values[k])}
        if "grad_norm" in bad:
            self.grad_streak += 1
        elif "grad_norm" in values:
            self.grad_streak = 0
        if not bad:
            return None
        if set(bad) == {"grad_norm"} and ctx.config.get("fp16") and self.grad_streak < 3:
            return None
        names = ", ".join(f"{k}={v}" for k, v in bad.items())
        return Finding(f"Non-finite values at step {ctx.step}: {names}.", evidence=bad)
