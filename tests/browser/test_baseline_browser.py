"""``%ptt compare RUN BASE`` in a real JupyterLab: the baseline's line is drawn (dashed, dimmed) beside the
run's in the panel, and the band alert reaches the feed."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from ptt_nb.events import Metrics, RunEnd, RunStart
from ptt_nb.sinks._writer import RunWriter

from .conftest import JupyterServer, Page, write_notebook

pytestmark = pytest.mark.browser

VIEWS = "[...document.querySelectorAll('.ptt-root')].map(r => r.parentElement.__ptt_view).filter(Boolean)"
BASELINE_LINE = """(pid) => {
  const v = VIEWS[0]; if (!v) return null;
  const p = v.grid.panels.get(pid); if (!p) return null;
  p.cell.scrollIntoView({block: "nearest"});
  const ln = p.lines.find(l => l.base && l.base.source && l.base.source.data.x.length > 0);
  if (!ln) return null;
  const g = p.glyphs.map(x => x.renderer).find(r => r.data_source === ln.base.source).glyph;
  const x = ln.base.source.data.x;
  const val = (q) => (q != null && q.value !== undefined ? q.value : q);  // BokehJS keeps {value: ...}
  return {n: x.length, last: x[x.length - 1], own: ln.source.data.x.length, alpha: val(g.line_alpha),
          dash: val(g.line_dash)};
}""".replace("VIEWS", VIEWS)
DEBUG = """() => { const v = VIEWS[0]; if (!v) return "no view"; return [...v.grid.panels.values()].map(
  p => [p.id, p.lines.map(l => [l.key, l.split, !!l.base, l.source ? l.source.data.x.length : -1])]); }
""".replace("VIEWS", VIEWS)


def _recorded(run_dir: Path, name: str, loss, steps: int = 200) -> None:
    writer = RunWriter(run_dir)
    t = 1_700_000_000.0
    writer(RunStart(run_id=name, trainer="DPOTrainer", algorithm="dpo", max_steps=steps,
                    config={"per_device_train_batch_size": 4}, t=t))
    for s in range(1, steps + 1):
        writer(Metrics(step=s, split="train", t=t + s, values={"loss": loss(s), "learning_rate": 1e-4}))
    writer(RunEnd(reason="finished", step=steps, t=t + steps + 1))
    writer.close()


def test_lab_compare_draws_the_baseline_line(lab_server: JupyterServer, page: Page) -> None:
    root = lab_server.root
    _recorded(root / "cmp-base", "base", lambda s: 0.69 * 0.99 ** s + 0.002 * math.sin(s))
    _recorded(root / "cmp-run", "stuck", lambda s: 0.6931 + 0.001 * math.sin(s))  # never learns
    write_notebook(root / "compare.ipynb", [
        f"%load_ext ptt_nb\n%ptt compare {str(root / 'cmp-run')} {str(root / 'cmp-base')}",
    ])
    page.open_notebook(lab_server, "compare.ipynb")
    page.run_all()
    try:
        drawn = page.wait_js(f"() => ({BASELINE_LINE})('dpo_loss')", timeout=60)
    except Exception:
        print("DEBUG", page.page.evaluate(DEBUG), "ERRORS", page.errors)
        raise
    assert drawn["n"] == 200 and drawn["last"] == 200 and drawn["own"] == 200, drawn
    print("baseline glyph", drawn)
    assert drawn["alpha"] < 0.6 and drawn["dash"], drawn
    page.page.locator('.ptt-alert[data-rule="baseline_band:loss"]').first.wait_for(state="attached",
                                                                                 timeout=30_000)
    page.screenshot("baseline")
    page.assert_no_console_errors()
