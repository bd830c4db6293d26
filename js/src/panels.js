// The grid of metric panels: one BokehJS figure per PanelSpec.
//
// Figures are plain JS models built from JSON specs, so the Python package
// never has to match BokehJS versions. Every panel's figure and data source
// exist from the start (data keeps flowing into its buffer), but a figure is
// only embedded (views built, canvas painted) once its cell is near the
// viewport; panels of group "other" sit in a collapsed <details> and so are
// built when it is first opened. See PanelGrid for the repaint rationing.
import Bokeh, { applyPlotTheme, embedRoots } from "./bokeh.js";
import { SeriesBuffer } from "./series.js";
import { SEVERITY, SERIES } from "./colors.js";
import { h } from "./dom.js";
import { backtestByPanel, emptyBacktestMarkers, markerSignature } from "./backtest.js";

const ZOOM_DEBOUNCE_MS = 150;
const PLOT_HEIGHT = 230;

class Panel {
  constructor(spec, { onZoom, theme }) {
    this.spec = spec;
    this.theme = theme ?? null; // theme.js colours; null → palette.json's light ones
    this.id = spec.id;
    this.onZoom = onZoom;
    this.extent = [Infinity, -Infinity]; // steps seen, for "reset" → full range
    this.lastStep = -Infinity;
    this.cell = h("div", { class: "ptt-cell", "data-panel": spec.id });
    this._timer = null;
    this._resetPending = false;
    this._lastSent = null;
    // render-scheduler state (see PanelGrid._tick)
    this.dirty = false;     // buffers hold points the source has not got
    this.urgent = false;    // a replace (initial fill, zoom answer): flush soon
    this.lastFlush = -Infinity;
    this._markerSig = "";
    this._pendingMarkers = null;
    this._btSig = "";
    this._pendingBt = null;
    this.visible = true;    // until the IntersectionObserver says otherwise
    this.embed = null;      // {dispose} once the figure is in the DOM
    // Points live in a SeriesBuffer per line from the start; BokehJS models
    // are only created by ensureFig() (building 20 figures at once blocked
    // the page for ~0.3 s on a 2-core machine).
    this.lines = (spec.series ?? []).map((s) => ({
      key: s.key, split: s.split ?? null, label: s.label ?? s.key,
      buf: new SeriesBuffer(), source: null, replace: false, chunks: [],
      base: null, // the baseline run's copy (split "baseline:<split>"): {buf, source, replace}
    }));
    this.fig = null;
  }

  ensureFig() {
    if (this.fig == null) this._build();
    return this.fig;
  }

