"""Baseline overlay: real tiny DPO runs compared with a healthy baseline (live, recorded, widget data, report)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ptt_nb import DiagnosticsCallback, load_run
from ptt_nb.monitor._baseline import Baseline, _rolling_band, load_baseline
from ptt_nb.rules._catalog_baseline import attach_baseline, compare_alerts
from ptt_nb.tiny import make_trainer

from .conftest import events_of

STEPS = 30


def _train(root: Path, seed: int, baseline: Path | None = None, steps: int = STEPS, **config) -> DiagnosticsCallback:
    callback = DiagnosticsCallback(run_dir=root / "run", widget=False, console=False, baseline=baseline)
    make_trainer("dpo", root, callbacks=[callback], max_steps=steps, seed=seed, **config).train()
    return callback


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A healthy DPO baseline (seed 0); its healthy twin (seed 1); the lr=0 run (seed 1) that never learns;
    a twin with twice the batch size (aligned by samples). All against the baseline."""
    root = tmp_path_factory.mktemp("baseline")
    _train(root / "base", 0)
    base = root / "base" / "run"
    return {
        "base": base,
        "twin": _train(root / "twin", 1, base),
        "lr0": _train(root / "lr0", 1, base, learning_rate=0.0),
        "bs8": _train(root / "bs8", 1, base, steps=15, per_device_train_batch_size=8),
    }


def _band_alerts(monitor) -> list:
    return [a for a in monitor.alerts if a.rule.startswith("baseline_band:") and a.state == "active"]


def test_healthy_twin_is_silent_and_lr0_fires_with_the_numbers(runs):
    twin, lr0 = runs["twin"].monitor, runs["lr0"].monitor
    assert twin.baseline.align_by == "step" and twin.baseline.scale == 1.0
    assert {r for r in twin.engine.states if r.startswith("baseline_band:")} >= {
        "baseline_band:loss", "baseline_band:rewards/margins", "baseline_band:rewards/accuracies"}
    assert _band_alerts(twin) == []
    fired = {a.rule: a for a in _band_alerts(lr0)}
    acc = fired["baseline_band:rewards/accuracies"]
    # lr=0: the policy never moves, every reward is 0: accuracy 0 where the baseline separates pairs
    assert acc.evidence["value"] == 0.0 and acc.evidence["baseline_q10"] >= 0.5
    assert acc.evidence["band_widths_away"] > 2 and acc.severity == "medium"
    assert acc.step >= 3 and "band" in acc.message and "aligned by step" in acc.message
    assert "baseline_band:rewards/margins" in fired
    # recorded in the run folder like any alert
    assert any(a["rule"] == acc.rule for a in events_of(runs["lr0"].run_dir, "alert"))


def test_other_batch_size_is_aligned_by_samples(runs):
    bs8 = runs["bs8"].monitor
    assert bs8.baseline.align_by == "samples" and bs8.baseline.scale == 0.5
    assert "4 samples/step vs 8 here" in bs8.baseline.note
    # baseline step 30 (120 samples) sits at this run's step 15 (120 samples)
    assert bs8.baseline.x("loss")[-1] == 15.0
    assert _band_alerts(bs8) == []


def test_recorded_runs_compare_like_the_live_ones(runs):
    """The band rules over a loaded run (report --baseline, %ptt compare) fire at the live run's steps."""
    live = [(a.rule, a.step) for a in _band_alerts(runs["lr0"].monitor)]
    monitor = load_run(runs["lr0"].run_dir)
    baseline = load_baseline(runs["base"], monitor.run.config)
    replayed = [(a.rule, a.step) for a in compare_alerts(monitor, baseline) if a.state == "active"]
    assert sorted(replayed) == sorted(live)
    twin = load_run(runs["twin"].run_dir)
    attach_baseline(twin, runs["base"])
    assert _band_alerts(twin) == [] and twin.baseline is not None


