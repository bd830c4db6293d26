// Widget CSS, injected once per view. Classes are ptt- prefixed because the
// widget lives in the notebook's DOM, not a shadow root. Colours are only
// --ptt-* variables, set on the root by theme.js from the page's theme (the
// fallbacks are the light theme, for the moment before the first check).
export const CSS = `
.ptt-root { font: 13px/1.4 var(--jp-ui-font-family, var(--vscode-font-family, system-ui, sans-serif)); color: var(--ptt-fg, #222); background: var(--ptt-bg, #fff); color-scheme: var(--ptt-scheme, light); }
:where(.ptt-root) button, :where(.ptt-root) select { color: inherit; background: var(--ptt-surface, #f7f7f7); border: 1px solid var(--ptt-border, #ddd); border-radius: 3px; }
.ptt-header { padding: 6px 8px; border-bottom: 1px solid var(--ptt-border, #ddd); }
.ptt-header-row { display: flex; flex-wrap: wrap; align-items: center; gap: 10px; }
.ptt-title { font-weight: 600; font-size: 14px; }
.ptt-badge, .ptt-pill { color: #fff; border-radius: 9px; padding: 1px 8px; font-size: 11px; font-weight: 600; white-space: nowrap; }
.ptt-progress { display: flex; align-items: center; gap: 6px; flex: 1 1 220px; min-width: 180px; }
.ptt-bar { flex: 1 1 auto; height: 8px; background: var(--ptt-track, #e5e5e5); border-radius: 4px; overflow: hidden; max-width: 320px; }
.ptt-bar-fill { height: 100%; background: var(--ptt-ok, #217821); width: 0; transition: width .3s; }
.ptt-progress-text, .ptt-rate { font-variant-numeric: tabular-nums; color: var(--ptt-fg2, #555); white-space: nowrap; }
.ptt-stop { margin-left: auto; padding: 3px 12px; border: 1px solid var(--ptt-danger, #cb2526); color: var(--ptt-danger, #cb2526); background: transparent; border-radius: 4px; cursor: pointer; font-weight: 600; }
.ptt-stop:disabled { opacity: .6; cursor: default; }
.ptt-reason { margin-top: 4px; color: var(--ptt-fg2, #555); }
.ptt-body { display: flex; flex-wrap: wrap; align-items: flex-start; gap: 8px; padding-top: 6px; }
.ptt-main { flex: 1 1 600px; min-width: 0; }
.ptt-grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(340px, 1fr)); gap: 6px; }
.ptt-cell { min-width: 0; min-height: 230px; }
.ptt-other > summary { cursor: pointer; margin: 8px 0 4px; font-weight: 600; }
.ptt-alerts { flex: 0 1 340px; min-width: 260px; max-height: 760px; overflow-y: auto; border-left: 1px solid var(--ptt-border, #ddd); padding-left: 8px; }
.ptt-alerts-head { display: flex; gap: 6px; align-items: center; font-weight: 600; margin-bottom: 4px; position: sticky; top: 0; background: var(--ptt-bg, #fff); }
.ptt-alert-count { display: flex; gap: 4px; flex-wrap: wrap; }
.ptt-alert-empty { color: var(--ptt-fg3, #6b6b6b); }
.ptt-alert-list { list-style: none; margin: 0; padding: 0; }
.ptt-alert { border-left: 4px solid var(--ptt-neutral, #6c6c6c); padding: 4px 6px; margin-bottom: 6px; background: var(--ptt-surface, #f7f7f7); cursor: pointer; border-radius: 2px; }
.ptt-alert:focus { outline: 2px solid var(--ptt-focus, #1f77b4); }
.ptt-alert-top { display: flex; flex-wrap: wrap; gap: 6px; align-items: center; }
.ptt-rule { font-size: 11px; }
.ptt-step, .ptt-state { font-size: 11px; color: var(--ptt-fg2, #555); }
.ptt-state.active { color: var(--ptt-danger, #cb2526); font-weight: 600; }
.ptt-mute { margin-left: auto; font-size: 11px; padding: 0 6px; cursor: pointer; }
.ptt-msg { margin: 2px 0; }
.ptt-evidence { display: flex; flex-wrap: wrap; gap: 2px 10px; font-size: 11px; font-family: var(--jp-code-font-family, monospace); }
.ptt-action, .ptt-ref { font-size: 12px; margin-top: 2px; }
.ptt-ref a { color: var(--ptt-link, #1a6fd0); text-decoration: underline; }
.ptt-resolved { border-left-style: dashed; }
.ptt-resolved .ptt-msg { color: var(--ptt-fg2, #555); }
.ptt-muted { opacity: .45; } /* muted by the user: inactive, so exempt from the contrast minimum */
.ptt-muted .ptt-msg { white-space: nowrap; overflow: hidden; text-overflow: ellipsis; }
.ptt-ranks { margin-top: 8px; }
.ptt-ranks-head { display: flex; gap: 8px; align-items: center; font-weight: 600; }
.ptt-stragglers { color: var(--ptt-danger, #cb2526); font-weight: 600; }
`;
