"""The dashboard follows the page's theme, readable in each (WCAG AA, 4.5:1), measured in a real browser:
JupyterLab light and dark (a recorded run shown with ``show``), and a plain page (the widget harness) with an
emulated ``prefers-color-scheme: dark``, then VS Code's ``body.vscode-dark`` with ``--vscode-*`` variables, and
back, switched live on the same view (the MutationObserver path)."""

from __future__ import annotations

import functools
import http.server
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ptt_nb.events import Alert, Metrics, RunEnd, RunStart
from ptt_nb.sinks._writer import RunWriter

from .conftest import ROOT, JupyterServer, Page, write_notebook

pytestmark = pytest.mark.browser
DOCS_IMG = ROOT / "docs" / "img"

# Contrast of every visible text element of the panels, header and alert feed against the background it
# is painted on (ancestors' backgrounds composited), and of each BokehJS figure's text colours against its
# background fill (canvas text cannot be read back from the DOM: the model values are what BokehJS draws).
CONTRAST = """() => {
  const parse = (s) => { const m = s.match(/rgba?\\(([^)]+)\\)/); if (!m) return null;
    const p = m[1].split(/[\\s,/]+/).filter(Boolean).map(Number);
    return {r: p[0], g: p[1], b: p[2], a: p.length > 3 ? p[3] : 1}; };
  const over = (f, b) => ({r: f.r * f.a + b.r * (1 - f.a), g: f.g * f.a + b.g * (1 - f.a),
    b: f.b * f.a + b.b * (1 - f.a), a: 1});
  const lum = (c) => { const l = (v) => { v /= 255; return v <= 0.04045 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4; };
    return 0.2126 * l(c.r) + 0.7152 * l(c.g) + 0.0722 * l(c.b); };
  const ratio = (a, b) => { const [x, y] = [lum(a), lum(b)].sort((p, q) => q - p); return (x + 0.05) / (y + 0.05); };
  const bgOf = (el) => { const layers = []; for (let e = el; e; e = e.parentElement) {
      const c = parse(getComputedStyle(e).backgroundColor); if (c && c.a > 0) { layers.push(c); if (c.a >= 1) break; } }
    let bg = {r: 255, g: 255, b: 255, a: 1}; for (const c of layers.reverse()) bg = over(c, bg); return bg; };
  const hex = (s) => { const c = document.createElement('span'); c.style.color = s; document.body.append(c);
    const v = parse(getComputedStyle(c).color); c.remove(); return v; };
  const root = document.querySelector('.ptt-root');
  const out = {theme: root.dataset.pttTheme, host: root.dataset.pttThemeHost, texts: [], plots: []};
  for (const el of root.querySelectorAll('*')) {
    if (!el.offsetParent || el.closest('.ptt-muted') || el.closest('.bk-Canvas, .bk-Toolbar, .bk-tooltip')) continue;
    if (![...el.childNodes].some(n => n.nodeType === 3 && n.textContent.trim())) continue;
    const cs = getComputedStyle(el); const fg = over(parse(cs.color), bgOf(el));
    out.texts.push({text: el.textContent.trim().slice(0, 40), cls: el.className, ratio: ratio(fg, bgOf(el)),
      feed: !!el.closest('.ptt-alerts'), panel: !!el.closest('.ptt-panels')});
  }
  const view = root.parentElement.__ptt_view;
  for (const p of view.grid.panels.values()) { const f = p.fig; if (!f || !p.embed || p.embed === 'pending') continue;
    const bg = hex(f.background_fill_color);
    for (const ax of f.axes) for (const k of ['major_label_text_color', 'axis_label_text_color'])
      out.plots.push({panel: p.id, what: k, ratio: ratio(hex(ax[k]), bg)});
    out.plots.push({panel: p.id, what: 'title', ratio: ratio(hex(f.title.text_color), bg)});
    out.plots.push({panel: p.id, what: 'background', bg: f.background_fill_color});
  }
  return out;
}"""


