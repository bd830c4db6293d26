// Which theme the page around the widget uses, and the colours the dashboard draws with in it.
//
// The widget lives in the host page's DOM, so it follows the host: JupyterLab / Notebook 7 put
// `data-jp-theme-light` on <body> and `--jp-*` variables on the page; VS Code puts `vscode-light`,
// `vscode-dark` or `vscode-high-contrast` on <body> and `--vscode-*` variables on <html> (and wraps
// widget output in a white box, microsoft/vscode-jupyter#7161, so the root paints its own background);
// anywhere else `prefers-color-scheme` decides. The page's own text/background colours are used where
// it defines them; fixed colours (severity, run state, series) come from ptt_nb/palette.json's
// per-theme variants. Every colour used for text is then checked against the background actually
// resolved and nudged until it reaches WCAG AA (4.5:1; 7:1 in a high-contrast theme), so an unusual
// host theme still reads.
import palette from "../../ptt_nb/palette.json";

export const AA = 4.5;
export const AAA = 7;

// ---- colour arithmetic (sRGB, WCAG 2.x definitions) ----

/** "#rgb[a]", "#rrggbb[aa]", "rgb()/rgba()" (comma or space syntax), "white"/"black"/"transparent" → {r,g,b,a} or null. */
export function parseColor(s) {
  if (typeof s !== "string") return null;
  const t = s.trim().toLowerCase();
  if (t === "transparent") return { r: 0, g: 0, b: 0, a: 0 };
  if (t === "white") return { r: 255, g: 255, b: 255, a: 1 };
  if (t === "black") return { r: 0, g: 0, b: 0, a: 1 };
  let m = /^#([0-9a-f]{3,4}|[0-9a-f]{6}|[0-9a-f]{8})$/.exec(t);
  if (m) {
    let hex = m[1];
    if (hex.length <= 4) hex = [...hex].map((c) => c + c).join("");
    const n = (i) => parseInt(hex.slice(i, i + 2), 16);
    return { r: n(0), g: n(2), b: n(4), a: hex.length === 8 ? n(6) / 255 : 1 };
  }
  m = /^rgba?\(([^)]*)\)$/.exec(t);
  if (m) {
    const parts = m[1].split(/[\s,/]+/).filter(Boolean);
    if (parts.length < 3) return null;
    const ch = (p) => (p.endsWith("%") ? parseFloat(p) * 2.55 : parseFloat(p));
    const [r, g, b] = parts.slice(0, 3).map(ch);
    let a = parts.length > 3 ? (parts[3].endsWith("%") ? parseFloat(parts[3]) / 100 : parseFloat(parts[3])) : 1;
    if (![r, g, b, a].every(Number.isFinite)) return null;
    a = Math.min(1, Math.max(0, a));
    const c = (v) => Math.min(255, Math.max(0, Math.round(v)));
    return { r: c(r), g: c(g), b: c(b), a };
  }
  return null;
}

/** A colour with alpha, as seen over an opaque background. */
export function over(fg, bg) {
  const a = fg.a ?? 1;
  const mix = (x, y) => Math.round(x * a + y * (1 - a));
  return { r: mix(fg.r, bg.r), g: mix(fg.g, bg.g), b: mix(fg.b, bg.b), a: 1 };
}

export function toHex({ r, g, b }) {
  return "#" + [r, g, b].map((v) => v.toString(16).padStart(2, "0")).join("");
}

export function luminance({ r, g, b }) {
  const lin = (v) => { const c = v / 255; return c <= 0.04045 ? c / 12.92 : ((c + 0.055) / 1.055) ** 2.4; };
  return 0.2126 * lin(r) + 0.7152 * lin(g) + 0.0722 * lin(b);
}

/** WCAG contrast ratio of two colours (strings or {r,g,b}); a translucent fg is composited over bg. */
export function contrast(fg, bg) {
  const b = typeof bg === "string" ? parseColor(bg) : bg;
  let f = typeof fg === "string" ? parseColor(fg) : fg;
  if (!f || !b) return NaN;
  f = over(f, b);
  const [hi, lo] = [luminance(f), luminance(b)].sort((x, y) => y - x);
  return (hi + 0.05) / (lo + 0.05);
}

/**
 * `color` (any parseable string) made readable on `bg`: returned as is (as hex) when it already
 * reaches `min`, else mixed step by step towards white (dark bg) or black (light bg) until it does.
 */
export function readable(color, bg, min = AA) {
  const b = over(parseColor(bg) ?? { r: 255, g: 255, b: 255 }, { r: 255, g: 255, b: 255 });
  const c = over(parseColor(color) ?? { r: 128, g: 128, b: 128 }, b);
  if (contrast(c, b) >= min) return toHex(c);
  const target = luminance(b) < 0.18 ? { r: 255, g: 255, b: 255 } : { r: 0, g: 0, b: 0 };
  for (let t = 0.05; t <= 1.0001; t += 0.05) {
    const m = { r: Math.round(c.r + (target.r - c.r) * t), g: Math.round(c.g + (target.g - c.g) * t),
      b: Math.round(c.b + (target.b - c.b) * t) };
    if (contrast(m, b) >= min) return toHex(m);
  }
  return toHex(target);
}