  _build() {
    const { spec } = this;
    const fig = Bokeh.Plotting.figure({
      title: spec.title ?? spec.id,
      height: PLOT_HEIGHT,
      sizing_mode: "stretch_width",
      y_axis_type: spec.y_scale === "log" ? "log" : "linear",
      // no x axis label: it is always "step" (hover says so) and every text
      // visual costs paint time on each repaint
      y_axis_label: spec.y_label ?? null,
      x_range: new Bokeh.DataRange1d({ range_padding: 0.02 }),
      tools: "xpan,xwheel_zoom,box_zoom,reset,save",
      toolbar_location: "above",
      min_border_left: 40,
    });
    // A wheel-zoom that is active by default steals page scrolling in a
    // notebook; the user turns it on from the toolbar.
    fig.toolbar.active_scroll = null;
    fig.toolbar.autohide = true;
    fig.title.text_font_size = "11pt";
    fig.yaxis.axis_label_text_font_size = "9pt";

    // Alert markers first so lines are drawn over them. VSpan is a data-driven
    // glyph (one renderer for any number of alerts, with hover).
    this.markers = new Bokeh.ColumnDataSource({ data: this._pendingMarkers ?? emptyMarkers() });
    this._pendingMarkers = null;
    // (vspan has a single positional arg, so a lone attrs object would be taken as x)
    const markerRenderer = fig.vspan({ field: "x" }, {
      source: this.markers,
      line_color: { field: "color" }, line_alpha: { field: "alpha" }, line_width: 2,
    });
    // %%ptt backtest markers: dashed and thinner, so "would have fired" never
    // reads as "fired"; their own source and hover (rule id, until when).
    this.btMarkers = new Bokeh.ColumnDataSource({ data: this._pendingBt ?? emptyBacktestMarkers() });
    this._pendingBt = null;
    const btRenderer = fig.vspan({ field: "x" }, {
      source: this.btMarkers, name: "backtest",
      line_color: { field: "color" }, line_alpha: 0.9, line_width: 1.5, line_dash: "dashed",
    });

    this.refSpans = [];
    this.refLabels = [];
    for (const [i, ref] of (spec.refs ?? []).entries()) {
      if (spec.y_scale === "log" && !(ref.y > 0)) continue;
      const span = new Bokeh.Span({
        location: ref.y, dimension: "width", line_color: "#888", line_dash: "dashed", line_width: 1,
      });
      fig.add_layout(span);
      this.refSpans.push(span);
      if (ref.label) {
        const label = new Bokeh.Label({
          x: 6, x_units: "screen", y: ref.y, text: ref.label,
          text_font_size: "8pt", text_color: "#555", y_offset: 3,
          background_fill_color: "white", background_fill_alpha: 0.85,
        });
        fig.add_layout(label);
        this.refLabels.push(label);
      }
    }

    const renderers = [];
    this.glyphs = []; // [{i, renderer}] for re-colouring on a theme change
    const series = this.theme?.series ?? SERIES;
    this.lines.forEach((ln, i) => {
      const color = series[i % series.length];
      const source = new Bokeh.ColumnDataSource({ data: { x: new Float64Array(0), y: new Float64Array(0) } });
      const isEval = ln.split === "eval";
      const { label } = ln;
      const line = fig.line({
        x: { field: "x" }, y: { field: "y" }, source, name: label,
        line_color: color, line_width: isEval ? 1.5 : 1.8, line_dash: isEval ? "dashed" : "solid",
        legend_label: label,
      });
      renderers.push(line);
      this.glyphs.push({ i, renderer: line });
      if (isEval) {
        this.glyphs.push({ i, renderer: fig.scatter({
          x: { field: "x" }, y: { field: "y" }, source, size: 5,
          fill_color: color, line_color: color, legend_label: label,
        }) });
      }
      // the buffer may already hold points: the next flush sends them all
      Object.assign(ln, { source, replace: true, chunks: [] });
      // a baseline that arrived before the figure: flush() adds its line once this.fig is set
    });
    this.dirty = true;

    fig.add_tools(
      new Bokeh.HoverTool({
        renderers, mode: "vline",
        tooltips: [["", "$name"], ["step", "@x{0,0}"], ["value", "@y{0.[0000]}"]],
      }),
      new Bokeh.HoverTool({
        renderers: [markerRenderer],
        tooltips: [["alert", "@rule (@severity)"], ["step", "@x{0,0}"], ["", "@message"]],
      }),
      new Bokeh.HoverTool({
        renderers: [btRenderer],
        tooltips: [["backtest", "@rule (@severity): would have fired"], ["step", "@x{0,0}"], ["until", "@until"],
          ["", "@message"]],
      }),
    );
    if (renderers.length > 1) {
      fig.legend.location = "top_right";
      fig.legend.click_policy = "hide";
      fig.legend.background_fill_alpha = 0.6;
      fig.legend.label_text_font_size = "8pt";
      fig.legend.glyph_height = 12;
      fig.legend.label_height = 12;
      fig.legend.spacing = 0;
      fig.legend.padding = 4;
    } else if (fig.legend) {
      fig.legend.visible = false;
    }

    // Zoom/pan tools set have_updated_interactively on the range; data-driven
    // re-fits of the DataRange1d do not, so this sees only user changes. It
    // reacts sooner than Bokeh's RangesUpdate event, which wheel zoom delays
    // until its level-of-detail timeout (~0.5 s) ends; both feed one debounce.
    const xr = fig.x_range;
    xr.change.connect(() => { if (xr.have_updated_interactively) this._rangeChanged(xr.start, xr.end); });
    fig.on_event("rangesupdate", (ev) => this._rangeChanged(ev.x0, ev.x1));
    fig.on_event("reset", () => { this._resetPending = true; this._rangeChanged(NaN, NaN); });
    this.fig = fig;
    this._applyTheme();
    // Pointer state, so a slow pan does not send a zoom per pause mid-drag.
    this._dragging = false;
    this.cell.addEventListener("pointerdown", () => { this._dragging = true; });
    this._onUp = () => { this._dragging = false; };
    window.addEventListener("pointerup", this._onUp, true); // capture: Bokeh stops propagation
    window.addEventListener("pointercancel", this._onUp, true);
  }