def _check(result: dict, theme: str) -> None:
    assert result["theme"] == theme, result["theme"]
    texts, plots = result["texts"], [p for p in result["plots"] if "ratio" in p]
    assert any(t["feed"] for t in texts) and any(t["cls"] == "ptt-msg" for t in texts), "no alert text measured"
    assert len(plots) >= 9, plots  # three built panels at least, axis tick + label text and title each
    low = [t for t in texts + plots if t["ratio"] < 4.5]
    assert low == [], f"text under 4.5:1 in {theme}: {low[:8]}"


def _run(run_dir: Path, steps: int = 300) -> None:
    """A recorded DPO run with one alert of every severity so the feed shows each colour."""
    w = RunWriter(run_dir)
    t = 1_700_000_000.0
    w(RunStart(run_id="theme", trainer="DPOTrainer", algorithm="dpo", max_steps=steps, t=t))
    for s in range(1, steps + 1):
        w(Metrics(step=s, split="train", t=t + s, values={
            "loss": 0.69 * 0.995 ** s, "rewards/margins": s / steps, "rewards/accuracies": min(1.0, 0.5 + s / steps),
            "grad_norm": 1.0 + (s % 7) / 10, "learning_rate": 1e-4}))
    for i, sev in enumerate(["critical", "high", "medium", "low"]):
        w(Alert(id=f"a{i}", rule=f"rule_{sev}", severity=sev, step=50 * (i + 1), t=t + 50 * (i + 1),
                message=f"A {sev} alert: reward margin collapsed while loss kept falling.", evidence={"ratio": 3},
                action="Check the data.", reference="Paper 2025", url="https://arxiv.org/abs/2505.05713"))
    w(RunEnd(reason="finished", step=steps, t=t + steps + 1))
    w.close()


def _settle(page: Page) -> None:
    page.page.locator(".ptt-root").first.wait_for(timeout=120_000)
    page.page.evaluate("() => document.querySelector('.ptt-root').scrollIntoView()")
    page.wait_js("() => { const v = document.querySelector('.ptt-root')?.parentElement.__ptt_view; return v && "
                 "[...v.grid.panels.values()].filter(p => p.embed && p.embed !== 'pending').length >= 3 && "
                 "document.querySelectorAll('.ptt-alert').length >= 4; }", timeout=90)
    page.page.wait_for_timeout(800)  # BokehJS paints after embedding


def test_lab_light_and_dark_text_contrast(lab_server: JupyterServer, page: Page) -> None:
    run_dir = lab_server.root / "theme-run"
    _run(run_dir)
    write_notebook(lab_server.root / "theme.ipynb", [
        f"import ptt_nb\nfrom ptt_nb.notebook._widget import show\nshow(ptt_nb.load_run({str(run_dir)!r}))"])
    page.open_notebook(lab_server, "theme.ipynb")
    page.run_all()
    _settle(page)
    light = page.page.evaluate(CONTRAST)
    _check(light, "light")
    assert light["host"] == "jupyter"
    DOCS_IMG.mkdir(parents=True, exist_ok=True)
    page.page.locator(".jp-OutputArea-output").first.screenshot(path=str(DOCS_IMG / "dashboard-lab-light.png"))
    # Lab's own theme switch (the command behind Settings > Theme): the same view re-colours in place
    page.page.evaluate("() => document.querySelector('.ptt-root').dataset.before = 'same-view'")
    page.page.keyboard.press("Escape")
    page.page.locator(".lm-MenuBar-item", has_text="Settings").first.click()
    page.page.locator(".lm-Menu-itemLabel", has_text="Theme").first.hover()
    page.page.locator(".lm-Menu-itemLabel", has_text="JupyterLab Dark").first.click()
    page.wait_js("() => document.body.dataset.jpThemeLight === 'false' && "
                 "document.querySelector('.ptt-root').dataset.pttTheme === 'dark'", timeout=60)
    page.page.wait_for_timeout(1000)
    dark = page.page.evaluate(CONTRAST)
    _check(dark, "dark")
    assert page.page.evaluate("() => document.querySelector('.ptt-root').dataset.before") == "same-view"
    assert {p["bg"] for p in dark["plots"] if "bg" in p} == {"#111111"}  # Lab dark's --jp-layout-color0
    page.page.locator(".jp-OutputArea-output").first.screenshot(path=str(DOCS_IMG / "dashboard-lab-dark.png"))
    page.assert_no_console_errors()


