"""``ptt-nb``: the command line. ``demo`` (a tiny headless run), ``report``, ``summary``, ``rules``, ``watch``,
``diagnose`` (any recorded run through the rules; ``ptt_nb/_diagnose.py``).

Every user error (missing folder, not a run folder, an events file without a run header) is one line on
stderr and a non-zero exit, never a traceback; set ``PTT_NB_DEBUG=1`` to see the traceback anyway.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import shutil
import sys
import textwrap
import time
from pathlib import Path
from typing import Any, TextIO

from ptt_nb._layout import EVENTS_FILE, find_run_dir
from ptt_nb.events import Alert, Event, RunEnd, RunStart
from ptt_nb.monitor._monitor import Monitor
from ptt_nb.sources._follow import Watcher

EXIT_ERROR = 2
EXIT_INTERRUPTED = 130
PROVOCATIONS = ("none", "nan", "lr0")


class CLIError(Exception):
    """A user-facing error: printed as one line, exit status 2."""


# -- run folders ---------------------------------------------------------------------------------------------------
def resolve_run_dir(path: str | os.PathLike[str]) -> Path:
    """The run folder ``path`` names: itself, the folder of an ``events.jsonl``, or the newest run below it."""
    p = Path(path)
    if not p.exists():
        raise CLIError(f"{p}: no such file or folder")
    if p.is_file():
        if p.name == EVENTS_FILE:
            return p.parent
        raise CLIError(f"{p}: is a file, not a ptt_nb run folder (expected a folder holding {EVENTS_FILE})")
    found = find_run_dir(p)
    if found is None:
        raise CLIError(f"{p}: not a ptt_nb run folder (no {EVENTS_FILE} here or in its sub-folders)")
    return found


def load(path: str | os.PathLike[str]) -> Monitor:
    """Load a run folder for ``report``/``summary``; data problems are warnings, a missing header an error."""
    from ptt_nb.sources._reader import load_run

    run_dir = resolve_run_dir(path)
    monitor = load_run(run_dir)
    if monitor.run is None:
        raise CLIError(f"{run_dir / EVENTS_FILE}: no run_start event (the file is empty, truncated or not "
                       "written by ptt_nb)")
    for warning in monitor.warnings:
        print(f"ptt-nb: warning: {warning}", file=sys.stderr)
    return monitor


# -- report / summary ----------------------------------------------------------------------------------------------
def cmd_report(args: argparse.Namespace) -> int:
    try:
        import bokeh  # noqa: F401

        from ptt_nb.sinks._report import REPORT_FILE, write_report
    except ImportError as exc:
        raise CLIError(f"the HTML report needs bokeh ({exc}); pip install 'ptt-nb[report]'") from None
    monitor = load(args.run_dir)
    if getattr(args, "baseline", None):
        from ptt_nb.rules._catalog_baseline import attach_baseline

        try:
            baseline = attach_baseline(monitor, args.baseline)
        except (FileNotFoundError, ValueError) as exc:
            raise CLIError(f"--baseline: {exc}") from None
        if baseline.note:
            print(f"ptt-nb: {baseline.note}", file=sys.stderr)
    out = Path(args.output) if args.output else Path(monitor.run_dir) / REPORT_FILE
    path = write_report(monitor, out)
    print(path)
    return 0


def cmd_summary(args: argparse.Namespace) -> int:
    from ptt_nb.sinks._text_summary import summarize

    print(summarize(load(args.run_dir)))
    return 0


# -- rules ---------------------------------------------------------------------------------------------------------
def _rule_row(rule: Any) -> dict[str, Any]:
    """Read a rule's attributes generically: the catalog grows and may add or omit fields."""
    algorithms = getattr(rule, "algorithms", None)
    return {
        "id": str(getattr(rule, "id", "") or type(rule).__name__),
        "severity": str(getattr(rule, "severity", "")),
        "algorithms": sorted(algorithms) if algorithms else "all",
        "title": str(getattr(rule, "title", "") or ""),
        "keys": list(getattr(rule, "keys", ()) or ()),
        "reference": str(getattr(rule, "reference", "") or ""),
        "url": getattr(rule, "url", None),
        "source": str(getattr(rule, "source", "built-in") or ""),
    }


