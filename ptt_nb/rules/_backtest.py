"""Backtest: where would a rule have fired on a run so far? (The API under the ``%%ptt`` cell magic.)

The recorded train/eval series are replayed log point by log point, in step order (train before eval at the
same step, as TRL logs them), through a fresh Engine that holds only the rule, so episodes, ``for N steps``
streaks, cooldowns and runtime errors behave exactly as they would have live. Only the keys the rule reads
are replayed when they are known (expression rules), which keeps a 10k-step history well under a second.
"""

from __future__ import annotations

import copy
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from ptt_nb.events import Alert
from ptt_nb.monitor._history import MetricHistory, Series
from ptt_nb.rules._custom import DslRule, FunctionRule, as_rules, known_keys, metric_warnings
from ptt_nb.rules._dsl import split_of
from ptt_nb.rules._engine import Context, Engine, Rule, RuleError

EXAMPLES = 3  # episodes whose evidence and message ``examples``/``messages`` list
SEVERITY_RANK = {"critical": 0, "high": 1, "medium": 2, "low": 3}


@dataclass
class Firing:
    """One episode of a backtest: where the rule's alert opened, where it resolved (None: still open at the end of
    the history), and that alert's severity, message and evidence."""

    step: int
    resolved_step: int | None
    severity: str
    message: str
    evidence: dict[str, float] = field(default_factory=dict)


@dataclass
class BacktestResult:
    """What a rule would have done on a recorded history: the one backtest result type, from ``backtest`` through
    the ``%%ptt`` table to the dashboard's ``backtest`` message (``notebook._messages.backtest_entry``)."""

    rule_id: str
    firings: list[Firing] = field(default_factory=list)  # the episodes, in step order
    severity: str = ""  # the rule's severity ("" for a result rebuilt from marker alerts)
    alerts: list[Alert] = field(default_factory=list)  # every alert event (opened, resolved, rule_error)
    log_points: int = 0  # log points replayed
    checked: int = 0  # log points at which the rule ran (one of its keys present, its split)
    error: str | None = None  # the rule raised and would have been disabled (with the step)
    warnings: list[str] = field(default_factory=list)
    keys: tuple[str, ...] = ()  # the keys the rule reads
    panels: tuple[str, ...] = ()  # dashboard panels to mark (the rule's own, else those plotting its keys)
    elapsed_s: float = 0.0

    @property
    def steps(self) -> list[int]:
        """Steps where an episode opened."""
        return [f.step for f in self.firings]

    @property
    def episodes(self) -> list[tuple[int, int | None]]:
        """(opened, resolved or None if still open) per episode."""
        return [(f.step, f.resolved_step) for f in self.firings]

    @property
    def examples(self) -> list[dict[str, float]]:
        """Evidence of the first few episodes."""
        return [dict(f.evidence) for f in self.firings[:EXAMPLES]]

    @property
    def messages(self) -> list[str]:
        """Messages of the first few episodes."""
        return [f.message for f in self.firings[:EXAMPLES]]

    @property
    def count(self) -> int:
        return len(self.firings)

    @property
    def first_step(self) -> int | None:
        return self.steps[0] if self.steps else None

    @property
    def top_severity(self) -> str:
        """The highest severity among the episodes (the rule's when there are none)."""
        return min((f.severity or "low" for f in self.firings), key=lambda s: SEVERITY_RANK.get(s, 4),
                   default=self.severity or "low")

    def summary(self) -> str:
        if self.error:
            head = f"{self.rule_id}: raised at run time and would have been disabled: {self.error}"
        elif not self.steps:
            head = f"{self.rule_id}: would not have fired ({self.checked} of {self.log_points} log points checked)"
        else:
            shown = ", ".join(str(s) for s in self.steps[:10]) + (" ..." if len(self.steps) > 10 else "")
            head = (f"{self.rule_id}: would have fired {self.count} time(s), first at step {self.first_step} "
                    f"(steps {shown})")
        return "\n".join([head, *self.warnings])

    @classmethod
    def from_alerts(cls, rule_id: str, alerts: Any) -> BacktestResult:
        """A result rebuilt from alert-like objects (``events.Alert`` or dicts): the marker alerts of
        ``notebook._cell_rules.marker_alerts`` (state ``backtest``, one per episode, ``resolved_step`` set) or
        a rule's alert events (``active`` opens an episode, ``resolved`` ends the open one)."""
        result = cls(rule_id=str(rule_id))
        panels: list[str] = []
        for a in sorted((a for a in alerts or () if isinstance(_get(a, "step"), (int, float))),
                        key=lambda a: _get(a, "step")):
            _add_episode(result, a)
            for pid in _get(a, "panels") or []:
                if str(pid) not in panels:
                    panels.append(str(pid))
        result.panels = tuple(panels)
        return result


