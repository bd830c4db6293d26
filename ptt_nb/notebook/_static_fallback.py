"""The static notebook fallback: the small ``text/html`` summary a notebook shows when the live widget cannot
render (status, one SVG sparkline per panel, the alerts).

``LiveWidget`` puts it in its output bundle next to the widget view, refreshed as the run goes, so a notebook
opened without a kernel or widget state (nbconvert HTML, GitHub, a viewer, a closed-and-reopened notebook)
still shows the result. Self-contained (inline SVG, no script) and bounded in size (< ~100 KB whatever the run
length): every series is min/max-decimated to a few dozen points. Not the report: the full static HTML report
file is ``sinks._report``, the plain-text summary ``sinks._text_summary``. Colours are the widget's
(``palette.json``).
"""

from __future__ import annotations

import html
import math
from typing import Any

import numpy as np

from ptt_nb.events import NEUTRAL_COLOUR, PALETTE, SEVERITY_COLOURS, SEVERITY_RANK, Severity
from ptt_nb.monitor._decimate import minmax_decimate
from ptt_nb.sinks._text_summary import fmt as _fmt

MAX_BYTES = 100_000
COLORS: tuple[str, ...] = tuple(PALETTE["series"])[:6]  # the widget's series colours, at most 6 lines a panel
SEVERITY_COLORS = SEVERITY_COLOURS  # the severity colours of the widget and the report
W, H = 240, 70


def _sparkline(monitor: Any, panel: dict[str, Any], buckets: int) -> str:
    lines: list[tuple[str, np.ndarray, np.ndarray]] = []
    for s in panel.get("series", [])[:len(COLORS)]:
        series = monitor.history.get(s["key"], s.get("split", "train"))
        if series is None or not len(series):
            continue
        steps, values = series.arrays()
        d_steps, d_values = minmax_decimate(steps, values, buckets)
        # min/max buckets need not keep the ends: add them, so the line spans the whole run
        x = np.concatenate([steps[:1], d_steps, steps[-1:]]).astype(np.float64)
        y = np.concatenate([values[:1], d_values, values[-1:]]).astype(np.float64)
        lines.append((s.get("label", s["key"]), x, y))
    if not lines:
        return ""
    log_y = panel.get("y_scale") == "log" and all((y[np.isfinite(y)] > 0).all() for _, _, y in lines)
    if log_y:
        lines = [(label, x, np.log10(np.where(np.isfinite(y), y, np.nan))) for label, x, y in lines]
    xs = np.concatenate([x for _, x, _ in lines])
    ys = np.concatenate([y for _, _, y in lines])
    ys = ys[np.isfinite(ys)]
    x0, x1 = float(xs.min()), float(xs.max())
    y0, y1 = (float(ys.min()), float(ys.max())) if ys.size else (0.0, 1.0)
    y_text = (f"{_fmt(10 ** y0)} &ndash; {_fmt(10 ** y1)} (log)" if log_y else f"{_fmt(y0)} &ndash; {_fmt(y1)}")
    if x1 == x0:
        x1 = x0 + 1
    if y1 == y0:
        y0, y1 = y0 - 1, y1 + 1
    paths, marks = [], []
    for i, (_label, x, y) in enumerate(lines):
        px = (x - x0) / (x1 - x0) * (W - 4) + 2
        py = H - 2 - (y - y0) / (y1 - y0) * (H - 4)
        parts, pen = [], "M"
        for a, b in zip(px.tolist(), py.tolist(), strict=True):
            if not math.isfinite(b):  # NaN/Inf: break the line and mark the step in red
                marks.append(f'<line x1="{a:.1f}" x2="{a:.1f}" y1="0" y2="{H}" stroke="{Severity.CRITICAL.colour}" '
                             'stroke-dasharray="2,2" />')
                pen = "M"
                continue
            parts.append(f"{pen}{a:.1f} {b:.1f}")
            pen = "L"
        if parts:
            paths.append(f'<path fill="none" stroke="{COLORS[i]}" stroke-width="1.2" d="{" ".join(parts)}" />')
    paths += marks[:20]
    legend = " ".join(f'<span style="color:{COLORS[i]}">&#9632; {html.escape(label)}</span>'
                      for i, (label, _x, _y) in enumerate(lines))
    title = html.escape(panel.get("title", panel.get("id", "")))
    return (f'<div style="display:inline-block;margin:4px;vertical-align:top;width:{W}px">'
            f'<div style="font-weight:600">{title}</div>'
            f'<svg width="{W}" height="{H}" viewBox="0 0 {W} {H}" style="border:1px solid #ddd;background:#fff">'
            f'{"".join(paths)}</svg>'
            f'<div style="font-size:10px;color:#555">steps {x0:.0f}&ndash;{x1:.0f} &middot; y {y_text}</div>'
            f'<div style="font-size:10px">{legend}</div></div>')


