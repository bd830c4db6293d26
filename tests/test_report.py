"""The static HTML report: offline, complete (panels, alerts, heatmap, postmortem), escaped, and small."""

from __future__ import annotations

import json
import math
import re
import time
from pathlib import Path

import pytest

from ptt_nb.events import SEVERITIES, Alert, RankStats, RunStart, Severity
from ptt_nb.monitor._monitor import Monitor
from ptt_nb.sinks import _postmortem as postmortem
from ptt_nb.sinks._report import (
    MAX_ALERT_ROWS,
    MAX_POINTS,
    SEVERITY_COLOURS,
    build_roots,
    rank_matrix,
    write_at_end,
    write_report,
)
from ptt_nb.sinks._writer import RunWriter
from ptt_nb.sources._reader import load_run

pytest.importorskip("bokeh")

EVIL = "<script>alert('pwned')</script>"
TRACEBACK = ('Traceback (most recent call last):\n  File "train.py", line 12, in <module>\n    trainer.train()\n'
             '  File "model.py", line 99, in forward\n    raise RuntimeError("injected <boom>")\n'
             "RuntimeError: injected <boom>\n")
CRIT_STEP = 150
MEDIUM_STEP, MEDIUM_END = 40, 60


def make_synthetic_monitor(steps: int = 200, world_size: int = 4, run_dir: Path | None = None,
                           rank_every: int = 10, nan_at: int | None = 190) -> Monitor:
    """A DPO-shaped run with eval points, a NaN, three alerts (one resolved), rank stats and a crash."""
    monitor = Monitor(evaluate=False)
    writer = None
    if run_dir is not None:
        writer = RunWriter(run_dir)
        monitor.subscribe(writer)
        monitor.run_dir = Path(run_dir)
    monitor.start(RunStart(run_id="synthetic-run", trainer="DPOTrainer", algorithm="dpo",
                           config={"learning_rate": 1e-4, "beta": 0.1, "output_dir": "<img src=x onerror=alert(1)>"},
                           versions={"trl": "1.16.0", "torch": "2.13.0"}, world_size=world_size,
                           max_steps=steps + 50))
    for step in range(1, steps + 1):
        loss = math.log(2) * math.exp(-step / (steps / 2))
        values = {"loss": loss, "grad_norm": 1.0 + 0.5 * math.sin(step / 7), "learning_rate": 1e-4,
                  "rewards/accuracies": min(1.0, step / steps + 0.4), "rewards/margins": step / steps,
                  "rewards/chosen": 0.01 * step, "rewards/rejected": -0.01 * step, "entropy": 3.5}
        if nan_at is not None and step == nan_at:
            values["grad_norm"] = float("nan")
        monitor.log(step, values)
        if step % 50 == 0:
            monitor.log(step, {"eval_loss": loss * 1.1, "eval_rewards/accuracies": 0.7}, split="eval")
        if rank_every and step % rank_every == 0:
            compute = [100.0 + (200.0 if r == 2 else 0.0) + step * 0.01 for r in range(world_size)]
            monitor.add_rank_stats(RankStats(step=step, world_size=world_size, per_rank={
                "compute_ms": compute, "wait_ms": [300.0 - c + 100 for c in compute],
                "mem_gb": [10.0 + r for r in range(world_size)]}))
        if step == MEDIUM_STEP:
            monitor.add_alert(Alert(id=f"pref_margin_inverted@{step}", rule="pref_margin_inverted", severity="medium",
                                    step=step, message="Margins went negative " + EVIL, action="Check the columns",
                                    reference="Rafailov et al. 2023", url="javascript:alert(1)",
                                    evidence={"rewards/margins": -0.2}, panels=["pref_margin"]))
        if step == MEDIUM_END:
            monitor.add_alert(Alert(id=f"pref_margin_inverted@{MEDIUM_STEP}", rule="pref_margin_inverted",
                                    severity="medium", step=MEDIUM_STEP, message="Margins went negative " + EVIL,
                                    action="Check the columns", reference="Rafailov et al. 2023",
                                    url="javascript:alert(1)", evidence={"rewards/margins": -0.2},
                                    state="resolved", resolved_step=MEDIUM_END, panels=["pref_margin"]))
        if step == CRIT_STEP:
            monitor.add_alert(Alert(id=f"nonfinite_values@{step}", rule="nonfinite_values", severity="critical",
                                    step=step, message="Non-finite grad_norm", action="Use bf16, lower the LR",
                                    reference="Micikevicius et al. 2018", url="https://arxiv.org/abs/1710.03740",
                                    evidence={"grad_norm": float("nan")},
                                    panels=["optim_grad_norm", "dpo_loss", "no_such_panel"]))
    if run_dir is not None:
        data = postmortem.build(monitor, "exception", step=steps, traceback=TRACEBACK,
                                detail="RuntimeError: injected <boom>")
        postmortem.write(run_dir, data)
        monitor.postmortem = data
    monitor.finish("exception", step=steps, detail="RuntimeError: injected <boom>")
    if writer is not None:
        writer.close()
    return monitor