  // User zoom/pan/reset settles → ask Python for data re-decimated for the
  // visible range. Debounced: a wheel gesture fires dozens of range updates.
  _rangeChanged(x0, x1) {
    clearTimeout(this._timer);
    this._timer = setTimeout(() => {
      let lo = x0, hi = x1;
      if (this._resetPending) {
        // After reset the range fits whatever data is loaded, which may be
        // the zoomed subset; ask for everything seen instead.
        this._resetPending = false;
        [lo, hi] = this.fullExtent();
      }
      if (!Number.isFinite(lo) || !Number.isFinite(hi)) return;
      if (this._dragging) return; // a pan in progress: its end fires rangesupdate again
      if (this._lastSent && this._lastSent[0] === lo && this._lastSent[1] === hi) return;
      this._lastSent = [lo, hi];
      this.onZoom(this.id, lo, hi);
    }, ZOOM_DEBOUNCE_MS);
  }

  fullExtent() {
    const [lo, hi] = this.extent;
    return [lo, Math.max(hi, this.lastStep)];
  }

  /** Programmatic zoom (alert click): no debounce, sends at once. */
  focus(step) {
    this.ensureFig();
    const [lo, hi] = this.fullExtent();
    const span = Number.isFinite(lo) && Number.isFinite(hi) ? hi - lo : 0;
    const half = Math.max(10, span * 0.05);
    const x0 = step - half, x1 = step + half;
    const r = this.fig.x_range;
    r.have_updated_interactively = true; // stop DataRange1d re-fitting
    r.setv({ start: x0, end: x1 });
    this._lastSent = [x0, x1];
    this.onZoom(this.id, x0, x1);
  }

  /**
   * Apply one coalesced series update to the browser-side buffers only.
   * The BokehJS source is updated later by flush(), when the render
   * scheduler decides this panel may repaint. Returns true if it matched.
   */
  apply(key, split, mode, steps, values) {
    if (split != null && split.startsWith("baseline:")) return this._applyBaseline(key, split.slice(9), steps, values);
    let hit = false;
    for (const line of this.lines) {
      if (line.key !== key || (split != null && line.split != null && line.split !== split)) continue;
      hit = true;
      const upd = mode === "replace" ? line.buf.replace(steps, values) : line.buf.append(steps, values);
      if (upd == null) continue;
      if (upd.op === "replace") { line.replace = true; line.chunks = []; this.urgent = true; }
      else if (!line.replace && line.source != null) line.chunks.push(upd);
      this.dirty = true;
    }
    if (hit && steps.length > 0) {
      this.extent[0] = Math.min(this.extent[0], steps[0]);
      this.extent[1] = Math.max(this.extent[1], steps[steps.length - 1]);
    }
    return hit;
  }