def _get(obj: Any, name: str, default: Any = None) -> Any:
    return obj.get(name, default) if isinstance(obj, dict) else getattr(obj, name, default)


def _add_episode(result: BacktestResult, alert: Any) -> None:
    """Fold one alert event into ``result.firings``."""
    state = _get(alert, "state")
    if state == "resolved":
        if result.firings and result.firings[-1].resolved_step is None:
            result.firings[-1].resolved_step = _get(alert, "resolved_step")
        return
    resolved = _get(alert, "resolved_step") if state == "backtest" else None
    result.firings.append(Firing(int(_get(alert, "step")), resolved, str(_get(alert, "severity") or "low"),
                                 str(_get(alert, "message") or ""), dict(_get(alert, "evidence") or {})))




def backtest(rule: Any, history: MetricHistory, *, algorithm: str = "generic", config: dict[str, Any] | None = None,
             max_steps: int | None = None) -> BacktestResult:
    """Replay ``history`` through a fresh Engine holding only ``rule`` (a Rule, an ``@rule`` function or one
    rule string). ``algorithm`` and ``config`` are the run's (they decide ``algorithms:`` filters and
    ``config.*`` values); ``max_steps`` gives ``frac``."""
    rules = as_rules(rule)
    if len(rules) != 1:
        raise RuleError(f"backtest takes one rule, got {len(rules)}; use backtest_many for a rule pack")
    return _run(rules[0], history, algorithm, config or {}, max_steps)


def backtest_many(rules: Any, history: MetricHistory, *, algorithm: str = "generic",
                  config: dict[str, Any] | None = None, max_steps: int | None = None) -> list[BacktestResult]:
    """``backtest`` for each rule of a pack (each in its own fresh Engine, so they cannot mask each other)."""
    return [_run(r, history, algorithm, config or {}, max_steps) for r in as_rules(rules)]


class _ReplayHistory(MetricHistory):
    """A history that grows over recorded arrays: each series holds the full recorded columns and a log point
    only advances its length, so a rule sees exactly the prefix it would have seen live, at O(1) per point."""

    def __init__(self, recorded: MetricHistory, keys: list[tuple[str, str]] | None) -> None:
        # deliberately not MetricHistory.__init__: the columns are ready-made, nothing is queued
        self.cap = recorded.cap
        self._latest: dict[str, float] = {}
        self._latest_eval: dict[str, float] = {}
        self.summary: dict[str, float] = {}
        self.last_step = 0
        self._pending: list = []
        self._lock = threading.Lock()
        self._replay: dict[tuple[str, str], Series] = {}
        self._full: dict[tuple[str, str], Series] = {}
        source = recorded.series
        for sk in (source if keys is None else keys):
            if sk not in source or sk[0] not in ("train", "eval"):
                continue
            steps, values = source[sk].arrays()
            s = Series(recorded.cap, initial=1)
            s.steps, s.values, s.n = steps.copy(), values.copy(), 0
            self._full[sk] = s
        self._series = self._replay

    @property
    def series(self) -> dict[tuple[str, str], Series]:
        return self._replay

    @series.setter
    def series(self, value: dict[tuple[str, str], Series]) -> None:
        self._replay = value

    def flush(self) -> None:
        return None

    def points(self) -> list[tuple[int, str, dict[str, float]]]:
        """The recorded log points (step, split, values) in replay order: by step, train before eval; a key
        logged twice at one step (a resumed run) starts a new point so each value is replayed once."""
        # series logged at the same steps (the usual case: one TRL log dict) are merged as one group, so the
        # sort below handles one event per log point and group, not one per key
        groups: dict[tuple[str, bytes], list[tuple[str, str]]] = {}
        for sk, s in self._full.items():
            groups.setdefault((sk[0], s.steps.tobytes()), []).append(sk)
        events = []
        members: list[list[tuple[str, list[float]]]] = []
        for gid, ((split, _), sks) in enumerate(groups.items()):
            order = 0 if split == "train" else 1
            members.append([(sk[1], self._full[sk].values.tolist()) for sk in sks])
            steps = self._full[sks[0]].steps.tolist()
            events.extend((step, order, i, gid) for i, step in enumerate(steps))
        events.sort()
        out: list[tuple[int, str, dict[str, float]]] = []
        current: tuple[int, int] | None = None
        vals: dict[str, float] = {}
        for step, order, i, gid in events:
            group = members[gid]
            if (step, order) != current or group[0][0] in vals:
                vals = {}
                out.append((step, "train" if order == 0 else "eval", vals))
                current = (step, order)
            for key, values in group:
                vals[key] = values[i]
        return out

    def add(self, step: int, split: str, values: dict[str, float], keys: tuple[str, ...] | None = None) -> None:
        """Advance the given series by one point (the values are the recorded ones, in order)."""
        replay, full = self._replay, self._full
        for key in values:
            sk = (split, key)
            s = replay.get(sk)
            if s is None:
                s = replay[sk] = full[sk]
            s.n += 1
        (self._latest if split == "train" else self._latest_eval).update(values)
        if step > self.last_step:
            self.last_step = step


