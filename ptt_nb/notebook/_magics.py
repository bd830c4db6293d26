"""``%ptt`` and ``%%ptt``: drive ptt_nb from notebook cells.

``%ptt show|status|rules|mute|unmute|stop|train|watch|replay|report`` act on the current run (the one training
in this kernel, being watched, or replayed; see ``session``). ``%%ptt`` takes custom rules (rule language, or a
Python function decorated with ``@rule``), backtests them on the current run's history, shows where they would
have fired, and adds them to the live engine. User mistakes end in a short ``UsageError`` (no traceback) that
points at the cell line and column; nothing a magic does can break a run that is training.
"""

from __future__ import annotations

import argparse
import re
import shlex
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from IPython.core.error import UsageError
from IPython.core.magic import Magics, line_cell_magic, magics_class
from IPython.display import display

from ptt_nb.monitor._monitor import Monitor
from ptt_nb.notebook._magic_helpers import (  # noqa: F401 - LINE_HELP, Table: re-exported
    LINE_HELP,
    Table,
    _cell_parser,
    _HelpShown,
    _is_custom,
    _job_text,
    _line_parser,
    _status_text,
    _suggest,
    _user_names,
    panel_ids_for,
    rules_table,
    snapshot_history,
)
from ptt_nb.notebook._session import SESSION, RuleSource, wait_for_run, wait_job  # noqa: F401 - wait_job: re-exported
from ptt_nb.notebook._training_job import job_outcome
from ptt_nb.rules._backtest import BacktestResult

REGISTER_WAIT_S = 20.0  # how long ``%ptt train`` waits for train begin before returning without a dashboard


