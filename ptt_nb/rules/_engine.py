"""The heuristics engine: runs rules on each new log point and turns conditions into alert episodes.

A rule is a condition, not an alarm: the engine opens an episode (one ``active`` alert) when the condition
starts to hold and closes it (a ``resolved`` alert) when it stops holding, so a stuck loss is reported once,
not on every step. Rules are dispatched by the keys they read, so a log point costs only the rules that
can use it, and a rule whose keys never appear stays dormant instead of guessing.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from ptt_nb.events import SEVERITIES, Alert
from ptt_nb.monitor._history import MetricHistory

log = logging.getLogger("ptt_nb.rules")


class RuleError(ValueError):
    """A rule that cannot be loaded, with where and why."""


@dataclass(slots=True)
class Finding:
    """What a rule reports while its condition holds. ``severity`` may escalate the rule's default.

    ``message`` and ``evidence`` may be zero-argument callables: the Engine calls them only when it opens an
    episode, so a condition that holds for a thousand logs formats its text once, not on every check. A rule may
    then return the same Finding each time (bound methods reading its state): the Engine never keeps or changes
    a Finding."""

    message: str | Callable[[], str]
    evidence: dict[str, float] | Callable[[], dict[str, float]] = field(default_factory=dict)
    severity: str | None = None
    action: str | None = None


@dataclass
class Context:
    """What a rule may look at. One object is reused across calls (no allocation per log point)."""

    history: MetricHistory
    algorithm: str = "generic"
    config: dict[str, Any] = field(default_factory=dict)
    max_steps: int | None = None
    step: int = 0
    split: str = "train"
    values: dict[str, float] = field(default_factory=dict)

    @property
    def frac(self) -> float:
        """Fraction of training done; 0 when the length is unknown."""
        return self.step / self.max_steps if self.max_steps else 0.0


class Rule:
    """Base class of built-in and custom rules.

    Subclasses set the class attributes and implement ``check``, returning a Finding while the pathology is
    present and None otherwise; that is all a rule says. Persistence is the Engine's: ``for_logs`` consecutive
    holding checks open an episode, later holding checks keep it open (their Findings are dropped unless they
    carry a more severe ``severity``: an escalation), the first check that returns None closes it.
    ``keys`` are the log keys that trigger a check (any of them present); ``algorithms`` limits the rule to
    profiles (None: every trainer). ``on_start`` is for config-time rules.
    """

    id: str = ""
    title: str = ""
    severity: str = "medium"
    keys: tuple[str, ...] = ()
    splits: tuple[str, ...] = ("train",)
    algorithms: frozenset[str] | None = None
    action: str = ""
    reference: str = ""
    url: str | None = None
    panels: tuple[str, ...] = ()
    cooldown: int = 0  # steps after a resolved episode before a new one may open
    warmup_steps: int = 0  # findings before this global step are ignored (the check still runs: state updates)
    warmup_frac: float = 0.0  # ... and before this fraction of max_steps (when max_steps is known)
    for_logs: int = 1  # consecutive checked log points the condition must hold before an episode opens
    once: bool = False  # after its first episode opens, the rule is never checked again (episode stays open)
    inert: bool = False  # set in ``on_start`` when the run's config makes the rule moot: it is then never checked
    source: str = "built-in"

    _state: RuleState | None = None  # set by the Engine that runs this rule

    @property
    def held_logs(self) -> int:
        """How many consecutive checked log points the condition has held, this one included. For a Finding's
        evidence (read it inside ``check`` when returning a Finding); the Engine does the counting."""
        state = self._state
        return state.streak + 1 if state is not None else 1

    def applies_to(self, algorithm: str) -> bool:
        return self.algorithms is None or algorithm in self.algorithms

    def on_start(self, ctx: Context) -> Finding | None:
        return None

    def check(self, ctx: Context) -> Finding | None:
        raise NotImplementedError


@dataclass
class RuleState:
    rule: Rule
    active: Alert | None = None
    fired: int = 0
    last_resolved: int | None = None
    muted: bool = False
    disabled: str | None = None
    seen_key: bool = False
    done: bool = False  # a ``once`` rule that has fired
    streak: int = 0  # consecutive checks whose condition held (the engine's persistence: ``Rule.for_logs``)


class Engine:
    """Owns the rule states; ``evaluate`` returns the alert events (opened or resolved) of one log point."""

    def __init__(self, rules: Iterable[Rule], ctx: Context) -> None:
        self.ctx = ctx
        self.states: dict[str, RuleState] = {}
        self._by_key: dict[str, list[RuleState]] = {}
        # (split, keys of a log point) -> the states to check, in registration order. TRL logs the same key
        # set at every step, so dispatch costs one tuple hash per log point instead of a walk over the keys.
        self._plans: dict[tuple[str, tuple[str, ...]], list[tuple[RuleState, Any]]] = {}
        self._last: tuple[Any, str, list[tuple[RuleState, Any]]] = (None, "", [])  # keys, split, plan
        self.started = False  # start() ran: a rule added later gets its own on_start when added
        for rule in rules:
            self.add(rule)

    # -- registry ---------------------------------------------------------------------------------------
    def add(self, rule: Rule) -> list[Alert]:
        """Add a rule or replace the one with the same id (custom rules override built-ins). Added after
        ``start()`` (a ``%%ptt`` rule on a running run), it runs its config-time check at once: the alerts of
        that check are returned."""
        if rule.severity not in SEVERITIES:
            raise RuleError(f"rule {rule.id!r}: severity {rule.severity!r} is not one of {', '.join(SEVERITIES)}")
        if rule.id in self.states:
            self.remove(rule.id)
        if not rule.applies_to(self.ctx.algorithm):
            return []
        state = RuleState(rule)
        rule._state = state
        self.states[rule.id] = state
        for key in rule.keys:
            self._by_key.setdefault(key, []).append(state)
        out: list[Alert] = []
        if self.started:
            self._run(state, rule.on_start, out)
        self._invalidate_plans()  # on_start may have made the rule inert
        return out

    def remove(self, rule_id: str) -> None:
        state = self.states.pop(rule_id, None)
        if state is None:
            return
        for key in state.rule.keys:
            lst = self._by_key.get(key, [])
            if state in lst:
                lst.remove(state)
        self._invalidate_plans()

    def set_muted(self, rule_id: str, muted: bool) -> None:
        if rule_id not in self.states:
            raise KeyError(f"no active rule {rule_id!r}; known: {', '.join(sorted(self.states))}")
        self.states[rule_id].muted = muted

    def dormant(self) -> list[str]:
        """Rules none of whose keys has appeared yet (e.g. GRPO ``kl`` when beta=0)."""
        return [rid for rid, s in self.states.items() if s.rule.keys and not s.seen_key]

    # -- evaluation ---------------------------------------------------------------------------------------
    def start(self) -> list[Alert]:
        """Run the config-time checks once, at train begin."""
        out: list[Alert] = []
        self.started = True
        for state in list(self.states.values()):
            self._run(state, state.rule.on_start, out)
        self._invalidate_plans()  # on_start may have made rules inert
        return out

    def evaluate(self, step: int, split: str, values: dict[str, float], keys: tuple[str, ...] | None = None
                 ) -> list[Alert]:
        """``keys``: ``tuple(values)``, passed by a caller that has it; the same tuple object at every step
        (as the Monitor passes it) skips even the plan lookup."""
        ctx = self.ctx
        ctx.step = step
        ctx.split = split
        ctx.values = values
        last_keys, last_split, plan = self._last
        if keys is None or keys is not last_keys or split != last_split:
            if keys is None:
                keys = tuple(values)
            sig = (split, keys)
            plan = self._plans.get(sig)
            if plan is None:
                if len(self._plans) > 256:  # key sets that keep changing: keep the cache bounded
                    self._plans.clear()
                plan = self._plan(split, values)
                self._plans[sig] = plan
            self._last = (keys, split, plan)
        out: list[Alert] = []
        for state, check in plan:
            try:
                finding = check(ctx)
            except Exception as exc:  # a broken rule must never stop training
                self._disable(state, exc, out)
                continue
            if finding is None:
                state.streak = 0
                if state.active is not None:
                    self._resolve(state, step, out)
                continue
            self._holds(state, finding, out)
        return out

    def _invalidate_plans(self) -> None:
        """Rules were added, removed, disabled or finished: dispatch plans are rebuilt on next use."""
        self._plans.clear()
        self._last = (None, "", [])

    def _plan(self, split: str, values: dict[str, float]) -> list[tuple[RuleState, Any]]:
        plan: list[RuleState] = []
        seen: set[int] = set()
        by_key = self._by_key
        for key in values:
            for state in by_key.get(key, ()):
                if id(state) in seen:
                    continue
                seen.add(id(state))
                state.seen_key = True
                if split in state.rule.splits and not (state.disabled or state.done or state.rule.inert):
                    plan.append(state)
        order = {id(s): i for i, s in enumerate(self.states.values())}
        plan.sort(key=lambda s: order[id(s)])
        return [(s, s.rule.check) for s in plan]

    def _run(self, state: RuleState, fn, out: list[Alert]) -> None:
        if state.disabled or state.done:
            return
        try:
            finding = fn(self.ctx)
        except Exception as exc:  # a broken rule must never stop training
            self._disable(state, exc, out)
            return
        if finding is not None:
            self._holds(state, finding, out)
        else:
            state.streak = 0
            if state.active is not None:
                self._resolve(state, self.ctx.step, out)

    def _holds(self, state: RuleState, finding: Finding, out: list[Alert]) -> None:
        """The condition held on this check: the Engine's persistence (``for_logs``, open episode, escalation)."""
        state.streak += 1
        active = state.active
        if active is None:
            if state.streak >= state.rule.for_logs:
                self._open(state, finding, out)
        elif finding.severity and _more_severe(finding.severity, active.severity):
            self._escalate(state, finding, out)

    def _disable(self, state: RuleState, exc: Exception, out: list[Alert]) -> None:
        state.disabled = f"{type(exc).__name__}: {exc}"
        self._invalidate_plans()
        log.warning("ptt_nb: rule %r raised %s and is disabled", state.rule.id, state.disabled)
        out.append(self._rule_error_alert(state))

    def _in_warmup(self, rule: Rule) -> bool:
        ctx = self.ctx
        if ctx.step < rule.warmup_steps:
            return True
        return bool(rule.warmup_frac and ctx.max_steps and ctx.step < rule.warmup_frac * ctx.max_steps)

    def _open(self, state: RuleState, finding: Finding, out: list[Alert], escalation: bool = False) -> None:
        step = self.ctx.step
        rule = state.rule
        if not escalation:
            if (rule.warmup_steps or rule.warmup_frac) and self._in_warmup(rule):
                return
            if state.last_resolved is not None and step - state.last_resolved < rule.cooldown:
                return
        message, evidence = finding.message, finding.evidence
        try:
            if callable(message):
                message = message()
            if callable(evidence):
                evidence = evidence()
            evidence = {k: _num(v) for k, v in evidence.items()}
        except Exception as exc:  # a broken rule must never stop training
            self._disable(state, exc, out)
            return
        state.fired += 1
        alert = Alert(
            id=f"{rule.id}@{step}",
            rule=rule.id,
            severity=finding.severity or rule.severity,
            step=step,
            message=message,
            action=finding.action or rule.action,
            reference=rule.reference,
            url=rule.url,
            evidence=evidence,
            panels=list(rule.panels),
        )
        state.active = alert
        if rule.once:
            state.done = True
            self._invalidate_plans()
        if not state.muted:
            out.append(alert)

    def _escalate(self, state: RuleState, finding: Finding, out: list[Alert]) -> None:
        """A more severe Finding while the episode is open is a new fact worth telling: close the old episode and
        open a more severe one at once (the closed episode did not resolve, so no cooldown applies)."""
        self._resolve(state, self.ctx.step, out)
        self._open(state, finding, out, escalation=True)

    def _resolve(self, state: RuleState, step: int, out: list[Alert]) -> None:
        active = state.active
        assert active is not None
        state.active = None
        state.last_resolved = step
        resolved = Alert(**{**active.__dict__, "state": "resolved", "resolved_step": step})
        if not state.muted:
            out.append(resolved)

    def _rule_error_alert(self, state: RuleState) -> Alert:
        rule = state.rule
        return Alert(
            id=f"rule_error:{rule.id}@{self.ctx.step}",
            rule="rule_error",
            severity="low",
            step=self.ctx.step,
            message=f"Rule {rule.id!r} ({rule.source}) raised {state.disabled} and was disabled; training goes on.",
            action="Fix the rule and load it again (%%ptt or the rule directory).",
            evidence={},
        )


def _more_severe(a: str, b: str) -> bool:
    return SEVERITIES.index(a) < SEVERITIES.index(b)


def _num(value: Any) -> float | str:
    if type(value) is str:  # text evidence: a custom rule's huge int or object, as monitor._normalise records it
        return value
    try:
        return float(value)
    except (TypeError, ValueError, OverflowError):
        return math.nan
