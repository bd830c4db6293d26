import { describe, it, expect, vi } from "vitest";
import palette from "../../ptt_nb/palette.json";
import {
  AA, AAA, contrast, cssVariables, detectTheme, parseColor, readable, resolveColors, textOn, watchTheme,
} from "../src/theme.js";

// Lab 4.x's theme variables (theme-dark-extension/index.css, theme-light-extension/index.css).
const LAB_DARK = {
  "--jp-layout-color0": "#111", "--jp-layout-color1": "#212121", "--jp-layout-color3": "#616161",
  "--jp-ui-font-color1": "rgba(255,255,255,.87)", "--jp-ui-font-color2": "rgba(255,255,255,.54)",
  "--jp-ui-font-color3": "rgba(255,255,255,.38)", "--jp-border-color2": "#424242",
  "--jp-content-link-color": "#64b5f6", "--jp-brand-color1": "#2196f3",
};
const LAB_LIGHT = {
  "--jp-layout-color0": "white", "--jp-layout-color1": "white", "--jp-ui-font-color1": "rgba(0,0,0,.87)",
  "--jp-ui-font-color2": "rgba(0,0,0,.54)", "--jp-ui-font-color3": "rgba(0,0,0,.38)",
};
const VSCODE_DARK = {
  "--vscode-editor-background": "#1e1e1e", "--vscode-editor-foreground": "#d4d4d4",
  "--vscode-descriptionForeground": "rgba(204, 204, 204, 0.7)", "--vscode-textLink-foreground": "#3794ff",
};
const reader = (vars) => (name) => vars[name] ?? "";

function allText(t) {
  return [t.text, t.text2, t.text3, t.link, t.neutral, ...Object.values(t.severity), ...Object.values(t.state)];
}

describe("colour arithmetic", () => {
  it("parses the forms hosts use", () => {
    expect(parseColor("#111")).toEqual({ r: 17, g: 17, b: 17, a: 1 });
    expect(parseColor("rgba(255,255,255,.87)")).toEqual({ r: 255, g: 255, b: 255, a: 0.87 });
    expect(parseColor("rgb(30 30 30 / 50%)")).toEqual({ r: 30, g: 30, b: 30, a: 0.5 });
    expect(parseColor("#ff000080").a).toBeCloseTo(0.5, 2);
    expect(parseColor("var(--x)")).toBeNull();
    expect(parseColor(undefined)).toBeNull();
  });

  it("computes WCAG contrast (black/white 21:1, a known pair)", () => {
    expect(contrast("#000", "#fff")).toBeCloseTo(21, 5);
    expect(contrast("#777777", "#ffffff")).toBeCloseTo(4.48, 2);
  });

  it("readable() leaves a good colour alone and fixes a bad one on light and dark", () => {
    expect(readable("#222222", "#ffffff")).toBe("#222222");
    for (const [c, bg] of [["#bcbd22", "#ffffff"], ["#1f77b4", "#111111"], ["rgba(255,255,255,.38)", "#111111"]]) {
      expect(contrast(c, bg)).toBeLessThan(AA);
      expect(contrast(readable(c, bg), bg)).toBeGreaterThanOrEqual(AA);
    }
    expect(contrast(readable("#777", "#000", AAA), "#000")).toBeGreaterThanOrEqual(AAA);
  });

  it("textOn() picks a label colour that reaches AA on any palette colour", () => {
    for (const t of Object.values(palette.themes)) {
      for (const c of [...Object.values(t.severity), ...Object.values(t.state)]) {
        expect(contrast(textOn(c), c)).toBeGreaterThanOrEqual(AA);
      }
    }
  });
});

describe("detectTheme", () => {
  it("reads JupyterLab's data-jp-theme-light", () => {
    expect(detectTheme({ lightAttr: "true" })).toMatchObject({ kind: "light", host: "jupyter" });
    expect(detectTheme({ lightAttr: "false", prefersDark: false })).toMatchObject({ kind: "dark", host: "jupyter" });
    expect(detectTheme({ lightAttr: "false", jpHighContrast: true }).highContrast).toBe(true);
  });

  it("reads VS Code's body classes before anything else", () => {
    expect(detectTheme({ bodyClasses: ["vscode-dark"], lightAttr: "true" })).toMatchObject({ kind: "dark", host: "vscode" });
    expect(detectTheme({ bodyClasses: ["vscode-light"], prefersDark: true })).toMatchObject({ kind: "light", host: "vscode" });
    expect(detectTheme({ bodyClasses: ["vscode-high-contrast"] })).toMatchObject({ kind: "dark", highContrast: true });
    expect(detectTheme({ bodyClasses: ["vscode-high-contrast", "vscode-high-contrast-light"] }))
      .toMatchObject({ kind: "light", highContrast: true });
  });

  it("falls back to prefers-color-scheme, light by default", () => {
    expect(detectTheme({ prefersDark: true })).toMatchObject({ kind: "dark", host: "media" });
    expect(detectTheme({})).toMatchObject({ kind: "light", host: "media" });
  });
});