def test_band_and_alignment_units():
    values = np.arange(20, dtype=float)
    band = _rolling_band(values, 5)
    assert band.shape == (20, 3)
    assert band[10].tolist() == pytest.approx(np.quantile(values[5:16], (0.1, 0.5, 0.9)).tolist())
    assert band[0, 1] == pytest.approx(np.median(values[0:6]))  # edges use the points they have
    b = Baseline(run_id="b", path="b", algorithm="dpo", config={"per_device_train_batch_size": 2,
                                                               "gradient_accumulation_steps": 4}, world_size=1)
    assert b.align({"per_device_train_batch_size": 4}) == "samples" and b.scale == 2.0
    assert b.align({}) == "step" and "batch sizes unknown" in b.note


def test_baseline_series_travel_in_the_widget_data(runs):
    from ptt_nb.notebook._stream import Stream

    sent: list[tuple[dict, list[bytes]]] = []
    monitor = runs["bs8"].monitor
    stream = Stream(monitor, lambda content, buffers: sent.append((content, buffers)))
    stream.send_init()
    stream.close()
    content, buffers = sent[-1]
    entries = content["series"]
    base = [(i, e) for i, e in enumerate(entries) if e["split"] == "baseline:train"]
    assert {e["key"] for _, e in base} >= {"loss", "rewards/margins"}
    i, entry = next((i, e) for i, e in base if e["key"] == "loss")
    steps = np.frombuffer(buffers[2 * i], dtype=np.float64)
    assert entry["mode"] == "replace" and entry["n"] == len(steps) == 30
    assert steps[-1] == 15.0  # aligned: baseline step 30 at this run's step 15
    json.dumps(content)  # JSON-safe


def test_report_draws_the_baseline_and_the_cli_takes_it(runs, tmp_path, capsys):
    pytest.importorskip("bokeh")
    from ptt_nb.cli import main

    out = tmp_path / "report.html"
    assert main(["report", str(runs["lr0"].run_dir), "--baseline", str(runs["base"]), "-o", str(out)]) == 0
    html = out.read_text()
    assert "loss (baseline)" in html and "baseline-note" in html and "aligned by step" in html
    assert "baseline_band:rewards/accuracies" in html
    plain = tmp_path / "plain.html"
    assert main(["report", str(runs["twin"].run_dir), "-o", str(plain)]) == 0
    assert "(baseline)" not in plain.read_text()
    capsys.readouterr()
    assert main(["report", str(runs["twin"].run_dir), "--baseline", str(tmp_path / "nope")]) != 0
    err = capsys.readouterr().err
    assert "--baseline" in err and "nope" in err and "Traceback" not in err


def test_a_missing_baseline_fails_before_training(tmp_path):
    with pytest.raises(FileNotFoundError, match="baseline .*nope"):
        DiagnosticsCallback(baseline=tmp_path / "nope")


def test_ptt_compare_magic(runs):
    pytest.importorskip("IPython")
    from IPython import get_ipython
    from IPython.testing.globalipapp import start_ipython
    from IPython.utils.capture import capture_output

    from ptt_nb.notebook._session import SESSION

    shell = start_ipython() or get_ipython()  # None when another test module started it
    shell.run_line_magic("load_ext", "ptt_nb")
    try:
        with capture_output() as cap:
            result = shell.run_cell(f"%ptt compare {runs['lr0'].run_dir} {runs['base']} --no-show")
        assert result.error_in_exec is None, cap.stderr
        assert "against run (aligned by step):" in cap.stdout and "rewards/accuracies = 0" in cap.stdout
        assert SESSION.monitor.baseline is not None and SESSION.source == "replay"
        with capture_output() as cap:
            result = shell.run_cell(f"%ptt compare {runs['lr0'].run_dir}")
        assert "at least one baseline" in cap.stderr
    finally:
        shell.run_line_magic("unload_ext", "ptt_nb")
        SESSION.__init__()
