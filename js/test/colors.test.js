import { describe, it, expect } from "vitest";
import palette from "../../ptt_nb/palette.json";
import { SERIES, SEVERITY, SEVERITY_RANK, STATE } from "../src/colors.js";

describe("colors", () => {
  it("come from ptt_nb/palette.json, the file the Python side reads", () => {
    expect(SEVERITY).toEqual(palette.severity);
    expect(STATE).toEqual(palette.state);
    expect([...SERIES]).toEqual(palette.series);
  });

  it("rank severities most severe first, as ptt_nb.events.Severity does", () => {
    expect(SEVERITY_RANK).toEqual({ critical: 0, high: 1, medium: 2, low: 3 });
  });

  it("keep red and orange, the alert colours, out of the series", () => {
    expect(SERIES).not.toContain(SEVERITY.critical);
    expect(SERIES).not.toContain(SEVERITY.high);
  });
});
