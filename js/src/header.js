// Run header: trainer/algorithm, state badge, progress, throughput, Stop.
import { h } from "./dom.js";
import { fmtDuration, fmtNum, fmtRate } from "./format.js";
import { STATE } from "./colors.js";

const STATE_TEXT = {
  running: "running",
  stopped_by_user: "stopped by user",
  auto_stopped: "auto-stopped",
  crashed: "crashed",
  finished: "finished",
  replay: "replay",
};

export class Header {
  constructor({ onStop }) {
    this.title = h("span", { class: "ptt-title" });
    this.badge = h("span", { class: "ptt-badge" });
    this.barFill = h("div", { class: "ptt-bar-fill" });
    this.bar = h("div", { class: "ptt-bar", role: "progressbar", "aria-valuemin": 0 }, this.barFill);
    this.progress = h("span", { class: "ptt-progress-text" });
    this.rate = h("span", { class: "ptt-rate" });
    this.reason = h("div", { class: "ptt-reason" });
    // which stop reaches a busy train() cell in this kernel (status.stop_hint, set by the Python dashboard)
    this.stopHint = h("div", { class: "ptt-stop-hint", style: "font-size: 11px;" });
    this._clicked = false;
    this.stop = h("button", {
      class: "ptt-stop", type: "button",
      title: "Ask the trainer to stop cleanly at the next step boundary",
      onclick: () => {
        if (this._clicked) return;
        this._clicked = true;
        this._renderStop(true);
        onStop();
      },
    });
    this.el = h("div", { class: "ptt-header" },
      h("div", { class: "ptt-header-row" }, this.title, this.badge,
        h("div", { class: "ptt-progress" }, this.bar, this.progress), this.rate, this.stop),
      this.reason, this.stopHint);
    this._renderStop(false);
  }

  setRun(run) {
    const parts = [run?.trainer, run?.algorithm].filter(Boolean);
    this.title.textContent = parts.length ? parts.join(" · ") : "TRL run";
    if (run?.run_dir) this.title.title = run.run_dir;
    this._clicked = false;
  }

  update(st) {
    if (!st) return;
    const state = st.state ?? "running";
    this.badge.textContent = STATE_TEXT[state] ?? state;
    // theme.js sets --ptt-state-* (and an AA label colour on it); palette.json's colour before that
    this.badge.style.background = STATE[state] ? `var(--ptt-state-${state}, ${STATE[state]})` : "var(--ptt-neutral, #6c6c6c)";
    this.badge.style.color = STATE[state] ? `var(--ptt-on-state-${state}, #fff)` : "var(--ptt-bg, #fff)";
    if (st.trainer || st.algorithm) {
      this.title.textContent = [st.trainer, st.algorithm].filter(Boolean).join(" · ");
    }

    const max = st.max_steps;
    const frac = max > 0 ? Math.min(1, (st.step ?? 0) / max) : null;
    this.barFill.style.width = frac == null ? "0%" : `${(frac * 100).toFixed(1)}%`;
    this.bar.style.display = frac == null ? "none" : "";
    if (frac != null) { this.bar.setAttribute("aria-valuemax", max); this.bar.setAttribute("aria-valuenow", st.step ?? 0); }
    let text = max > 0 ? `step ${fmtNum(st.step ?? 0)} / ${fmtNum(max)}` : `step ${fmtNum(st.step ?? 0)}`;
    if (state === "running" && st.eta_s != null) text += ` · ETA ${fmtDuration(st.eta_s)}`;
    this.progress.textContent = text;

    this.rate.textContent = [fmtRate(st.steps_per_s, "steps/s"), fmtRate(st.samples_per_s, "samples/s")]
      .filter(Boolean).join(" · ");
    this.reason.textContent = st.reason ?? "";
    this.reason.style.display = st.reason ? "" : "none";

    this.stop.style.display = state === "running" ? "" : "none";
    this.stopHint.textContent = state === "running" ? (st.stop_hint ?? "") : "";
    this.stopHint.style.display = this.stopHint.textContent ? "" : "none";
    if (st.stop_mode) this.stopHint.dataset.mode = st.stop_mode;
    if (st.stop_requested) this._clicked = true;
    this._renderStop(this._clicked);
  }

  _renderStop(stopping) {
    this.stop.textContent = stopping ? "stopping…" : "■ Stop";
    this.stop.disabled = stopping;
    this.stop.setAttribute("aria-pressed", stopping ? "true" : "false");
  }
}
