// Harness: a fake anywidget model + synthetic "what Python would send"
// messages, so the bundle can be rendered and benchmarked in a bare browser.
import widget from "../../ptt_nb/static/widget.js";
import { decimateMinMax } from "../src/decimate.js";

/** The subset of anywidget's model API the widget uses. */
export class FakeModel {
  constructor() { this.handlers = new Map(); this.sent = []; this.state = {}; this.onsend = null; }
  on(name, cb) { if (!this.handlers.has(name)) this.handlers.set(name, new Set()); this.handlers.get(name).add(cb); }
  off(name, cb) { this.handlers.get(name)?.delete(cb); }
  get(k) { return this.state[k]; }
  set(k, v) { this.state[k] = v; }
  save_changes() {}
  send(msg) { this.sent.push(msg); this.onsend?.(msg); }
  /** Python → JS: buffers arrive as DataViews, like in Jupyter. */
  emit(msg, buffers = []) {
    const bufs = buffers.map((b) => new DataView(b.buffer, b.byteOffset, b.byteLength));
    for (const cb of this.handlers.get("msg:custom") ?? []) cb(msg, bufs);
  }
}

// ---------- synthetic run ----------------------------------------------

const METRICS = ["loss", "grad_norm", "learning_rate", "rewards/chosen", "rewards/rejected", "rewards/accuracies",
  "rewards/margins", "logps/chosen", "logps/rejected", "logits/chosen", "logits/rejected", "entropy",
  "num_tokens", "mean_token_accuracy", "kl", "clip_ratio", "reward", "reward_std", "completion_length", "epoch"];

export function makePanels(nMetrics = 20, { otherFrom = Infinity, evalEvery = 0 } = {}) {
  return METRICS.slice(0, nMetrics).map((key, i) => ({
    id: `p_${i}`, title: key, y_label: key, y_scale: key === "grad_norm" || key === "learning_rate" ? "log" : "linear",
    group: i >= otherFrom ? "other" : "core",
    series: [{ key, label: "train", split: "train" },
      ...(evalEvery && i % evalEvery === 0 ? [{ key: `eval_${key}`, label: "eval", split: "eval" }] : [])],
    refs: key === "loss" ? [{ y: 0.6931, label: "ln 2 (π = π_ref)" }] : [],
  }));
}

/** Deterministic noisy curve for metric i at step s. */
export function value(i, s) {
  const r = Math.sin(s * 12.9898 + i * 78.233) * 43758.5453;
  const noise = (r - Math.floor(r)) - 0.5;
  const base = 0.7 * Math.exp(-s / (20000 + 3000 * i)) + 0.05 * i;
  if (i === 1) return Math.abs(1 + noise) * (s % 9973 === 0 ? 50 : 1); // grad_norm with spikes
  if (i === 2) return 1e-4 * Math.min(1, s / 1000) + 1e-9;
  return base + 0.08 * noise;
}

export function series(i, s0, s1) {
  const n = s1 - s0;
  const xs = new Float64Array(n), ys = new Float64Array(n);
  for (let k = 0; k < n; k++) { xs[k] = s0 + k; ys[k] = value(i, s0 + k); }
  if (i === 0 && s0 <= 54321 && 54321 < s1) ys[54321 - s0] = NaN; // a non-finite loss
  return { xs, ys };
}

export function makeAlerts(n, steps, panels) {
  const sev = ["critical", "high", "medium", "low"];
  return Array.from({ length: n }, (_, k) => ({
    id: `a${k}`, rule: `rule_${k % 7}`, severity: sev[k % 4], step: Math.floor(((k + 1) * steps) / (n + 1)),
    message: `Synthetic alert ${k}: <b>not html</b> value drifted`, evidence: { value: k * 1.2345, threshold: 3 },
    action: "Lower the learning rate or check the data.", reference: { text: "Rafailov et al. 2023 (DPO)", url: k % 2 ? "https://arxiv.org/abs/2305.18290" : "javascript:alert(1)" },
    state: k % 3 === 0 ? "resolved" : "active", resolved_step: k % 3 === 0 ? Math.floor(((k + 1.5) * steps) / (n + 1)) : null,
    muted: false, panels: [panels[k % panels.length].id, panels[(k + 1) % panels.length].id],
  }));
}

