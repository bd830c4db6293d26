"""`make demo` opens notebooks/quickstart.ipynb in JupyterLab: Run All draws the healthy run's 30 steps in its
dashboard, and the second dashboard shows the lr_schedule_anomaly alert and the auto-stop, with no console error.

Uses the session's one Playwright instance (tests/browser/conftest.py): a second sync_playwright() in the same
process fails while that one is alive.
"""

from __future__ import annotations

import shutil

import pytest

from tests.conftest import REPO

from .conftest import JupyterServer, Page

pytestmark = [pytest.mark.slow, pytest.mark.browser]

# points drawn in one panel of the nth dashboard (as test_dashboard_browser.py reads them)
VIEWS = "[...document.querySelectorAll('.ptt-root')].map(r => r.parentElement.__ptt_view).filter(Boolean)"
PANEL_POINTS = f"""([pid, nth]) => {{
  const v = {VIEWS}[nth ?? 0]; if (!v) return 0;
  const p = v.grid.panels.get(pid); if (!p) return 0;
  p.cell.scrollIntoView({{block: "nearest"}});  // panels off screen are drawn lazily
  return Math.max(0, ...p.lines.map(l => (l.source ? l.source.data.x.length : 0)));
}}"""


def test_quickstart_in_jupyterlab(lab_server: JupyterServer, page: Page) -> None:
    shutil.copy(REPO / "notebooks" / "quickstart.ipynb", lab_server.root / "quickstart.ipynb")
    page.open_notebook(lab_server, "quickstart.ipynb")
    page.run_all()
    page.page.locator('.ptt-alert[data-rule="lr_schedule_anomaly"]').first.wait_for(timeout=300_000)
    page.wait_js("() => [...document.querySelectorAll('.ptt-badge')].some(b => /auto-stopped/.test(b.textContent))",
                 timeout=60)
    assert page.wait_js(f"() => ({PANEL_POINTS})(['dpo_loss', 0]) >= 30", timeout=60)
    badges = [b.inner_text() for b in page.page.locator(".ptt-badge").all()]
    assert badges == ["finished", "auto-stopped"], badges
    page.page.locator('.ptt-alert[data-rule="lr_schedule_anomaly"]').first.scroll_into_view_if_needed()
    page.screenshot("auto-stopped")
    page.assert_no_console_errors()