# -- the magics -----------------------------------------------------------------------------------------------------
@magics_class
class PttMagics(Magics):
    """``%ptt`` / ``%%ptt``. State lives in ``ptt_nb.notebook._session.SESSION`` (one per kernel)."""

    @line_cell_magic
    def ptt(self, line: str, cell: str | None = None) -> None:
        try:
            if cell is None:
                self._line(line)
            else:
                self._cell(line, cell)
        except _HelpShown:
            return None

    # -- line magic ------------------------------------------------------------------------------------------
    def _line(self, line: str) -> None:
        try:
            argv = shlex.split(line)
        except ValueError as exc:
            raise UsageError(f"%ptt: cannot parse the line ({exc})") from None
        if not argv or argv[0] == "help":
            print(LINE_HELP)
            return
        args = _line_parser().parse_args(argv)
        handler: Callable[[argparse.Namespace], None] = getattr(self, f"_cmd_{args.command}")
        handler(args)

    def _current(self, what: str) -> Monitor:
        monitor = SESSION.monitor
        if monitor is None:
            raise UsageError(f"%ptt {what}: no run yet in this kernel. Train with DiagnosticsCallback() (or "
                             "`%ptt train TRAINER`), or load one with `%ptt replay RUN_DIR` / `%ptt watch RUN_DIR`.")
        return monitor

    def _cmd_show(self, args: argparse.Namespace) -> None:
        self._show(self._current("show"))

    def _show(self, monitor: Monitor) -> Any:
        try:
            from ptt_nb.notebook._widget import show
        except ImportError as exc:
            print(f"ptt_nb: the dashboard is unavailable here ({exc}); the run's status instead:")
            print(_status_text(monitor))
            return None
        replay = SESSION.source == "replay" if monitor is SESSION.monitor else None
        if monitor is SESSION.monitor and SESSION.source in ("live", "watch"):
            replay = False
        dash = show(monitor, replay=replay)
        if monitor is SESSION.monitor:
            SESSION.dashboard = dash
        return dash

    def _cmd_status(self, args: argparse.Namespace) -> None:
        monitor = SESSION.monitor
        lines = [_status_text(monitor, SESSION.source) if monitor is not None else "no current run"]
        job = SESSION.job
        if job is not None:
            lines.append(_job_text(job))
        if SESSION.watcher is not None:
            lines.append("watch: " + SESSION.watcher.describe())
        if SESSION.rules:
            lines.append("session rules (%%ptt): " + ", ".join(SESSION.rules))
        if monitor is not None:
            pending = SESSION.applier(monitor).pending
            if pending:
                lines.append("waiting for the next log point: " + ", ".join(label for label, _ in pending))
            errors = SESSION.applier(monitor).errors
            lines.extend(errors[-3:])
            lines.extend(monitor.warnings[-3:])
        print("\n".join(lines))
        self._report_job()

    def _cmd_rules(self, args: argparse.Namespace) -> None:
        monitor = self._current("rules")
        display(rules_table(monitor))

    def _rule_state(self, monitor: Monitor, rule_id: str, what: str) -> None:
        known = list(monitor.engine.states)
        if rule_id not in monitor.engine.states:
            if not monitor.evaluate:
                raise UsageError(f"%ptt {what}: this run was replayed: its rules are not running here (its recorded "
                                 "alerts are shown as they were)")
            if SESSION.source == "watch" and any(a.rule == rule_id for a in monitor.alerts):
                raise UsageError(f"%ptt {what}: {rule_id!r} runs in the process writing this run, not here; mute it "
                                 "there (or exclude_rules=[...] in its DiagnosticsCallback)")
            raise UsageError(f"%ptt {what}: no rule {rule_id!r} in the current run{_suggest(rule_id, known)}")

    def _cmd_mute(self, args: argparse.Namespace, muted: bool = True) -> None:
        monitor = self._current("mute" if muted else "unmute")
        what = "mute" if muted else "unmute"
        self._rule_state(monitor, args.rule, what)
        now = SESSION.applier(monitor).submit(f"{what} {args.rule}", lambda: monitor.mute(args.rule, muted))
        when = "" if now else " (from the next log point)"
        print(f"{args.rule}: {'muted' if muted else 'unmuted'}{when}")

    def _cmd_unmute(self, args: argparse.Namespace) -> None:
        self._cmd_mute(args, muted=False)

    def _cmd_remove(self, args: argparse.Namespace) -> None:
        rule_id = args.rule
        in_session = SESSION.rules.pop(rule_id, None) is not None
        monitor = SESSION.monitor
        in_run = monitor is not None and rule_id in monitor.engine.states and _is_custom(monitor, rule_id)
        if not (in_session or in_run):
            raise UsageError(f"%ptt remove: {rule_id!r} is not a rule added with %%ptt"
                             f"{_suggest(rule_id, list(SESSION.rules))}")
        if in_run:
            assert monitor is not None
            SESSION.applier(monitor).submit(f"remove {rule_id}", lambda: monitor.engine.remove(rule_id))
        clear = getattr(SESSION.dashboard, "clear_backtest", None)
        if clear is not None:  # its %%ptt backtest markers go with it
            clear(rule_id)
        print(f"{rule_id}: removed" + (" from this session" if in_session else "") + (" and the run" if in_run else ""))

    def _cmd_stop(self, args: argparse.Namespace) -> None:
        job = SESSION.job
        if job is not None and job.running and getattr(job.callback, "monitor", None) is not None:
            monitor = job.callback.monitor  # the background run, even if another run is shown now
            job.callback.stop()
            print(f"stop requested at step {monitor.step} ({job.name}): training stops at the next step boundary")
            return
        monitor = SESSION.monitor
        if SESSION.source == "watch" and SESSION.watcher is not None and SESSION.watcher.running:
            SESSION.watcher.stop()
            print("stopped following the run folder (the process writing it goes on: stop it there)")
            return
        if monitor is None or not SESSION.live(monitor):
            state = monitor.state if monitor is not None else "no run"
            raise UsageError(f"%ptt stop: nothing is training in the background ({state}). A run training in a "
                             "blocking cell stops with the dashboard's Stop button.")
        callback = SESSION.callback
        if callback is not None and hasattr(callback, "stop"):
            callback.stop()
        else:
            monitor.request_stop(by="user", reason="user_stop")
        print(f"stop requested at step {monitor.step}: training stops at the next step boundary")

    # -- %ptt train -------------------------------------------------------------------------------------------------
    def _cmd_train(self, args: argparse.Namespace) -> None:
        job = SESSION.job
        if job is not None and job.running:
            step = job.callback.monitor.step if getattr(job.callback, "monitor", None) else 0
            raise UsageError(f"%ptt train: {job.name!r} is still training (step {step}); wait for it or "
                             "`%ptt stop` it first")
        if SESSION.monitor is not None and SESSION.source == "live" and SESSION.live():
            raise UsageError("%ptt train: a run is already training in this kernel; `%ptt stop` it first")
        trainer = self._lookup(args.trainer)
        if not callable(getattr(trainer, "train", None)) or not hasattr(trainer, "callback_handler"):
            raise UsageError(f"%ptt train: {args.trainer!r} is a {type(trainer).__name__}, not a transformers/TRL "
                             "Trainer")
        callback, added = ensure_callback(trainer)
        restore = {"widget_option": callback.widget_option, "console": callback.console}
        callback.widget_option = False  # the dashboard is displayed below, from this (main) thread
        if callback.console is None:
            callback.console = False
        if callback.trainer is None:  # added after on_init_end: wrap train() now so a crash is still recorded
            callback._attach(trainer)
        generation = SESSION.generation
        job = SESSION.start_job(args.trainer, trainer, callback, restore)
        note = " (a DiagnosticsCallback was added to it)" if added else ""
        print(f"training {args.trainer!r} in the background{note}; `%ptt stop` stops it, `%ptt status` tells how "
              "it goes")
        try:
            started = wait_for_run(generation, REGISTER_WAIT_S, lambda: not job.running)
        except KeyboardInterrupt:  # an interrupt reaches this cell, not the training thread
            print("(still training in the background: `%ptt stop` stops it, `%ptt show` shows it)")
            return
        if started and SESSION.callback is callback and not args.no_show:
            dash = self._show(SESSION.monitor)
            if dash is not None:
                callback.widget = dash
        elif not started:
            if job.running:
                print("training has not begun yet; `%ptt show` displays the dashboard once it has")
            else:
                self._report_job()

    def _lookup(self, name: str) -> Any:
        if not re.fullmatch(r"[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*", name):
            raise UsageError(f"%ptt train: {name!r} is not a variable name")
        head, *rest = name.split(".")
        ns = self.shell.user_ns
        if head not in ns:
            raise UsageError(f"%ptt train: no variable {head!r} in the notebook{_suggest(head, _user_names(ns))}")
        obj = ns[head]
        for attr in rest:
            if not hasattr(obj, attr):
                raise UsageError(f"%ptt train: {type(obj).__name__} has no attribute {attr!r}")
            obj = getattr(obj, attr)
        return obj

    def _report_job(self) -> None:
        """Show once, at the end of the next cell, the traceback of a background run that crashed (and its one-line
        outcome, if the training thread could not announce it itself)."""
        job = SESSION.job
        if job is None or job.reported or job.running or job.thread is None:
            return
        job.reported = True
        if not job.announced:
            line = job_outcome(job)
            print(line, file=sys.stderr if job.error is not None else sys.stdout)
        exc = job.error
        if exc is not None:
            self.shell.showtraceback((type(exc), exc, exc.__traceback__))

    def post_run_cell(self, result: Any) -> None:
        try:
            self._report_job()
        except Exception:  # noqa: BLE001 - a hook must never break the user's cells
            pass

    # -- %ptt watch / replay / report ----------------------------------------------------------------------------------
    def _cmd_watch(self, args: argparse.Namespace) -> None:
        from ptt_nb.sources._follow import Watcher, followed_run_monitor

        old = SESSION.watcher
        if args.stop:
            if old is None or not old.running:
                raise UsageError("%ptt watch --stop: not following any run folder")
            old.stop()
            print(f"stopped following {old.run_dir or old.path}")
            return
        if not args.run_dir:
            raise UsageError("%ptt watch: give the run folder to follow (RUN_DIR), or --stop")
        if args.interval <= 0:
            raise UsageError("%ptt watch: --interval must be a positive number of seconds")
        path = Path(args.run_dir).expanduser()
        if path.exists() and not path.is_dir():
            raise UsageError(f"%ptt watch: {path} is a file; give the run folder (the one holding events.jsonl)")
        if old is not None:
            old.stop()
        monitor = followed_run_monitor()
        applier_box: list[Any] = []
        watcher = Watcher(path, monitor=monitor, interval=args.interval,
                          on_tick=lambda: applier_box[0].drain() if applier_box else None)
        SESSION.watcher = watcher
        watcher.start()
        applier = SESSION.set_current(monitor, "watch", feeder=watcher.thread)
        applier.on_start = lambda: SESSION.add_session_rules(monitor)
        applier_box.append(applier)
        if not path.exists():
            print(f"{path} does not exist yet: waiting for it")
        print(f"following {path} (every {args.interval:g} s); `%ptt watch --stop` stops following")
        if not args.no_show:
            self._show(monitor)

    def _cmd_replay(self, args: argparse.Namespace) -> None:
        from ptt_nb.sources._reader import load_run

        path = Path(args.run_dir).expanduser()
        try:
            monitor = load_run(path, format=args.format, algorithm=args.algorithm)
        except (FileNotFoundError, ValueError) as exc:  # ValueError: no reader recognises it (names the formats)
            raise UsageError(f"%ptt replay: {exc}") from None
        SESSION.set_current(monitor, "replay")
        print(_status_text(monitor, "replay"))
        pm = monitor.postmortem
        if pm:
            last = (pm.get("traceback") or "").strip().splitlines()[-1:]
            print(f"postmortem: {Path(monitor.run_dir) / 'postmortem.json'} ({pm.get('exit_reason')} at step "
                  f"{pm.get('last_step')}{': ' + last[0] if last else ''})")
        for warning in monitor.warnings[-5:]:
            print(warning)
        if not args.no_show:
            self._show(monitor)

    def _cmd_compare(self, args: argparse.Namespace) -> None:
        from ptt_nb.rules._catalog_baseline import attach_baseline
        from ptt_nb.sources._reader import load_run

        if len(args.runs) < 2:
            raise UsageError("%ptt compare RUN BASELINE [BASELINE…]: give the run and at least one baseline")
        try:
            monitor = load_run(Path(args.runs[0]).expanduser())
            for path in reversed(args.runs[1:]):  # the dashboard draws the first baseline
                before = len(monitor.alerts)
                baseline = attach_baseline(monitor, Path(path).expanduser())
                found = [a for a in monitor.alerts[before:] if a.state == "active"]
                print(f"against {baseline.run_id} (aligned by {baseline.align_by}): "
                      f"{len(found) or 'no'} band alert(s)")
                for a in found:
                    print(f"  step {a.step} [{a.severity}] {a.message}")
        except FileNotFoundError as exc:
            raise UsageError(f"%ptt compare: {exc}") from None
        SESSION.set_current(monitor, "replay")
        if not args.no_show:
            self._show(monitor)

    def _cmd_report(self, args: argparse.Namespace) -> None:
        try:
            from ptt_nb.sinks._report import write_report
        except ImportError as exc:
            raise UsageError(f"%ptt report: the HTML report is unavailable here ({exc}); "
                             "pip install 'ptt-nb[report]'") from None
        target: Any = Path(args.run_dir).expanduser() if args.run_dir else self._current("report")
        if isinstance(target, Path) and not target.exists():
            raise UsageError(f"%ptt report: {target} does not exist")
        if isinstance(target, Monitor) and SESSION.live(target):  # being trained: report a snapshot of it
            import copy

            live, target = target, copy.copy(target)
            target.history = snapshot_history(live.history)
            target.alerts = list(live.alerts)
        try:
            out = write_report(target, args.out)
        except (FileNotFoundError, ValueError) as exc:
            raise UsageError(f"%ptt report: {exc}") from None
        print(f"report written: {out}")

    # -- %%ptt -----------------------------------------------------------------------------------------------------
    def _cell(self, line: str, cell: str) -> None:
        try:
            argv = shlex.split(line)
        except ValueError as exc:
            raise UsageError(f"%%ptt: cannot parse the options ({exc})") from None
        args = _cell_parser().parse_args(argv)
        if not cell.strip():
            raise UsageError("%%ptt: the cell is empty; write one or more rules below the %%ptt line")
        sources = self._parse_cell(cell, args.severity)
        monitor = SESSION.monitor
        if monitor is not None and monitor.run is not None and monitor.history.last_step > 0:
            self._backtest(monitor, sources)
        else:
            print("no run history yet to backtest on (train, `%ptt watch` or `%ptt replay` first)")
        if args.save:
            self._save(args.save, cell, sources, args.severity)
        if args.dry_run:
            print("dry run: nothing added")
            return
        for source in sources:
            SESSION.remember_rule(source)
        ids = ", ".join(s.id for s in sources)
        if monitor is None or not monitor.evaluate or SESSION.source == "replay":
            print(f"added {ids} to this session: every run started here from now on evaluates it")
            return
        applier = SESSION.applier(monitor)
        now = True
        for source in sources:
            rule = source.make()
            now = applier.submit(f"add rule {source.id}", lambda rule=rule: monitor.add_rule(rule)) and now
        when = "" if now else " from the next log point"
        print(f"added {ids} to the current run{when} and to this session's later runs")

    def _parse_cell(self, cell: str, severity: str | None) -> list[RuleSource]:
        from ptt_nb.notebook import _cell_rules as cellrules

        try:
            return cellrules.parse_cell(cell, self.shell.user_ns, severity=severity)
        except cellrules.CellError as exc:
            raise UsageError(str(exc)) from None

    def _backtest(self, monitor: Monitor, sources: list[RuleSource]) -> None:
        from ptt_nb.notebook import _cell_rules as cellrules

        history = snapshot_history(monitor.history)
        run = monitor.run
        assert run is not None
        for source in sources:
            try:
                result = cellrules.backtest_cell(source.make(), history, algorithm=run.algorithm,
                                                 config=run.config, max_steps=monitor.max_steps)
            except cellrules.CellError as exc:
                raise UsageError(str(exc)) from None
            display(cellrules.BacktestView(source.id, result, history))
            self._mark_dashboard(monitor, result)

    def _mark_dashboard(self, monitor: Monitor, result: BacktestResult) -> None:
        """Backtest firings as markers on the dashboard's panels, where the dashboard offers that: the result
        itself to one that takes it (``Dashboard.takes_backtest_results``), else its marker alerts.

        They are never added to ``monitor.alerts`` (nor written to the run folder): they did not happen.
        """
        import dataclasses

        from ptt_nb.notebook import _cell_rules as cellrules

        dash = SESSION.dashboard if monitor is SESSION.monitor else None
        show_backtest = getattr(dash, "show_backtest", None)
        if show_backtest is None:
            return
        try:
            if not result.panels:  # the rule names none: the panels that plot the keys it reads
                result = dataclasses.replace(result, panels=tuple(panel_ids_for(monitor, result.keys)))
            if getattr(dash, "takes_backtest_results", False):
                show_backtest(result.rule_id, result)
            else:
                show_backtest(result.rule_id, cellrules.marker_alerts(result, list(result.panels)))
        except Exception as exc:  # noqa: BLE001 - markers are a nicety; the table above has the facts
            print(f"(could not mark the dashboard: {type(exc).__name__}: {exc})")

    def _save(self, path: str, cell: str, sources: list[RuleSource], severity: str | None) -> None:
        from ptt_nb.notebook import _cell_rules as cellrules

        try:
            out = cellrules.append_to_pack(path, cell, sources, severity)
        except cellrules.CellError as exc:
            raise UsageError(str(exc)) from None
        print(f"saved {', '.join(s.id for s in sources)} to {out}")


