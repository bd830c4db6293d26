"""``%ptt train`` in real JupyterLab: the dashboard shown by the magic fills while a tiny DPO run trains in the
background and another cell runs, a ``%%ptt`` rule added mid-run draws its backtest markers on the live panels and its
live alert reaches the feed, ``%ptt stop`` ends the run."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from ptt_nb.sources._reader import read_events

from .conftest import JupyterServer, Page, write_notebook

pytestmark = pytest.mark.browser

VIEWS = "[...document.querySelectorAll('.ptt-root')].map(r => r.parentElement.__ptt_view).filter(Boolean)"
PANEL_POINTS = f"""([pid, nth]) => {{
  const v = {VIEWS}[nth ?? 0]; if (!v) return 0;
  const p = v.grid.panels.get(pid); if (!p) return 0;
  p.cell.scrollIntoView({{block: "nearest"}});
  return Math.max(0, ...p.lines.map(l => (l.source ? l.source.data.x.length : 0)));
}}"""

SETUP = """\
import logging, time, warnings
warnings.filterwarnings("ignore")
logging.getLogger("transformers").setLevel(logging.ERROR)
from transformers.trainer_callback import PrinterCallback
from ptt_nb import DiagnosticsCallback
from ptt_nb.notebook._magics import wait_job
from ptt_nb.notebook._session import SESSION
from ptt_nb.tiny import make_trainer
%load_ext ptt_nb
trainer = make_trainer("dpo", {workdir!r}, callbacks=[DiagnosticsCallback(run_dir={run_dir!r})], max_steps=3000)
trainer.remove_callback(PrinterCallback)
"""

# the %%ptt cell backtests on the run so far: give it some history (the rule needs step > 3)
WAIT = """\
t0 = time.monotonic()
while SESSION.monitor.history.last_step < 10 and time.monotonic() - t0 < 120:
    time.sleep(0.1)
"""

# the live dashboard's backtest markers of one rule on one panel: [[step, until], ...]
BACKTEST_MARKERS = f"""([pid, rule]) => {{
  const v = {VIEWS}[0]; if (!v) return [];
  const p = v.grid.panels.get(pid); if (!p || !p.btMarkers) return [];
  const d = p.btMarkers.data;
  return d.x.map((x, i) => [x, d.until[i], d.rule[i]]).filter(m => m[2] === rule).map(m => [m[0], m[1]]);
}}"""

RULE = """\
%%ptt
- id: margin_positive
  when: "`rewards/margins` > 0 and step > 3"
  severity: low
  panels: [pref_margin]
"""

# another cell runs while training goes on; it holds back `%ptt stop` until the test has seen the live view
BUSY = """\
import os
t0 = time.monotonic()
while (SESSION.monitor.step < 25 or not os.path.exists({seen!r})) and time.monotonic() - t0 < 120:
    time.sleep(0.1)
print("busy cell saw step", SESSION.monitor.step)
"""


def test_lab_ptt_train_dashboard_live_rule_and_stop(lab_server: JupyterServer, page: Page) -> None:
    root = lab_server.root
    run_dir = root / "bg-run"
    seen = root / "live-view-checked"
    write_notebook(root / "bg.ipynb", [
        SETUP.format(workdir=str(root / "bg-work"), run_dir=str(run_dir)),
        "%ptt train trainer",
        WAIT,
        RULE,
        BUSY.format(seen=str(seen)),
        "%ptt stop",
        "wait_job(120)\nprint('final', SESSION.monitor.state, SESSION.monitor.step)",
    ])
    page.page.goto(lab_server.url("/lab/tree/bg.ipynb"))
    page.run_all()
    page.page.locator(".ptt-root").first.wait_for(timeout=180_000)
    # the dashboard displayed by %ptt train fills while later cells run
    page.wait_js(f"() => ({PANEL_POINTS})(['dpo_loss', 0]) >= 10", timeout=120)
    # the %%ptt cell's backtest: its table in the cell, the same steps as dashed markers on the live panel it names
    summary = page.page.locator(".jp-OutputArea-output", has_text="margin_positive: would have fired").first
    summary.wait_for(timeout=120_000)
    first = int(re.search(r"first at step (\d+)", summary.inner_text()).group(1))
    assert first > 3
    markers, badge = page.wait_js(
        f"() => {{ const m = ({BACKTEST_MARKERS})(['pref_margin', 'margin_positive']); "
        "return m.length ? [m, document.querySelector('.ptt-badge').textContent] : null; }", timeout=30)
    assert markers[0][0] == first and all(step > 3 for step, _ in markers)
    assert "running" in badge  # drawn on the live dashboard while it trains
    assert page.page.evaluate(f"() => ({BACKTEST_MARKERS})(['dpo_loss', 'margin_positive'])") == []  # its panel only
    card = page.page.locator('.ptt-alert[data-rule="margin_positive"]').first
    card.wait_for(timeout=120_000)  # ... and then it fires live
    page.screenshot("live")
    seen.touch()  # the busy cell may end now, and `%ptt stop` run
    # backtest markers are not alerts: the feed holds only what happened, and they survived the live alert's redraw
    assert page.page.evaluate(f"() => {VIEWS}[0].feed.all().every(a => a.state !== 'backtest')")
    # (a panel rebuilt meanwhile, e.g. for a new key, redraws its markers at its next repaint: wait for that)
    again = page.wait_js(f"() => {{ const m = ({BACKTEST_MARKERS})(['pref_margin', 'margin_positive']); "
                         "return m.length ? m : null; }", timeout=15)
    assert again[0][0] == first
    page.page.locator(".jp-OutputArea-output", has_text="final stopped_by_user").wait_for(timeout=180_000)
    page.wait_js("() => [...document.querySelectorAll('.ptt-badge')].some(b => /stopped by user/.test("
                 "b.textContent))", timeout=30)
    page.screenshot("stopped")
    busy = page.page.locator(".jp-OutputArea-output", has_text="busy cell saw step").first.inner_text()
    assert int(busy.split()[-1]) >= 25
    events, problems = read_events(run_dir)
    assert not problems
    end = events[-1]
    assert end.kind == "run_end" and end.reason == "user_stop" and end.step < 3000
    fired = [e for e in events if e.kind == "alert" and e.rule == "margin_positive"]
    assert fired and fired[0].step > 3  # added mid-run, evaluated on the training thread, recorded
    assert Path(run_dir, "postmortem.json").exists()
    page.assert_no_console_errors()
    time.sleep(0.1)