export function makeRanks(world, intervals, step1) {
  const names = ["compute_ms", "wait_ms", "mem_alloc_mb", "mem_peak_mb"];
  const steps = Array.from({ length: intervals }, (_, i) => Math.round(((i + 1) * step1) / intervals));
  const values = {};
  names.forEach((m, mi) => {
    values[m] = steps.map((_, i) => Array.from({ length: world }, (_, r) =>
      (mi + 1) * 100 * (r === 3 && m === "compute_ms" ? 3 : 1) + 10 * Math.sin(i / 5 + r) + (m === "wait_ms" && r !== 3 ? 200 : 0)));
  });
  return { world_size: world, metric_names: names, steps, values, stragglers: world > 3 ? [3] : [] };
}

export function status(step, max, state = "running") {
  return { state, step, max_steps: max, eta_s: (max - step) / 5, steps_per_s: 5, samples_per_s: 40,
    trainer: "DPOTrainer", algorithm: "dpo", reason: null, stop_requested: false };
}

/** Build a data message (+ buffers) the way the Python side does. */
export function dataMessage(entries, extra = {}) {
  const buffers = [];
  const series = entries.map((e) => {
    buffers.push(e.xs, e.ys);
    return { panel: e.panel, key: e.key, split: e.split ?? "train", mode: e.mode, n: e.xs.length };
  });
  return [{ type: "data", series, alerts: extra.alerts ?? [], status: extra.status ?? null, ranks: extra.ranks }, buffers];
}

// ---------- mounting and measuring --------------------------------------

const nextFrame = () => new Promise((r) => requestAnimationFrame(r));

export async function mount() {
  const host = document.getElementById("widget");
  host.replaceChildren();
  const model = new FakeModel();
  const el = document.createElement("div");
  // anywidget may render into an element before it is attached.
  const cleanup = widget.render({ model, el });
  host.append(el);
  return { model, el, view: el.__ptt_view, cleanup };
}

/** Wait until queued batches are applied, plots embedded and painted. */
export async function settled(view) {
  await view.settled();
  const docs = [...view.grid.documents(), ...view.heatmap.documents()];
  await Promise.race([
    Promise.all(docs.map((d) => d.is_idle ? null : new Promise((r) => d.idle.connect(r)))),
    new Promise((r) => setTimeout(r, 10000)),
  ]);
  await nextFrame(); await nextFrame();
}

/** Records rAF timestamps until stop() is called. */
export function frameRecorder() {
  const ts = [];
  let on = true;
  const tick = (t) => { ts.push(t); if (on) requestAnimationFrame(tick); };
  requestAnimationFrame(tick);
  return {
    stop() {
      on = false;
      const gaps = ts.slice(1).map((t, i) => t - ts[i]).sort((a, b) => a - b);
      const q = (p) => gaps.length ? gaps[Math.min(gaps.length - 1, Math.floor(p * gaps.length))] : 0;
      return { frames: ts.length, max_gap_ms: gaps.at(-1) ?? 0, p99_gap_ms: q(0.99), p50_gap_ms: q(0.5) };
    },
  };
}

/** Replay a finished run of `steps` steps × `nMetrics` metrics. */
export async function benchReplay({ steps = 100000, nMetrics = 20, raw = false, perSeries = 2000, otherFrom = Infinity } = {}) {
  const { model, el, view, cleanup } = await mount();
  await nextFrame();
  const panels = makePanels(nMetrics, { otherFrom });
  const entries = panels.map((p, i) => {
    const { xs, ys } = series(i, 1, steps + 1);
    if (raw) return { panel: p.id, key: p.series[0].key, mode: "replace", xs, ys };
    const d = decimateMinMax(xs, ys, perSeries / 2); // what Python would do
    return { panel: p.id, key: p.series[0].key, mode: "replace", xs: d.x, ys: d.y };
  });
  const points = entries.reduce((a, e) => a + e.xs.length, 0);
  const init = { type: "init", run: { trainer: "DPOTrainer", algorithm: "dpo", run_dir: "/tmp/run", world_size: 8 },
    panels, status: status(steps, steps, "replay"), alerts: makeAlerts(30, steps, panels), ranks: makeRanks(8, 200, steps) };
  const [msg, bufs] = dataMessage(entries);
  const rec = frameRecorder();
  const t0 = performance.now();
  let firstMs = null;
  const watch = () => {
    if ([...view.grid.panels.values()].some((p) => p.embed && p.embed !== "pending")) firstMs = performance.now() - t0;
    else requestAnimationFrame(watch);
  };
  requestAnimationFrame(watch);
  model.emit(init);
  model.emit(msg, bufs);
  await settled(view);
  const ms = performance.now() - t0;
  const frames = rec.stop();
  const maxLen = Math.max(...[...view.grid.panels.values()].flatMap((p) => p.lines.map((l) => l.buf.length)));
  const built = [...view.grid.panels.values()].filter((p) => p.embed && p.embed !== "pending").length;
  return { ms, first_panel_ms: firstMs, points_sent: points, max_points_per_series_in_browser: maxLen, panels_built: built, ...frames, ready_sent: model.sent.some((m) => m.type === "ready"), model, el, view, cleanup };
}

