"""``%ptt`` / ``%%ptt`` driven through a real IPython shell (in-process), on the recorded run folder.

The background ``%ptt train`` and the live dashboard are tested in a real Jupyter kernel in
``test_magics_kernel.py``.
"""

from __future__ import annotations

import shutil
import threading
from pathlib import Path

import pytest
import yaml

pytest.importorskip("IPython")

from IPython import get_ipython  # noqa: E402
from IPython.core.error import UsageError  # noqa: E402
from IPython.testing.globalipapp import start_ipython  # noqa: E402
from IPython.utils.capture import capture_output  # noqa: E402

from ptt_nb.events import Control  # noqa: E402
from ptt_nb.notebook import _magics as magics  # noqa: E402
from ptt_nb.notebook._session import SESSION, Applier  # noqa: E402
from ptt_nb.rules._custom import load_rule_file  # noqa: E402
from ptt_nb.sources._reader import load_run, read_events  # noqa: E402

RECORDED = Path(__file__).parent / "data" / "recorded_run"

# grad_norm in the recorded run: < 0.8 at step 6 only, then from step 14 to the end (step 23).
LOW_GRAD = "- id: low_grad\n  when: grad_norm < 0.8\n  severity: low\n  panels: [optim_grad_norm]\n"


@pytest.fixture(scope="module")
def ip():
    shell = start_ipython() or get_ipython()  # None when another test module started it
    shell.run_line_magic("load_ext", "ptt_nb")
    yield shell
    shell.run_line_magic("unload_ext", "ptt_nb")


@pytest.fixture(autouse=True)
def fresh_session():
    if SESSION.watcher is not None:
        SESSION.watcher.stop()
    SESSION.__init__()
    yield
    if SESSION.watcher is not None:
        SESSION.watcher.stop()
    SESSION.__init__()


def run(ip, cell: str):
    """Run a cell; returns (stdout, stderr, error)."""
    with capture_output(display=True) as cap:
        result = ip.run_cell(cell)
    shown = "\n".join(repr_text(o) for o in cap.outputs)
    return cap.stdout + shown, cap.stderr, result.error_in_exec


def repr_text(output) -> str:
    return output.data.get("text/plain", "") if hasattr(output, "data") else str(output)


def user_error(ip, cell: str) -> str:
    """A user mistake: a UsageError whose short message is shown, and no Python traceback."""
    out, err, exc = run(ip, cell)
    assert isinstance(exc, UsageError), (cell, out, err, exc)
    assert "Traceback" not in err and "Traceback" not in out, err
    assert err.startswith("UsageError: "), err
    return err


def live_like(tmp_path) -> object:
    """The recorded run re-evaluated into a Monitor with a rule engine, made current as a "live" run with no
    feeding thread (so changes apply at once); the monitor keeps a copy of the run folder."""
    run_dir = tmp_path / "run"
    shutil.copytree(RECORDED, run_dir)
    monitor = load_run(run_dir, evaluate=True)
    SESSION.set_current(monitor, "live")
    return monitor


# -- help and argument errors -----------------------------------------------------------------------------------------
def test_help_lists_every_subcommand_without_traceback(ip):
    for cell in ("%ptt --help", "%ptt", "%ptt help"):
        out, err, exc = run(ip, cell)
        assert exc is None and err == ""
        for sub in ("show", "status", "rules", "mute", "unmute", "stop", "train", "watch", "replay", "report"):
            assert sub in out
    out, err, exc = run(ip, "%ptt watch --help")
    assert exc is None and "--interval" in out and "RUN_DIR" in out
    out, err, exc = run(ip, "%%ptt --help\nloss > 1\n")
    assert exc is None and "--dry-run" in out and "--save" in out


