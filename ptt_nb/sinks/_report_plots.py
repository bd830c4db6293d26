"""The Bokeh plots of the static HTML report (``sinks._report``): one figure per panel spec of
``Monitor.panels()`` (the widget draws the same specs) and the per-rank heatmaps.

Every series is min/max decimated to ``MAX_POINTS``, which keeps spikes and NaN gaps while a 100k-step run
stays a small file; NaN/Inf points are marked where the line breaks. Bokeh is imported inside the functions,
so importing this module is cheap; ``sinks._report`` checks that Bokeh is installed.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ptt_nb.events import NEUTRAL_COLOUR, PALETTE, SEVERITY_COLOURS, Alert, RankStats
from ptt_nb.monitor._decimate import minmax_decimate
from ptt_nb.monitor._monitor import Monitor
from ptt_nb.sinks._text_summary import fmt

MAX_POINTS = 1200  # per series: ~1 point per pixel of a wide panel; extremes survive decimation
MAX_HEATMAP_COLUMNS = 400
SERIES_COLOURS: tuple[str, ...] = tuple(PALETTE["series"])  # the widget's series colours (palette.json)
PREFERRED_RANK_METRICS = ("compute_ms", "step_ms", "wait_ms", "mem_gb", "memory_gb", "max_mem_gb")


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


def _baseline_line(fig: Any, monitor: Monitor, s: dict[str, Any], colour: str, log_y: bool) -> Any:
    """The baseline run's copy of series ``s`` (aligned to this run's steps): same colour, thin, dashed, dimmed."""
    from bokeh.models import ColumnDataSource

    baseline = getattr(monitor, "baseline", None)
    b = baseline.series.get((s["key"], s.get("split", "train"))) if baseline is not None else None
    if b is None or len(b.steps) == 0:
        return None
    x, y = _plot_arrays(b.steps * baseline.scale, b.values, log_y)
    label = f"{s.get('label', s['key'])} (baseline)"
    return fig.line("x", "y", source=ColumnDataSource({"x": x, "y": y}), line_width=1.2, line_color=colour,
                    line_alpha=0.45, line_dash=[6, 4], name=label)


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
        colour = SERIES_COLOURS[i % len(SERIES_COLOURS)]
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
        base = _baseline_line(fig, monitor, s, colour, log_y)
        if base is not None:
            legend_items.append((f"{s.get('label', s['key'])} (baseline)", [base]))
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
        colours = [SEVERITY_COLOURS.get(a.severity, NEUTRAL_COLOUR) for a in panel_alerts]
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
            data["colour"].append(SEVERITY_COLOURS.get(a.severity, NEUTRAL_COLOUR))
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