@pytest.fixture(scope="module")
def harness_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The repository root over HTTP (the widget harness renders the bundle with a fake model, no Jupyter)."""
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(ROOT))
    handler.log_message = lambda *a, **k: None  # type: ignore[method-assign]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/js/harness/index.html?demo=1"
    finally:
        server.shutdown()
        server.server_close()


def _plain_settle(page: Any) -> None:
    page.wait_for_function("() => window.demo && document.querySelectorAll('.ptt-alert').length > 0 && "
                           "[...window.demo.view.grid.panels.values()].filter(p => p.embed && p.embed !== 'pending')"
                           ".length >= 3", timeout=60_000, polling=200)
    page.wait_for_timeout(500)


def test_plain_page_prefers_dark_then_vscode_classes(browser: Any, harness_url: str) -> None:
    context = browser.new_context(viewport={"width": 1400, "height": 1000}, color_scheme="dark")
    try:
        pg = context.new_page()
        pg.goto(harness_url)
        _plain_settle(pg)
        page = Page(pg, "plain")
        dark = pg.evaluate(CONTRAST)
        _check(dark, "dark")
        assert dark["host"] == "media"
        # the OS scheme flips: the matchMedia listener re-colours the same view
        pg.emulate_media(color_scheme="light")
        page.wait_js("() => document.querySelector('.ptt-root').dataset.pttTheme === 'light'", timeout=10)
        _check(pg.evaluate(CONTRAST), "light")
        # VS Code: body classes and --vscode-* variables on <html>; widget output wrapped in white (#7161)
        pg.evaluate("""() => {
          const wrap = document.createElement('div'); wrap.className = 'cell-output-ipywidget-background';
          wrap.style.background = 'white'; const w = document.getElementById('widget');
          w.parentElement.insertBefore(wrap, w); wrap.append(w);
          const s = document.documentElement.style;
          s.setProperty('--vscode-editor-background', '#1f1f1f');
          s.setProperty('--vscode-editor-foreground', '#cccccc');
          s.setProperty('--vscode-descriptionForeground', 'rgba(204, 204, 204, 0.6)');
          document.body.classList.add('vscode-dark');
        }""")
        page.wait_js("() => document.querySelector('.ptt-root').dataset.pttThemeHost === 'vscode'", timeout=10)
        pg.wait_for_timeout(500)
        vs = pg.evaluate(CONTRAST)
        _check(vs, "dark")
        assert {p["bg"] for p in vs["plots"] if "bg" in p} == {"#1f1f1f"}
        assert pg.evaluate("() => getComputedStyle(document.querySelector('.cell-output-ipywidget-background'))"
                           ".backgroundColor") == "rgb(31, 31, 31)"
        pg.evaluate("() => { document.body.classList.replace('vscode-dark', 'vscode-high-contrast'); "
                    "document.documentElement.style.setProperty('--vscode-editor-background', '#000000'); }")
        page.wait_js("() => document.querySelector('.ptt-root').dataset.pttTheme === 'dark-hc'", timeout=10)
        pg.wait_for_timeout(300)
        hc = pg.evaluate(CONTRAST)
        assert min(t["ratio"] for t in hc["texts"] + [p for p in hc["plots"] if "ratio" in p]) >= 7, "high contrast"
        # removing the view disconnects the observer: a later theme change touches nothing
        pg.evaluate("() => { window.demo.cleanup ? window.demo.cleanup() : window.demo.view.destroy(); }")
        pg.evaluate("() => document.body.classList.replace('vscode-high-contrast', 'vscode-light')")
        pg.wait_for_timeout(400)
        assert pg.evaluate("() => getComputedStyle(document.querySelector('.cell-output-ipywidget-background'))"
                           ".backgroundColor") == "rgb(255, 255, 255)"  # the wrapper's own colour back
        page.assert_no_console_errors()
    finally:
        context.close()
