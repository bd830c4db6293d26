"""The static report in a real headless Chromium, opened from a file:// URL: plots render, nothing errors,
and the page makes no request other than the file itself (fully offline)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from ptt_nb.sinks._report import build_roots, write_report
from ptt_nb.sources._reader import load_run
from tests.test_report import make_synthetic_run

pytestmark = pytest.mark.browser

RECORDED = Path(__file__).resolve().parents[1] / "data" / "recorded_run"  # a real tiny DPO run that crashed


def _figure_count(run_dir: Path) -> int:
    from bokeh.plotting import figure

    return sum(len(list(root.select({"type": figure}))) for root in build_roots(load_run(run_dir)).values())


@pytest.mark.parametrize("source", ["synthetic", "recorded"])
def test_report_renders_offline_in_chromium(browser: Any, tmp_path: Path, source: str) -> None:
    run_dir = make_synthetic_run(tmp_path / "run") if source == "synthetic" else RECORDED
    report = write_report(run_dir, tmp_path / "report.html")
    url = report.resolve().as_uri()
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    requests: list[str] = []
    errors: list[str] = []
    dialogs: list[str] = []
    page.on("request", lambda r: requests.append(r.url))
    page.on("console", lambda m: errors.append(f"{m.type}: {m.text}") if m.type == "error" else None)
    page.on("pageerror", lambda exc: errors.append(f"pageerror: {exc}"))
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    try:
        page.goto(url)
        page.wait_for_function("() => window.Bokeh && Bokeh.documents.length > 0 && "
                               "Bokeh.documents[0].roots().length > 0 && Bokeh.documents[0].is_idle",
                               timeout=30_000, polling=100)
        roots = page.evaluate("() => Bokeh.documents[0].roots().length")
        figures = page.evaluate("() => [...Bokeh.index.all_views()].filter(v => v.model.type === 'Figure').length")
        canvases = page.locator("canvas").count()  # Playwright's locator pierces Bokeh's shadow roots
        rows = page.locator("tr.alert-row").count()
        has_postmortem = page.locator("pre.traceback").count()
        ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / f"report-{source}.png"), full_page=True)
    finally:
        context.close()
    expected_roots = 3 if source == "synthetic" else 2  # panels, other (+ per-rank heatmap)
    assert roots == expected_roots
    assert figures == _figure_count(run_dir) and figures >= 6
    assert canvases >= figures
    assert rows == (2 if source == "synthetic" else 0)
    assert has_postmortem == 1
    assert errors == [], errors
    assert dialogs == []  # the <script> planted in an alert message stayed text
    assert requests == [url], requests  # the file itself and nothing else: no CDN, no fonts, no fetch
