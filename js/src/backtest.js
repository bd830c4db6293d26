// %%ptt backtest markers: where a rule added in a notebook cell would have
// fired on this run so far. They are not alerts (nothing happened), so they
// live apart from the feed: Python sends the full set, one entry per rule id,
// in `init` and in `data` when it changes (PROTOCOL.md, "Backtest").
import { SEVERITY } from "./colors.js";

export function emptyBacktestMarkers() {
  return { x: [], color: [], rule: [], severity: [], message: [], until: [] };
}

/**
 * Backtest entries → marker columns per panel id (only ids in `panelIds`).
 * Every panel in `panelIds` gets a (possibly empty) entry so stale markers go.
 * A later entry of the same rule replaces an earlier one.
 */
export function backtestByPanel(entries, panelIds) {
  const byRule = new Map();
  for (const e of entries ?? []) if (e?.rule != null) byRule.set(e.rule, e);
  const out = new Map([...panelIds].map((id) => [id, emptyBacktestMarkers()]));
  for (const e of byRule.values()) {
    const color = SEVERITY[e.severity] ?? "#999";
    const steps = e.steps ?? [];
    for (const id of new Set(e.panels ?? [])) {
      const d = out.get(id);
      if (!d) continue;
      steps.forEach((step, i) => {
        if (!Number.isFinite(step)) return;
        const until = e.resolved_steps?.[i];
        d.x.push(step);
        d.color.push(color);
        d.rule.push(String(e.rule));
        d.severity.push(e.severity ?? "");
        d.message.push(e.messages?.[i] ?? "");
        d.until.push(Number.isFinite(until) ? String(until) : "-");
      });
    }
  }
  return out;
}

/** Change detector for one panel's columns (avoid a repaint when nothing moved). */
export function markerSignature(d) {
  return d.x.map((x, i) => `${d.rule[i]}@${x}:${d.severity[i]}:${d.until[i]}`).join("|");
}