@pytest.mark.parametrize("cell, words", [
    ("%ptt bogus", ["invalid choice: 'bogus'"]),
    ("%ptt mute", ["the following arguments are required: RULE"]),
    ("%ptt rules", ["no run yet"]),
    ("%ptt show", ["no run yet"]),
    ("%ptt stop", ["nothing is training"]),
    ("%ptt report", ["no run yet"]),
    ("%ptt replay /nonexistent/run", ["/nonexistent/run", "events.jsonl"]),
    ("%ptt report /nonexistent/run", ["does not exist"]),
    ("%ptt watch", ["give the run folder"]),
    ("%ptt watch --stop", ["not following"]),
    ("%ptt train", ["required: TRAINER"]),
    ("%ptt train no_such_trainer", ["no variable 'no_such_trainer'"]),
    ("%ptt train 1+1", ["not a variable name"]),
    ("%ptt status 'unclosed", ["cannot parse"]),
    ("%%ptt --severity urgent\ngrad_norm > 1\n", ["invalid choice: 'urgent'"]),
    ("%%ptt\n\n", ["the cell is empty"]),
])
def test_user_mistakes_get_a_short_message(ip, cell, words):
    err = user_error(ip, cell)
    for w in words:
        assert w in err, err


def test_train_refuses_what_is_not_a_trainer(ip):
    ip.user_ns["not_a_trainer"] = [1, 2]
    err = user_error(ip, "%ptt train not_a_trainer")
    assert "is a list, not a transformers/TRL Trainer" in err
    err = user_error(ip, "%ptt train not_a_trainer.nope")
    assert "has no attribute 'nope'" in err


def test_watch_refuses_a_file(ip, tmp_path):
    f = tmp_path / "x.txt"
    f.write_text("")
    assert "is a file" in user_error(ip, f"%ptt watch {f}")


# -- replay, status, rules, report ------------------------------------------------------------------------------------
def test_replay_reports_the_crash_and_its_postmortem(ip):
    out, err, exc = run(ip, f"%ptt replay {RECORDED} --no-show")
    assert exc is None, err
    assert "DPOTrainer (dpo)" in out and "crashed" in out and "step 23/30" in out
    assert "postmortem.json (exception at step 24: RuntimeError: simulated crash at step 24" in out
    assert SESSION.source == "replay" and SESSION.monitor.state == "crashed"
    out, err, exc = run(ip, "%ptt status")
    assert exc is None and "[replay]: crashed" in out and str(RECORDED) in out
    out, err, exc = run(ip, "%ptt rules")
    assert exc is None and "replayed run" in out
    assert "its rules are not running here" in user_error(ip, "%ptt mute nonfinite_values")


def test_rules_table_states_and_mute(ip, tmp_path):
    monitor = live_like(tmp_path)
    out, err, exc = run(ip, "%ptt rules")
    assert exc is None, err
    header = out.splitlines()[0].split()
    assert header == ["id", "severity", "state", "fired", "muted", "source"]
    row = next(line.split() for line in out.splitlines() if line.startswith("nonfinite_values"))
    assert row[:5] == ["nonfinite_values", "critical", "idle", "0", "no"]
    out, err, exc = run(ip, "%ptt mute nonfinite_values")
    assert exc is None and "nonfinite_values: muted" in out
    assert monitor.engine.states["nonfinite_values"].muted
    assert isinstance(monitor.controls[-1], Control) and monitor.controls[-1].action == "mute"
    row = next(line.split() for line in run(ip, "%ptt rules")[0].splitlines() if line.startswith("nonfinite"))
    assert row[4] == "yes"
    out, err, exc = run(ip, "%ptt unmute nonfinite_values")
    assert exc is None and not monitor.engine.states["nonfinite_values"].muted
    err = user_error(ip, "%ptt mute nonfinite_value")
    assert "no rule 'nonfinite_value'" in err and "did you mean 'nonfinite_values'" in err


def test_rule_states_active_dormant_disabled(ip, tmp_path):
    monitor = live_like(tmp_path)
    run(ip, "%%ptt\n- id: never_logged\n  when: kl > 1\n- id: grad_low\n  when: grad_norm < 0.8\n"
            "- id: broken\n  when: log(loss - 1) > 0\n")
    # feed one more log point: grad_low is open (0.7 < 0.8), never_logged never saw `kl`, broken raised
    monitor.log(24, {"loss": 0.6, "grad_norm": 0.7})
    rows = {r[0]: r for r in (line.split() for line in run(ip, "%ptt rules")[0].splitlines()[2:])}
    assert rows["grad_low"][2] == "active" and rows["grad_low"][3] == "1"
    assert rows["never_logged"][2] == "dormant"
    assert rows["broken"][2] == "disabled"
    assert rows["grad_low"][5] == "<%%ptt"  # source of a cell rule (first word)