# -- registration ------------------------------------------------------------------------------------------------------
_REGISTERED: dict[int, PttMagics] = {}


def register(ipython: Any) -> None:
    """Register ``%ptt``/``%%ptt`` and the hook that reports background training (idempotent)."""
    if id(ipython) in _REGISTERED:
        return
    magics = PttMagics(ipython)
    ipython.register_magics(magics)
    ipython.events.register("post_run_cell", magics.post_run_cell)
    _REGISTERED[id(ipython)] = magics


def unregister(ipython: Any) -> None:
    magics = _REGISTERED.pop(id(ipython), None)
    if magics is None:
        return
    for kind in ("line", "cell"):
        ipython.magics_manager.magics[kind].pop("ptt", None)
    try:
        ipython.events.unregister("post_run_cell", magics.post_run_cell)
    except ValueError:
        pass


def ensure_callback(trainer: Any) -> tuple[Any, bool]:
    """The trainer's DiagnosticsCallback, added when it has none (then True). Here, not in ``_training_job``:
    the callback announces its run to the session, which owns the job, so the job must not import it."""
    from ptt_nb.sources._callback import DiagnosticsCallback

    for cb in trainer.callback_handler.callbacks:
        if isinstance(cb, DiagnosticsCallback):
            return cb, False
    cb = DiagnosticsCallback()
    trainer.add_callback(cb)
    return cb, True
