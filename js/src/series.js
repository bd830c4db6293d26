// Browser-side copy of one plotted series, capped in size.
//
// Python keeps the full history and sends <= ~2k points per series, but a
// live run keeps appending; without a cap a long run would grow every
// ColumnDataSource without bound and each repaint would get slower.
// Appends write into spare capacity (amortised growth) instead of copying
// the whole series per append: with 20 series and a message per log point
// the copying alone showed up in profiles.
import { enforceCap } from "./decimate.js";

export class SeriesBuffer {
  constructor(capOpts = {}) {
    this.capOpts = capOpts;
    this._x = new Float64Array(0);
    this._y = new Float64Array(0);
    this.n = 0;
  }

  /** Current points (views; valid until the next call). */
  get x() { return this._x.subarray(0, this.n); }
  get y() { return this._y.subarray(0, this.n); }
  get length() { return this.n; }

  _set(x, y) {
    // fresh arrays: views handed to BokehJS earlier stay untouched
    this._x = x; this._y = y; this.n = x.length;
  }

  /** Replace all points. Returns {op:"replace", x, y} for the data source. */
  replace(steps, values) {
    const capped = enforceCap(steps, values, this.capOpts);
    if (capped) this._set(capped.x, capped.y);
    else this._set(Float64Array.from(steps), Float64Array.from(values));
    return { op: "replace", x: this.x, y: this.y };
  }

  /**
   * Append points. Returns {op:"stream", x, y} (just the new points) while
   * under the cap, or {op:"replace", x, y} after re-decimating.
   */
  append(steps, values) {
    const k = steps.length;
    if (k === 0) return null;
    const n = this.n;
    if (n + k > this._x.length) {
      // Grow into new arrays (never write into one BokehJS may hold).
      const cap = Math.max(64, 2 * (n + k));
      const x = new Float64Array(cap), y = new Float64Array(cap);
      x.set(this._x.subarray(0, n)); y.set(this._y.subarray(0, n));
      this._x = x; this._y = y;
    }
    // Writing past n never changes a view [0, n) given out earlier.
    this._x.set(steps, n);
    this._y.set(values, n);
    this.n = n + k;
    const capped = enforceCap(this.x, this.y, this.capOpts);
    if (capped) {
      this._set(capped.x, capped.y);
      return { op: "replace", x: this.x, y: this.y };
    }
    return { op: "stream", x: Float64Array.from(steps), y: Float64Array.from(values) };
  }
}