def test_status_of_no_run_and_report(ip, tmp_path):
    out, err, exc = run(ip, "%ptt status")
    assert exc is None and "no current run" in out
    pytest.importorskip("bokeh")
    out_file = tmp_path / "r" / "report.html"
    out, err, exc = run(ip, f"%ptt report {RECORDED} -o {out_file}")
    assert exc is None, err
    assert f"report written: {out_file}" in out and out_file.stat().st_size > 10_000
    run(ip, f"%ptt replay {RECORDED} --no-show")
    out, err, exc = run(ip, f"%ptt report -o {tmp_path / 'cur.html'}")
    assert exc is None and (tmp_path / "cur.html").exists()


# -- %%ptt: backtest, add, replace, dry run, save ---------------------------------------------------------------------
def test_backtest_on_the_recorded_run_gives_the_exact_firing_steps(ip):
    run(ip, f"%ptt replay {RECORDED} --no-show")
    out, err, exc = run(ip, "%%ptt --dry-run\n" + LOW_GRAD)
    assert exc is None, err
    assert "low_grad: would have fired 2 times, first at step 6 (steps 6, 14)" in out
    lines = [line.split() for line in out.splitlines()]
    assert ["6", "7", "low", "value=0.784,", "grad_norm=0.784"] in lines  # episode 6 → resolved at 7
    assert ["14", "-", "low", "value=0.7603,", "grad_norm=0.7603"] in lines  # open until the crash
    assert "dry run: nothing added" in out and SESSION.rules == {}
    # a one-line expression with `for N steps`, and a Python @rule
    out, _, exc = run(ip, "%%ptt --dry-run\n`rewards/margins` > 0.08 for 2 steps\n")
    assert exc is None and "would have fired 1 time, first at step 21 (steps 21)" in out
    out, _, exc = run(ip, "%%ptt --dry-run\n@rule(id='loss_low', keys=['loss'])\ndef loss_low(ctx):\n"
                          "    return ctx.values['loss'] < 0.66\n")
    assert exc is None and "loss_low: would have fired 2 times, first at step 14 (steps 14, 18)" in out
    out, _, exc = run(ip, "%%ptt --dry-run\n- id: margins_low\n  when: \"mean(`rewards/margins`, 10) < 0.05\"\n"
                          "  message: \"margins at {value:.3f}\"\n")
    assert exc is None and "margins_low: would have fired 1 time, first at step 10" in out
    assert "first message: margins at 0.026" in out
    out, _, exc = run(ip, "%%ptt --dry-run\nloss > 5\n")
    assert exc is None and "would not have fired on this run (23 log points checked)" in out


def test_backtest_html_has_markers_at_the_firing_steps(ip):
    from ptt_nb.notebook._cell_rules import BacktestView
    from ptt_nb.rules._backtest import BacktestResult, Firing

    monitor = load_run(RECORDED)
    view = BacktestView("low_grad", BacktestResult("low_grad", [Firing(6, 7, "low", ""), Firing(14, None, "low", "")],
                                                   keys=("grad_norm",)), monitor.history)
    page = view._repr_html_()
    assert page.count("<line ") == 2 and "fires at step 6" in page and "fires at step 14" in page
    assert "<polyline" in page and "grad_norm" in page


def test_add_then_replace_by_id_in_the_live_engine(ip, tmp_path):
    monitor = live_like(tmp_path)
    out, err, exc = run(ip, "%%ptt\n" + LOW_GRAD)
    assert exc is None, err
    assert "added low_grad to the current run and to this session's later runs" in out
    state = monitor.engine.states["low_grad"]
    assert state.rule.severity == "low" and state.rule.source.startswith("<%%ptt cell>")
    monitor.log(24, {"grad_norm": 0.5, "loss": 0.6})
    assert [a.rule for a in monitor.alerts if a.rule == "low_grad"] == ["low_grad"]
    out, err, exc = run(ip, "%%ptt --severity high\n" + LOW_GRAD.replace("0.8", "0.3"))
    assert exc is None, err
    rules = [rid for rid in monitor.engine.states if rid == "low_grad"]
    assert rules == ["low_grad"]
    replaced = monitor.engine.states["low_grad"]
    assert replaced is not state and replaced.rule.severity == "high" and replaced.rule.when == "grad_norm < 0.3"
    assert list(SESSION.rules) == ["low_grad"]
    # a later run of this session gets a fresh instance of the rule
    fresh = SESSION.rules["low_grad"].make()
    assert fresh is not replaced.rule and fresh.severity == "high"
    out, err, exc = run(ip, "%ptt remove low_grad")
    assert exc is None and "low_grad" not in monitor.engine.states and SESSION.rules == {}
    assert "not a rule added with %%ptt" in user_error(ip, "%ptt remove nonfinite_values")


