// Min/max decimation for one (steps, values) series.
//
// Why min/max and not every-nth: a loss spike or a NaN is exactly what a
// diagnostics view must not hide, and min/max buckets keep every extreme.
// Buckets are equal-width in *step* (not equal-count), so a series that was
// already decimated once (sparse old part, dense recent part) comes out with
// uniform visual density and repeated decimation never moves an extreme.

/** True when a value should be drawn as a gap (NaN, ±Inf). */
const isGap = (v) => !Number.isFinite(v);

/**
 * Decimate to at most ~2 points per bucket (3 when a bucket holds a gap).
 * Points are returned in their original order; a bucket's min and max are both
 * kept (once if they are the same point); the first non-finite value in a
 * bucket is kept so the line still breaks there.
 * @param {ArrayLike<number>} xs steps, ascending
 * @param {ArrayLike<number>} ys values (NaN/±Inf allowed)
 * @param {number} buckets number of equal-width step buckets
 * @returns {{x: Float64Array, y: Float64Array}}
 */
export function decimateMinMax(xs, ys, buckets) {
  const n = xs.length;
  buckets = Math.max(1, Math.floor(buckets));
  if (n <= 2 * buckets) return { x: Float64Array.from(xs), y: Float64Array.from(ys) };

  const x0 = xs[0];
  const span = xs[n - 1] - x0;
  // Bucket b covers [x0 + b*w, x0 + (b+1)*w); the last bucket is closed so
  // the final step lands in it rather than in a phantom bucket `buckets`.
  const bucketOf = span > 0
    ? (x) => Math.min(buckets - 1, Math.max(0, Math.floor(((x - x0) / span) * buckets)))
    : () => 0;

  const keep = [];
  let i = 0;
  while (i < n) {
    // Walk one run of consecutive points in the same bucket; working on runs
    // (not a bucket table) keeps output order equal to input order.
    const b = bucketOf(xs[i]);
    let lo = -1, hi = -1, gap = -1;
    let j = i;
    for (; j < n && bucketOf(xs[j]) === b; j++) {
      const v = ys[j];
      if (isGap(v)) {
        if (gap < 0) gap = j;
      } else {
        if (lo < 0 || v < ys[lo]) lo = j;
        if (hi < 0 || v > ys[hi]) hi = j;
      }
    }
    const picked = [lo, hi, gap].filter((k) => k >= 0).sort((a, c) => a - c);
    for (let k = 0; k < picked.length; k++) {
      if (k === 0 || picked[k] !== picked[k - 1]) keep.push(picked[k]);
    }
    i = j;
  }

  const x = new Float64Array(keep.length);
  const y = new Float64Array(keep.length);
  for (let k = 0; k < keep.length; k++) {
    x[k] = xs[keep[k]];
    y[k] = ys[keep[k]];
  }
  return { x, y };
}

/**
 * Keep a growing series under `cap` points: when it is over, min/max-decimate
 * everything except the newest `keepRecent` points down to about `target`
 * points in total. Decimating to well under the cap leaves headroom, so a
 * live stream re-decimates every (cap - target) appends, not on every one.
 * @returns {{x: Float64Array, y: Float64Array} | null} null when under cap
 */
export function enforceCap(xs, ys, { cap = 2000, target = 1500, keepRecent = 400 } = {}) {
  const n = xs.length;
  if (n <= cap) return null;
  keepRecent = Math.min(keepRecent, Math.floor(target / 2));
  const split = n - keepRecent;
  const oldX = xs.subarray ? xs.subarray(0, split) : xs.slice(0, split);
  const oldY = ys.subarray ? ys.subarray(0, split) : ys.slice(0, split);
  let buckets = Math.max(1, Math.floor((target - keepRecent) / 2));
  let old = decimateMinMax(oldX, oldY, buckets);
  // A bucket holding a gap keeps 3 points; in the rare series full of gaps
  // shrink the bucket count until the result honours the cap.
  while (old.x.length + keepRecent > cap && buckets > 1) {
    buckets = Math.max(1, Math.floor(buckets * 0.6));
    old = decimateMinMax(oldX, oldY, buckets);
  }
  const x = new Float64Array(old.x.length + keepRecent);
  const y = new Float64Array(old.y.length + keepRecent);
  x.set(old.x, 0);
  y.set(old.y, 0);
  for (let k = 0; k < keepRecent; k++) {
    x[old.x.length + k] = xs[split + k];
    y[old.y.length + k] = ys[split + k];
  }
  return { x, y };
}
