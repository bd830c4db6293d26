"""The static report: one self-contained, offline HTML file per run (Bokeh with INLINE resources).

It draws the same panels as the widget from ``Monitor.panels()`` (plain JSON specs), so the notebook and the
report never disagree about what a run looks like. Every series is min/max decimated, which keeps spikes and
NaN gaps while a 100k-step run stays a small file. The run header, alert table and postmortem are hand-written
HTML (every value escaped) so they stay readable, searchable and printable without JavaScript.
"""

from __future__ import annotations

import datetime as dt
import html
import importlib.util
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from ptt_nb.events import SEVERITY_RANK, Alert, RankStats
from ptt_nb.monitor._decimate import minmax_decimate
from ptt_nb.monitor._monitor import Monitor
from ptt_nb.sinks._text_summary import where_it_died

if importlib.util.find_spec("bokeh") is None:  # fail at import, where callers already expect it
    raise ImportError("the HTML report needs bokeh: pip install 'ptt-nb[report]'")

REPORT_FILE = "report.html"
MAX_POINTS = 1200  # per series: ~1 point per pixel of a wide panel; extremes survive decimation
MAX_HEATMAP_COLUMNS = 400
MAX_ALERT_ROWS = 1000
SEVERITY_COLOURS = {"critical": "#b2182b", "high": "#e66101", "medium": "#d8a200", "low": "#7f7f7f"}
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22", "#7f7f7f")
PREFERRED_RANK_METRICS = ("compute_ms", "step_ms", "wait_ms", "mem_gb", "memory_gb", "max_mem_gb")


def e(value: Any) -> str:
    """Escape anything for HTML text and attributes."""
    return html.escape(str(value), quote=True)