def make_synthetic_run(run_dir: Path, **kwargs) -> Path:
    make_synthetic_monitor(run_dir=run_dir, **kwargs)
    return run_dir


def assert_offline(text: str) -> None:
    """No script or stylesheet may come from the network: every resource is inline."""
    assert not re.search(r"<script[^>]*\bsrc\s*=", text, re.I), "a <script src=...> would need a download"
    assert not re.search(r"<link[^>]*\bhref\s*=\s*['\"]?(https?:)?//", text, re.I), "a remote <link>"
    assert not re.search(r"@import\s+url\(\s*['\"]?https?:", text, re.I)


@pytest.fixture(scope="module")
def dpo_run(tmp_path_factory) -> Path:
    """A real tiny DPO run (TRL DPOTrainer, 6 steps on CPU) recorded by the callback."""
    from ptt_nb import DiagnosticsCallback
    from ptt_nb.tiny import make_trainer

    work = tmp_path_factory.mktemp("dpo")
    run_dir = work / "run"
    trainer = make_trainer("dpo", work, max_steps=6, callbacks=[DiagnosticsCallback(run_dir=run_dir, widget=False,
                                                                                     console=False)])
    trainer.train()
    return run_dir


def test_report_from_real_dpo_run(dpo_run: Path, tmp_path: Path) -> None:
    out = write_report(dpo_run, tmp_path / "r.html")
    text = out.read_text(encoding="utf-8")
    assert_offline(text)
    assert "Bokeh" in text and "application/json" in text  # BokehJS and the document are inline
    for title in ("Loss", "Win rate (rewards/accuracies)", "Reward margin", "Implicit rewards", "Gradient norm",
                  "Learning rate"):
        assert f"<li>{title}</li>" in text, title
    assert "DPOTrainer" in text and "finished" in text and "6 / 6" in text
    monitor = load_run(dpo_run)
    # every alert episode the real run recorded (config-time rules may fire on a tiny model) is in the table
    assert text.count('class="alert-row"') == len(monitor.alerts)
    assert all(f'data-rule="{a.rule}"' in text for a in monitor.alerts)
    assert "No alert fired" in text or monitor.alerts
    assert "Postmortem" not in text  # a clean run has none
    roots = build_roots(monitor)
    loss = roots["panels"].select_one({"name": "panel:dpo_loss"})
    assert loss is not None and loss.title.text == "Loss"
    # the ln 2 reference line of the DPO loss panel is drawn
    assert any(getattr(r, "location", None) == pytest.approx(math.log(2)) for r in loss.center)
    assert roots["panels"].select_one({"name": "panel:optim_grad_norm"}).y_scale.__class__.__name__ == "LogScale"


