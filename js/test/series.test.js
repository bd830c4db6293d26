import { describe, it, expect } from "vitest";
import { SeriesBuffer } from "../src/series.js";

const f = (...v) => Float64Array.from(v);
const ramp = (a, b) => Float64Array.from({ length: b - a }, (_, i) => a + i);

describe("SeriesBuffer", () => {
  it("streams only the new points while under the cap", () => {
    const s = new SeriesBuffer({ cap: 10, target: 6, keepRecent: 2 });
    expect(s.replace(f(1, 2), f(10, 20)).op).toBe("replace");
    const u = s.append(f(3, 4), f(30, 40));
    expect(u.op).toBe("stream");
    expect([...u.x]).toEqual([3, 4]);
    expect([...s.x]).toEqual([1, 2, 3, 4]);
    expect(s.append(f(), f())).toBeNull();
  });

  it("switches to a full replace when an append crosses the cap", () => {
    const s = new SeriesBuffer({ cap: 10, target: 6, keepRecent: 2 });
    s.replace(ramp(0, 9), ramp(0, 9));
    const u = s.append(f(9, 10), f(-100, 5));
    expect(u.op).toBe("replace");
    expect(u.x.length).toBeLessThanOrEqual(6);
    expect([...u.x.slice(-2)]).toEqual([9, 10]); // newest points verbatim
    expect(s.length).toBe(u.x.length);
    expect(u.y).toContain(-100);
  });

  it("decimates an oversized replace on arrival", () => {
    const s = new SeriesBuffer({ cap: 100, target: 60, keepRecent: 10 });
    const u = s.replace(ramp(0, 10000), ramp(0, 10000));
    expect(u.x.length).toBeLessThanOrEqual(100);
    expect(u.x[0]).toBe(0);
    expect(u.x[u.x.length - 1]).toBe(9999);
  });

  it("does not alias the caller's arrays", () => {
    const s = new SeriesBuffer();
    const xs = f(1, 2), ys = f(3, 4);
    s.replace(xs, ys);
    xs[0] = 99;
    expect(s.x[0]).toBe(1);
  });
});
