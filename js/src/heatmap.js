// Per-rank heatmap: ranks (y) × logging interval (x), colour = chosen metric.
//
// Interval i covers steps (steps[i-1], steps[i]]; drawing rects with that
// real width keeps the x axis in steps, aligned with the metric panels.
import Bokeh, { applyPlotTheme, embedRoots } from "./bokeh.js";
import { h } from "./dom.js";

export class RankHeatmap {
  constructor() {
    this.select = h("select", { class: "ptt-rank-metric", "aria-label": "Heatmap metric" });
    this.select.addEventListener("change", () => this._draw());
    this.note = h("span", { class: "ptt-stragglers" });
    this.cell = h("div", { class: "ptt-heatmap-plot" });
    this.el = h("section", { class: "ptt-ranks", style: "display:none" },
      h("div", { class: "ptt-ranks-head" }, h("span", { text: "Per-rank" }), this.select, this.note),
      this.cell);
    this.ranks = null;
    this.fig = null;
    this._embed = null;
    this._world = 0;
  }

  update(ranks) {
    this.ranks = ranks;
    const show = ranks != null && ranks.world_size > 1;
    this.el.style.display = show ? "" : "none";
    if (!show) return;
    const names = ranks.metric_names ?? Object.keys(ranks.values ?? {});
    const current = this.select.value;
    if ([...this.select.options].map((o) => o.value).join() !== names.join()) {
      this.select.replaceChildren(...names.map((n) => h("option", { value: n, text: n })));
      if (names.includes(current)) this.select.value = current;
    }
    if (this.fig == null || this._world !== ranks.world_size) this._build(ranks.world_size);
    this._draw();
  }

  _build(world) {
    this._dispose();
    this._world = world;
    this.mapper = new Bokeh.LinearColorMapper({ palette: Bokeh.Palettes.Viridis256, low: 0, high: 1, nan_color: "#dddddd" });
    this.source = new Bokeh.ColumnDataSource({ data: { x: [], w: [], rank: [], step: [], value: [] } });
    const fig = Bokeh.Plotting.figure({
      height: Math.min(600, 70 + 18 * world), sizing_mode: "stretch_width",
      x_axis_label: "step", y_axis_label: "rank",
      y_range: new Bokeh.Range1d({ start: -0.5, end: world - 0.5 }),
      tools: "xpan,xwheel_zoom,reset,save", toolbar_location: "above",
    });
    fig.toolbar.active_scroll = null;
    fig.toolbar.autohide = true;
    fig.grid.visible = false;
    const r = fig.rect({
      x: { field: "x" }, y: { field: "rank" }, width: { field: "w" }, height: 0.95, source: this.source,
      fill_color: { field: "value", transform: this.mapper }, line_color: null,
    });
    fig.add_tools(new Bokeh.HoverTool({
      renderers: [r], tooltips: [["rank", "@rank"], ["step", "@step{0,0}"], ["value", "@value{0,0.[00]}"]],
    }));
    fig.add_layout(new Bokeh.ColorBar({ color_mapper: this.mapper, width: 10, label_standoff: 6 }), "right");
    if (world <= 32) {
      fig.yaxis.ticker = new Bokeh.FixedTicker({ ticks: Array.from({ length: world }, (_, i) => i) });
    }
    this.fig = fig;
    applyPlotTheme(fig, this.theme);
    const p = embedRoots([fig], [this.cell]).then((e) => { this._embed = e; }, (err) => console.error("ptt_nb:", err));
    this._pending = p;
  }

  _draw() {
    const rk = this.ranks;
    if (!rk || !this.fig) return;
    const metric = this.select.value;
    const rows = rk.values?.[metric] ?? [];
    const steps = rk.steps ?? [];
    const d = { x: [], w: [], rank: [], step: [], value: [] };
    let lo = Infinity, hi = -Infinity;
    for (let i = 0; i < steps.length; i++) {
      const prev = i > 0 ? steps[i - 1] : steps[i] - (steps.length > 1 ? steps[1] - steps[0] : 1);
      const w = Math.max(steps[i] - prev, 1e-9);
      const row = rows[i] ?? [];
      for (let r = 0; r < rk.world_size; r++) {
        const v = row[r] ?? NaN;
        d.x.push(steps[i] - w / 2); d.w.push(w); d.rank.push(r); d.step.push(steps[i]); d.value.push(v ?? NaN);
        if (Number.isFinite(v)) { lo = Math.min(lo, v); hi = Math.max(hi, v); }
      }
    }
    if (!(lo < hi)) { lo = Number.isFinite(lo) ? lo - 1 : 0; hi = Number.isFinite(hi) ? hi + 1 : 1; }
    this.mapper.setv({ low: lo, high: hi });
    this.source.data = d;
    this.fig.title.text = metric;
    const strag = rk.stragglers ?? [];
    this.note.textContent = strag.length ? `⚠ straggler rank${strag.length > 1 ? "s" : ""}: ${strag.join(", ")}` : "";
    const overrides = new Map(strag.map((r) => [r, `${r} ⚠`]));
    this.fig.yaxis.major_label_overrides = overrides;
  }

  /** The page's theme changed (theme.js colours): re-colour in place. */
  setTheme(theme) {
    this.theme = theme;
    applyPlotTheme(this.fig, theme);
  }

  async settled() { await this._pending; }

  documents() { return this._embed ? [this._embed.doc] : []; }

  _dispose() {
    this._embed?.dispose();
    this._embed = null;
    this.fig = null;
  }

  destroy() { this._dispose(); this.ranks = null; this.el.style.display = "none"; }
}
