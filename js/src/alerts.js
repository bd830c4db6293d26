// Alert feed: newest first, one card per alert, mute per rule.
import { h, safeUrl } from "./dom.js";
import { fmtNum } from "./format.js";
import { SEVERITY, SEVERITY_RANK } from "./colors.js";

export class AlertFeed {
  constructor({ onMute, onFocus }) {
    this.onMute = onMute;
    this.onFocus = onFocus;
    this.alerts = new Map(); // id → alert (latest version)
    this.order = new Map();  // id → arrival counter, tie-break for "newest"
    this._seq = 0;
    this.count = h("span", { class: "ptt-alert-count" });
    this.list = h("ol", { class: "ptt-alert-list", "aria-live": "polite" });
    this.empty = h("div", { class: "ptt-alert-empty", text: "No alerts yet." });
    this.el = h("aside", { class: "ptt-alerts" },
      h("div", { class: "ptt-alerts-head" }, h("span", { text: "Alerts" }), this.count),
      this.empty, this.list);
    this._render();
  }

  reset(alerts = []) {
    this.alerts.clear();
    this.order.clear();
    this.upsert(alerts);
    this._render(); // also when empty: the old cards must go
  }

  upsert(alerts) {
    for (const a of alerts) {
      if (a?.id == null) continue;
      if (!this.order.has(a.id)) this.order.set(a.id, this._seq++);
      this.alerts.set(a.id, a);
    }
    if (alerts.length) this._render();
  }

  all() { return [...this.alerts.values()]; }

  _mute(rule, muted) {
    // Optimistic: dim at once; Python confirms with updated alerts.
    for (const [id, a] of this.alerts) if (a.rule === rule) this.alerts.set(id, { ...a, muted });
    this._render();
    this.onMute(rule, muted);
  }

  _render() {
    const items = this.all().sort((a, b) =>
      (b.step ?? 0) - (a.step ?? 0) || this.order.get(b.id) - this.order.get(a.id));
    this.list.replaceChildren(...items.map((a) => this._card(a)));
    this.empty.style.display = items.length ? "none" : "";
    const active = items.filter((a) => a.state !== "resolved" && !a.muted);
    const bySev = {};
    for (const a of active) bySev[a.severity] = (bySev[a.severity] ?? 0) + 1;
    this.count.replaceChildren(...Object.keys(SEVERITY).filter((s) => bySev[s]).map((s) =>
      h("span", { class: "ptt-pill", style: sevStyle(s), title: `${bySev[s]} active ${s}` },
        `${bySev[s]} ${s}`)));
  }

  _card(a) {
    const sev = SEVERITY[a.severity] ? a.severity : "low";
    const resolved = a.state === "resolved";
    const evidence = Object.entries(a.evidence ?? {});
    const url = safeUrl(a.reference?.url);
    const refText = a.reference?.text;
    const card = h("li", {
      class: `ptt-alert ptt-sev-${sev}${resolved ? " ptt-resolved" : ""}${a.muted ? " ptt-muted" : ""}`,
      style: `border-left-color:var(--ptt-sev-${sev}, ${SEVERITY[sev]})`,
      tabindex: 0, title: "Click to zoom the plots to this step",
      "data-alert": a.id, "data-rule": a.rule,
    },
      h("div", { class: "ptt-alert-top" },
        h("span", { class: "ptt-pill", style: sevStyle(sev), text: sev }),
        h("code", { class: "ptt-rule", text: a.rule ?? "" }),
        h("span", { class: "ptt-step", text: `step ${fmtNum(a.step)}` }),
        h("span", { class: `ptt-state ${resolved ? "resolved" : "active"}`,
          text: resolved ? `resolved${a.resolved_step != null ? ` @ ${fmtNum(a.resolved_step)}` : ""}` : "active" }),
        h("button", {
          class: "ptt-mute", type: "button",
          title: a.muted ? "Show alerts of this rule again" : "Hide alerts of this rule (the rule keeps running)",
          onclick: (e) => { e.stopPropagation(); this._mute(a.rule, !a.muted); },
        }, a.muted ? "unmute" : "mute")),
      h("div", { class: "ptt-msg", text: a.message ?? "" }),
      a.muted ? null : [
        evidence.length ? h("div", { class: "ptt-evidence" },
          evidence.map(([k, v]) => h("span", { class: "ptt-ev" }, h("span", { class: "ptt-ev-k", text: k }), " = ", fmtNum(v)))) : null,
        a.action ? h("div", { class: "ptt-action" }, h("b", { text: "Action: " }), a.action) : null,
        refText || url ? h("div", { class: "ptt-ref" }, h("b", { text: "Ref: " }),
          url ? h("a", { href: url, target: "_blank", rel: "noopener noreferrer",
            onclick: (e) => e.stopPropagation() }, refText || url) : refText) : null,
      ]);
    const focus = () => this.onFocus(a);
    card.addEventListener("click", focus);
    card.addEventListener("keydown", (e) => { if (e.key === "Enter" && e.target === card) focus(); });
    return card;
  }
}

// Pill colours from the theme's CSS variables (theme.js; AA label on its colour), palette.json's as fallback.
function sevStyle(sev) {
  return `background:var(--ptt-sev-${sev}, ${SEVERITY[sev]});color:var(--ptt-on-sev-${sev}, #fff)`;
}