def test_a_config_time_cell_rule_added_to_a_started_run_is_checked_at_once(ip, tmp_path):
    monitor = live_like(tmp_path)
    assert monitor.ctx.config.get("learning_rate")
    out, err, exc = run(ip, "%%ptt\n- id: lr_set\n  when: \"config.learning_rate > 0\"\n  severity: low\n")
    assert exc is None and "added lr_set to the current run" in out, err
    assert [a.rule for a in monitor.alerts if a.rule == "lr_set"] == ["lr_set"]


def test_dry_run_changes_nothing(ip, tmp_path):
    monitor = live_like(tmp_path)
    before = set(monitor.engine.states)
    out, err, exc = run(ip, "%%ptt --dry-run\n" + LOW_GRAD)
    assert exc is None and "dry run: nothing added" in out
    assert set(monitor.engine.states) == before and SESSION.rules == {}


def test_cell_rule_added_while_another_thread_feeds_the_run_waits_for_the_next_log_point(ip, tmp_path):
    """The engine is changed on the feeding thread, between two log points, never in the middle of one."""
    monitor = live_like(tmp_path)
    monitor.end_event = None  # as if still training
    gate, done = threading.Event(), threading.Event()

    def feeder():
        gate.wait(10)
        monitor.log(24, {"grad_norm": 0.5, "loss": 0.6})
        done.set()

    thread = threading.Thread(target=feeder)
    applier = SESSION.applier(monitor)
    assert isinstance(applier, Applier)
    applier.feeder = thread
    thread.start()
    out, err, exc = run(ip, "%%ptt\n" + LOW_GRAD)
    assert exc is None and "from the next log point" in out
    assert "low_grad" not in monitor.engine.states  # queued, not applied from this thread
    assert "add rule low_grad" in run(ip, "%ptt status")[0]
    gate.set()
    assert done.wait(10)
    thread.join()
    assert "low_grad" in monitor.engine.states
    assert any(a.rule == "low_grad" and a.step == 24 for a in monitor.alerts)  # evaluated at that very point


def test_save_appends_to_a_pack_and_the_pack_reloads(ip, tmp_path):
    run(ip, f"%ptt replay {RECORDED} --no-show")
    pack = tmp_path / "rules" / "mine.yaml"
    out, err, exc = run(ip, f"%%ptt --dry-run --save {pack}\n" + LOW_GRAD)
    assert exc is None and f"saved low_grad to {pack}" in out
    pack.write_text("# my rules\n" + pack.read_text())
    out, err, exc = run(ip, f"%%ptt --save {pack}\n`rewards/margins` > 0.08 for 2 steps\n")
    assert exc is None, err
    text = pack.read_text()
    assert text.startswith("# my rules\n")  # appended as text: the comment survives
    rules = load_rule_file(pack)
    assert [r.id for r in rules][0] == "low_grad" and len(rules) == 2
    assert rules[1].when == "`rewards/margins` > 0.08" and rules[1].for_steps == 2
    # the same id again replaces it in the pack (rewritten), and --severity is saved
    out, err, exc = run(ip, f"%%ptt --dry-run --severity critical --save {pack}\n" + LOW_GRAD.replace("0.8", "0.7"))
    assert exc is None, err
    rules = {r.id: r for r in load_rule_file(pack)}
    assert len(rules) == 2 and rules["low_grad"].when == "grad_norm < 0.7"
    assert rules["low_grad"].severity == "critical"
    assert yaml.safe_load(pack.read_text())[0]["panels"] == ["optim_grad_norm"]
    # errors: a Python rule, a non-YAML name, a broken pack
    py = "%%ptt --dry-run --save {}\n@rule(id='r1', keys=['loss'])\ndef r1(ctx):\n    return False\n"
    assert "only rule-language rules" in user_error(ip, py.format(pack))
    assert "must end in .yaml" in user_error(ip, f"%%ptt --dry-run --save {tmp_path / 'x.txt'}\nloss > 1\n")
    bad = tmp_path / "bad.yaml"
    bad.write_text("rules: [\n")
    assert "is not valid YAML" in user_error(ip, f"%%ptt --dry-run --save {bad}\nloss > 1\n")


