"""Built-in rules. The full literature catalog lives in ``catalog``; this module assembles the default set."""

from __future__ import annotations

import math

from ptt_nb.rules._distributed import distributed_rules
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


def default_rules() -> list[Rule]:
    """Fresh instances of every built-in rule (rules keep per-run state)."""
    rules: list[Rule] = [NonFiniteValues(), *distributed_rules()]
    try:
        from ptt_nb.rules._catalog import catalog_rules
    except ImportError:
        return rules
    by_id = {r.id: r for r in rules}
    for rule in catalog_rules():
        by_id[rule.id] = rule
    return list(by_id.values())


def select_rules(rules: list[Rule], select: list[str] | None = None, exclude: list[str] | None = None) -> list[Rule]:
    """Heuristic selection by id or by id prefix (``"grpo_"``)."""
    def matches(rule_id: str, names: list[str]) -> bool:
        return any(rule_id == n or (n.endswith("*") and rule_id.startswith(n[:-1])) for n in names)

    if select is not None:
        rules = [r for r in rules if matches(r.id, select)]
    if exclude:
        rules = [r for r in rules if not matches(r.id, exclude)]
    return rules