def summary_html(monitor: Any, *, max_panels: int = 16, buckets: int = 50, max_alerts: int = 12) -> str:
    """The static summary; shrinks itself (fewer points, then fewer panels) to stay under MAX_BYTES."""
    while True:
        out = _render(monitor, max_panels, buckets, max_alerts)
        if len(out.encode()) <= MAX_BYTES or (buckets <= 10 and max_panels <= 2):
            return out
        buckets, max_panels = max(10, buckets // 2), max(2, max_panels // 2 if buckets <= 10 else max_panels)


def _render(monitor: Any, max_panels: int, buckets: int, max_alerts: int) -> str:
    status = monitor.status()
    run = monitor.run
    head = " &middot; ".join(html.escape(str(x)) for x in (
        run.trainer if run else "run", run.algorithm if run else "", status.get("state", ""),
        f"step {status.get('step', 0)}" + (f" / {status['max_steps']}" if status.get("max_steps") else ""),
        status.get("reason") or "") if x)
    try:
        panels = monitor.panels()
    except RuntimeError:  # the training thread added a key meanwhile; the next update redraws
        panels = []
    cells = "".join(_sparkline(monitor, p, buckets) for p in panels[:max_panels])
    more = len(panels) - max_panels
    alerts = sorted(monitor.alerts, key=lambda a: (SEVERITY_RANK.get(a.severity, 9), -a.step))
    rows = []
    for a in alerts[:max_alerts]:
        color = SEVERITY_COLORS.get(a.severity, NEUTRAL_COLOUR)
        ref = html.escape(a.reference or "")
        if a.url and a.url.startswith(("https://", "http://")):
            ref = f'<a href="{html.escape(a.url)}">{ref or html.escape(a.url)}</a>'
        rows.append(
            f'<li style="border-left:4px solid {color};padding-left:6px;margin:3px 0">'
            f'<b style="color:{color}">{html.escape(a.severity)}</b> <code>{html.escape(a.rule)}</code> '
            f'step {a.step}{" (resolved)" if a.state == "resolved" else ""}: {html.escape(a.message)}'
            + (f'<br><i>Action:</i> {html.escape(a.action)}' if a.action else "")
            + (f'<br><i>Ref:</i> {ref}' if ref else "") + "</li>")
    if len(alerts) > max_alerts:
        rows.append(f"<li>&hellip; and {len(alerts) - max_alerts} more alerts</li>")
    alert_block = f'<ol style="list-style:none;padding:0;margin:4px 0">{"".join(rows)}</ol>' if rows else (
        "<div>No alerts.</div>")
    return (f'<div class="ptt-nb-static" style="font-family:sans-serif;font-size:12px">'
            f'<div style="font-weight:700;font-size:13px">ptt_nb &middot; {head}</div>'
            f'<div style="color:#666;font-size:10px">Static summary (the live dashboard needs a running kernel)'
            f'</div><div>{cells}</div>'
            + (f'<div style="color:#666">&hellip; {more} more panels</div>' if more > 0 else "")
            + f'<div style="font-weight:600;margin-top:4px">Alerts ({len(alerts)})</div>{alert_block}</div>')