def _fresh(rule: Rule) -> Rule:
    """A rule with no per-run state: custom rules are copied (``on_start`` resets them); other rules (built-ins
    keep window state, possibly shared) are rebuilt from their class when it takes no arguments."""
    if isinstance(rule, (DslRule, FunctionRule)):
        return copy.copy(rule)
    try:
        fresh = type(rule)()
    except TypeError:
        return copy.deepcopy(rule)
    for name in ("id", "severity"):  # instance-level overrides (e.g. %%ptt --severity) carry over
        if name in vars(rule):
            setattr(fresh, name, vars(rule)[name])
    return fresh


def _run(rule: Rule, history: MetricHistory, algorithm: str, config: dict[str, Any],
         max_steps: int | None) -> BacktestResult:
    t0 = time.perf_counter()
    rule = _fresh(rule)  # the same object may be live in a Monitor: never touch its state
    if isinstance(rule, DslRule):
        rule.warnings = []
        rule._warned = True  # warnings go into the result instead of the log
    result = BacktestResult(rule_id=rule.id, severity=rule.severity, keys=tuple(rule.keys),
                            panels=tuple(getattr(rule, "panels", ()) or ()))
    if isinstance(rule, DslRule):
        result.warnings = metric_warnings(rule, known_keys(algorithm, history))
        keys = list(dict.fromkeys([*rule.metric_keys, *rule.keys]))
        selection: list[tuple[str, str]] | None = [(split_of(k), k) for k in keys]
    else:
        selection = None  # a Python rule may read any key
    replay = _ReplayHistory(history, selection)
    ctx = Context(history=replay, algorithm=algorithm, config=dict(config), max_steps=max_steps)
    engine = Engine([rule], ctx)
    if rule.id not in engine.states:
        result.warnings.append(f"rule {rule.id!r} does not apply to algorithm {algorithm!r} (algorithms: "
                               f"{', '.join(sorted(rule.algorithms or ()))})")
        result.elapsed_s = time.perf_counter() - t0
        return result
    state = engine.states[rule.id]
    alerts = engine.start()
    points = replay.points()
    splits, rkeys = rule.splits, rule.keys
    for step, split, values in points:
        replay.add(step, split, values)
        if split in splits and any(k in values for k in rkeys):
            result.checked += 1
        alerts.extend(engine.evaluate(step, split, values))
        if state.disabled:
            break
    result.log_points = len(points)
    for alert in alerts:
        result.alerts.append(alert)
        if alert.rule == "rule_error":
            result.error = f"{state.disabled} (at step {alert.step})"
        elif alert.state in ("active", "resolved"):
            _add_episode(result, alert)
    result.elapsed_s = time.perf_counter() - t0
    return result