def fmt(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, int):
        return str(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "Infinity" if value > 0 else "-Infinity"
    return f"{value:.4g}"


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


# -- loading ------------------------------------------------------------------------------------------------
def _as_monitor(run_dir_or_monitor: Monitor | str | os.PathLike[str]) -> Monitor:
    if isinstance(run_dir_or_monitor, Monitor):
        return run_dir_or_monitor
    from ptt_nb.sources._reader import load_run

    return load_run(run_dir_or_monitor)


# -- plots -------------------------------------------------------------------------------------------------------
def _plot_arrays(steps: np.ndarray, values: np.ndarray, log_y: bool) -> tuple[np.ndarray, np.ndarray]:
    steps, values = minmax_decimate(steps, values, max(1, MAX_POINTS // 2))
    values = values.astype(np.float64, copy=True)
    values[~np.isfinite(values)] = np.nan  # a gap in the line; the non-finite markers show where
    if log_y:
        values[values <= 0] = np.nan
    return steps, values


def _nonfinite_points(steps: np.ndarray, values: np.ndarray, log_y: bool) -> tuple[np.ndarray, np.ndarray, list]:
    """Where a series went NaN/Inf, placed at the last finite value before it (the line has a gap there)."""
    bad = ~np.isfinite(values)
    if not bad.any():
        return steps[:0], values[:0], []
    ok = np.isfinite(values) & ((values > 0) if log_y else True)
    idx = np.where(ok, np.arange(values.shape[0]), -1)
    idx = np.maximum.accumulate(idx)
    fallback = 1.0 if log_y else 0.0
    y = np.where(idx >= 0, values[np.clip(idx, 0, None)], fallback)
    bad_idx = np.flatnonzero(bad)[:500]
    return steps[bad_idx], y[bad_idx], [fmt(float(v)) for v in values[bad_idx]]


def _value_at(steps: np.ndarray, values: np.ndarray, step: int, log_y: bool) -> float | None:
    if steps.shape[0] == 0:
        return None
    i = int(np.clip(np.searchsorted(steps, step, "right") - 1, 0, steps.shape[0] - 1))
    for j in range(i, -1, -1):
        v = float(values[j])
        if math.isfinite(v) and (v > 0 or not log_y):
            return v
    return None


def _flat_range(value: float, log_y: bool):
    from bokeh.models import Range1d

    if log_y:
        return Range1d(value / 2, value * 2)
    pad = abs(value) * 0.5 or 1.0
    return Range1d(value - pad, value + pad)


def _panel_figure(monitor: Monitor, spec: dict[str, Any], alerts: list[Alert], x_range: Any, last_step: int):
    from bokeh.models import ColumnDataSource, HoverTool, Label, Legend, Span
    from bokeh.plotting import figure

    log_y = spec.get("y_scale") == "log"
    fig = figure(title=spec.get("title", spec.get("id", "")), height=260, sizing_mode="stretch_width",
                 y_axis_type="log" if log_y else "linear", x_range=x_range,
                 tools="pan,box_zoom,wheel_zoom,reset,save", toolbar_location="right", output_backend="canvas")
    fig.name = f"panel:{spec.get('id', '')}"
    fig.xaxis.axis_label = "step"
    if spec.get("y_label"):
        fig.yaxis.axis_label = spec["y_label"]
    legend_items = []
    lines = []
    first: tuple[np.ndarray, np.ndarray] | None = None
    lo, hi = math.inf, -math.inf
    for i, s in enumerate(spec["series"]):
        series = monitor.history.get(s["key"], s.get("split", "train"))
        if series is None or len(series) == 0:
            continue
        steps, values = series.arrays()
        if first is None:
            first = (steps, values)
        colour = PALETTE[i % len(PALETTE)]
        x, y = _plot_arrays(steps, values, log_y)
        if np.isfinite(y).any():
            lo, hi = min(lo, float(np.nanmin(y))), max(hi, float(np.nanmax(y)))
        source = ColumnDataSource({"x": x, "y": y})
        dash = "dashed" if s.get("split") == "eval" else "solid"
        line = fig.line("x", "y", source=source, line_width=1.6, line_color=colour, line_dash=dash,
                        name=s.get("label", s["key"]))
        if x.shape[0] <= 3:  # a line needs two points; a tiny run still shows its values
            fig.scatter("x", "y", source=source, size=5, color=colour)
        lines.append(line)
        legend_items.append((s.get("label", s["key"]), [line]))
        bx, by, btext = _nonfinite_points(steps, values, log_y)
        if bx.shape[0]:
            bad_src = ColumnDataSource({"x": bx, "y": by, "value": btext})
            marks = fig.scatter("x", "y", source=bad_src, marker="x", size=11, line_width=2.5,
                                color=SEVERITY_COLOURS["critical"])
            fig.add_tools(HoverTool(renderers=[marks], tooltips=[("step", "@x{0}"), ("value", "@value")]))
            legend_items.append((f"{s.get('label', s['key'])}: non-finite", [marks]))
    if lo <= hi and hi - lo <= 1e-9 * max(abs(hi), 1e-30):
        fig.y_range = _flat_range(lo, log_y)  # a constant series (e.g. a constant LR) would sit on a blank axis
    if lines:
        fig.add_tools(HoverTool(renderers=lines, tooltips=[("series", "$name"), ("step", "@x{0}"),
                                                           ("value", "@y{0.0000g}")], mode="mouse"))
    for ref in spec.get("refs", []):
        y = ref.get("y")
        if y is None or (log_y and y <= 0):
            continue
        fig.add_layout(Span(location=y, dimension="width", line_color="#555555", line_dash="dotted",
                            line_width=1.2))
        if ref.get("label"):
            # at the right end, away from the top-left legend
            fig.add_layout(Label(x=last_step, y=y, text=ref["label"], text_font_size="9pt", text_align="right",
                                 text_color="#555555", y_offset=2))
    panel_alerts = [a for a in alerts if spec.get("id") in (a.panels or [])]
    if panel_alerts:
        data: dict[str, list[Any]] = {"x": [], "y": [], "colour": [], "rule": [], "severity": [], "message": [],
                                      "state": []}
        # one vectorised glyph each for the episode lines and shades: thousands of alerts stay cheap
        colours = [SEVERITY_COLOURS.get(a.severity, "#7f7f7f") for a in panel_alerts]
        fig.vspan(x=[a.step for a in panel_alerts], line_color=colours, line_dash="dashed", line_width=1.4,
                  line_alpha=0.8, name="alert_lines")
        shaded = [(a, c) for a, c in zip(panel_alerts, colours, strict=True)
                  if (a.resolved_step if a.resolved_step is not None else last_step) > a.step]
        if shaded:
            fig.vstrip(x0=[a.step for a, _ in shaded],
                       x1=[a.resolved_step if a.resolved_step is not None else last_step for a, _ in shaded],
                       fill_color=[c for _, c in shaded], fill_alpha=0.07, line_alpha=0, name="alert_episodes")
        for a in panel_alerts:
            y = _value_at(*first, a.step, log_y) if first is not None else None
            if y is None:
                continue
            data["x"].append(a.step)
            data["y"].append(y)
            data["colour"].append(SEVERITY_COLOURS.get(a.severity, "#7f7f7f"))
            data["rule"].append(a.rule)
            data["severity"].append(a.severity)
            data["message"].append(a.message)
            data["state"].append(a.state)
        if data["x"]:
            marks = fig.scatter("x", "y", source=ColumnDataSource(data), marker="inverted_triangle", size=12,
                                fill_color="colour", line_color="#222222")
            fig.add_tools(HoverTool(renderers=[marks], tooltips=[("alert", "@severity: @rule"), ("step", "@x"),
                                                                 ("state", "@state"), ("", "@message")]))
            legend_items.append(("alert", [marks]))
    if len(legend_items) > 1:
        legend = Legend(items=legend_items, location="top_left", click_policy="hide", label_text_font_size="8pt",
                        background_fill_alpha=0.6)
        fig.add_layout(legend)
    return fig


def _panels_grid(monitor: Monitor, specs: list[dict[str, Any]], alerts: list[Alert], last_step: int):
    from bokeh.layouts import gridplot
    from bokeh.models import DataRange1d

    if not specs:
        return None
    x_range = DataRange1d()  # shared: zooming one panel zooms them all
    figs = [_panel_figure(monitor, spec, alerts, x_range, last_step) for spec in specs]
    return gridplot(figs, ncols=2, sizing_mode="stretch_width", merge_tools=False)


def rank_matrix(stats: list[RankStats], metric: str, max_columns: int = MAX_HEATMAP_COLUMNS
                ) -> tuple[np.ndarray, np.ndarray]:
    """Ranks × intervals for one metric (NaN where a rank did not report); columns binned by mean when many."""
    world = max(max((len(v) for v in s.per_rank.values()), default=0) for s in stats)
    world = max(world, max(s.world_size for s in stats))
    mat = np.full((world, len(stats)), np.nan)
    steps = np.array([s.step for s in stats], dtype=np.float64)
    for j, s in enumerate(stats):
        vals = s.per_rank.get(metric) or []
        for r, v in enumerate(vals[:world]):
            try:
                mat[r, j] = float(v) if v is not None else np.nan
            except (TypeError, ValueError):
                pass
    n = mat.shape[1]
    if n > max_columns:
        edges = np.linspace(0, n, max_columns + 1).astype(np.int64)
        with np.errstate(invalid="ignore"):
            sums = np.add.reduceat(np.nan_to_num(mat), edges[:-1], axis=1)
            counts = np.add.reduceat(np.isfinite(mat).astype(np.float64), edges[:-1], axis=1)
            mat = np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)
        steps = steps[edges[:-1]]
    return mat, steps


def rank_metrics(stats: list[RankStats]) -> list[str]:
    seen: list[str] = []
    for s in stats:
        for key in s.per_rank:
            if key not in seen:
                seen.append(key)
    preferred = [m for m in PREFERRED_RANK_METRICS if m in seen]
    return preferred + [m for m in seen if m not in preferred]


def _rank_heatmaps(stats: list[RankStats]):
    from bokeh.layouts import gridplot
    from bokeh.models import ColorBar, FixedTicker, HoverTool, LinearColorMapper
    from bokeh.palettes import Viridis256
    from bokeh.plotting import figure

    if not stats:
        return None
    figs = []
    for metric in rank_metrics(stats)[:6]:
        mat, steps = rank_matrix(stats, metric)
        if not np.isfinite(mat).any():
            continue
        world = mat.shape[0]
        x0 = float(steps[0])
        span = float(steps[-1] - steps[0]) if steps.shape[0] > 1 else 1.0
        dw = span * steps.shape[0] / max(steps.shape[0] - 1, 1) if steps.shape[0] > 1 else 1.0
        mapper = LinearColorMapper(palette=Viridis256, low=float(np.nanmin(mat)), high=float(np.nanmax(mat)),
                                   nan_color="rgba(0,0,0,0)")
        fig = figure(title=f"Per-rank {metric}", height=max(160, min(420, 40 + 22 * world)),
                     sizing_mode="stretch_width", x_range=(x0, x0 + dw), y_range=(-0.5, world - 0.5),
                     tools="pan,box_zoom,wheel_zoom,reset,save", output_backend="canvas")
        fig.name = f"ranks:{metric}"
        img = fig.image(image=[mat], x=x0, y=-0.5, dw=dw, dh=world, color_mapper=mapper)
        fig.add_tools(HoverTool(renderers=[img], tooltips=[("step", "$x{0}"), ("rank", "$y{0}"),
                                                          (metric, "@image{0.000g}")]))
        fig.add_layout(ColorBar(color_mapper=mapper, width=10), "right")
        fig.xaxis.axis_label = "step"
        fig.yaxis.axis_label = "rank"
        if world <= 32:
            fig.yaxis.ticker = FixedTicker(ticks=list(range(world)))
        figs.append(fig)
    if not figs:
        return None
    return gridplot(figs, ncols=1, sizing_mode="stretch_width", merge_tools=False)


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
.sev-critical{background:#b2182b}.sev-high{background:#e66101}.sev-medium{background:#d8a200}.sev-low{background:#7f7f7f}
.state-finished{color:#1a7f37}.state-crashed,.state-auto_stopped{color:#b2182b}
pre{background:#f6f8fa;border:1px solid #ddd;padding:8px;overflow:auto;max-height:480px;font-size:12px}
.flex{display:flex;gap:24px;flex-wrap:wrap}.muted{color:#666;font-size:12px}.warn{color:#8a6d00}
td.evidence,td.msg{max-width:420px}
.alerts-box{max-height:420px;overflow:auto;display:inline-block;max-width:100%}
@media print{.alerts-box{max-height:none;overflow:visible}}
"""


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


def build_roots(monitor: Monitor) -> dict[str, Any]:
    """The Bokeh layouts of a report: ``panels`` (profile panels), ``other`` (unmapped keys), ``ranks``."""
    specs = monitor.panels()
    alerts = list(monitor.alerts)
    last_step = max(monitor.step, monitor.history.last_step)
    core = [s for s in specs if s.get("group", "core") != "other"]
    other = [s for s in specs if s.get("group") == "other"]
    roots: dict[str, Any] = {}
    grid = _panels_grid(monitor, core, alerts, last_step)
    if grid is not None:
        roots["panels"] = grid
    other_grid = _panels_grid(monitor, other, alerts, last_step)
    if other_grid is not None:
        roots["other"] = other_grid
    heat = _rank_heatmaps(monitor.rank_stats)
    if heat is not None:
        roots["ranks"] = heat
    return roots


# -- entry points --------------------------------------------------------------------------------------------------
def build_html(monitor: Monitor) -> str:
    """The report as one HTML string (inline BokehJS, no network)."""
    from bokeh.embed import components
    from bokeh.embed.bundle import bundle_for_objs_and_resources
    from bokeh.resources import INLINE

    from ptt_nb import __version__

    if monitor.run is None:
        raise ValueError("this run has no run_start event: nothing to report")
    alerts = list(monitor.alerts)
    core = [s for s in monitor.panels() if s.get("group", "core") != "other"]
    roots = build_roots(monitor)
    if roots:
        script, divs = components(roots)
        js, css = bundle_for_objs_and_resources(list(roots.values()), INLINE)  # only the parts these plots use
        resources = js + css
    else:
        script, divs, resources = "", {}, ""
    titles = "".join(f"<li>{e(s.get('title', s.get('id')))}</li>" for s in core)
    sections = [_header_html(monitor), _alerts_html(alerts)]
    if "panels" in divs:
        sections.append(f"<h2>Panels</h2><ul class='muted panel-titles' style='columns:3'>{titles}</ul>"
                        f"<p class='muted'>Train: solid · eval: dashed · dotted: reference values · ▼ and dashed "
                        f"verticals: alerts (shaded while active) · ✕: non-finite values.</p>{divs['panels']}")
    else:
        sections.append("<h2>Panels</h2><p class='muted'>No metric was logged.</p>")
    if "ranks" in divs:
        sections.append(f"<h2>Per-rank heatmap</h2>{divs['ranks']}")
    if "other" in divs:
        sections.append(f"<h2>Other logged metrics</h2>{divs['other']}")
    sections.append(_postmortem_html(monitor.postmortem))
    sections.append(_warnings_html(monitor.warnings))
    generated = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    sections.append(f"<p class='muted'>Generated by ptt_nb {e(__version__)} on {e(generated)}. "
                    "Self-contained: opens offline.</p>")
    run = monitor.run
    title = f"ptt_nb · {run.run_id} · {run.trainer}"
    return ("<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
            f"<meta name='viewport' content='width=device-width, initial-scale=1'><title>{e(title)}</title>"
            f"<style>{CSS}</style>{resources}{script}</head><body>{''.join(sections)}</body></html>\n")


def write_report(run_dir_or_monitor: Monitor | str | os.PathLike[str], out_path: str | os.PathLike[str] | None = None
                 ) -> Path:
    """Write the report of a run folder (or a live/loaded Monitor); default ``<run folder>/report.html``."""
    monitor = _as_monitor(run_dir_or_monitor)
    if out_path is None:
        if monitor.run_dir is None:
            raise ValueError("no out_path given and the monitor has no run folder")
        out_path = Path(monitor.run_dir) / REPORT_FILE
    out = Path(out_path)
    text = build_html(monitor)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, out)  # a reader (or a browser reload) never sees half a report
    return out


def write_at_end(monitor: Monitor) -> Path | None:
    """Write ``report.html`` into the run folder when a run ends; never raises (the run is already over)."""
    if monitor.run_dir is None or monitor.run is None:
        return None
    try:
        return write_report(monitor, Path(monitor.run_dir) / REPORT_FILE)
    except ImportError as exc:
        monitor.warn(f"ptt_nb: the HTML report needs bokeh ({exc}); pip install 'ptt-nb[report]'")
    except Exception as exc:  # noqa: BLE001 - a report failure must not turn a finished run into a crash
        monitor.warn(f"ptt_nb: could not write the HTML report ({type(exc).__name__}: {exc})")
    return None
