import { describe, it, expect } from "vitest";
import { decodeMessage, toFloat64 } from "../src/decode.js";

const le = (...v) => {
  const dv = new DataView(new ArrayBuffer(v.length * 8));
  v.forEach((x, i) => dv.setFloat64(i * 8, x, true));
  return dv;
};

describe("decode", () => {
  it("reads DataView, ArrayBuffer and misaligned views as little-endian Float64", () => {
    expect([...toFloat64(le(1, 2.5))]).toEqual([1, 2.5]);
    expect([...toFloat64(le(3).buffer)]).toEqual([3]);
    const raw = new Uint8Array(8 * 2 + 3);
    const dv = new DataView(raw.buffer, 3, 16);
    dv.setFloat64(0, -1, true); dv.setFloat64(8, NaN, true);
    const out = toFloat64(dv);
    expect(out[0]).toBe(-1);
    expect(Number.isNaN(out[1])).toBe(true);
  });

  it("pairs buffers with series in order and drops broken entries", () => {
    const msg = { type: "data", series: [
      { panel: "a", key: "loss", split: "train", mode: "append", n: 2 },
      { panel: "a", key: "eval_loss", split: "eval", mode: "replace", n: 1 },
      { panel: "a", key: "bad", split: "train", mode: "append", n: 3 },
    ] };
    const out = decodeMessage(msg, [le(1, 2), le(10, 20), le(5), le(50), le(1), le(1)]);
    expect(out.series.map((s) => s.key)).toEqual(["loss", "eval_loss"]);
    expect([...out.series[0].values]).toEqual([10, 20]);
    expect([...out.series[1].steps]).toEqual([5]);
  });

  it("passes non-data messages through", () => {
    const init = { type: "init", panels: [] };
    expect(decodeMessage(init, [])).toBe(init);
  });
});
