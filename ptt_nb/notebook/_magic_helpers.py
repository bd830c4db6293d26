"""What the ``%ptt`` magics print and parse: argument parsers that never exit the kernel, the help text, tables
and status lines, and the read-only views of a run they need (a history snapshot, the panels plotting a key).
Nothing here changes a run.
"""

from __future__ import annotations

import argparse
import difflib
import html
import math
from typing import Any

from IPython.core.error import UsageError

from ptt_nb.events import SEVERITIES, Alert
from ptt_nb.monitor._history import MetricHistory, Series
from ptt_nb.monitor._monitor import Monitor
from ptt_nb.notebook._training_job import TrainingJob


# -- argument parsing that never exits the kernel ---------------------------------------------------------------
class _HelpShown(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"{self.prog}: {message}\n{self.format_usage().strip()}  (see `{self.prog} --help`)")

    def exit(self, status: int = 0, message: str | None = None) -> None:  # type: ignore[override]
        if message:
            print(message, end="")
        raise _HelpShown()


LINE_HELP = """\
%ptt SUBCOMMAND ...   ptt_nb in a notebook (current run = training here, watched, or replayed)

  show                    dashboard of the current (or last) run
  status                  state, step, ETA, alerts, background training and watcher
  rules                   the run's rules: id, severity, state, times fired, muted
  mute RULE / unmute RULE silence a rule's alerts (it keeps evaluating)
  remove RULE             drop a rule added with %%ptt (from this session and the live run)
  stop                    stop the current run at the next step (or stop following a watched folder)
  train TRAINER           run TRAINER.train() in a background thread; the notebook stays usable
  watch RUN_DIR           follow a run folder that another process is writing
  replay PATH             load a finished or crashed run (and its postmortem), or one recorded by another
                          tool (trainer_state.json, TensorBoard, trackio .db, W&B offline run, CSV/JSONL)
  compare RUN BASE [BASE…] RUN with BASE drawn beside it; band alerts against each BASE
  report [RUN_DIR] [-o F] write the static HTML report

%%ptt [--dry-run] [--severity LEVEL] [--save FILE]
  a cell of custom rules (rule language, or a Python function with @rule): backtested on the current run,
  then added to the live run and to every later run of this session.

`%ptt SUBCOMMAND --help` tells more.
"""


def _line_parser() -> _Parser:
    parser = _Parser(prog="%ptt", description=LINE_HELP, formatter_class=argparse.RawDescriptionHelpFormatter,
                     usage="%(prog)s SUBCOMMAND [options]", add_help=True)
    sub = parser.add_subparsers(dest="command", metavar="SUBCOMMAND", parser_class=_Parser)
    sub.add_parser("show", help="dashboard of the current or last run")
    sub.add_parser("status", help="state of the current run, background training and watcher")
    sub.add_parser("rules", help="table of the run's rules")
    for name, what in (("mute", "silence"), ("unmute", "un-silence"), ("remove", "drop a custom")):
        p = sub.add_parser(name, help=f"{what} rule RULE")
        p.add_argument("rule", metavar="RULE")
    sub.add_parser("stop", help="stop the current run at the next step boundary")
    train = sub.add_parser("train", help="run TRAINER.train() in a background thread")
    train.add_argument("trainer", metavar="TRAINER", help="name of a Trainer variable (dotted names allowed)")
    train.add_argument("--no-show", action="store_true", help="do not display the dashboard")
    watch = sub.add_parser("watch", help="follow a run folder another process is writing")
    watch.add_argument("run_dir", metavar="RUN_DIR", nargs="?",
                       help="a run folder, or a parent such as output_dir/ptt_nb (its newest run)")
    watch.add_argument("--interval", type=float, default=0.2, help="seconds between polls (default 0.2)")
    watch.add_argument("--no-show", action="store_true", help="do not display the dashboard")
    watch.add_argument("--stop", action="store_true", help="stop following")
    compare = sub.add_parser("compare", help="a run with a baseline run drawn beside it, and the band alerts")
    compare.add_argument("runs", nargs="+", metavar="RUN", help="the run, then its baseline(s)")
    compare.add_argument("--no-show", action="store_true", help="do not display the dashboard")
    replay = sub.add_parser("replay", help="load a finished or crashed run folder, or a run another tool recorded")
    replay.add_argument("run_dir", metavar="PATH")
    replay.add_argument("--format", help="force a reader (ptt_nb, trainer_state, tensorboard, trackio, wandb, table)")
    replay.add_argument("--algorithm", help="an imported run's algorithm when it cannot be told (dpo, grpo, ...)")
    replay.add_argument("--no-show", action="store_true", help="do not display the dashboard")
    report = sub.add_parser("report", help="write the static HTML report")
    report.add_argument("run_dir", metavar="RUN_DIR", nargs="?", help="default: the current run")
    report.add_argument("-o", "--out", metavar="FILE", help="default: <run folder>/report.html")
    return parser


