// One place for colours so the feed, the plot markers and the badges agree. The values live in
// ptt_nb/palette.json, shared with the Python side (the HTML report, the static notebook summary), and
// esbuild inlines that file into the bundle.
import palette from "../../ptt_nb/palette.json";

// severity -> colour, most severe first (the file lists them in rank order)
export const SEVERITY = Object.freeze({ ...palette.severity });
export const SEVERITY_RANK = Object.freeze(Object.fromEntries(Object.keys(palette.severity).map((s, i) => [s, i])));

// run state -> badge colour
export const STATE = Object.freeze({ ...palette.state });

// Category10 minus red/orange, which mean "alert" in this UI.
export const SERIES = Object.freeze([...palette.series]);

// Per-theme variants (light, dark) for the widget; js/src/theme.js picks one and checks its contrast
// against the page's real background. The top-level colours above stay the report's (light page).
export const THEMES = Object.freeze({ ...palette.themes });
