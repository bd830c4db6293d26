// Wire format → plain JS objects (see PROTOCOL.md).
//
// A "data" message carries, for each entry of `series` in order, two binary
// buffers: steps then values, both little-endian Float64. Jupyter hands
// buffers over as DataView, ArrayBuffer or a typed array depending on the
// front-end, and a DataView's offset is not always 8-byte aligned, so
// normalise here and nowhere else.

const LITTLE_ENDIAN = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;

/** Any buffer-ish thing → Float64Array (zero-copy when aligned). */
export function toFloat64(buf) {
  if (buf instanceof Float64Array) return buf;
  let ab, off, len;
  if (buf instanceof ArrayBuffer) { ab = buf; off = 0; len = buf.byteLength; }
  else if (ArrayBuffer.isView(buf)) { ab = buf.buffer; off = buf.byteOffset; len = buf.byteLength; }
  else if (Array.isArray(buf)) return Float64Array.from(buf); // harness convenience
  else throw new TypeError("ptt_nb: unsupported buffer type");
  const n = Math.floor(len / 8);
  if (LITTLE_ENDIAN && off % 8 === 0) return new Float64Array(ab, off, n);
  const dv = new DataView(ab, off, len);
  const out = new Float64Array(n);
  for (let i = 0; i < n; i++) out[i] = dv.getFloat64(i * 8, true);
  return out;
}

/**
 * Attach decoded `steps`/`values` arrays to each series entry of a "data"
 * message. Returns a new message; entries whose buffers are missing or whose
 * lengths disagree are dropped (with a console warning) rather than drawn wrong.
 */
export function decodeMessage(msg, buffers = []) {
  if (msg == null || typeof msg !== "object") return null;
  if (msg.type !== "data") return msg;
  const series = [];
  (msg.series ?? []).forEach((s, i) => {
    const sb = buffers[2 * i], vb = buffers[2 * i + 1];
    if (sb == null || vb == null) {
      console.warn("ptt_nb: missing buffers for series", s.key);
      return;
    }
    const steps = toFloat64(sb), values = toFloat64(vb);
    const n = s.n ?? steps.length;
    if (steps.length < n || values.length < n) {
      console.warn("ptt_nb: short buffers for series", s.key);
      return;
    }
    series.push({ ...s, steps: steps.length === n ? steps : steps.subarray(0, n),
      values: values.length === n ? values : values.subarray(0, n) });
  });
  return { ...msg, series };
}
