"""The hand-written HTML of the static HTML report (``sinks._report``): run header, alert table, postmortem
and notes on the data, every value escaped, so they stay readable, searchable and printable without JavaScript.
Severity and state colours come from ``palette.json`` (``ptt_nb.events.PALETTE``), as in the widget.
"""

from __future__ import annotations

import datetime as dt
import html
from typing import Any

from ptt_nb.events import NEUTRAL_COLOUR, PALETTE, SEVERITY_COLOURS, SEVERITY_RANK, Alert
from ptt_nb.monitor._monitor import Monitor
from ptt_nb.sinks._text_summary import fmt, where_it_died

MAX_ALERT_ROWS = 1000


def e(value: Any) -> str:
    """Escape anything for HTML text and attributes."""
    return html.escape(str(value), quote=True)


def _safe_url(url: str | None) -> str | None:
    """Only http(s) links: a recorded ``javascript:`` URL must never become clickable."""
    if url and url.strip().lower().startswith(("http://", "https://")):
        return url.strip()
    return None


def _when(t: float | None) -> str:
    if not t:
        return "–"
    return dt.datetime.fromtimestamp(t, dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def _duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h {m:02d}m {s:02d}s" if h else f"{m}m {s:02d}s"


# -- hand-written HTML ---------------------------------------------------------------------------------------------
CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0 auto;max-width:1400px;padding:16px 24px;
color:#222;background:#fff}
h1{font-size:1.5em;margin:.2em 0}
h2{font-size:1.15em;margin:1.4em 0 .5em;border-bottom:1px solid #ddd;padding-bottom:4px}
table{border-collapse:collapse;font-size:13px}
td,th{border:1px solid #ddd;padding:4px 8px;vertical-align:top;text-align:left}
th{background:#f5f5f5}table.kv td:first-child{color:#555;white-space:nowrap}
.badge{display:inline-block;padding:1px 8px;border-radius:10px;color:#fff;font-size:12px;font-weight:600}
pre{background:#f6f8fa;border:1px solid #ddd;padding:8px;overflow:auto;max-height:480px;font-size:12px}
.flex{display:flex;gap:24px;flex-wrap:wrap}.muted{color:#666;font-size:12px}.warn{color:#8a6d00}
td.evidence,td.msg{max-width:420px}
.alerts-box{max-height:420px;overflow:auto;display:inline-block;max-width:100%}
@media print{.alerts-box{max-height:none;overflow:visible}}
"""
# the colours of palette.json, as in the widget (a severity this version does not know gets the neutral grey)
CSS += "".join([f".badge{{background:{NEUTRAL_COLOUR}}}",
                *(f".sev-{name}{{background:{colour}}}" for name, colour in SEVERITY_COLOURS.items()),
                *(f".state-{name}{{color:{colour}}}" for name, colour in PALETTE["state"].items())]) + "\n"


def _kv_table(rows: list[tuple[str, Any]], cls: str = "kv") -> str:
    body = "".join(f"<tr><td>{e(k)}</td><td>{e(fmt(v) if isinstance(v, float) else v)}</td></tr>" for k, v in rows)
    return f'<table class="{cls}">{body}</table>'


def _header_html(monitor: Monitor) -> str:
    run = monitor.run
    assert run is not None
    end = monitor.end_event
    max_steps = monitor.max_steps
    last = max(monitor.step, end.step if end else 0)
    steps = f"{last}" + (f" / {max_steps}" if max_steps else "")
    state = monitor.state
    reason = end.reason if end else "(no run_end event: still running, or the process was killed)"
    t_end = end.t if end else None
    last_t = t_end or run.t
    rows: list[tuple[str, Any]] = [
        ("Run", run.run_id),
        ("Trainer", run.trainer),
        ("Algorithm", f"{monitor.profile.display} ({run.algorithm})"),
        ("Steps", steps),
        ("State", state),
        ("End reason", reason + (f" — {end.detail}" if end and end.detail else "")),
        ("World size", run.world_size),
        ("Started", _when(run.t)),
    ]
    if t_end:
        rows.append(("Ended", _when(t_end)))
        rows.append(("Duration", _duration(last_t - run.t)))
    if run.resumed_from_step:
        rows.append(("Resumed from step", run.resumed_from_step))
    if run.git_commit:
        rows.append(("Git commit", run.git_commit))
    if monitor.run_dir is not None:
        rows.append(("Run folder", str(monitor.run_dir)))
    counts = monitor.alerts_by_severity()
    badges = " ".join(f'<span class="badge sev-{e(sev)}">{e(sev)}: {n}</span>'
                      for sev, n in counts.items() if n) or '<span class="muted">no alerts</span>'
    config = [(k, v if not isinstance(v, list) else ", ".join(map(str, v))) for k, v in (run.config or {}).items()]
    versions = list((run.versions or {}).items())
    title = f"ptt_nb report — {run.trainer} ({monitor.profile.display})"
    return (f"<h1>{e(title)}</h1>"
            f'<p class="state-{e(state)}"><b>{e(state)}</b> at step {e(steps)} · alerts: {badges}</p>'
            f'<div class="flex"><div><h2>Run</h2>{_kv_table(rows)}</div>'
            f'<div><h2>Config</h2>{_kv_table(config) if config else "<p class=muted>none recorded</p>"}</div>'
            f'<div><h2>Versions</h2>{_kv_table(versions) if versions else "<p class=muted>none recorded</p>"}'
            f"</div></div>")


def _alerts_html(alerts: list[Alert]) -> str:
    if not alerts:
        return "<h2>Alerts</h2><p class='muted'>No alert fired during this run.</p>"
    rows = []
    ordered = sorted(alerts, key=lambda a: (a.step, SEVERITY_RANK.get(a.severity, 9)))
    note = ""
    if len(ordered) > MAX_ALERT_ROWS:  # a flapping rule must not make a 10 MB page; the first episodes matter most
        note = (f"<p class='muted'>{len(ordered) - MAX_ALERT_ROWS} later episodes are not listed here "
                "(all are in events.jsonl).</p>")
        ordered = ordered[:MAX_ALERT_ROWS]
    for a in ordered:
        step = f"{a.step}" + (f" → {a.resolved_step}" if a.resolved_step is not None else "")
        evidence = ", ".join(f"{k}={fmt(v)}" for k, v in (a.evidence or {}).items())
        url = _safe_url(a.url)
        ref = e(a.reference) if a.reference else ""
        if url:
            ref = f'<a href="{e(url)}" rel="noopener noreferrer" target="_blank">{ref or e(url)}</a>'
        rows.append(
            f'<tr class="alert-row" data-rule="{e(a.rule)}"><td><span class="badge sev-{e(a.severity)}">'
            f"{e(a.severity)}</span></td><td><code>{e(a.rule)}</code></td><td>{e(step)}</td><td>{e(a.state)}</td>"
            f'<td class="msg">{e(a.message)}</td><td class="evidence">{e(evidence)}</td><td>{e(a.action)}</td>'
            f"<td>{ref}</td></tr>")
    return ("<h2>Alerts</h2><div class='alerts-box'><table class='alerts'>"
            "<tr><th>severity</th><th>rule</th><th>step</th><th>state</th>"
            "<th>message</th><th>evidence</th><th>recommended action</th><th>reference</th></tr>"
            + "".join(rows) + "</table></div>" + note)


def _postmortem_html(pm: dict[str, Any] | None) -> str:
    if not pm:
        return ""
    rows: list[tuple[str, Any]] = [("Exit reason", pm.get("exit_reason")), ("Last step", pm.get("last_step")),
                                   ("When", pm.get("timestamp"))]
    if pm.get("detail"):
        rows.append(("Detail", pm["detail"]))
    stop = pm.get("stop")
    if stop:
        rows.append(("Stop", ", ".join(f"{k}={v}" for k, v in stop.items() if k != "alert")))
    died = where_it_died(pm.get("traceback"))
    if died:
        rows.append(("Where", died))
    final = pm.get("final_metrics") or {}
    final_html = _kv_table([(k, fmt(v)) for k, v in final.items()]) if final else ""
    tb = pm.get("traceback")
    tb_html = f"<h3>Traceback</h3><pre class='traceback'>{e(tb)}</pre>" if tb else ""
    return (f"<h2>Postmortem</h2><div class='flex'><div>{_kv_table(rows)}</div>"
            f"<div>{('<b>Final metrics</b>' + final_html) if final_html else ''}</div></div>{tb_html}")


def _warnings_html(warnings: list[str]) -> str:
    if not warnings:
        return ""
    items = "".join(f"<li>{e(w)}</li>" for w in warnings[:50])
    return f"<h2>Notes on the data</h2><ul class='warn'>{items}</ul>"
