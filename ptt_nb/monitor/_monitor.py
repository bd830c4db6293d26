"""The Monitor: one per run. It owns the profile, metric history, heuristics engine and stop flag, and
publishes every fact as a typed event to its sinks (run folder, widget, console).

Live training, replay and watch all drive the same Monitor: the callback feeds it from TRL's callback
events, the reader feeds it from ``events.jsonl``. Nothing here imports torch, transformers or IPython.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from ptt_nb.events import SEVERITY_RANK, Alert, Control, Event, Metrics, RankStats, RunEnd, RunStart
from ptt_nb.monitor import _normalise as normalise
from ptt_nb.monitor import _profiles as profiles
from ptt_nb.monitor._history import MetricHistory
from ptt_nb.rules._builtin import default_rules, select_rules
from ptt_nb.rules._engine import Context, Engine, Rule

log = logging.getLogger("ptt_nb")

Sink = Callable[[Event], None]

# Deferred rule evaluation (``Monitor.log``): a batch is at most this many points, so a drain stays short ...
DEFER_MAX_POINTS = 32
# ... and only points at least this far apart are batched (closer ones find the caches warm anyway)
DEFER_MIN_GAP_S = 0.001

# Run states shown in the header; derived from the end reason.
STATE_BY_REASON = {
    "finished": "finished",
    "user_stop": "stopped_by_user",
    "auto_stop": "auto_stopped",
    "nonfinite": "auto_stopped",
}


class Monitor:
    """Metric history + heuristics + stop flag for one run, with events fanned out to sinks."""

    def __init__(
        self,
        *,
        select: list[str] | None = None,
        exclude: list[str] | None = None,
        extra_rules: Iterable[Rule] = (),
        stop_on_critical: bool = False,
        evaluate: bool = True,
    ) -> None:
        self.profile = profiles.GENERIC
        self.history = MetricHistory()
        self.run: RunStart | None = None
        self.end_event: RunEnd | None = None
        self.alerts: list[Alert] = []
        self.controls: list[Control] = []
        self.rank_stats: list[RankStats] = []
        self.stop_on_critical = stop_on_critical
        self.evaluate = evaluate
        self._select, self._exclude = select, exclude
        self._extra_rules = list(extra_rules)
        self.ctx = Context(history=self.history)
        self.engine = Engine([], self.ctx)
        self.sinks: tuple[Sink, ...] = ()  # replaced, never mutated: emit iterates without copying
        self.step = 0
        self.max_steps: int | None = None
        self._stop_lock = threading.Lock()
        self.stop_requested = False  # a plain attribute: read at every step boundary, set once under _stop_lock
        self.stop_info: dict[str, Any] | None = None
        self._t_start: float | None = None
        self._rate: float | None = None
        self._last_log_t: tuple[int, float] | None = None
        # Deferred evaluation (live runs without auto-stop): see ``log``. 0 evaluates every point at once.
        self.defer_s = 0.0
        self._deferred: list[tuple[int, str, dict[str, float], tuple[str, ...]]] = []
        self._deferred_since = 0.0
        self._last_log_clock = -math.inf
        self._draining = False
        self._clock = time.perf_counter
        self._other_keys: list[str] = []
        self._train_keys: tuple[str, ...] = ()
        self._profile_keys: list[str] = []
        self.warnings: list[str] = []
        self.run_dir: Any = None  # set by the callback or the reader
        self.postmortem: dict[str, Any] | None = None
        self._sink_failures: dict[int, int] = {}  # id of a keep_attached sink -> its failures
        self._notices: list[Alert] = []  # rule_error alerts about a rule's output that had to be made safe
        self._fixed_rules: set[str] = set()
        self._bad_log_keys: set[Any] = set()
        self.baseline: Any = None  # a monitor._baseline.Baseline drawn beside this run (callback, %ptt compare)

    # -- wiring ---------------------------------------------------------------------------------------------
    def subscribe(self, sink: Sink) -> Callable[[], None]:
        report_to = getattr(sink, "report_to", None)
        if report_to is not None:  # the run folder's writer: its write errors reach ``warnings`` (widget, report)
            report_to(self.warn)
        self.sinks = (*self.sinks, sink)
        return lambda: self._detach(sink)

    def _detach(self, sink: Sink) -> None:
        self.sinks = tuple(s for s in self.sinks if s != sink)  # == : bound methods are new objects

    def emit(self, event: Event) -> None:
        for sink in self.sinks:
            try:
                sink(event)
            except Exception as exc:  # a sink (widget, disk) failing must not stop training
                self._sink_failed(sink, event, exc)

    def _sink_failed(self, sink: Sink, event: Event, exc: Exception) -> None:
        """A failing sink (widget, console, notifier) is detached with a warning and the others go on; the run
        folder's writer (``keep_attached``) never is: it handles its own write errors, and should it still raise,
        it is told once and keeps getting every later event."""
        why = f"{type(exc).__name__}: {normalise.text(exc, 300)}"
        if getattr(sink, "keep_attached", False):
            n = self._sink_failures[id(sink)] = self._sink_failures.get(id(sink), 0) + 1
            if n == 1:
                self.warn(f"ptt_nb: the run-folder writer failed on a {event.kind} event ({why}); it stays attached "
                          "and gets every later event")
            return
        self._detach(sink)
        self.warn(f"ptt_nb: an event sink failed ({why}) and was detached; the run folder and the other sinks go on")

    def warn(self, message: str) -> None:
        self.warnings.append(message)
        log.warning(message)

    # -- lifecycle --------------------------------------------------------------------------------------------
    def start(self, run: RunStart) -> None:
        """Begin (or resume) a run: pick the profile, build the rules, run config-time checks."""
        self.run = run
        self.profile = profiles.get_profile(run.algorithm)
        if not run.panels:
            run.panels = [dict(p) for p in self.profile.panels]
        self._profile_keys = self.profile.panel_keys()
        self.max_steps = run.max_steps
        self.ctx.algorithm = run.algorithm
        self.ctx.config = run.config
        self.ctx.max_steps = run.max_steps
        if self.evaluate:
            self.engine = Engine(select_rules(default_rules(), self._select, self._exclude), self.ctx)
            for rule in self._extra_rules:  # custom rules override built-ins with the same id
                self.engine.add(normalise.guard_rule(rule, self._rule_output_fixed))
        self._t_start = run.t
        self.emit(run)
        if self.evaluate:
            self._publish_alerts(self._with_notices(self.engine.start()))

    def log(self, step: int, values: dict[str, float], split: str = "train", t: float | None = None, *,
            floats: bool = False) -> list[Alert]:
        """Ingest one log point; returns the alerts it opened or resolved (none yet when it was deferred).

        A value that is not a number a float can hold is left out (one warning per key) and a key no sink could
        write is made safe (``_normalise``); ``floats=True`` says every value already is a plain float (the
        callback's ``_numeric`` makes them so), which skips that test (~0.5 us a step for 20 keys).

        The point is recorded (event sinks, run folder) at once. With ``defer_s`` > 0 (live runs that do not
        auto-stop) the history and the rules take it in a short batch instead: at most ``defer_s`` seconds
        later, at a log point or a step boundary, every point still in its own order. A live run evicts the
        CPU caches between steps, so the rules cost ~5x more on a lone cold point than in a batch; alerts
        keep their exact step and come at most ``defer_s`` late. Points that arrive ``defer_s`` or more apart
        (slow steps, where the cost does not matter) are never held back, nor are points less than
        ``DEFER_MIN_GAP_S`` apart (nothing ran in between to evict the caches, so a batch would gain nothing).
        """
        if not floats and not normalise.floats_only(values):  # TRL logs plain floats: nothing to do then
            values = normalise.log_values(values, step, self._bad_log_keys, self.warn)
        for name, _formula, fn in self.profile.derived:
            if split == "train":
                value = fn(values)
                if value is not None:
                    values[name] = value
        keys = tuple(values)
        if split == "train":
            if keys != self._train_keys:  # TRL logs the same keys every step: look for new ones only on a change
                clean = normalise.log_keys(values)  # a key no sink can write (not text, a lone surrogate)
                if clean is not None:
                    values, keys = clean, tuple(clean)
                self._train_keys = keys
                for key in values:
                    if key not in self.history and key not in self._other_keys and not self._is_profile_key(key):
                        self._other_keys.append(key)
            else:
                keys = self._train_keys  # one tuple object per key set: identity checks in history and engine
        else:
            clean = normalise.log_keys(values)
            if clean is not None:
                values, keys = clean, tuple(clean)
        if t is None:
            t = time.time()
        if split == "train":  # steps/s for the ETA: an EWMA over log points (inline: this runs every step)
            last = self._last_log_t
            if last is not None and step > last[0]:
                rate = (step - last[0]) / max(t - last[1], 1e-9)
                self._rate = rate if self._rate is None else 0.9 * self._rate + 0.1 * rate
            self._last_log_t = (step, t)
        self.emit(Metrics(step=step, split=split, values=values, t=t))
        if step > self.step:
            self.step = step
        if self.defer_s:
            clock = self._clock()
            gap = clock - self._last_log_clock
            self._last_log_clock = clock
            deferred = self._deferred
            if deferred:
                deferred.append((step, split, values, keys))
                if clock - self._deferred_since >= self.defer_s or len(deferred) >= DEFER_MAX_POINTS:
                    self.drain()
                return []
            if DEFER_MIN_GAP_S <= gap < self.defer_s:
                deferred.append((step, split, values, keys))
                self._deferred_since = clock
                return []
        return self._ingest(step, split, values, keys)

    def _ingest(self, step: int, split: str, values: dict[str, float], keys: tuple[str, ...]) -> list[Alert]:
        self.history.add(step, split, values, keys)
        if not self.evaluate or split == "summary":
            return []
        alerts = self.engine.evaluate(step, split, values, keys)
        if self._notices:
            alerts = self._with_notices(alerts)
        if alerts:
            self._publish_alerts(alerts)
        return alerts

    def _rule_output_fixed(self, rule: Rule, fixes: list[str]) -> None:
        """A custom rule's output had to be made safe (``_normalise.guard_rule``): say so once per rule, as a
        ``rule_error`` alert; the rule keeps running."""
        if rule.id in self._fixed_rules:
            return
        self._fixed_rules.add(rule.id)
        step = self.ctx.step
        what = "; ".join(fixes[:3]) + (f"; and {len(fixes) - 3} more" if len(fixes) > 3 else "")
        self._notices.append(Alert(
            id=f"rule_output:{rule.id}@{step}", rule="rule_error", severity="low", step=step,
            message=f"Rule {rule.id!r} ({rule.source}) returned output that ptt_nb had to make safe to record: "
                    f"{what}. The rule keeps running.",
            action="Return text for message and action, and plain numbers in evidence (see Finding).",
            evidence={}))

    def _with_notices(self, alerts: list[Alert]) -> list[Alert]:
        if not self._notices:
            return alerts
        notices, self._notices = self._notices, []
        return notices + alerts

    def drain(self) -> list[Alert]:
        """Take every deferred log point into the history and rules now (on the thread that feeds the run).

        Re-entry (a SIGTERM handler finishing the run while a batch is being evaluated) returns at once: the
        interrupted batch is left to complete rather than run a rule twice over half-updated state."""
        out: list[Alert] = []
        if self._draining:
            return out
        self._draining = True
        try:
            while self._deferred:
                deferred, self._deferred = self._deferred, []
                for step, split, values, keys in deferred:
                    out.extend(self._ingest(step, split, values, keys))
        finally:
            self._draining = False
        return out

    def _is_profile_key(self, key: str) -> bool:
        return any(profiles.match_key(p, key) for p in self._profile_keys)

    def _publish_alerts(self, alerts: list[Alert]) -> None:
        for alert in alerts:
            self.add_alert(alert)
            if (self.stop_on_critical and alert.severity == "critical" and alert.state == "active"
                    and not self.stop_requested):
                reason = "nonfinite" if alert.rule == "nonfinite_values" else "auto_stop"
                self.request_stop(by="auto_stop", reason=reason, alert=alert)

    def add_rule(self, rule: Rule) -> list[Alert]:
        """Add (or replace) a rule on a run that may already be going; its config-time check runs at once.
        Call it on the thread that feeds this Monitor (``session.Applier`` does)."""
        alerts = self._with_notices(self.engine.add(normalise.guard_rule(rule, self._rule_output_fixed)))
        if alerts:
            self._publish_alerts(alerts)
        return alerts

    def add_alert(self, alert: Alert) -> None:
        """Record an alert event (from the engine, a distributed check, or a replayed file), made safe first."""
        normalise.alert(alert)
        if alert.state == "resolved":
            for i in range(len(self.alerts) - 1, -1, -1):
                if self.alerts[i].id == alert.id:
                    self.alerts[i] = alert
                    break
            else:
                self.alerts.append(alert)
        else:
            self.alerts.append(alert)
        self.emit(alert)

    def add_rank_stats(self, stats: RankStats) -> list[Alert]:
        """Record one interval of per-rank stats and run the distributed heuristics on it (live and replay)."""
        self.drain()  # rank rules and metric rules then see steps in order
        self.rank_stats.append(stats)
        if len(self.rank_stats) > 4096:  # bounded: keep the newest intervals
            del self.rank_stats[:1024]
        self.emit(stats)
        if not self.evaluate or self.run is None:
            return []
        from ptt_nb.rules._distributed import RANK_SPLIT, rank_values

        alerts = self._with_notices(self.engine.evaluate(stats.step, RANK_SPLIT, rank_values(stats)))
        if alerts:
            self._publish_alerts(alerts)
        return alerts

    def step_end(self, step: int) -> bool:
        """Called at every optimizer-step boundary; returns True when training should stop now."""
        if step > self.step:
            self.step = step
        if self._deferred and self._clock() - self._deferred_since >= self.defer_s:
            self.drain()
        return self.stop_requested

    # -- stop ----------------------------------------------------------------------------------------------------
    def request_stop(self, by: str = "user", reason: str = "user_stop", alert: Alert | None = None) -> None:
        """Thread-safe: may be called from a widget's subshell thread or a magic while training runs."""
        with self._stop_lock:
            if self.stop_requested:
                return
            self.stop_info = {"by": by, "reason": reason, "alert": alert.__dict__ if alert else None}
            self.stop_requested = True
        control = Control(action="stop", step=self.step, by=by, reason=reason,
                          detail={"rule": alert.rule, "alert_id": alert.id} if alert else {})
        self.controls.append(control)
        self.emit(control)

    def finish(self, reason: str, step: int | None = None, detail: str = "", t: float | None = None) -> RunEnd:
        if self.end_event is not None:
            return self.end_event
        self.drain()
        self.end_event = RunEnd(reason=reason, step=self.step if step is None else step, detail=detail)
        if t is not None:  # replay keeps the recorded end time
            self.end_event.t = t
        self.emit(self.end_event)
        return self.end_event

    def end_reason_for_normal_return(self) -> str:
        """Why ``train()`` returned: a stop we asked for, or the schedule ran out."""
        if self.stop_info:
            return self.stop_info["reason"]
        return "finished"

    # -- rules ---------------------------------------------------------------------------------------------------
    def mute(self, rule_id: str, muted: bool = True, by: str = "user") -> None:
        self.engine.set_muted(rule_id, muted)
        control = Control(action="mute" if muted else "unmute", step=self.step, by=by, detail={"rule": rule_id})
        self.controls.append(control)
        self.emit(control)

    # -- views -----------------------------------------------------------------------------------------------------
    @property
    def state(self) -> str:
        if self.end_event is None:
            return "running" if self.run else "idle"
        return STATE_BY_REASON.get(self.end_event.reason, "crashed")

    def status(self) -> dict[str, Any]:
        eta = None
        if self._rate and self.max_steps and self.end_event is None:
            eta = max(0.0, (self.max_steps - self.step) / self._rate)
        return {
            "state": self.state,
            "step": self.step,
            "max_steps": self.max_steps,
            "eta_s": eta,
            "steps_per_s": self._rate,
            "trainer": self.run.trainer if self.run else "",
            "algorithm": self.run.algorithm if self.run else "",
            "reason": self.end_event.reason if self.end_event else None,
            "stop_requested": self.stop_requested,
        }

    def other_keys(self) -> list[str]:
        return list(self._other_keys)

    def panels(self) -> list[dict[str, Any]]:
        """The profile's panels with key patterns resolved, plus one "other" panel per unmapped key."""
        train_keys = self.history.keys("train")
        eval_keys = set(self.history.keys("eval"))
        out: list[dict[str, Any]] = []
        for spec in (self.run.panels if self.run else self.profile.panels):
            resolved = []
            for s in spec["series"]:
                pattern = s["key"]
                keys = [k for k in train_keys if profiles.match_key(pattern, k)] if "*" in pattern else [pattern]
                for key in keys:
                    label = s.get("label", key) if key == pattern else key
                    if key in train_keys:
                        resolved.append({"key": key, "label": label, "split": "train"})
                    if "eval_" + key in eval_keys:
                        resolved.append({"key": "eval_" + key, "label": f"{label} (eval)", "split": "eval"})
            if resolved:
                out.append({**spec, "series": resolved})
        for key in self._other_keys:
            if key in profiles.BOOKKEEPING_KEYS:
                continue
            series = [{"key": key, "label": key, "split": "train"}]
            if "eval_" + key in eval_keys:
                series.append({"key": "eval_" + key, "label": f"{key} (eval)", "split": "eval"})
            out.append({"id": f"other:{key}", "title": key, "series": series, "refs": [], "y_scale": "linear",
                        "y_label": "", "group": "other"})
        return out

    def alerts_by_severity(self) -> dict[str, int]:
        counts = {s: 0 for s in SEVERITY_RANK}
        for a in self.alerts:
            counts[a.severity] = counts.get(a.severity, 0) + 1
        return counts

    # -- replay -------------------------------------------------------------------------------------------------------
    def apply(self, event: Event) -> None:
        """Feed a recorded event (reader/follower). Recorded alerts are taken as they are."""
        if isinstance(event, RunStart):
            if self.run is None:
                self.start(event)
            else:  # a resumed segment
                self.run.max_steps = event.max_steps or self.run.max_steps
                self.max_steps = self.run.max_steps
                self.end_event = None
                self.emit(event)
        elif isinstance(event, Metrics):
            self.log(event.step, event.values, event.split, t=event.t)
        elif isinstance(event, Alert):
            self.add_alert(event)
        elif isinstance(event, RankStats):
            self.add_rank_stats(event)
        elif isinstance(event, Control):
            self.controls.append(event)
            if event.action == "stop":
                self.stop_info = {"by": event.by, "reason": event.reason, "alert": None}
            self.emit(event)
        elif isinstance(event, RunEnd):
            self.end_event = None
            self.finish(event.reason, event.step, event.detail, t=event.t)