describe("resolveColors", () => {
  const cases = {
    "palette light": [{ kind: "light", highContrast: false, host: "media" }, {}],
    "palette dark": [{ kind: "dark", highContrast: false, host: "media" }, {}],
    "Lab light": [{ kind: "light", highContrast: false, host: "jupyter" }, LAB_LIGHT],
    "Lab dark": [{ kind: "dark", highContrast: false, host: "jupyter" }, LAB_DARK],
    "VS Code dark": [{ kind: "dark", highContrast: false, host: "vscode" }, VSCODE_DARK],
    "VS Code high contrast": [{ kind: "dark", highContrast: true, host: "vscode" }, { "--vscode-editor-background": "#000" }],
  };
  for (const [name, [det, vars]] of Object.entries(cases)) {
    it(`every text colour reaches ${det.highContrast ? "7" : "4.5"}:1 on background and surface: ${name}`, () => {
      const t = resolveColors(det, reader(vars));
      for (const c of allText(t)) {
        expect(contrast(c, t.background), `${c} on ${t.background}`).toBeGreaterThanOrEqual(t.min);
        expect(contrast(c, t.surface), `${c} on ${t.surface}`).toBeGreaterThanOrEqual(t.min);
      }
      // series colours are drawn (lines, legend swatches) on the plot background only
      for (const c of t.series) expect(contrast(c, t.background), `${c}`).toBeGreaterThanOrEqual(t.min);
      for (const k of Object.keys(t.severity)) expect(contrast(t.onSeverity[k], t.severity[k])).toBeGreaterThanOrEqual(AA);
      for (const k of Object.keys(t.state)) expect(contrast(t.onState[k], t.state[k])).toBeGreaterThanOrEqual(AA);
    });
  }

  it("uses the host's background and text where it defines them", () => {
    const t = resolveColors({ kind: "dark", highContrast: false, host: "jupyter" }, reader(LAB_DARK));
    expect(t.background).toBe("#111111");
    expect(t.surface).toBe("#212121");
    expect(t.text).toBe("#e0e0e0"); // .87 white over #111
    expect(contrast(LAB_DARK["--jp-ui-font-color3"], "#111111")).toBeLessThan(AA); // Lab's own dim text…
    expect(contrast(t.text3, t.background)).toBeGreaterThanOrEqual(AA);            // …is lifted
    const v = resolveColors({ kind: "dark", highContrast: false, host: "vscode" }, reader(VSCODE_DARK));
    expect(v.background).toBe("#1e1e1e");
    expect(v.text).toBe("#d4d4d4");
  });

  it("ignores a host background that contradicts the theme (stale variables mid-switch)", () => {
    const t = resolveColors({ kind: "dark", highContrast: false, host: "jupyter" }, reader(LAB_LIGHT));
    expect(t.background).toBe(palette.themes.dark.background);
  });

  it("stored palette variants already pass on their own backgrounds (no runtime nudging needed)", () => {
    for (const [kind, p] of Object.entries(palette.themes)) {
      for (const c of [...Object.values(p.severity), ...Object.values(p.state), ...p.series, p.text, p.text2, p.text3]) {
        expect(contrast(c, p.background), `${kind} ${c}`).toBeGreaterThanOrEqual(AA);
        expect(contrast(c, p.surface), `${kind} ${c}`).toBeGreaterThanOrEqual(AA);
      }
      expect(Object.keys(p.severity)).toEqual(Object.keys(palette.severity)); // same rank order
      expect(Object.keys(p.state)).toEqual(Object.keys(palette.state));
    }
  });

  it("cssVariables() covers every severity and state the feed and header use", () => {
    const v = cssVariables(resolveColors({ kind: "dark", highContrast: false, host: "media" }));
    for (const s of Object.keys(palette.severity)) expect(v[`--ptt-sev-${s}`]).toMatch(/^#/);
    for (const s of Object.keys(palette.state)) expect(v[`--ptt-on-state-${s}`]).toMatch(/^#(000000|ffffff)$/);
  });
});

describe("watchTheme", () => {
  function fakeEnv() {
    const observers = [];
    class MO {
      constructor(cb) { this.cb = cb; this.nodes = []; observers.push(this); }
      observe(node, opts) { this.nodes.push([node, opts]); }
      disconnect() { this.nodes = []; this.disconnected = true; }
    }
    const listeners = new Set();
    const mql = (q) => ({ matches: false, addEventListener: (_, f) => listeners.add([q, f]),
      removeEventListener: (_, f) => { for (const e of listeners) if (e[0] === q && e[1] === f) listeners.delete(e); } });
    const window = { document: { documentElement: { id: "html" }, body: { id: "body" } }, matchMedia: mql };
    return { observers, listeners, window, MO };
  }

  it("reports the theme at once and again only when it changes; disconnects everything", () => {
    vi.useFakeTimers();
    const env = fakeEnv();
    let kind = "light";
    const seen = [];
    const stop = watchTheme(null, (t) => seen.push(t.kind), {
      window: env.window, MutationObserver: env.MO, read: () => ({ kind, signature: kind }),
    });
    expect(seen).toEqual(["light"]);
    const [obs] = env.observers;
    expect(obs.nodes.map(([n]) => n.id)).toEqual(["html", "body"]);
    expect(obs.nodes[1][1].attributeFilter).toContain("data-jp-theme-light");
    obs.cb([]);               // an unrelated attribute change: no new theme
    vi.runAllTimers();
    expect(seen).toEqual(["light"]);
    kind = "dark";            // Lab switched theme
    obs.cb([]);
    vi.runAllTimers();
    expect(seen).toEqual(["light", "dark"]);
    kind = "light";           // the OS scheme flipped
    expect(env.listeners.size).toBe(2);
    for (const [, f] of env.listeners) f();
    vi.runAllTimers();
    expect(seen).toEqual(["light", "dark", "light"]);
    stop();
    expect(obs.disconnected).toBe(true);
    expect(env.listeners.size).toBe(0);
    kind = "dark";
    obs.cb([]);
    vi.runAllTimers();
    expect(seen).toEqual(["light", "dark", "light"]); // nothing after removal
    vi.useRealTimers();
  });
});