# -- errors in %%ptt cells point at the cell line and column -------------------------------------------------------
@pytest.mark.parametrize("body, where, words", [
    # the %%ptt line is line 1 of the cell
    ("grad_norm >\n", "line 2, column 12", ["unexpected end of expression"]),
    ("\n\n  mean(loss, 5) >> 1\n", "line 4, column", ["mean(loss, 5) >> 1"]),
    ("- id: a\n  when: loss >\n", "line 3", ["unexpected end of expression"]),
    ("- id: a\n  when: grad_norm < 1\n  severity: lo\n", "line 4, column 13", ["did you mean low?"]),
    ("- id: a\n  when: loss > 1\n  colour: red\n", "line 4", ["colour"]),
    ("- id: a\n  when: `loss > 1\n", "line 3", ["`"]),
    ("@rule(id='r', keys=['loss'])\ndef r(ctx)\n    return True\n", "line 3, column 11", ["SyntaxError"]),
    ("@rule(id='r', keys=['loss'])\ndef r(ctx):\n    return True\nundefined_name + 1\n", "line 5",
     ["NameError", "undefined_name"]),
    ("@rule(id='9bad', keys=['loss'])\ndef r(ctx):\n    return True\n", "line 2", ["'9bad'", "start with a letter"]),
    ("def helper(x):\n    return x\n", None, ["defined no rule"]),
])
def test_cell_errors_point_at_line_and_column(ip, body, where, words):
    err = user_error(ip, "%%ptt --dry-run\n" + body)
    if where:
        assert f"%%ptt: {where}" in err, err
    for w in words:
        assert w in err, err


def test_a_rule_that_raises_in_the_backtest_is_reported_not_raised(ip):
    run(ip, f"%ptt replay {RECORDED} --no-show")
    out, err, exc = run(ip, "%%ptt --dry-run\n@rule(id='boom', keys=['loss'])\ndef boom(ctx):\n    return 1/0\n")
    assert exc is None, err
    assert "boom: the rule failed during the backtest: ZeroDivisionError" in out


# -- watch through the magic -------------------------------------------------------------------------------------------
def test_watch_magic_follows_a_folder_and_stop_stops_following(ip, tmp_path):
    run_dir = tmp_path / "later"
    out, err, exc = run(ip, f"%ptt watch {run_dir} --no-show --interval 0.02")
    assert exc is None, err
    assert "does not exist yet: waiting for it" in out
    run(ip, "%%ptt\n" + LOW_GRAD)  # added before the run even started: applied when its run_start arrives
    shutil.copytree(RECORDED, run_dir)
    watcher = SESSION.watcher
    assert watcher.wait_until_ended(10)
    monitor = SESSION.monitor
    assert monitor is watcher.monitor and monitor.state == "crashed" and monitor.step == 23
    assert [(a.step, a.state) for a in monitor.alerts if a.rule == "low_grad"] == [(6, "resolved"), (14, "active")]
    out, err, exc = run(ip, "%ptt status")
    n_events = len(read_events(RECORDED)[0])
    assert "[watch]: crashed" in out and f"watch: following {run_dir}: {n_events} events" in out
    out, err, exc = run(ip, "%ptt stop")
    assert exc is None and "stopped following" in out and not watcher.running


def test_unload_removes_the_magics(ip):
    ip.run_line_magic("unload_ext", "ptt_nb")
    try:
        assert "ptt" not in ip.magics_manager.magics["line"]
        assert "ptt" not in ip.magics_manager.magics["cell"]
    finally:
        ip.run_line_magic("load_ext", "ptt_nb")
    assert "ptt" in ip.magics_manager.magics["line"]
    assert magics.LINE_HELP.startswith("%ptt")


