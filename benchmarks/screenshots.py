"""Screenshots for the README and the GPU run records, taken from real JupyterLab in headless Chromium.

Why a script: the pictures must show what the tool really draws, so they come from the same machinery as the
browser tests (tests/browser/conftest.py: a Lab server on a temp root, /usr/bin/chromium via Playwright).

    python benchmarks/screenshots.py            # all three
    python benchmarks/screenshots.py dashboard  # only docs/img/dashboard.png

1. docs/img/dashboard.png: a live tiny DPO run (40 steps, DiagnosticsCallback(stop_on_critical=True)) with a NaN
   grad norm injected at step 30, so the alert feed holds a critical card and the badge says it stopped itself.
2. benchmarks/gpu/<run>/heatmap.png: a recorded NCCL straggler run (ptt_nb.load_run + widget.show), cropped to
   the rank heatmap section.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.browser.conftest import (  # noqa: E402 - the repo root must be importable first
    CHROMIUM,
    CHROMIUM_ARGS,
    JupyterServer,
    Page,
    write_notebook,
)

WIDTH = 1400
HEIGHT = 2200  # the whole dashboard fits: Lab scrolls the notebook inside its own panel, element shots clip to it
VIEWS = "[...document.querySelectorAll('.ptt-root')].map(r => r.parentElement.__ptt_view).filter(Boolean)"
PANEL_POINTS = f"""([pid]) => {{
  const v = {VIEWS}[0]; if (!v) return 0;
  const p = v.grid.panels.get(pid); if (!p) return 0;
  return Math.max(0, ...p.lines.map(l => (l.source ? l.source.data.x.length : 0)));
}}"""
# scroll every panel into view in turn (panels off screen are drawn lazily); how many hold points
DRAWN = f"""() => {{
  const v = {VIEWS}[0]; if (!v) return 0;
  let n = 0;
  for (const p of v.grid.panels.values()) {{
    p.cell.scrollIntoView({{block: "nearest"}});
    if (p.lines.some(l => l.source && l.source.data.x.length > 0)) n += 1;
  }}
  return n;
}}"""


DPO = """\
import logging, warnings
warnings.filterwarnings("ignore")
for name in ("trl", "transformers", "datasets", "accelerate"):
    logging.getLogger(name).setLevel(logging.ERROR)
from transformers.trainer_callback import PrinterCallback
from ptt_nb import DiagnosticsCallback
from ptt_nb.tiny import make_trainer, nan_grad_norm_at

# a diverging run, provoked: the grad norm logged at step 30 becomes NaN
diag = DiagnosticsCallback(run_dir={run_dir!r}, stop_on_critical=True)
trainer = make_trainer("dpo", {workdir!r}, callbacks=[nan_grad_norm_at(30), diag], max_steps=40)
trainer.remove_callback(PrinterCallback)  # the dashboard replaces the per-step log dicts
trainer.train()
"""

LOAD = """\
import ptt_nb
from ptt_nb.notebook._widget import show
monitor = ptt_nb.load_run({run_dir!r})
show(monitor);
"""


def _save(locator: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    locator.scroll_into_view_if_needed()
    time.sleep(0.5)  # let BokehJS finish the frame after scrolling
    locator.screenshot(path=str(path), animations="disabled")
    print(f"{path.relative_to(ROOT)}: {path.stat().st_size / 1024:.0f} KiB")


def _hide_lab_chrome(page: Page) -> None:
    """Give the notebook the whole width: no left side bar (its file browser would narrow the dashboard)."""
    page.page.locator(".jp-Notebook .jp-Cell").first.wait_for(timeout=60_000)
    page.page.locator(".jp-NotebookPanel-toolbar").first.click()  # focus the notebook (command mode)
    page.page.keyboard.press("Control+b")  # Lab's "toggle left side bar"


def _draw_all(page: Page) -> int:
    """Scroll through the panels until the number drawn stops growing; returns it."""
    drawn, last = page.page.evaluate(DRAWN), -1
    while drawn != last:
        time.sleep(1.0)
        drawn, last = page.page.evaluate(DRAWN), drawn
    return drawn


def dashboard(server: JupyterServer, page: Page) -> None:
    root = server.root
    run_dir = root / "dash-run"
    write_notebook(root / "dash.ipynb", [DPO.format(run_dir=str(run_dir), workdir=str(root / "dash-work"))])
    page.open_notebook(server, "dash.ipynb")
    _hide_lab_chrome(page)
    page.run_all()
    page.page.locator(".ptt-root").first.wait_for(timeout=180_000)
    page.page.locator('.ptt-alert[data-rule="nonfinite_values"]').first.wait_for(timeout=300_000)
    page.wait_js("() => [...document.querySelectorAll('.ptt-badge')].some(b => /stop|crit/i.test(b.textContent))",
                 timeout=120)
    page.wait_js(f"() => ({PANEL_POINTS})(['dpo_loss']) >= 25", timeout=120)
    print('panels drawn:', _draw_all(page))
    page.page.wait_for_function("() => document.querySelector('.jp-Notebook .jp-InputPrompt')"
                                ".textContent.includes('[1]')", timeout=120_000)  # the cell has ended
    _save(page.page.locator(".ptt-root").first, ROOT / "docs" / "img" / "dashboard.png")
    page.assert_no_console_errors()


def heatmap(server: JupyterServer, page: Page, run: str, metric: str | None = None) -> None:
    src = ROOT / "benchmarks" / "gpu" / run
    name = f"{run}.ipynb"
    write_notebook(server.root / name, [LOAD.format(run_dir=str(src))])
    page.open_notebook(server, name)
    _hide_lab_chrome(page)
    page.run_all()
    page.page.locator(".ptt-root").first.wait_for(timeout=120_000)
    section = page.page.locator(".ptt-ranks").first
    section.wait_for(state="visible", timeout=60_000)
    section.scroll_into_view_if_needed()
    page.wait_js("() => document.querySelector('.ptt-ranks select')?.options.length >= 1", timeout=60)
    section.locator("canvas").first.wait_for(timeout=60_000)  # BokehJS draws in a shadow root: locators pierce it
    print('panels drawn:', _draw_all(page))
    if metric:
        section.locator("select").first.select_option(metric)
        time.sleep(1.0)
    print(run, "stragglers:", section.locator(".ptt-stragglers").inner_text().strip())
    _save(section, src / (f"heatmap-{metric}.png" if metric else "heatmap.png"))
    page.assert_no_console_errors()


def main(which: list[str]) -> None:
    from playwright.sync_api import sync_playwright

    which = which or ["dashboard", "h200x4_straggler", "h100x2_straggler"]
    with tempfile.TemporaryDirectory(prefix="ptt-shots-") as tmp:
        root = Path(tmp) / "root"
        root.mkdir()
        server = JupyterServer("lab", root)
        try:
            with sync_playwright() as pw:
                browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
                for item in which:
                    context = browser.new_context(viewport={"width": WIDTH, "height": HEIGHT})
                    page = Page(context.new_page(), f"screenshot-{item}")
                    try:
                        if item == "dashboard":
                            dashboard(server, page)
                        else:
                            run, _, metric = item.partition(":")  # e.g. h100x2_straggler:wait_ms
                            heatmap(server, page, run, metric or None)
                    except Exception:
                        page.screenshot("failed")  # test-artifacts/screenshot-<item>-failed.png
                        raise
                    finally:
                        context.close()
                        server.shutdown_kernels()
                browser.close()
        finally:
            server.stop()


if __name__ == "__main__":
    main(sys.argv[1:])