  /** The baseline's line for `ln`: its colour, thinner, dashed and dimmed; no hover (the run's own is read). */
  _addBaseline(ln, i) {
    const color = (this.theme?.series ?? SERIES)[i % (this.theme?.series ?? SERIES).length];
    const source = new Bokeh.ColumnDataSource({ data: { x: new Float64Array(0), y: new Float64Array(0) } });
    const renderer = this.fig.line({
      x: { field: "x" }, y: { field: "y" }, source, name: `${ln.label} (baseline)`,
      line_color: color, line_width: 1.2, line_alpha: 0.45, line_dash: [6, 4],
      legend_label: `${ln.label} (baseline)`,
    });
    this.glyphs.push({ i, renderer });
    Object.assign(ln.base, { source, replace: true });
  }

  /** A baseline series: always a whole replace (it does not grow); drawn beside the line it matches. */
  _applyBaseline(key, split, steps, values) {
    let hit = false;
    for (const line of this.lines) {
      if (line.key !== key || (line.split != null && line.split !== split)) continue;
      hit = true;
      line.base ??= { buf: new SeriesBuffer(), source: null, replace: false };
      line.base.buf.replace(steps, values);
      line.base.replace = true;
      this.dirty = true;
      this.urgent = true;
    }
    return hit;
  }

  /** Push pending points into the BokehJS sources (this triggers a repaint). */
  flush(now) {
    this.ensureFig();
    this.lines.forEach((ln, i) => {
      if (ln.base && ln.base.source == null) this._addBaseline(ln, i);
      if (ln.base?.replace) {
        ln.base.source.data = { x: ln.base.buf.x, y: ln.base.buf.y };
        ln.base.replace = false;
      }
    });
    for (const line of this.lines) {
      if (line.replace) {
        line.source.data = { x: line.buf.x, y: line.buf.y };
      } else if (line.chunks.length) {
        // stream() sends only the new points: cheaper than replacing all.
        const n = line.chunks.reduce((a, c) => a + c.x.length, 0);
        const x = new Float64Array(n), y = new Float64Array(n);
        let o = 0;
        for (const c of line.chunks) { x.set(c.x, o); y.set(c.y, o); o += c.x.length; }
        line.source.stream({ x, y });
      }
      line.replace = false;
      line.chunks = [];
    }
    if (this._pendingMarkers) {
      this.markers.data = this._recolor(this._pendingMarkers);
      this._pendingMarkers = null;
    }
    if (this._pendingBt) {
      this.btMarkers.data = this._recolor(this._pendingBt);
      this._pendingBt = null;
    }
    this.dirty = false;
    this.urgent = false;
    this.lastFlush = now;
  }

  /** Queue new alert markers; drawn at the next flush (a repaint). */
  setMarkers(alerts) {
    const sig = alerts.map((a) => `${a.id}:${a.step}:${a.state}:${a.severity}`).join("|");
    if (sig === this._markerSig) return;
    this._markerSig = sig;
    const d = emptyMarkers();
    for (const a of alerts) {
      d.x.push(a.step);
      d.color.push(SEVERITY[a.severity] ?? "#999");
      d.alpha.push(a.state === "resolved" ? 0.3 : 0.85);
      d.rule.push(a.rule);
      d.severity.push(a.severity);
      d.message.push(a.message);
    }
    this._pendingMarkers = d;
    this.dirty = true;
  }

  /** Queue this panel's backtest marker columns; drawn at the next flush. */
  setBacktest(d) {
    const sig = markerSignature(d);
    if (sig === this._btSig) return;
    this._btSig = sig;
    this._pendingBt = d;
    this.dirty = true;
  }

  /** New theme colours: applied in place to a built figure (BokehJS repaints on setv). */
  setTheme(theme) {
    this.theme = theme;
    if (this.fig) this._applyTheme();
  }

  _applyTheme() {
    const t = this.theme;
    if (!t || !this.fig) return;
    applyPlotTheme(this.fig, t);
    for (const { i, renderer } of this.glyphs) {
      const c = t.series[i % t.series.length];
      const g = renderer.glyph;
      g.setv("fill_color" in g.properties ? { line_color: c, fill_color: c } : { line_color: c });
    }
    for (const sp of this.refSpans) sp?.setv({ line_color: t.text3 });
    for (const lb of this.refLabels) lb.setv({ text_color: t.text2, background_fill_color: t.background });
    for (const src of [this.markers, this.btMarkers]) {
      if (src && src.data.color?.length) src.data = this._recolor({ ...src.data });
    }
  }

