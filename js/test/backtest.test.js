import { describe, it, expect } from "vitest";
import { backtestByPanel, markerSignature } from "../src/backtest.js";
import { createQueue } from "../src/queue.js";
import { SEVERITY } from "../src/colors.js";

const entry = (rule, steps, panels, extra = {}) => ({
  rule, steps, panels, severity: "low", resolved_steps: steps.map(() => null),
  messages: steps.map((s) => `${rule} at ${s}`), total: steps.length, ...extra,
});

describe("backtest markers", () => {
  it("puts each rule's steps on its panels only, with rule, colour and end step", () => {
    const m = backtestByPanel([
      entry("margin_pos", [4, 9], ["pref_margin"], { resolved_steps: [7, null] }),
      entry("low_grad", [6], ["optim_grad_norm", "pref_margin"], { severity: "high" }),
    ], ["dpo_loss", "pref_margin", "optim_grad_norm"]);
    expect(m.get("dpo_loss").x).toEqual([]); // listed, so its stale markers are cleared
    const pm = m.get("pref_margin");
    expect(pm.x).toEqual([4, 9, 6]);
    expect(pm.rule).toEqual(["margin_pos", "margin_pos", "low_grad"]);
    expect(pm.until).toEqual(["7", "-", "-"]);
    expect(pm.color).toEqual([SEVERITY.low, SEVERITY.low, SEVERITY.high]);
    expect(pm.message[1]).toBe("margin_pos at 9");
    expect(m.get("optim_grad_norm").x).toEqual([6]);
  });

  it("ignores panels the view does not have and a later entry of the same rule replaces the earlier", () => {
    const m = backtestByPanel([
      entry("r", [1, 2, 3], ["a", "gone"]),
      entry("r", [5], ["a"]),
    ], ["a"]);
    expect([...m.keys()]).toEqual(["a"]);
    expect(m.get("a").x).toEqual([5]);
  });

  it("signature changes when a marker moves or its episode ends, not otherwise", () => {
    const ids = ["a"];
    const s1 = markerSignature(backtestByPanel([entry("r", [4], ["a"])], ids).get("a"));
    expect(markerSignature(backtestByPanel([entry("r", [4], ["a"])], ids).get("a"))).toBe(s1);
    expect(markerSignature(backtestByPanel([entry("r", [5], ["a"])], ids).get("a"))).not.toBe(s1);
    expect(markerSignature(backtestByPanel([entry("r", [4], ["a"], { resolved_steps: [8] })], ids).get("a")))
      .not.toBe(s1);
    expect(markerSignature(backtestByPanel([], ids).get("a"))).toBe("");
  });

  it("queue: the latest backtest set wins, absent means unchanged, an init carries its own", () => {
    const applied = [];
    const pending = [];
    const q = createQueue({ apply: (b) => applied.push(b), schedule: (cb) => pending.push(cb) });
    const frame = () => pending.splice(0).forEach((cb) => cb(0));
    const data = (extra) => ({ type: "data", series: [], alerts: [], status: null, ...extra });
    q.push(data({ backtest: [entry("r", [1], ["a"])] }));
    q.push(data({ backtest: [entry("r", [2], ["a"])] }));
    q.push(data({}));
    frame();
    expect(applied[0].backtest.map((e) => e.steps)).toEqual([[2]]);
    q.push(data({}));
    frame();
    expect(applied[1].backtest).toBeUndefined();
    q.push(data({ backtest: [entry("old", [1], ["a"])] }));
    q.push({ type: "init", panels: [], alerts: [], backtest: [entry("r", [3], ["a"])] });
    frame();
    expect(applied[2].backtest).toBeUndefined(); // the init's own set applies
    expect(applied[2].init.backtest[0].steps).toEqual([3]);
  });
});