/** Black or white, whichever reads better on `bg` (one of them always reaches 4.58:1). */
export function textOn(bg) {
  const b = parseColor(bg) ?? { r: 255, g: 255, b: 255 };
  return contrast("#000000", b) >= contrast("#ffffff", b) ? "#000000" : "#ffffff";
}

// ---- which theme ----

/**
 * The page's theme from what the host puts on <body> and in media queries.
 * `env` = {bodyClasses: Set|string[], lightAttr: string|null (data-jp-theme-light), prefersDark: bool,
 * prefersContrast: bool}. Returns {kind: "light"|"dark", highContrast: bool, host: "jupyter"|"vscode"|"media"}.
 */
export function detectTheme(env) {
  const cls = new Set(env.bodyClasses ?? []);
  if (cls.has("vscode-high-contrast-light")) return { kind: "light", highContrast: true, host: "vscode" };
  if (cls.has("vscode-high-contrast")) return { kind: "dark", highContrast: true, host: "vscode" };
  if (cls.has("vscode-dark")) return { kind: "dark", highContrast: false, host: "vscode" };
  if (cls.has("vscode-light")) return { kind: "light", highContrast: false, host: "vscode" };
  if (env.lightAttr != null && env.lightAttr !== "") {
    return { kind: env.lightAttr === "false" ? "dark" : "light", highContrast: !!env.jpHighContrast, host: "jupyter" };
  }
  return { kind: env.prefersDark ? "dark" : "light", highContrast: !!env.prefersContrast, host: "media" };
}

// CSS variables each host defines for the roles we need, most specific first.
const HOST_VARS = {
  jupyter: {
    background: ["--jp-layout-color0"], surface: ["--jp-layout-color1"], track: ["--jp-layout-color3"],
    text: ["--jp-ui-font-color1"], text2: ["--jp-ui-font-color2"], text3: ["--jp-ui-font-color3"],
    border: ["--jp-border-color2"], link: ["--jp-content-link-color"], focus: ["--jp-brand-color1"],
  },
  vscode: {
    background: ["--vscode-notebook-outputContainerBackgroundColor", "--vscode-editor-background"],
    surface: ["--vscode-editorWidget-background", "--vscode-sideBar-background"],
    text: ["--vscode-editor-foreground", "--vscode-foreground"],
    text2: ["--vscode-descriptionForeground"], text3: ["--vscode-disabledForeground"],
    border: ["--vscode-contrastBorder", "--vscode-widget-border", "--vscode-panel-border"],
    link: ["--vscode-textLink-foreground"], focus: ["--vscode-focusBorder"],
  },
  media: {},
};

/**
 * The colours to draw with. `readVar(name)` returns a CSS variable's value ("" when unset), already
 * resolved to a colour string where the caller can (the browser probe does).
 */
export function resolveColors(detected, readVar = () => "") {
  const { kind, highContrast, host } = detected;
  const base = palette.themes[kind];
  const min = highContrast ? AAA : AA;
  const vars = HOST_VARS[host] ?? {};
  const pick = (role) => {
    for (const name of vars[role] ?? []) {
      const v = parseColor(readVar(name));
      if (v && v.a > 0) return v;
    }
    return null;
  };
  // background: the host's (composited over the palette's, in case it is translucent)
  const bgBase = parseColor(base.background);
  const bgHost = pick("background");
  let bg = bgHost ? over(bgHost, bgBase) : bgBase;
  // a host variable that contradicts the theme class (stale variables mid-switch): keep the palette's
  if ((luminance(bg) < 0.18) !== (kind === "dark")) bg = bgBase;
  const background = toHex(bg);
  const surfHost = pick("surface");
  let surface = surfHost ? toHex(over(surfHost, bg)) : base.surface;
  if ((luminance(parseColor(surface)) < 0.18) !== (kind === "dark")) surface = base.surface;
  // text on both the background and the (alert card) surface
  const text2Bg = (c) => readable(readable(c, surface, min), background, min);
  const hostOr = (role, fallback) => { const c = pick(role); return c ? toHex(over(c, bg)) : fallback; };
  const t = {
    kind, highContrast, host, min,
    background, surface,
    track: hostOr("track", base.track),
    border: hostOr("border", base.border),
    grid: base.grid,
    text: text2Bg(hostOr("text", base.text)),
    text2: text2Bg(hostOr("text2", base.text2)),
    text3: text2Bg(hostOr("text3", base.text3)),
    link: text2Bg(hostOr("link", base.link)),
    focus: hostOr("focus", base.focus),
    severity: {}, onSeverity: {}, state: {}, onState: {},
    series: base.series.map((c) => readable(c, background, min)),
  };
  for (const [k, c] of Object.entries(base.severity)) {
    t.severity[k] = text2Bg(c);           // text/marker use: readable on the page
    t.onSeverity[k] = textOn(t.severity[k]); // pill label on that colour
  }
  for (const [k, c] of Object.entries(base.state)) {
    t.state[k] = text2Bg(c);
    t.onState[k] = textOn(t.state[k]);
  }
  t.neutral = text2Bg(base.neutral);
  t.signature = JSON.stringify([t.kind, t.highContrast, t.host, t.background, t.surface, t.text, t.text2]);
  return t;
}

