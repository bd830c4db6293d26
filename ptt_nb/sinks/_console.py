"""Console sink for scripts: each alert episode printed once, through ``logging`` so users can silence it
(``logging.getLogger("ptt_nb").setLevel(logging.ERROR)``) or route it wherever their logs go."""

from __future__ import annotations

import logging
import sys

from ptt_nb.events import Alert, Control, Event, RunEnd, RunStart, Severity

log = logging.getLogger("ptt_nb.alerts")
status_log = logging.getLogger("ptt_nb.status")

# the logging level of each severity (a str enum: ``LEVELS["high"]`` works too)
LEVELS = {Severity.CRITICAL: logging.CRITICAL, Severity.HIGH: logging.ERROR, Severity.MEDIUM: logging.WARNING,
          Severity.LOW: logging.INFO}


def format_alert(alert: Alert) -> str:
    lines = [f"[{alert.severity.upper()}] {alert.message} (rule {alert.rule}, step {alert.step})"]
    if alert.reference:
        lines.append(f"Ref: {alert.reference}")
    if alert.action:
        lines.append(f"[RECOMMENDED] {alert.action}")
    return "\n".join(lines)


def ensure_handler() -> None:
    """Give the ``ptt_nb`` logger a plain stderr handler unless the user configured logging themselves.

    Only our own named logger is touched (never the root), so this changes nothing else in the process.
    """
    root_pkg = logging.getLogger("ptt_nb")
    if root_pkg.handlers or logging.getLogger().handlers:
        if root_pkg.level == logging.NOTSET:
            root_pkg.setLevel(logging.INFO)
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    root_pkg.addHandler(handler)
    if root_pkg.level == logging.NOTSET:
        root_pkg.setLevel(logging.INFO)
    root_pkg.propagate = False


class ConsoleSink:
    """Prints alert episodes when they open (and once when they resolve), plus the run's start and end."""

    def __init__(self, run_dir: str | None = None) -> None:
        self.run_dir = run_dir
        ensure_handler()

    def __call__(self, event: Event) -> None:
        if isinstance(event, Alert):
            if event.state == "active":
                log.log(LEVELS.get(event.severity, logging.WARNING), format_alert(event))
            else:
                log.info("[RESOLVED] %s (rule %s, step %s → %s)", event.message, event.rule, event.step,
                         event.resolved_step)
        elif isinstance(event, RunStart):
            where = f"; run folder: {self.run_dir}" if self.run_dir else ""
            status_log.info("ptt_nb: watching %s (%s)%s", event.trainer, event.algorithm, where)
        elif isinstance(event, Control) and event.action == "stop":
            status_log.warning("ptt_nb: stop requested by %s (%s) at step %s: training stops at this step",
                               event.by, event.reason, event.step)
        elif isinstance(event, RunEnd):
            where = f"; run folder: {self.run_dir}" if self.run_dir else ""
            status_log.info("ptt_nb: run ended at step %s: %s%s", event.step, event.reason, where)