  /** Marker columns coloured by severity for the current theme (palette.json's light colours before one). */
  _recolor(d) {
    const sev = this.theme?.severity ?? SEVERITY;
    const fallback = this.theme?.neutral ?? "#999";
    d.color = d.severity.map((s) => sev[s] ?? fallback);
    return d;
  }

  destroy() {
    clearTimeout(this._timer);
    window.removeEventListener("pointerup", this._onUp, true);
    window.removeEventListener("pointercancel", this._onUp, true);
    this.embed?.dispose?.();
    this.embed = null;
  }
}

function emptyMarkers() {
  return { x: [], color: [], alpha: [], rule: [], severity: [], message: [] };
}

// Repainting a BokehJS canvas is the dominant cost of a live view (measured
// ~6-10 ms per panel per repaint in software-rendered Chromium), so repaints
// are rationed: per animation frame at most FLUSH_PER_FRAME panels get new
// data and EMBED_PER_FRAME new figures are built; a streaming panel repaints
// at most every MIN_STREAM_INTERVAL_MS (1 s: ample for training curves, and
// it keeps a 20-panel live view at a fraction of one core); panels off screen (or in the closed
// "other" section) are neither built nor repainted until they scroll into
// view. Replace updates (initial fill, zoom answers) skip the interval.
const FLUSH_PER_FRAME = 2;
const EMBED_PER_FRAME = 2;
const MIN_STREAM_INTERVAL_MS = 1000;

export class PanelGrid {
  constructor({ send }) {
    this.send = send;
    this.theme = null; // theme.js colours, handed to every panel
    this.panels = new Map();
    this.el = h("div", { class: "ptt-panels" });
    this._pendingEmbeds = new Set();
    this._ticking = false;
    this._idleWaiters = [];
    this.io = typeof IntersectionObserver === "function"
      ? new IntersectionObserver((entries) => this._visibility(entries), { rootMargin: "300px 0px" })
      : null;
  }

  build(specs) {
    this.destroy();
    this.el.replaceChildren();
    const onZoom = (panel, x0, x1) => this.send({ type: "zoom", panel, x0, x1 });
    const core = [], other = [];
    for (const spec of specs ?? []) {
      const p = new Panel(spec, { onZoom, theme: this.theme });
      this.panels.set(spec.id, p);
      (spec.group === "other" ? other : core).push(p);
      this.io?.observe(p.cell);
    }
    this.el.append(h("div", { class: "ptt-grid" }, core.map((p) => p.cell)));
    if (other.length > 0) {
      for (const p of other) p.visible = false; // closed <details>
      const details = h("details", { class: "ptt-other" },
        h("summary", { text: `Other metrics (${other.length})` }),
        h("div", { class: "ptt-grid" }, other.map((p) => p.cell)));
      // Without IntersectionObserver, opening the section is the visibility signal.
      details.addEventListener("toggle", () => {
        if (!this.io) for (const p of other) p.visible = details.open;
        this._kick();
      });
      this.otherDetails = details;
      this.el.append(details);
    }
    this._kick();
  }

  _visibility(entries) {
    const byCell = new Map([...this.panels.values()].map((p) => [p.cell, p]));
    for (const e of entries) {
      const p = byCell.get(e.target);
      if (p) p.visible = e.isIntersecting;
    }
    this._kick();
  }

  _kick() {
    if (this._ticking) return;
    this._ticking = true;
    const raf = typeof requestAnimationFrame === "function" ? requestAnimationFrame : (f) => setTimeout(f, 16);
    raf((t) => this._tick(t));
  }

