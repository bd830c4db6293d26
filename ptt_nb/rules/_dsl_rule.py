"""The Rule built from an expression-language condition (a YAML pack entry, a ``%%ptt`` cell or a one-line string).

The rule itself is stateless across log points: it returns a Finding whenever its condition holds, and the
Engine applies ``for:`` (``Rule.for_logs``: that many consecutive checked log points before an episode opens),
holds the open episode and resolves it when the condition stops holding, exactly as for built-in rules.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from ptt_nb.rules._dsl import Expr, Template, split_of
from ptt_nb.rules._engine import Context, Finding, Rule, RuleError
from ptt_nb.rules._rule_fields import _describe
from ptt_nb.rules._rule_keys import known_keys, metric_warnings

log = logging.getLogger("ptt_nb.rules")


def _splits(keys: Iterable[str]) -> tuple[str, ...]:
    """An expression over eval metrics runs at eval log points; any other at train log points."""
    return ("eval",) if any(split_of(k) == "eval" for k in keys) else ("train",)


def keyless_problem(expr: Expr) -> str | None:
    """An expression naming no metric runs once at train start (a config check); with step/frac it makes no sense."""
    if expr.keys or not expr.uses_step:
        return None
    return ("the expression names no metric, so it would never run: name one (e.g. `loss`) or set keys: "
            "(an expression over config values alone runs once, at train start)")


class DslRule(Rule):
    """A rule written in the expression language (from YAML, a cell or a string). An expression that names no
    metric (only ``config.*``) is a config-time rule: it runs once, at train start. ``for_logs`` is YAML's
    ``for:`` (or the ``for N steps`` suffix of the condition)."""

    def __init__(self, *, id: str, when: Expr, for_logs: int = 1, severity: str = "medium",
                 message: Template | None = None, title: str = "", action: str = "", reference: str = "",
                 url: str | None = None, algorithms: Iterable[str] | None = None, panels: Iterable[str] = (),
                 keys: Iterable[str] | None = None, cooldown: int = 0, warmup_steps: int = 0,
                 warmup_frac: float = 0.0, once: bool = False, source: str = "custom") -> None:
        _describe(self, id, severity, message, title, action, reference, url, algorithms, panels)
        self.expr = when
        self.for_logs = for_logs
        self.keys = tuple(keys) if keys else when.keys
        if not self.keys and when.uses_step:
            raise RuleError(f"{source}: {keyless_problem(when)}")
        self.metric_keys = tuple(dict.fromkeys([*when.keys, *(message.keys if message else ())]))
        self.splits = _splits(self.keys)
        self.cooldown = cooldown
        self.warmup_steps, self.warmup_frac, self.once = warmup_steps, warmup_frac, once
        self.source = source
        self.warnings: list[str] = []
        self._warned = False

    @property
    def when(self) -> str:
        return self.expr.text

    @property
    def for_steps(self) -> int:
        """The name YAML's ``for:`` had before the Engine counted it (read-only; ``for_logs`` is the field)."""
        return self.for_logs

    def on_start(self, ctx: Context) -> Finding | None:
        if not self._warned:
            self._warned = True
            for text in metric_warnings(self, known_keys(ctx.algorithm, ctx.history)):
                self.warnings.append(text)
                log.warning("ptt_nb: %s", text)
        if not self.keys:  # config-time rule
            return self.check(ctx)
        return None

    def check(self, ctx: Context) -> Finding | None:
        if not self.expr.holds(ctx):  # False, or None while not ready
            return None
        value = self.expr.value(ctx)
        evidence = {}
        if self.expr.value_fn is not None:
            evidence["value"] = value
        for key in self.expr.keys:
            s = ctx.history.series.get((split_of(key), key))
            if s is not None and s.n:
                evidence[key] = float(s.values[s.n - 1])
        if self.message is not None:
            message = self.message.render(ctx, value, self.id)
        else:
            held = f" for {self.for_logs} log points" if self.for_logs > 1 else ""
            shown = f" ({self.expr.value_text} = {value:.4g})" if self.expr.value_fn is not None else ""
            when = " ".join(self.expr.text.split())
            message = f"{self.title}: {when} held{held} at step {ctx.step}{shown}."
        return Finding(message, evidence=evidence)
