// One place for colours so the feed, the plot markers and the badges agree.

export const SEVERITY = {
  critical: "#d62728",
  high: "#ff7f0e",
  medium: "#c9a100",
  low: "#1f77b4",
};
export const SEVERITY_RANK = { critical: 0, high: 1, medium: 2, low: 3 };

export const STATE = {
  running: "#2ca02c",
  stopped_by_user: "#7f7f7f",
  auto_stopped: "#ff7f0e",
  crashed: "#d62728",
  finished: "#1f77b4",
  replay: "#9467bd",
};

// Category10 minus red/orange, which mean "alert" in this UI.
export const SERIES = ["#1f77b4", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#7f7f7f", "#bcbd22"];