# -- dashboard ----------------------------------------------------------------------------------------------
def test_show_displays_one_dashboard_per_run(ip):
    pytest.importorskip("anywidget")
    out, err, exc = run(ip, f"%ptt replay {RECORDED}")
    assert exc is None, err
    first = SESSION.dashboard
    assert type(first).__name__ == "Dashboard" and first.monitor is SESSION.monitor
    with capture_output() as cap:
        ip.run_cell("%ptt show")
    assert any("application/vnd.jupyter.widget-view+json" in o.data for o in cap.outputs)
    assert SESSION.dashboard is first  # the same widget, shown again


class FakeDashboard:
    """Stands in for a dashboard that can draw backtest markers (the real widget's API for it may differ)."""

    def __init__(self):
        self.calls = []

    def show_backtest(self, rule_id, alerts):
        self.calls.append((rule_id, alerts))


def test_backtest_firings_are_offered_to_the_dashboard_as_markers_not_alerts(ip):
    run(ip, f"%ptt replay {RECORDED} --no-show")
    SESSION.dashboard = fake = FakeDashboard()
    monitor = SESSION.monitor
    run(ip, "%%ptt --dry-run\n" + LOW_GRAD)
    (rule_id, alerts), = fake.calls
    assert rule_id == "low_grad" and [(a.step, a.resolved_step) for a in alerts] == [(6, 7), (14, None)]
    assert {a.state for a in alerts} == {"backtest"} and alerts[0].panels == ["optim_grad_norm"]
    assert monitor.alerts == []  # never recorded as something that happened
    run(ip, "%%ptt --dry-run\n`rewards/margins` > 0.08\n")  # no panels given: those that plot the key
    ids = fake.calls[-1][1][0].panels
    by_id = {p["id"]: p for p in monitor.panels()}
    assert ids and all(any(s["key"] == "rewards/margins" for s in by_id[i]["series"]) for i in ids)