def test_report_synthetic_run_alerts_postmortem_heatmap(tmp_path: Path) -> None:
    run_dir = make_synthetic_run(tmp_path / "run")
    out = write_report(run_dir, tmp_path / "report.html")
    text = out.read_text(encoding="utf-8")
    assert_offline(text)
    # alerts table: both episodes, every column
    assert text.count('class="alert-row"') == 2
    assert "nonfinite_values" in text and "pref_margin_inverted" in text
    assert 'badge sev-critical' in text and 'badge sev-medium' in text
    assert f"{MEDIUM_STEP} → {MEDIUM_END}" in text and "resolved" in text
    assert "grad_norm=NaN" in text and "Use bf16, lower the LR" in text
    assert '<a href="https://arxiv.org/abs/1710.03740"' in text
    assert 'href="javascript:' not in text  # an unsafe recorded URL is shown as text, never as a link
    # everything recorded is escaped in the hand-written HTML
    assert EVIL not in text and "<img src=x" not in text
    assert html_escaped(EVIL) in text
    # postmortem with the traceback
    assert "<h2>Postmortem</h2>" in text and "injected &lt;boom&gt;" in text
    assert "<pre class='traceback'>" in text and 'File &quot;model.py&quot;, line 99' in text
    # heatmap of the per-rank metrics
    assert "Per-rank heatmap" in text
    roots = build_roots(load_run(run_dir))
    assert {"panels", "ranks", "other"} <= set(roots)
    assert roots["ranks"].select_one({"name": "ranks:compute_ms"}) is not None
    assert roots["ranks"].select_one({"name": "ranks:wait_ms"}) is not None


