import { describe, it, expect, vi } from "vitest";
import { createQueue } from "../src/queue.js";

const f = (...v) => Float64Array.from(v);
const data = (series, extra = {}) => ({ type: "data", series, alerts: [], status: null, ...extra });
const ser = (key, mode, steps, values, split = "train", panel = "p") =>
  ({ panel, key, split, mode, steps: f(...steps), values: f(...values) });

function setup() {
  const applied = [];
  const pending = [];
  const q = createQueue({ apply: (b) => applied.push(b), schedule: (cb) => pending.push(cb) });
  const frame = () => pending.splice(0).forEach((cb) => cb(0));
  return { q, applied, frame, pending };
}

describe("queue", () => {
  it("schedules one frame for many messages and applies nothing before it", () => {
    const { q, applied, pending, frame } = setup();
    for (let i = 0; i < 50; i++) q.push(data([ser("loss", "append", [i], [i])]));
    expect(pending.length).toBe(1);
    expect(applied.length).toBe(0);
    frame();
    expect(applied.length).toBe(1);
    expect(applied[0].messages).toBe(50);
  });

  it("concatenates appends per series in arrival order", () => {
    const { q, applied, frame } = setup();
    q.push(data([ser("loss", "append", [1, 2], [10, 20]), ser("lr", "append", [1], [0.1])]));
    q.push(data([ser("loss", "append", [3], [30])]));
    q.push(data([ser("lr", "append", [2, 3], [0.2, 0.3])]));
    frame();
    const [b] = applied;
    expect(b.series.map((s) => s.key)).toEqual(["loss", "lr"]);
    expect([...b.series[0].steps]).toEqual([1, 2, 3]);
    expect([...b.series[0].values]).toEqual([10, 20, 30]);
    expect([...b.series[1].values]).toEqual([0.1, 0.2, 0.3]);
    expect(b.series[0].mode).toBe("append");
  });

  it("replace drops earlier queued points; later appends extend the replace", () => {
    const { q, applied, frame } = setup();
    q.push(data([ser("loss", "append", [1], [1])]));
    q.push(data([ser("loss", "replace", [0, 5], [0, 5])]));
    q.push(data([ser("loss", "append", [6], [6])]));
    frame();
    const s = applied[0].series[0];
    expect(s.mode).toBe("replace");
    expect([...s.steps]).toEqual([0, 5, 6]);
  });

  it("keeps train and eval (and panels) of one key apart", () => {
    const { q, applied, frame } = setup();
    q.push(data([ser("loss", "append", [1], [1], "train"), ser("loss", "append", [1], [2], "eval"),
      ser("loss", "append", [1], [3], "train", "other")]));
    frame();
    expect(applied[0].series.length).toBe(3);
  });

  it("init discards everything queued before it but not what follows", () => {
    const { q, applied, frame } = setup();
    q.push(data([ser("loss", "append", [1], [1])], { status: { step: 1 }, alerts: [{ id: "a" }] }));
    const init = { type: "init", panels: [], run: {}, status: { step: 0 }, alerts: [], ranks: null };
    q.push(init);
    q.push(data([ser("loss", "replace", [0], [0])]));
    frame();
    const [b] = applied;
    expect(b.init).toBe(init);
    expect(b.series.length).toBe(1);
    expect(b.series[0].mode).toBe("replace");
    expect(b.alerts).toEqual([]);
    expect(b.status).toBeNull();
  });

  it("merges alerts by id (latest version wins) and keeps latest status and ranks", () => {
    const { q, applied, frame } = setup();
    q.push(data([], { alerts: [{ id: "a", state: "active" }, { id: "b", state: "active" }], status: { step: 1 }, ranks: { w: 1 } }));
    q.push(data([], { alerts: [{ id: "a", state: "resolved" }], status: { step: 2 } }));
    frame();
    const [b] = applied;
    expect(b.alerts).toEqual([{ id: "a", state: "resolved" }, { id: "b", state: "active" }]);
    expect(b.status).toEqual({ step: 2 });
    expect(b.ranks).toEqual({ w: 1 }); // ranks absent in the 2nd message: not cleared
  });

  it("an explicit ranks:null is forwarded (hides the heatmap)", () => {
    const { q, applied, frame } = setup();
    q.push(data([], { ranks: { w: 1 } }));
    q.push(data([], { ranks: null }));
    frame();
    expect(applied[0].ranks).toBeNull();
  });

  it("starts a fresh batch after a frame and ignores unknown types", () => {
    const { q, applied, frame, pending } = setup();
    q.push({ type: "bogus" });
    expect(pending.length).toBe(0);
    q.push(data([ser("loss", "append", [1], [1])]));
    frame();
    q.push(data([ser("loss", "append", [2], [2])]));
    frame();
    expect(applied.length).toBe(2);
    expect([...applied[1].series[0].steps]).toEqual([2]);
  });

  it("clear() cancels a pending frame", () => {
    const apply = vi.fn();
    const pending = [];
    const q = createQueue({ apply, schedule: (cb) => pending.push(cb) });
    q.push(data([ser("loss", "append", [1], [1])]));
    q.clear();
    pending.forEach((cb) => cb(0));
    expect(apply).not.toHaveBeenCalled();
  });
});
