"""The text end-of-run summary: one screen of plain text about a run (state, latest key metrics, alerts,
postmortem).

Used on the command line: ``ptt-nb summary RUN_DIR`` prints it, ``ptt-nb watch --once`` prints it for the
run so far, ``ptt-nb demo`` at the end of the demo run; ``summarize()`` gives it to anyone else. Plain text on
purpose: it must read the same in a terminal, a log file and a notebook cell's output. The two HTML summaries
are elsewhere: ``sinks._report`` (the report file) and ``notebook._static_fallback`` (what a notebook shows
when the widget cannot render). ``fmt`` here is the number formatting all three share.
"""

from __future__ import annotations

import math
import os
import textwrap
from typing import Any

from ptt_nb.events import SEVERITIES, Alert, encode_float
from ptt_nb.monitor._monitor import Monitor

MAX_KEY_METRICS = 10
MAX_ALERT_LINES = 12
PER_RULE = 3
WIDTH = 100


def fmt(value: Any) -> str:
    """A value for people: floats to 4 significant digits, NaN/Inf spelled as ``events.jsonl`` spells them
    (``events.encode_float``: ``NaN``, ``Infinity``, ``-Infinity``), anything else as ``str()``."""
    if isinstance(value, bool) or not isinstance(value, float):
        return str(value)
    if not math.isfinite(value):
        return str(encode_float(value))
    return f"{value:.4g}"


def key_metrics(monitor: Monitor, limit: int = MAX_KEY_METRICS) -> list[tuple[str, float]]:
    """(key, latest value) of the profile's panel series that the run logged, in panel order."""
    out: list[tuple[str, float]] = []
    seen: set[str] = set()
    for spec in monitor.panels():
        if spec.get("group", "core") == "other":
            continue
        for s in spec["series"]:
            if s.get("split", "train") != "train" or s["key"] in seen:
                continue
            series = monitor.history.get(s["key"])
            if series is None or not len(series):
                continue
            seen.add(s["key"])
            out.append((s["key"], series.last()))
            if len(out) >= limit:
                return out
    return out


def progress(step: int, max_steps: int | None) -> str:
    return f"{step}/{max_steps}" if max_steps else f"{step}"


def alert_line(alert: Alert) -> str:
    span = f"step {alert.step}"
    if alert.resolved_step is not None:
        span += f"→{alert.resolved_step}"
    return f"[{alert.severity.upper()}] {alert.rule} ({span}, {alert.state}): {alert.message}"


def alert_lines(alerts: list[Alert], per_rule: int = PER_RULE, limit: int = MAX_ALERT_LINES) -> list[str]:
    """Alert episodes in order, at most ``per_rule`` per rule (a flapping rule must not fill the screen)."""
    shown: dict[str, int] = {}
    hidden: dict[str, int] = {}
    out: list[str] = []
    for alert in alerts:
        if shown.get(alert.rule, 0) >= per_rule or len(out) >= limit:
            hidden[alert.rule] = hidden.get(alert.rule, 0) + 1
            continue
        shown[alert.rule] = shown.get(alert.rule, 0) + 1
        out.append(alert_line(alert))
    if hidden:
        more = ", ".join(f"{rule} ×{n}" for rule, n in sorted(hidden.items(), key=lambda kv: -kv[1]))
        out.append(f"… {sum(hidden.values())} more episodes: {more} (all are in the HTML report)")
    return out


def where_it_died(traceback: str | None) -> str:
    """The innermost ``File ..., line N, in f`` frame and the exception line of a traceback."""
    if not traceback:
        return ""
    lines = [ln.strip() for ln in traceback.strip().splitlines() if ln.strip()]
    frames = [ln for ln in lines if ln.startswith('File "')]
    parts = [frames[-1] if frames else "", lines[-1] if lines else ""]
    return " · ".join(p for p in parts if p)


def summarize(run: Monitor | str | os.PathLike[str]) -> str:
    """The summary of a Monitor (live or loaded) or of a run folder."""
    if not isinstance(run, Monitor):
        from ptt_nb.sources._reader import load_run

        run = load_run(run)
    monitor = run
    start = monitor.run
    if start is None:
        return "ptt_nb: this run has no run_start event yet."
    end = monitor.end_event
    ended = f"ended: {end.reason}" + (f" ({end.detail})" if end and end.detail else "") if end else "running"
    step = max(monitor.step, end.step if end else 0)
    lines = [f"{monitor.profile.display} run {start.run_id} · {start.trainer} · step "
             f"{progress(step, monitor.max_steps)} · {ended}"]
    if monitor.run_dir is not None:
        lines.append(f"run folder: {monitor.run_dir}")
    metrics = key_metrics(monitor)
    if metrics:
        text = "  ".join(f"{key}={fmt(v)}" for key, v in metrics)
        lines.append(textwrap.fill(text, width=WIDTH, initial_indent="latest: ", subsequent_indent="        ",
                                   break_on_hyphens=False))
    counts = monitor.alerts_by_severity()
    total = sum(counts.values())
    lines.append("alerts: " + (" · ".join(f"{s} {counts.get(s, 0)}" for s in SEVERITIES) if total else "none"))
    lines.extend("  " + line for line in alert_lines(monitor.alerts))
    pm: dict[str, Any] | None = monitor.postmortem
    if pm:
        detail = f" — {pm['detail']}" if pm.get("detail") else ""
        lines.append(f"postmortem: {pm.get('exit_reason')} at step {pm.get('last_step')}{detail}")
        died = where_it_died(pm.get("traceback"))
        if died:
            lines.append(f"  died in: {died}")
    for warning in monitor.warnings[:3]:
        lines.append(f"note: {warning}")
    return "\n".join(lines)