/**
 * Live stream: `rate` log points/s for `seconds`, sent as `msgsPerSec`
 * batches (Python batches ~4-10/s; 50/s = one message per log point).
 */
export async function benchStream(opts = {}) {
  return (await prepareStream(opts))();
}

/** Render the prefilled replay; returns a function that runs the stream. */
export async function prepareStream({ seconds = 60, rate = 50, msgsPerSec = 10, nMetrics = 20, prefill = 100000 } = {}) {
  const r = await benchReplay({ steps: prefill, nMetrics });
  return () => runStream(r, { seconds, rate, msgsPerSec, prefill });
}

async function runStream(r, { seconds, rate, msgsPerSec, prefill }) {
  const { model, view } = r;
  const panels = [...view.grid.panels.values()];
  const specs = panels.map((p) => p.spec);
  let step = prefill + 1;
  let points = 0, sent = 0;
  const applied0 = view.stats.batches, apply0 = view.stats.applyMs;
  view.stats.maxApplyMs = 0;
  const sendPoints = (k) => {
    const entries = panels.map((p, i) => {
      const { xs, ys } = series(i, step, step + k);
      return { panel: p.id, key: p.lines[0].key, mode: "append", xs, ys };
    });
    step += k;
    points += k;
    const extra = { status: status(step, prefill + rate * seconds * 2) };
    if (sent % 50 === 25) extra.alerts = [{ ...makeAlerts(1, step, specs)[0], id: `live${sent}`, step }];
    const [msg, bufs] = dataMessage(entries, extra);
    model.emit(msg, bufs);
    sent++;
  };
  const rec = frameRecorder();
  const t0 = performance.now();
  await new Promise((resolve) => {
    // Points due are computed from elapsed time, so a late timer (busy main
    // thread) delivers a backlog, as a websocket would, instead of silently
    // lowering the rate. Batched: one message per tick; unbatched
    // (msgsPerSec == rate): one message per log point.
    const timer = setInterval(() => {
      const el = performance.now() - t0;
      const due = Math.min(Math.floor((el / 1000) * rate), rate * seconds) - points;
      if (due > 0) {
        if (msgsPerSec >= rate) for (let k = 0; k < due; k++) sendPoints(1);
        else sendPoints(due);
      }
      if (el >= seconds * 1000) { clearInterval(timer); resolve(); }
    }, 1000 / msgsPerSec);
  });
  await settled(view);
  const elapsed = (performance.now() - t0) / 1000;
  const frames = rec.stop();
  const batches = view.stats.batches - applied0;
  const maxLen = Math.max(...panels.flatMap((p) => p.lines.map((l) => l.buf.length)));
  return {
    seconds: elapsed, log_points: points, messages_sent: sent, messages_per_s: sent / elapsed,
    batches_applied: batches, batches_per_s: batches / elapsed,
    mean_apply_ms: (view.stats.applyMs - apply0) / Math.max(1, batches), max_apply_ms: view.stats.maxApplyMs,
    max_points_per_series_in_browser: maxLen, ...frames,
  };
}

/** Synthetic demo for eyeballing (open with ?demo=1). */
async function demo() {
  const r = await benchReplay({ steps: 5000, nMetrics: 12, otherFrom: 8 });
  r.view.push({ type: "data", series: [], alerts: [], status: status(4200, 5000, "running") });
  r.model.onsend = (m) => { document.getElementById("log").textContent += JSON.stringify(m) + "\n"; };
  window.demo = r;
}

const clean = (r) => { const { model, el, view, cleanup, ...rest } = r; cleanup?.(); return rest; };
window.bench = {
  replay: async (o) => clean(await benchReplay(o)),
  stream: async (o) => benchStream(o),
  // two-step form, so the driver can read browser metrics around the stream only
  prepareStream: async (o) => { window._runStream = await prepareStream(o); return true; },
  runStream: async () => window._runStream(),
  FakeModel, makePanels, makeAlerts, makeRanks, status, dataMessage, series, mount, settled,
};
if (new URLSearchParams(location.search).has("demo")) demo();
window.harnessReady = true;