def test_extension_loads_from_ipython_config(tmp_path):
    """``c.InteractiveShellApp.extensions = ['ptt_nb']`` (here as a command-line option) registers the magics."""
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "IPython", "--no-banner", "--quick",
                           "--InteractiveShellApp.extensions=['ptt_nb']", "-c", "%ptt status"],
                          capture_output=True, text=True, timeout=60, cwd=tmp_path,
                          env={**__import__("os").environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    assert "no current run" in proc.stdout, proc.stdout + proc.stderr


def test_rules_that_ran_elsewhere_show_as_recorded_and_cannot_be_muted_here(ip, tmp_path):
    from ptt_nb.events import Alert

    monitor = live_like(tmp_path)
    SESSION.source = "watch"  # as when following another process's run folder
    monitor.add_alert(Alert(id="writer_rule@5", rule="writer_rule", severity="high", step=5, message="m"))
    row = next(line.split() for line in run(ip, "%ptt rules")[0].splitlines() if line.startswith("writer_rule"))
    assert row == ["writer_rule", "high", "recorded", "1", "-", "recorded"]
    assert "runs in the process writing this run" in user_error(ip, "%ptt mute writer_rule")


def test_snapshot_history_reads_columns_and_queue_without_flushing_the_live_history():
    from ptt_nb.monitor._history import MetricHistory
    from ptt_nb.notebook._magics import snapshot_history

    live = MetricHistory()
    for step in range(1, 134):  # 128 go into the columns at once, 5 stay queued
        live.add(step, "train", {"loss": step / 10, "grad_norm": 1.0})
    live.add(133, "eval", {"eval_loss": 2.0})
    queued = len(getattr(live, "_pending", ()))
    snap = snapshot_history(live)
    assert len(getattr(live, "_pending", ())) == queued  # the live history was not flushed from this thread
    steps, values = snap.get("loss").arrays()
    assert steps.tolist() == list(range(1, 134)) and values[-1] == pytest.approx(13.3)
    assert snap.get("eval_loss", "eval").arrays()[0].tolist() == [133]
    assert snap.latest == {"loss": 13.3, "grad_norm": 1.0} and snap.latest_eval == {"eval_loss": 2.0}
    if hasattr(live, "_pending") and live._pending:
        # a flush on the training thread between our two reads: queued points already in a column count once
        live._pending.insert(0, (128, "train", {"loss": 12.8, "grad_norm": 1.0}, ("loss", "grad_norm")))
        assert snapshot_history(live).get("loss").arrays()[0].tolist() == list(range(1, 134))


def test_marker_panels_come_from_the_panel_specs():
    from ptt_nb.notebook._magics import panel_ids_for

    monitor = load_run(RECORDED)
    assert panel_ids_for(monitor, ("grad_norm",)) == ["optim_grad_norm"]
    assert panel_ids_for(monitor, ("entropy", "epoch")) == ["other:entropy"]  # epoch is bookkeeping: no panel
    every = {p["id"] for p in monitor.panels()}
    assert set(panel_ids_for(monitor, tuple(monitor.history.keys()))) <= every
    assert panel_ids_for(monitor, ("no_such_key",)) == []


@pytest.mark.slow
def test_a_run_trained_in_a_blocking_cell_becomes_current_with_the_session_rules(ip, tmp_path):
    """DiagnosticsCallback registers its run with the magics (one hook in on_train_begin); rules added with
    %%ptt before it started are evaluated in it."""
    out, err, exc = run(ip, "%%ptt\n- id: margin_positive\n  when: \"`rewards/margins` > 0\"\n  severity: low\n"
                            "- id: lr_above_1e6\n  when: \"config.learning_rate > 1e-6\"\n  severity: medium\n")
    assert exc is None and "added margin_positive, lr_above_1e6 to this session" in out, out
    ip.user_ns["work"] = str(tmp_path)
    out, err, exc = run(ip, "from ptt_nb import DiagnosticsCallback\nfrom ptt_nb.tiny import make_trainer\n"
                            "from transformers import PrinterCallback\n"
                            "t = make_trainer('dpo', work, max_steps=4, callbacks=[DiagnosticsCallback(widget=False,"
                            " console=False)])\nt.remove_callback(PrinterCallback)\nt.train()")
    assert exc is None, err
    monitor = SESSION.monitor
    assert SESSION.source == "live" and monitor.state == "finished" and monitor.step == 4
    assert "margin_positive" in monitor.engine.states
    # a config-time session rule gets its check although the run had started when the session's rules came in
    assert [(a.rule, a.step) for a in monitor.alerts if a.rule == "lr_above_1e6"] == [("lr_above_1e6", 0)]
    out, err, exc = run(ip, "%ptt status")
    assert "DPOTrainer (dpo)" in out and "finished, step 4/4" in out
    row = next(line.split() for line in run(ip, "%ptt rules")[0].splitlines() if line.startswith("margin_positive"))
    assert row[1] == "low" and int(row[3]) >= 1
    assert "nothing is training" in user_error(ip, "%ptt stop")


def test_backtest_markers_reach_the_real_dashboard_and_remove_clears_them(ip):
    """``%%ptt`` → ``Dashboard.show_backtest`` → what a view gets (the comm is ipywidgets' no-op one outside a
    kernel); a re-run of the id replaces its markers, ``%ptt remove`` takes them away; never recorded as alerts."""
    pytest.importorskip("anywidget")
    run(ip, f"%ptt replay {RECORDED}")
    dash = SESSION.dashboard
    assert type(dash).__name__ == "Dashboard"
    try:
        run(ip, "%%ptt\n" + LOW_GRAD)
        (entry,) = dash.stream.backtest
        assert entry["rule"] == "low_grad" and entry["steps"] == [6, 14] and entry["resolved_steps"] == [7, None]
        assert entry["panels"] == ["optim_grad_norm"] and dash.stream.init_message()["backtest"] == [entry]
        assert all(a.rule != "low_grad" for a in dash.monitor.alerts)
        run(ip, "%%ptt\n" + LOW_GRAD.replace("0.8", "0.75"))  # grad_norm < 0.75 at steps 20 and 23 only
        assert [(e["rule"], e["steps"]) for e in dash.stream.backtest] == [("low_grad", [20, 23])]
        out, err, exc = run(ip, "%ptt remove low_grad")
        assert exc is None, err
        assert dash.stream.backtest == []
    finally:
        dash.close()