/** CSS custom properties for the widget root (style.js uses only these). */
export function cssVariables(t) {
  const v = {
    "--ptt-scheme": t.kind, "--ptt-bg": t.background, "--ptt-surface": t.surface, "--ptt-track": t.track, "--ptt-border": t.border,
    "--ptt-fg": t.text, "--ptt-fg2": t.text2, "--ptt-fg3": t.text3, "--ptt-link": t.link, "--ptt-focus": t.focus,
    "--ptt-danger": t.severity.critical, "--ptt-ok": t.state.running, "--ptt-neutral": t.neutral,
  };
  for (const [k, c] of Object.entries(t.severity)) { v[`--ptt-sev-${k}`] = c; v[`--ptt-on-sev-${k}`] = t.onSeverity[k]; }
  for (const [k, c] of Object.entries(t.state)) { v[`--ptt-state-${k}`] = c; v[`--ptt-on-state-${k}`] = t.onState[k]; }
  return v;
}

// ---- in the browser ----

/** Reads the live page: body classes and attribute, media queries, CSS variables via a probe element. */
export function currentTheme(el, win = globalThis.window) {
  const doc = win.document;
  const body = doc.body;
  const mq = (q) => { try { return win.matchMedia?.(q)?.matches ?? false; } catch { return false; } };
  const detected = detectTheme({
    bodyClasses: body ? [...body.classList] : [],
    lightAttr: body?.getAttribute("data-jp-theme-light") ?? null,
    jpHighContrast: /high.?contrast/i.test(body?.getAttribute("data-jp-theme-name") ?? ""),
    prefersDark: mq("(prefers-color-scheme: dark)"),
    prefersContrast: mq("(prefers-contrast: more)"),
  });
  const host = el?.isConnected ? el : (body ?? doc.documentElement);
  const probe = doc.createElement("span");
  probe.style.display = "none";
  host.appendChild(probe);
  const cs = win.getComputedStyle(host);
  const readVar = (name) => {
    const raw = cs.getPropertyValue(name).trim();
    if (!raw) return "";
    probe.style.color = "";
    probe.style.color = raw;
    return probe.style.color ? win.getComputedStyle(probe).color : "";
  };
  try {
    return resolveColors(detected, readVar);
  } finally {
    probe.remove();
  }
}

/**
 * Call `onChange(theme)` whenever the page's theme changes: class/attribute/style changes on <html>
 * and <body> (Lab's theme switch, VS Code's) and the colour-scheme media queries. Re-checked on the
 * next frame and once more shortly after (a host may swap its stylesheet after the attribute).
 * Returns a disconnect function; the view calls it on removal so nothing outlives it.
 * `deps` injects MutationObserver / window for tests.
 */
export function watchTheme(el, onChange, deps = {}) {
  const win = deps.window ?? globalThis.window;
  const MO = deps.MutationObserver ?? globalThis.MutationObserver;
  const read = deps.read ?? (() => currentTheme(el, win));
  let last = null;
  let timers = [];
  let closed = false;
  const check = () => {
    if (closed) return;
    const t = read();
    if (t.signature !== last) { last = t.signature; onChange(t); }
  };
  const schedule = () => {
    timers.forEach(clearTimeout);
    timers = [setTimeout(check, 0), setTimeout(check, 250)];
  };
  const obs = MO ? new MO(schedule) : null;
  const doc = win?.document;
  for (const node of [doc?.documentElement, doc?.body]) {
    if (node) obs?.observe(node, { attributes: true, attributeFilter: ["class", "style", "data-jp-theme-light", "data-jp-theme-name"] });
  }
  const queries = ["(prefers-color-scheme: dark)", "(prefers-contrast: more)"]
    .map((q) => { try { return win?.matchMedia?.(q) ?? null; } catch { return null; } }).filter(Boolean);
  for (const m of queries) m.addEventListener?.("change", schedule);
  check();
  return () => {
    closed = true;
    timers.forEach(clearTimeout);
    obs?.disconnect();
    for (const m of queries) m.removeEventListener?.("change", schedule);
  };
}