def _cell_parser() -> _Parser:
    parser = _Parser(prog="%%ptt", description="Backtest custom rules on the current run, then add them to it.",
                     usage="%(prog)s [--dry-run] [--severity LEVEL] [--save FILE]")
    parser.add_argument("--dry-run", action="store_true",
                        help="backtest only; add nothing to the run (--save still saves)")
    parser.add_argument("--severity", choices=SEVERITIES, help="override the rules' severity")
    parser.add_argument("--save", metavar="FILE", help="also append the rules to this YAML rule pack")
    return parser


# -- small display helpers ----------------------------------------------------------------------------------------
class Table:
    """A plain table with an HTML and a text form (the text form is what tests and terminals see)."""

    def __init__(self, columns: list[str], rows: list[list[Any]], title: str = "") -> None:
        self.columns, self.rows, self.title = columns, rows, title

    def __repr__(self) -> str:
        cells = [self.columns] + [[_fmt(v) for v in row] for row in self.rows]
        widths = [max(len(r[i]) for r in cells) for i in range(len(self.columns))]
        lines = [self.title] if self.title else []
        for n, row in enumerate(cells):
            lines.append("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
            if n == 0:
                lines.append("  ".join("-" * w for w in widths))
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        head = "".join(f"<th style='text-align:left'>{html.escape(c)}</th>" for c in self.columns)
        body = "".join("<tr>" + "".join(f"<td>{html.escape(_fmt(v))}</td>" for v in row) + "</tr>"
                       for row in self.rows)
        title = f"<div style='font-weight:600'>{html.escape(self.title)}</div>" if self.title else ""
        return f"{title}<table class='ptt-table'><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4g}" if math.isfinite(value) else str(value)
    if isinstance(value, dict):
        return ", ".join(f"{k}={_fmt(v)}" for k, v in value.items())
    return str(value)


def _suggest(name: str, known: list[str]) -> str:
    close = difflib.get_close_matches(name, known, n=3)
    if close:
        return f"; did you mean {' or '.join(repr(c) for c in close)}?"
    return f"; known: {', '.join(sorted(known))}" if known else ""


def snapshot_history(history: MetricHistory) -> MetricHistory:
    """A private copy of a history that the training thread may be appending to, taken without flushing it.

    ``MetricHistory`` queues log points and moves them into its columns on read (``history.series`` flushes);
    a flush from this thread could race the training thread's ``add``, so the columns (``_series``: length
    first, then the prefix) and the queue (``_pending``) are copied as they are. A flush between the two reads
    moves points from the queue into a column: queued points at or below a column's last step are dropped.
    """
    pending = list(getattr(history, "_pending", ()))
    columns = getattr(history, "_series", None)
    if columns is None:  # a history without a queue
        columns = history.series
    copy = MetricHistory(cap=history.cap)
    target = copy.series
    last: dict[tuple[str, str], int] = {}
    for (split, key), series in list(columns.items()):
        n = series.n
        clone = Series(history.cap, initial=max(n, 1))
        clone.steps[:n] = series.steps[:n]
        clone.values[:n] = series.values[:n]
        clone.n = n
        target[(split, key)] = clone
        last[(split, key)] = int(clone.steps[n - 1]) if n else -1
    # newest values: the flushed ones, then the queued points (applied when the copy flushes)
    copy._latest.update(dict(history._latest))
    copy._latest_eval.update(dict(history._latest_eval))
    for step, split, values, *_keys in pending:
        fresh = {k: v for k, v in values.items() if step > last.get((split, k), -1)}
        if fresh:
            copy.add(step, split, fresh)
    copy.last_step = max(history.last_step, copy.last_step)
    copy.summary.update(dict(history.summary))
    return copy


def panel_ids_for(monitor: Monitor, keys: tuple[str, ...]) -> list[str]:
    """Ids of the dashboard panels that plot any of ``keys`` (from the panel specs: the history is not read)."""
    from ptt_nb.monitor import _profiles as profiles

    specs = monitor.run.panels if monitor.run else list(monitor.profile.panels)
    ids = [p["id"] for p in specs if any(profiles.match_key(s["key"], k) or profiles.match_key(s["key"],
                                                                                            k.removeprefix("eval_"))
                                         for s in p["series"] for k in keys)]
    other = set(monitor.other_keys()) - profiles.BOOKKEEPING_KEYS  # as Monitor.panels() lays them out
    ids += [f"other:{k}" for k in keys if k in other]
    return ids


# -- helpers used by the magics -------------------------------------------------------------------------------------
def _user_names(ns: dict[str, Any]) -> list[str]:
    return [k for k in ns if not k.startswith("_") and k not in ("In", "Out", "exit", "quit", "get_ipython")]


def _is_custom(monitor: Monitor, rule_id: str) -> bool:
    state = monitor.engine.states.get(rule_id)
    return state is not None and getattr(state.rule, "source", "built-in") != "built-in"


def _status_text(monitor: Monitor, source: str = "") -> str:
    s = monitor.status()
    run = monitor.run
    head = f"{run.trainer} ({run.algorithm}) {run.run_id}" if run else "(no run_start yet)"
    where = f" [{source}]" if source else ""
    step = f"step {s['step']}" + (f"/{s['max_steps']}" if s["max_steps"] else "")
    parts = [f"{head}{where}: {s['state']}, {step}"]
    if s["eta_s"] is not None:
        parts.append(f"ETA {s['eta_s']:.0f} s")
    if s["steps_per_s"]:
        parts.append(f"{s['steps_per_s']:.2f} steps/s")
    if s["stop_requested"] and monitor.end_event is None:
        parts.append("stop requested")
    counts = {k: v for k, v in monitor.alerts_by_severity().items() if v}
    active = sum(1 for a in monitor.alerts if a.state == "active")
    parts.append(f"alerts: {_fmt(counts) if counts else 'none'}" + (f" ({active} open)" if counts else ""))
    if monitor.end_event is not None and monitor.end_event.detail:
        parts.append(monitor.end_event.detail)
    lines = [", ".join(parts)]
    if monitor.run_dir is not None:
        lines.append(f"run folder: {monitor.run_dir}")
    return "\n".join(lines)


def _job_text(job: TrainingJob) -> str:
    if job.running:
        return f"background training: {job.name!r} is running"
    if job.error is not None:
        return f"background training: {job.name!r} crashed: {type(job.error).__name__}: {job.error}"
    return f"background training: {job.name!r} returned"


def rules_table(monitor: Monitor) -> Table:
    """id, severity, state (active/idle/dormant/disabled), fired, muted, source. Rules that ran elsewhere (a
    replayed run, or the process writing a watched run) appear as ``recorded`` with their recorded alerts."""
    engine = monitor.engine
    columns = ["id", "severity", "state", "fired", "muted", "source"]
    dormant = set(engine.dormant())
    rows = []
    for rule_id, state in sorted(list(engine.states.items())):
        if state.disabled:
            label = "disabled"
        elif state.active is not None:
            label = "active"
        elif rule_id in dormant:
            label = "dormant"
        else:
            label = "idle"
        rows.append([rule_id, state.rule.severity, label, state.fired, state.muted, state.rule.source])
    recorded: dict[str, list[Alert]] = {}
    for alert in list(monitor.alerts):
        if alert.rule not in engine.states:
            recorded.setdefault(alert.rule, []).append(alert)
    for rule_id, alerts in sorted(recorded.items()):
        rows.append([rule_id, alerts[0].severity, "recorded", len(alerts), None, "recorded"])
    title = ""
    if not monitor.evaluate:
        title = "replayed run: its rules do not run here; recorded alerts by rule"
    return Table(columns, rows, title=title)
