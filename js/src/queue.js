// Frame-batched message queue.
//
// Python sends a few batches per second, but a burst (initial fill, replay,
// a re-opened view) can deliver many at once. Applying each message to
// BokehJS separately would re-render every plot per message; instead we
// coalesce everything that arrived since the last frame and apply it once.
//
// Coalescing rules (unit-tested in test/queue.test.js):
//  - "init" resets the view, so it discards everything queued before it.
//  - per series (panel, key, split): "replace" drops queued points of that
//    series; "append" chunks are concatenated in arrival order (onto the
//    pending replace, if any, which keeps mode "replace").
//  - alerts are merged by id (latest version wins, first-arrival order kept).
//  - status, ranks and backtest: latest wins (ranks and backtest are full
//    replacements upstream; an init's backtest is superseded by a later one).

/** Identity of a series within a batch. */
export const seriesId = (panel, key, split) => `${panel ?? "*"}\u0000${key}\u0000${split ?? ""}`;

function concatF64(chunks) {
  if (chunks.length === 1) return chunks[0];
  let n = 0;
  for (const c of chunks) n += c.length;
  const out = new Float64Array(n);
  let o = 0;
  for (const c of chunks) { out.set(c, o); o += c.length; }
  return out;
}

/** Default scheduler: next animation frame, with a timer fallback because
 * rAF does not fire in hidden tabs and the queue must not grow unbounded. */
export function frameScheduler(cb) {
  let done = false;
  const run = (t) => { if (!done) { done = true; cb(t); } };
  if (typeof requestAnimationFrame === "function") requestAnimationFrame(run);
  setTimeout(run, 250);
}

/**
 * @param {{apply: (batch: object) => void, schedule?: (cb: Function) => void}} opts
 * `apply` receives {init, series:[{panel,key,split,mode,steps,values}],
 * alerts:[...], status, ranks, backtest, messages} once per frame.
 */
export function createQueue({ apply, schedule = frameScheduler }) {
  let state = empty();
  let scheduled = false;

  function empty() {
    return {
      init: null, series: new Map(), alerts: new Map(), status: null, ranks: undefined, backtest: undefined, messages: 0,
    };
  }

  function push(msg) {
    state.messages++;
    if (msg.type === "init") {
      const messages = state.messages;
      state = empty();
      state.messages = messages;
      state.init = msg;
    } else if (msg.type === "data") {
      for (const s of msg.series ?? []) addSeries(s);
      // Map.set on an existing id keeps its position: latest version, first-arrival order.
      for (const a of msg.alerts ?? []) state.alerts.set(a.id, a);
      if (msg.status != null) state.status = msg.status;
      if (msg.ranks !== undefined) state.ranks = msg.ranks;
      if (msg.backtest !== undefined) state.backtest = msg.backtest;
    } else {
      return; // unknown message types are ignored, not fatal (forward compat)
    }
    if (!scheduled) {
      scheduled = true;
      schedule(flush);
    }
  }

  function addSeries(s) {
    const id = seriesId(s.panel, s.key, s.split);
    const prev = state.series.get(id);
    if (s.mode === "replace" || prev == null) {
      // A replace supersedes queued points but keeps the entry's position.
      state.series.set(id, {
        panel: s.panel ?? null, key: s.key, split: s.split,
        mode: s.mode === "replace" ? "replace" : "append",
        steps: [s.steps], values: [s.values],
      });
    } else {
      prev.steps.push(s.steps);
      prev.values.push(s.values);
    }
  }

  function take() {
    const s = state;
    state = empty();
    scheduled = false;
    return {
      init: s.init,
      series: [...s.series.values()].map((e) => ({
        ...e, steps: concatF64(e.steps), values: concatF64(e.values),
      })),
      alerts: [...s.alerts.values()],
      status: s.status,
      ranks: s.ranks,
      backtest: s.backtest,
      messages: s.messages,
    };
  }

  function flush() {
    if (!scheduled) return;
    apply(take());
  }

  return {
    push,
    /** Apply whatever is queued right now (tests, teardown). */
    flushNow() { if (scheduled) apply(take()); },
    /** Drop everything queued (view removed). */
    clear() { state = empty(); scheduled = false; },
    get pending() { return scheduled; },
  };
}