def rules_markdown(rows: list[dict[str, Any]]) -> str:
    """The README's alert catalog table, generated from the code (``ptt-nb rules --markdown``)."""
    def cell(text: str) -> str:
        return text.replace("|", "\\|").replace("\n", " ")

    lines = ["| id | severity | trainers | what it catches | reference |", "|---|---|---|---|---|"]
    for r in rows:
        algos = "all" if r["algorithms"] == "all" else ", ".join(r["algorithms"])
        ref = cell(r["reference"]) + (f" ([link]({r['url']}))" if r["url"] else "")
        lines.append(f"| `{r['id']}` | {r['severity']} | {algos} | {cell(r['title'])} | {ref} |")
    return "\n".join(lines)


def cmd_rules(args: argparse.Namespace) -> int:
    from ptt_nb.events import SEVERITY_RANK
    from ptt_nb.rules._builtin import default_rules

    rules = default_rules()
    if args.algorithm:
        rules = [r for r in rules if not hasattr(r, "applies_to") or r.applies_to(args.algorithm)]
    rows = sorted((_rule_row(r) for r in rules), key=lambda r: (SEVERITY_RANK.get(r["severity"], 9), r["id"]))
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    if args.markdown:
        print(rules_markdown(rows))
        return 0
    width = max(60, shutil.get_terminal_size((100, 24)).columns)
    id_w = max((len(r["id"]) for r in rows), default=2)
    for r in rows:
        algos = r["algorithms"] if r["algorithms"] == "all" else ",".join(r["algorithms"])
        print(f"{r['id']:<{id_w}}  {r['severity']:<8}  {algos}" + (f"  — {r['title']}" if r["title"] else ""))
        ref = r["reference"] + (f" <{r['url']}>" if r["url"] else "")
        if ref:
            print(textwrap.fill(ref, width=width, initial_indent=" " * 4 + "ref: ", subsequent_indent=" " * 9))
    scope = f" for {args.algorithm}" if args.algorithm else ""
    print(f"{len(rows)} built-in rules{scope}")
    return 0