  _tick() {
    this._ticking = false;
    const now = performance.now();
    const visible = [...this.panels.values()].filter((p) => p.visible);
    let busy = this._pendingEmbeds.size > 0;

    // 1. build figures for panels that came into view (data first, so the
    //    first paint already has it)
    let embeds = EMBED_PER_FRAME - this._pendingEmbeds.size;
    for (const p of visible) {
      if (p.embed != null || embeds <= 0) continue;
      embeds--;
      p.flush(now); // builds the figure; data goes in before the first paint
      this._embed(p);
      busy = true;
    }
    if (visible.some((p) => p.embed == null)) busy = true;

    // 2. ration repaints of embedded panels
    const due = visible.filter((p) => p.dirty && p.embed != null && p.embed !== "pending"
      && (p.urgent || now - p.lastFlush >= MIN_STREAM_INTERVAL_MS));
    due.sort((a, b) => (b.urgent - a.urgent) || (a.lastFlush - b.lastFlush));
    for (const p of due.slice(0, FLUSH_PER_FRAME)) p.flush(now);
    if (visible.some((p) => p.dirty)) busy = true;

    if (busy) this._kick();
    else this._idleWaiters.splice(0).forEach((r) => r());
  }

  _embed(p) {
    p.embed = "pending";
    const pr = embedRoots([p.fig], [p.cell])
      .then((e) => { if (p.embed === "pending") p.embed = e; else e.dispose(); })
      .catch((err) => { p.embed = { dispose() {} }; console.error("ptt_nb: BokehJS embed failed", err); })
      .finally(() => { this._pendingEmbeds.delete(pr); this._kick(); });
    this._pendingEmbeds.add(pr);
  }

  /** The page's theme changed: re-colour built figures in place, later ones are built with it. */
  setTheme(theme) {
    this.theme = theme;
    for (const p of this.panels.values()) p.setTheme(theme);
  }

  /** Resolves when every visible panel is built and has all its data. */
  settled() {
    return new Promise((resolve) => { this._idleWaiters.push(resolve); this._kick(); });
  }

  /** BokehJS documents of the embedded panels (harness waits for their idle). */
  documents() {
    return [...this.panels.values()].map((p) => p.embed?.doc).filter(Boolean);
  }

  applySeries(s) {
    const targets = s.panel != null ? [this.panels.get(s.panel)].filter(Boolean) : [...this.panels.values()];
    let hit = false;
    for (const p of targets) hit = p.apply(s.key, s.split, s.mode, s.steps, s.values) || hit;
    if (hit) this._kick();
  }

  setStep(step) {
    if (Number.isFinite(step)) for (const p of this.panels.values()) p.lastStep = step;
  }

  /** Redraw alert markers from the full current alert list. */
  setAlerts(alerts) {
    const by = new Map([...this.panels.keys()].map((k) => [k, []]));
    for (const a of alerts) {
      if (a.muted) continue;
      for (const id of a.panels ?? []) by.get(id)?.push(a);
    }
    for (const [id, list] of by) this.panels.get(id).setMarkers(list);
    this._kick();
  }

  /** Redraw backtest markers from the full current set (one entry per rule id). */
  setBacktest(entries) {
    for (const [id, d] of backtestByPanel(entries, this.panels.keys())) this.panels.get(id).setBacktest(d);
    this._kick();
  }

  /** Zoom the alert's panels (or all, if it names none) around its step. */
  focus(alert) {
    const ids = alert.panels?.length ? alert.panels : [...this.panels.keys()];
    let first = null;
    for (const id of ids) {
      const p = this.panels.get(id);
      if (!p) continue;
      if (p.spec.group === "other" && this.otherDetails && !this.otherDetails.open) this.otherDetails.open = true;
      p.focus(alert.step);
      first ??= p;
    }
    first?.cell.scrollIntoView?.({ block: "nearest", behavior: "smooth" });
  }

  destroy() {
    this.io?.disconnect();
    for (const p of this.panels.values()) p.destroy();
    this.panels.clear();
    this.otherDetails = null;
    this._idleWaiters.splice(0).forEach((r) => r());
  }
}
