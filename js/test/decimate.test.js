import { describe, it, expect } from "vitest";
import { decimateMinMax, enforceCap } from "../src/decimate.js";

const range = (n, f = (i) => i) => Float64Array.from({ length: n }, (_, i) => f(i));
const isSorted = (a) => a.every((v, i) => i === 0 || a[i - 1] <= v);

describe("decimateMinMax", () => {
  it("returns short series unchanged (copy)", () => {
    const xs = range(6), ys = range(6, (i) => i * 2);
    const out = decimateMinMax(xs, ys, 3);
    expect([...out.x]).toEqual([...xs]);
    expect([...out.y]).toEqual([...ys]);
    expect(out.x).not.toBe(xs);
  });

  it("keeps each bucket's min and max in step order", () => {
    // 4 buckets over steps 0..15 (width 15/4=3.75): [0,3.75) [3.75,7.5) [7.5,11.25) [11.25,15]
    const xs = range(16);
    const ys = Float64Array.from([5, 1, 9, 3, 2, 8, 0, 4, 7, 7, 7, 7, 3, 6, 1, 2]);
    const out = decimateMinMax(xs, ys, 4);
    // bucket0 steps 0-3: min 1@1 max 9@2; bucket1 4-7: min 0@6 max 8@5 (max before min);
    // bucket2 8-11: all 7 -> one point @8; bucket3 12-15: min 1@14 max 6@13
    expect([...out.x]).toEqual([1, 2, 5, 6, 8, 13, 14]);
    expect([...out.y]).toEqual([1, 9, 8, 0, 7, 6, 1]);
  });

  it("puts the last step in the last bucket and splits at bucket edges", () => {
    // 2 buckets over 0..10 (edge at 5): step 5 belongs to the second bucket.
    const xs = Float64Array.from([0, 1, 4, 5, 6, 9, 10]);
    const ys = Float64Array.from([3, 3, 3, 100, 3, 3, -100]);
    const out = decimateMinMax(xs, ys, 2);
    expect([...out.x]).toEqual([0, 5, 10]);
    expect([...out.y]).toEqual([3, 100, -100]);
  });

  it("buckets by step, not by index", () => {
    // dense early, sparse late: 100 points in [0,1), then 2 points at 50 and 100
    const xs = Float64Array.from([...range(100, (i) => i / 100), 50, 100]);
    const ys = Float64Array.from([...range(100, (i) => Math.sin(i)), 7, 8]);
    const out = decimateMinMax(xs, ys, 4);
    // buckets of width 25: bucket0 has the 100 dense points -> 2 kept; 50 and 100 land
    // in buckets 2 and 3 and are kept.
    expect(out.x.length).toBe(4);
    expect([...out.x.slice(2)]).toEqual([50, 100]);
  });

  it("preserves the global extremes and spikes", () => {
    const n = 100000;
    const xs = range(n), ys = range(n, (i) => Math.sin(i / 500));
    ys[31337] = 1e6; ys[77777] = -1e6;
    const out = decimateMinMax(xs, ys, 500);
    expect(out.x.length).toBeLessThanOrEqual(1000);
    expect(Math.max(...out.y)).toBe(1e6);
    expect(Math.min(...out.y)).toBe(-1e6);
    expect([...out.x]).toContain(31337);
    expect([...out.x]).toContain(77777);
    expect(isSorted([...out.x])).toBe(true);
  });

  it("keeps a gap point for NaN / Inf so the line still breaks", () => {
    const xs = range(12);
    const ys = Float64Array.from([1, 2, NaN, 4, 5, 6, 7, Infinity, NaN, 10, 11, 12]);
    const out = decimateMinMax(xs, ys, 3); // buckets: 0-3, 4-7, 8-11
    expect([...out.x]).toEqual([0, 2, 3, 4, 6, 7, 8, 9, 11]);
    expect(Number.isNaN(out.y[1])).toBe(true);
    expect(out.y[5]).toBe(Infinity); // first non-finite of bucket 1 is the Inf at step 7
    expect(Number.isNaN(out.y[6])).toBe(true);
    // NaN never wins min or max: finite extremes are still there
    expect(out.y[0]).toBe(1);
    expect(out.y[2]).toBe(4);
  });

  it("emits a single NaN for an all-NaN bucket", () => {
    const xs = range(8), ys = Float64Array.from([NaN, NaN, NaN, NaN, 1, 2, 3, 4]);
    const out = decimateMinMax(xs, ys, 2);
    expect(out.x.length).toBe(3);
    expect(Number.isNaN(out.y[0])).toBe(true);
    expect([...out.x]).toEqual([0, 4, 7]);
  });

  it("handles a zero step span (all points at one step)", () => {
    const xs = Float64Array.from([5, 5, 5, 5, 5]), ys = Float64Array.from([3, 1, 4, 1, 5]);
    const out = decimateMinMax(xs, ys, 2);
    expect([...out.y]).toEqual([1, 5]);
  });

  it("is idempotent on its own output (re-decimation keeps extremes)", () => {
    const xs = range(5000), ys = range(5000, (i) => ((i * 7919) % 1000) - 500);
    const once = decimateMinMax(xs, ys, 200);
    const twice = decimateMinMax(once.x, once.y, 200);
    expect(Math.max(...twice.y)).toBe(Math.max(...ys));
    expect(Math.min(...twice.y)).toBe(Math.min(...ys));
  });
});

describe("enforceCap", () => {
  it("does nothing under the cap", () => {
    expect(enforceCap(range(2000), range(2000), { cap: 2000 })).toBeNull();
  });

  it("decimates the old part, keeps the newest points verbatim, stays sorted", () => {
    const n = 2001;
    const xs = range(n), ys = range(n, (i) => Math.cos(i));
    ys[10] = 99;
    const out = enforceCap(xs, ys, { cap: 2000, target: 1500, keepRecent: 400 });
    expect(out.x.length).toBeLessThanOrEqual(1500);
    expect(out.x.length).toBeGreaterThan(1000);
    expect([...out.x.slice(-400)]).toEqual([...xs.slice(-400)]);
    expect([...out.y.slice(-400)]).toEqual([...ys.slice(-400)]);
    expect(out.y).toContain(99);
    expect(isSorted([...out.x])).toBe(true);
  });

  it("honours the cap even when every bucket holds a gap", () => {
    const n = 5000;
    const xs = range(n), ys = range(n, (i) => (i % 3 === 0 ? NaN : i % 7));
    const out = enforceCap(xs, ys, { cap: 2000, target: 1500, keepRecent: 400 });
    expect(out.x.length).toBeLessThanOrEqual(2000);
  });

  it("keeps a streamed series bounded over many appends", () => {
    let x = new Float64Array(0), y = new Float64Array(0);
    let max = 0;
    for (let step = 0; step < 20000; step += 10) {
      const nx = new Float64Array(x.length + 10), ny = new Float64Array(y.length + 10);
      nx.set(x); ny.set(y);
      for (let k = 0; k < 10; k++) { nx[x.length + k] = step + k; ny[y.length + k] = step === 12340 && k === 3 ? -5 : 1; }
      const capped = enforceCap(nx, ny);
      x = capped ? capped.x : nx; y = capped ? capped.y : ny;
      max = Math.max(max, x.length);
    }
    expect(max).toBeLessThanOrEqual(2000);
    expect(x[0]).toBe(0);
    expect(x[x.length - 1]).toBe(19999);
    expect(Math.min(...y)).toBe(-5);
  });
});