# -- watch ---------------------------------------------------------------------------------------------------------
def _clock(seconds: float) -> str:
    seconds = max(0, int(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class WatchView:
    """Renders a followed run as text: a progress line (redrawn in place on a terminal) and alerts as lines."""

    def __init__(self, monitor: Monitor, out: TextIO, *, tty: bool, width: int = 100,
                 line_every_s: float = 10.0) -> None:
        self.monitor = monitor
        self.out = out
        self.tty = tty
        self.width = width
        self.line_every_s = line_every_s
        self._drawn = False
        self._last_line_t = 0.0
        self._last_step_printed = -1

    def eta_s(self) -> float | None:
        """The Monitor's ETA (one rate from the recorded event times: right for a replayed run and a live one)."""
        return self.monitor.status()["eta_s"]

    def progress_line(self) -> str:
        from ptt_nb.sinks._text_summary import fmt, key_metrics

        m = self.monitor
        if m.max_steps:
            frac = min(1.0, m.step / m.max_steps)
            bar = "#" * int(20 * frac) + "." * (20 - int(20 * frac))
            head = f"[{bar}] {m.step}/{m.max_steps} {100 * frac:3.0f}%"
        else:
            head = f"step {m.step}"
        eta = self.eta_s()
        if eta is not None:
            head += f" ETA {_clock(eta)}"
        metrics = "  ".join(f"{k}={fmt(v)}" for k, v in key_metrics(m, limit=4))
        line = f"{head}  {metrics}".rstrip()
        return line[: self.width - 1]

    def _clear(self) -> None:
        if self.tty and self._drawn:
            self.out.write("\r\x1b[K")
            self._drawn = False

    def println(self, text: str) -> None:
        self._clear()
        self.out.write(text + "\n")
        self.out.flush()

    def on_event(self, event: Event) -> None:
        from ptt_nb.sinks._text_summary import alert_line

        if isinstance(event, RunStart):
            m = self.monitor
            where = f" · {m.run_dir}" if m.run_dir else ""
            resumed = f" (resumed at step {event.resumed_from_step})" if event.resumed_from_step else ""
            self.println(f"watching {m.profile.display} run {event.run_id} · {event.trainer}{resumed}{where}")
        elif isinstance(event, Alert):
            if event.state == "active":
                self.println(alert_line(event))
                if event.action:
                    self.println(f"    → {event.action}")
            else:
                self.println(f"[RESOLVED] {event.rule} (step {event.step}→{event.resolved_step}): {event.message}")
        elif isinstance(event, RunEnd):
            detail = f" ({event.detail})" if event.detail else ""
            self.println(self.progress_line())
            self.println(f"run ended at step {event.step}: {event.reason}{detail}")

    def tick(self, now: float | None = None) -> None:
        """Redraw the progress line (in place on a terminal; as a new line at most every ``line_every_s``)."""
        if self.monitor.run is None:
            return
        now = time.monotonic() if now is None else now
        if self.tty:
            self.out.write("\r\x1b[K" + self.progress_line())
            self._drawn = True
            self.out.flush()
        elif self.monitor.step != self._last_step_printed and now - self._last_line_t >= self.line_every_s:
            self.println(self.progress_line())
            self._last_line_t = now
            self._last_step_printed = self.monitor.step


def _wait_for_run(path: str, timeout: float, interval: float) -> Path:
    """``--wait``: the folder (or its first run) may not exist yet when watch starts before training does."""
    start = time.monotonic()
    print(f"waiting for a run in {path} …", flush=True)
    while True:
        try:
            return resolve_run_dir(path)
        except CLIError:
            if timeout and time.monotonic() - start > timeout:
                raise CLIError(f"{path}: no run appeared within {timeout:g}s") from None
            time.sleep(interval)


def cmd_watch(args: argparse.Namespace) -> int:
    run_dir = _wait_for_run(args.run_dir, args.idle_timeout, args.interval) if args.wait else \
        resolve_run_dir(args.run_dir)
    # alerts come recorded from the file; re-evaluating would duplicate them. The follower's problems (a cut
    # last line) reach stderr through Monitor.warn.
    watcher = Watcher(run_dir, monitor=Monitor(evaluate=False))
    monitor = watcher.monitor
    tty = sys.stdout.isatty()
    width = shutil.get_terminal_size((100, 24)).columns
    view = WatchView(monitor, sys.stdout, tty=tty, width=width, line_every_s=args.line_every)
    last_event_t = time.monotonic()
    while True:
        events = watcher.poll_once()
        for event in events:
            view.on_event(event)
        if events:
            last_event_t = time.monotonic()
        if args.once:
            if monitor.run is None:
                raise CLIError(f"{run_dir / EVENTS_FILE}: no run_start event yet (empty, truncated or not written "
                               "by ptt_nb)")
            from ptt_nb.sinks._text_summary import summarize

            if monitor.end_event is None:
                view.println(view.progress_line())
            monitor.postmortem = _postmortem(run_dir)
            view.println(summarize(monitor))
            return 0
        if monitor.end_event is not None:
            pm = _postmortem(run_dir)
            if pm:
                from ptt_nb.sinks._text_summary import where_it_died

                died = where_it_died(pm.get("traceback"))
                view.println(f"postmortem: {run_dir / 'postmortem.json'}" + (f" · {died}" if died else ""))
            return 0
        if args.idle_timeout and time.monotonic() - last_event_t > args.idle_timeout:
            view.println(f"ptt-nb: no new event for {args.idle_timeout:g}s; stopped watching (the run did not end)")
            return 3
        view.tick()
        time.sleep(args.interval)


def _postmortem(run_dir: Path) -> dict[str, Any] | None:
    from ptt_nb.sources._reader import read_postmortem

    return read_postmortem(run_dir)


# -- demo ----------------------------------------------------------------------------------------------------------
def _quiet_libraries() -> None:
    """The demo is about ptt_nb's output: silence library chatter (this process only; set before imports)."""
    import warnings

    for key, value in (("TRANSFORMERS_VERBOSITY", "error"), ("HF_DATASETS_DISABLE_PROGRESS_BARS", "1"),
                       ("TOKENIZERS_PARALLELISM", "false"), ("HF_HUB_OFFLINE", "1"), ("HF_DATASETS_OFFLINE", "1"),
                       ("TRL_EXPERIMENTAL_SILENCE", "1")):
        os.environ.setdefault(key, value)
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning)
    for name in ("trl", "transformers", "datasets", "accelerate"):
        logging.getLogger(name).setLevel(logging.ERROR)


def _nan_injector(at_step: int) -> Any:
    """A callback that poisons the LM head with NaN after step ``at_step``: the next step's loss is NaN."""
    from transformers import TrainerCallback

    class InjectNaN(TrainerCallback):
        def on_step_end(self, args, state, control, model=None, **kwargs):
            if state.global_step == at_step and model is not None:
                import torch

                with torch.no_grad():
                    params = list(model.parameters())
                    params[-1].fill_(float("nan"))

    return InjectNaN()


def cmd_demo(args: argparse.Namespace) -> int:
    _quiet_libraries()
    from ptt_nb.tiny import ALGORITHMS

    if args.algorithm not in ALGORITHMS:
        raise CLIError(f"unknown algorithm {args.algorithm!r}; choose one of {', '.join(ALGORITHMS)}")
    if args.steps < 1:
        raise CLIError("--steps must be at least 1")
    try:
        import torch
        from transformers import PrinterCallback

        from ptt_nb.sources._callback import DiagnosticsCallback
        from ptt_nb.tiny import make_trainer
    except ImportError as exc:
        raise CLIError(f"the demo needs torch, transformers and trl ({exc}); pip install 'ptt-nb[trl]'") from None
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    except ImportError:  # pragma: no cover - older transformers
        pass
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    out = Path(args.out).resolve()
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    run_dir = out / "runs" / f"{args.algorithm}-{args.provoke}-{stamp}"
    n = 1
    while run_dir.exists():
        n += 1
        run_dir = out / "runs" / f"{args.algorithm}-{args.provoke}-{stamp}-{n}"
    diag = DiagnosticsCallback(run_dir=run_dir, console=True, widget=False, stop_on_critical=args.stop_on_critical)
    callbacks: list[Any] = [diag]
    config: dict[str, Any] = {}
    if args.provoke == "nan":
        callbacks.append(_nan_injector(max(1, args.steps // 2)))
    elif args.provoke == "lr0":
        config["learning_rate"] = 0.0
    print(f"ptt-nb demo: {args.algorithm} on a tiny model, {args.steps} steps, provoke={args.provoke}", flush=True)
    t0 = time.perf_counter()
    trainer = make_trainer(args.algorithm, out / "work", callbacks=callbacks, max_steps=args.steps, **config)
    trainer.remove_callback(PrinterCallback)  # its per-step dicts would drown the alerts
    try:
        trainer.train()
    except Exception as exc:  # the postmortem is written; report it in one line
        print(f"ptt-nb demo: training raised {type(exc).__name__}: {exc}", file=sys.stderr)
    elapsed = time.perf_counter() - t0
    from ptt_nb.sinks._text_summary import summarize

    monitor = diag.monitor
    print()
    print(summarize(monitor) if monitor is not None else "ptt-nb demo: no run was recorded")
    if monitor is not None and not args.no_report:
        try:
            from ptt_nb.sinks._report import write_at_end
        except ImportError as exc:
            print(f"ptt-nb demo: no HTML report ({exc})", file=sys.stderr)
        else:
            report = write_at_end(monitor)
            if report is not None:
                print(f"report: {report}")
    print(f"run folder: {run_dir}  ({elapsed:.1f}s)")
    print(f"next: ptt-nb summary {run_dir} · ptt-nb report {run_dir} · ptt-nb watch {run_dir} --once")
    return 0


# -- entry point ---------------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    from ptt_nb._version import __version__

    parser = argparse.ArgumentParser(prog="ptt-nb", description="Diagnostics for Hugging Face TRL post-training "
                                     "runs: tiny demo run, HTML report, text summary, rule catalog, live watch, "
                                     "diagnose.")
    parser.add_argument("--version", action="version", version=f"ptt-nb {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    demo = sub.add_parser("demo", help="a tiny headless training run on CPU with alerts on the console")
    demo.add_argument("--algorithm", default="dpo", help="sft, dpo, kto, orpo, cpo, grpo, rloo, online_dpo, reward")
    demo.add_argument("--steps", type=int, default=30, help="optimizer steps (default 30)")
    demo.add_argument("--out", default="ptt_runs/demo",
                      help="folder for the tiny model, trainer output and run folder (default ptt_runs/demo)")
    demo.add_argument("--provoke", choices=PROVOCATIONS, default="none",
                      help="inject a pathology: NaN weights half-way (nan) or a zero learning rate (lr0)")
    demo.add_argument("--stop-on-critical", action=argparse.BooleanOptionalAction, default=True,
                      help="stop training at a critical alert (default: yes)")
    demo.add_argument("--no-report", action="store_true", help="do not write report.html at the end")
    demo.set_defaults(func=cmd_demo)

    report = sub.add_parser("report", help="write the self-contained HTML report of a run folder")
    report.add_argument("run_dir", metavar="RUN_DIR")
    report.add_argument("-o", "--output", metavar="FILE", help="default: RUN_DIR/report.html")
    report.add_argument("--baseline", metavar="RUN", help="a run to draw beside this one (aligned by step, or by "
                        "samples seen when batch sizes differ); its band rules add their alerts")
    report.set_defaults(func=cmd_report)

    summary = sub.add_parser("summary", help="one-screen text summary of a run folder")
    summary.add_argument("run_dir", metavar="RUN_DIR")
    summary.set_defaults(func=cmd_summary)

    rules = sub.add_parser("rules", help="list the built-in heuristics")
    rules.add_argument("--algorithm", help="only the rules that apply to this algorithm (e.g. dpo, grpo)")
    rules.add_argument("--json", action="store_true", help="machine-readable output")
    rules.add_argument("--markdown", action="store_true", help="the README catalog table")
    rules.set_defaults(func=cmd_rules)

    watch = sub.add_parser("watch", help="follow a run folder that another process is writing")
    watch.add_argument("run_dir", metavar="RUN_DIR")
    watch.add_argument("--once", action="store_true", help="print the current state and exit")
    watch.add_argument("--wait", action="store_true", help="wait for the run folder to appear (start before training)")
    watch.add_argument("--interval", type=float, default=0.5, help="seconds between polls (default 0.5)")
    watch.add_argument("--line-every", type=float, default=10.0,
                       help="without a terminal: seconds between progress lines (default 10)")
    watch.add_argument("--idle-timeout", type=float, default=0.0,
                       help="give up (exit 3) after this many seconds without a new event (default: never)")
    watch.set_defaults(func=cmd_watch)

    from ptt_nb._diagnose import add_parser as add_diagnose

    add_diagnose(sub)  # diagnose: its body lives in ptt_nb/_diagnose.py
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    debug = bool(os.environ.get("PTT_NB_DEBUG"))
    try:
        return int(args.func(args) or 0)
    except CLIError as exc:
        if debug:
            raise
        print(f"ptt-nb: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (OSError, ValueError) as exc:
        if debug:
            raise
        print(f"ptt-nb: error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
