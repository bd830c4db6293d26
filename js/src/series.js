// Browser-side copy of one plotted series, capped in size.
//
// Python keeps the full history and sends <= ~2k points per series, but a
// live run keeps appending; without a cap a long run would grow every
// ColumnDataSource without bound and each repaint would get slower.
import { enforceCap } from "./decimate.js";

const EMPTY = new Float64Array(0);

export class SeriesBuffer {
  constructor(capOpts = {}) {
    this.capOpts = capOpts;
    this.x = EMPTY;
    this.y = EMPTY;
  }

  /** Replace all points. Returns {op:"replace", x, y} for the data source. */
  replace(steps, values) {
    const capped = enforceCap(steps, values, this.capOpts);
    this.x = capped ? capped.x : Float64Array.from(steps);
    this.y = capped ? capped.y : Float64Array.from(values);
    return { op: "replace", x: this.x, y: this.y };
  }

  /**
   * Append points. Returns {op:"stream", x, y} (just the new points) while
   * under the cap, or {op:"replace", x, y} after re-decimating.
   */
  append(steps, values) {
    if (steps.length === 0) return null;
    const n = this.x.length;
    const x = new Float64Array(n + steps.length), y = new Float64Array(n + steps.length);
    x.set(this.x); x.set(steps, n);
    y.set(this.y); y.set(values, n);
    const capped = enforceCap(x, y, this.capOpts);
    if (capped) {
      this.x = capped.x; this.y = capped.y;
      return { op: "replace", x: this.x, y: this.y };
    }
    this.x = x; this.y = y;
    return { op: "stream", x: Float64Array.from(steps), y: Float64Array.from(values) };
  }

  get length() { return this.x.length; }
}
