// One rendered widget view: header, panel grid, alert feed, rank heatmap,
// fed by the frame-batched queue. Knows nothing about Jupyter; the harness
// and the anywidget entry point both drive it through push()/send.
import { h } from "./dom.js";
import { CSS } from "./style.js";
import { createQueue } from "./queue.js";
import { Header } from "./header.js";
import { PanelGrid } from "./panels.js";
import { AlertFeed } from "./alerts.js";
import { RankHeatmap } from "./heatmap.js";
import { cssVariables, watchTheme } from "./theme.js";

export class DashboardView {
  /**
   * @param {HTMLElement} el  container given by anywidget (may be detached)
   * @param {(msg: object) => void} send  JS → Python
   * @param {{schedule?: Function}} [opts]
   */
  constructor(el, send, opts = {}) {
    this.el = el;
    this.send = send;
    this.backtest = []; // %%ptt backtest markers, one entry per rule (not alerts)
    this.stats = { batches: 0, messages: 0, applyMs: 0, maxApplyMs: 0 };
    this.header = new Header({ onStop: () => send({ type: "stop" }) });
    this.grid = new PanelGrid({ send });
    this.feed = new AlertFeed({
      onMute: (rule, muted) => send({ type: "mute", rule, muted }),
      onFocus: (alert) => this.grid.focus(alert),
    });
    this.heatmap = new RankHeatmap();
    this.root = h("div", { class: "ptt-root" },
      h("style", { text: CSS }),
      this.header.el,
      h("div", { class: "ptt-body" },
        h("div", { class: "ptt-main" }, this.grid.el, this.heatmap.el),
        this.feed.el));
    el.append(this.root);
    // Follow the page's theme (Lab/Notebook, VS Code, prefers-color-scheme), now and on every change.
    this.theme = null;
    this._unwatchTheme = opts.watchTheme === false ? null : watchTheme(this.root, (t) => this.setTheme(t));
    this._wrapTimer = setTimeout(() => { if (this.theme) this._fixWrapper(this.theme); }, 0); // once attached
    this.queue = createQueue({ apply: (b) => this._apply(b), schedule: opts.schedule });
  }

  /** Colours from theme.js: CSS variables on the root, plots re-coloured in place. */
  setTheme(t) {
    this.theme = t;
    for (const [k, v] of Object.entries(cssVariables(t))) this.root.style.setProperty(k, v);
    this.root.dataset.pttTheme = `${t.kind}${t.highContrast ? "-hc" : ""}`;
    this.root.dataset.pttThemeHost = t.host;
    this.grid.setTheme(t);
    this.heatmap.setTheme(t);
    this._fixWrapper(t);
  }

  _fixWrapper(t) {
    // VS Code paints widget output on white whatever the theme (microsoft/vscode-jupyter#7161): let our
    // own background show instead, and give the wrapper its colour back when the view goes.
    const wrap = this.root.closest?.(".cell-output-ipywidget-background");
    if (wrap && t.host === "vscode") {
      if (this._wrap == null) this._wrap = { el: wrap, bg: wrap.style.background };
      wrap.style.background = t.background;
    }
  }

  push(msg) {
    if (msg) this.queue.push(msg);
  }

  _apply(batch) {
    const t0 = performance.now();
    if (batch.init) {
      const init = batch.init;
      this.header.setRun(init.run ?? {});
      this.grid.build(init.panels ?? []);
      this.feed.reset(init.alerts ?? []);
      this.header.update(init.status ?? { state: "running", step: 0 });
      this.grid.setStep(init.status?.step);
      this.heatmap.destroy();
      this.heatmap.update(init.ranks ?? null);
    }
    for (const s of batch.series) this.grid.applySeries(s);
    if (batch.alerts.length) this.feed.upsert(batch.alerts);
    if (batch.alerts.length || batch.init) this.grid.setAlerts(this.feed.all());
    if (batch.backtest !== undefined) this.backtest = batch.backtest ?? [];
    else if (batch.init) this.backtest = batch.init.backtest ?? [];
    if (batch.backtest !== undefined || batch.init) this.grid.setBacktest(this.backtest);
    if (batch.status) {
      this.header.update(batch.status);
      this.grid.setStep(batch.status.step);
    }
    if (batch.ranks !== undefined) this.heatmap.update(batch.ranks);
    const dt = performance.now() - t0;
    this.stats.batches++;
    this.stats.messages += batch.messages;
    this.stats.applyMs += dt;
    this.stats.maxApplyMs = Math.max(this.stats.maxApplyMs, dt);
    this.el.dispatchEvent(new CustomEvent("ptt-applied", { detail: { ms: dt, messages: batch.messages } }));
  }

  /** Resolves when queued messages are applied and all plots are embedded. */
  async settled() {
    this.queue.flushNow();
    await this.grid.settled();
    await this.heatmap.settled();
  }

  destroy() {
    this._unwatchTheme?.();
    this._unwatchTheme = null;
    clearTimeout(this._wrapTimer);
    if (this._wrap) { this._wrap.el.style.background = this._wrap.bg; this._wrap = null; }
    this.queue.clear();
    this.grid.destroy();
    this.heatmap.destroy();
    this.root.remove();
  }
}