def text_of(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def html_escaped(text: str) -> str:
    import html

    return html.escape(text, quote=True)


def test_alert_markers_eval_dashes_and_nonfinite_markers(tmp_path: Path) -> None:
    from bokeh.models import GlyphRenderer

    def glyph_data(fig, name: str) -> dict:
        found = [r for r in fig.renderers if isinstance(r, GlyphRenderer) and r.name == name]
        return dict(found[0].data_source.data) if found else {}

    monitor = make_synthetic_monitor()
    roots = build_roots(monitor)
    grad = roots["panels"].select_one({"name": "panel:optim_grad_norm"})
    assert list(glyph_data(grad, "alert_lines")["x"]) == [CRIT_STEP]
    assert list(glyph_data(grad, "alert_lines")["line_color"]) == [SEVERITY_COLOURS["critical"]]
    # the critical episode is still active: shaded up to the last step
    assert (list(glyph_data(grad, "alert_episodes")["x0"]), list(glyph_data(grad, "alert_episodes")["x1"])) == \
        ([CRIT_STEP], [200])
    markers = [r for r in grad.renderers if isinstance(r, GlyphRenderer) and "rule" in r.data_source.data]
    assert len(markers) == 1 and list(markers[0].data_source.data["x"]) == [CRIT_STEP]
    nonfinite = [r for r in grad.renderers if isinstance(r, GlyphRenderer) and "value" in r.data_source.data]
    assert nonfinite and list(nonfinite[0].data_source.data["x"]) == [190]
    # the resolved medium episode is shaded from its start to its end, on the margin panel only
    margin = roots["panels"].select_one({"name": "panel:pref_margin"})
    episodes = glyph_data(margin, "alert_episodes")
    assert (list(episodes["x0"]), list(episodes["x1"])) == ([MEDIUM_STEP], [MEDIUM_END])
    assert glyph_data(roots["panels"].select_one({"name": "panel:pref_accuracy"}), "alert_lines") == {}
    # train solid, eval dashed
    loss = roots["panels"].select_one({"name": "panel:dpo_loss"})
    dashes = {r.name: r.glyph.line_dash for r in loss.renderers if isinstance(r, GlyphRenderer)
              and r.glyph.__class__.__name__ == "Line"}
    assert dashes["loss"] == [] and dashes["loss (eval)"] == [6]  # bokeh stores "dashed" as [6]


def test_rank_matrix_bins_and_missing_ranks() -> None:
    stats = [RankStats(step=s, world_size=3, per_rank={"compute_ms": [1.0, 2.0, float(s)]}) for s in range(1000)]
    stats.append(RankStats(step=1000, world_size=3, per_rank={"wait_ms": [1.0, 1.0, 1.0]}))
    mat, steps = rank_matrix(stats, "compute_ms", max_columns=100)
    assert mat.shape == (3, 100) and steps.shape == (100,)
    assert mat[0, 0] == 1.0 and mat[1, 50] == 2.0
    assert mat[2, 0] == pytest.approx(sum(range(10)) / 10)  # mean over the binned intervals
    mat, _ = rank_matrix(stats[-2:], "compute_ms")
    assert math.isnan(mat[0, 1])  # the last interval has no compute_ms


def test_100k_step_run_stays_small(tmp_path: Path) -> None:
    monitor = Monitor(evaluate=False)
    monitor.start(RunStart(run_id="long", trainer="GRPOTrainer", algorithm="grpo", max_steps=100_000))
    keys = ("loss", "grad_norm", "learning_rate", "reward", "reward_std", "frac_reward_zero_std", "kl", "entropy",
            "completions/mean_length", "clip_ratio/region_mean")
    for step in range(1, 100_001):
        x = step / 1000
        monitor.log(step, {k: math.sin(x + i) + 2.0 + (50.0 if step == 77_777 else 0.0) for i, k in enumerate(keys)})
    for step in range(30, 100_001, 30):  # a flapping rule: 3333 episodes
        monitor.add_alert(Alert(id=f"r@{step}", rule="rl_entropy_out_of_band", severity="high", step=step,
                                message="entropy out of band", state="resolved", resolved_step=step + 10,
                                evidence={"entropy": 0.1}, panels=["rl_entropy"]))
    t0 = time.perf_counter()
    out = write_report(monitor, tmp_path / "long.html")
    elapsed = time.perf_counter() - t0
    size = out.stat().st_size
    assert size < 3_000_000, f"report is {size} bytes"
    roots = build_roots(monitor)
    reward = roots["panels"].select_one({"name": "panel:rl_reward"})
    line = next(r for r in reward.renderers if r.name == "reward")
    xs = line.data_source.data["x"]
    assert len(xs) <= MAX_POINTS + 2
    assert 77_777 in set(int(v) for v in xs)  # the one-step spike survives decimation
    assert out.read_text().count('class="alert-row"') == MAX_ALERT_ROWS and "2333 later episodes" in text_of(out)
    assert elapsed < 30, elapsed


def test_write_at_end_writes_into_the_run_folder(tmp_path: Path) -> None:
    monitor = make_synthetic_monitor(steps=20, rank_every=0, nan_at=None, run_dir=tmp_path / "run")
    path = write_at_end(monitor)
    assert path == tmp_path / "run" / "report.html" and path.stat().st_size > 100_000
    assert write_at_end(Monitor()) is None  # nothing to report, and no exception
    broken = make_synthetic_monitor(steps=5, rank_every=0, nan_at=None)
    broken.run_dir = tmp_path / "file-not-folder"
    broken.run_dir.write_text("x")
    assert write_at_end(broken) is None and "could not write the HTML report" in broken.warnings[-1]


def test_report_of_an_unfinished_run_without_end_or_metrics(tmp_path: Path) -> None:
    monitor = Monitor(evaluate=False)
    monitor.start(RunStart(run_id="empty", trainer="SFTTrainer", algorithm="sft"))
    text = write_report(monitor, tmp_path / "e.html").read_text()
    assert "No metric was logged" in text and "no run_end event" in text
    with pytest.raises(ValueError):
        write_report(Monitor(), tmp_path / "none.html")


def test_one_palette_for_the_widget_the_report_and_the_notebook_fallback() -> None:
    """palette.json is the only source of colours: Severity, the report, the fallback and the JS bundle agree."""
    from ptt_nb.notebook._static_fallback import SEVERITY_COLORS, summary_html
    from ptt_nb.sinks._report_html import CSS

    root = Path(__file__).resolve().parents[1]
    palette = json.loads((root / "ptt_nb" / "palette.json").read_text(encoding="utf-8"))
    assert tuple(palette["severity"]) == SEVERITIES == tuple(s.value for s in Severity)  # the file is in rank order
    assert [s.rank for s in Severity] == list(range(len(SEVERITIES)))
    bundle = (root / "ptt_nb" / "static" / "widget.js").read_text(encoding="utf-8")
    for sev in Severity:
        colour = palette["severity"][sev.value]
        assert sev.colour == colour == SEVERITY_COLOURS[sev] == SEVERITY_COLORS[sev]
        assert f'{sev.value}:"{colour}"' in bundle, f"rebuild the bundle (cd js && npm run build): {sev.value}"
        assert f".sev-{sev.value}{{background:{colour}}}" in CSS
    for name, colour in palette["state"].items():
        assert f'{name}:"{colour}"' in bundle
    fallback = summary_html(make_synthetic_monitor(steps=200, rank_every=0))
    assert Severity.CRITICAL.colour in fallback and Severity.MEDIUM.colour in fallback
