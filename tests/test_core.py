"""The core without a trainer: import hygiene, run-folder durability, console format, bad input."""

from __future__ import annotations

import json
import logging
import math
import subprocess
import sys
import time

import pytest

from ptt_nb import load_run
from ptt_nb.events import Alert, Metrics, RunStart
from ptt_nb.monitor._monitor import Monitor
from ptt_nb.monitor._profiles import detect
from ptt_nb.sinks._console import ConsoleSink, format_alert
from ptt_nb.sinks._writer import MAX_HELD, RunWriter
from ptt_nb.sources._reader import Follower, read_events

from .conftest import REPO, events_of


def test_import_is_light_and_changes_no_global_state():
    code = """
import logging, signal, sys, warnings
import numpy, yaml, orjson  # dependencies register their own warning filters; measure ours alone
before = (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM), sys.excepthook,
          list(logging.getLogger().handlers), len(warnings.filters), sys.displayhook)
import ptt_nb
from ptt_nb import Monitor, load_run
after = (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM), sys.excepthook,
         list(logging.getLogger().handlers), len(warnings.filters), sys.displayhook)
heavy = [m for m in ("torch", "transformers", "IPython", "matplotlib", "trl", "bokeh", "anywidget") if m in sys.modules]
print(heavy, before == after)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert out.stdout.strip() == "[] True", out.stdout + out.stderr


@pytest.mark.parametrize(("mros", "expected"), [
    ([["DPOTrainer", "_BaseTrainer", "Trainer"], ["DPOConfig", "TrainingArguments"]], "dpo"),
    ([["MyCustomDPO", "DPOTrainer", "Trainer"], ["MyConfig", "DPOConfig"]], "dpo"),  # user subclass
    ([["PPOv2Trainer", "Trainer"], ["PPOv2Config", "TrainingArguments"]], "ppo"),  # TRL 0.11 rename
    ([["Trainer"], ["GRPOConfig", "TrainingArguments"]], "grpo"),  # trainer unknown: config decides
    ([["OnlineDPOTrainer", "Trainer"], ["OnlineDPOConfig"]], "online_dpo"),  # not mistaken for DPO
    ([["Trainer"], ["TrainingArguments"]], "generic"),
    ([["FancyRLTrainer", "Trainer"], ["FancyConfig", "TrainingArguments"]], "generic"),
])
def test_detection_by_class_names(mros, expected):
    assert detect(*mros).name == expected


def _run(algorithm="dpo") -> RunStart:
    return RunStart(run_id="r", trainer="DPOTrainer", algorithm=algorithm, max_steps=100)


def test_events_survive_a_crash_at_any_byte_and_resume_appends(tmp_path):
    writer = RunWriter(tmp_path)
    monitor = Monitor(evaluate=False)
    monitor.subscribe(writer)
    monitor.start(_run())
    for step in range(1, 6):
        monitor.log(step, {"loss": 1.0 / step, "grad_norm": math.nan if step == 3 else 0.5})
    writer.close()
    full = (tmp_path / "events.jsonl").read_bytes()
    # cut the file at every byte: every complete line stays readable, a partial one is reported, never fatal
    for cut in range(len(full)):
        (tmp_path / "events.jsonl").write_bytes(full[:cut])
        events, problems = read_events(tmp_path)
        complete = full[:cut].count(b"\n")
        assert len(events) == complete
        assert bool(problems) == (cut > 0 and full[cut - 1:cut] != b"\n")
    # a resumed process appends after a torn line: nothing before it is rewritten
    torn = full[: len(full) - 7]
    (tmp_path / "events.jsonl").write_bytes(torn)
    writer = RunWriter(tmp_path)
    writer(Alert(id="a@6", rule="x", severity="low", step=6, message="after resume"))
    writer.close()
    data = (tmp_path / "events.jsonl").read_bytes()
    assert data.startswith(torn)
    events, problems = read_events(tmp_path)
    assert events[-1].message == "after resume" and len(problems) == 1 and ":6:" in problems[0]
    monitor = load_run(tmp_path)
    assert math.isnan(monitor.history.get("grad_norm").values[2])


def _lines_on_disk(run_dir) -> list[tuple[str, object]]:
    events, problems = read_events(run_dir)
    assert problems == []
    return [(e.kind, getattr(e, "step", None)) for e in events]


def test_live_writer_holds_only_routine_train_lines_and_never_reorders(tmp_path):
    """RunWriter(batch_s): train metric lines of a fast run wait for one write per batch; every other event is
    written at once, with the held lines before it, so the file is always a prefix of the run, in order."""
    now = [100.0]
    writer = RunWriter(tmp_path, batch_s=0.2, clock=lambda: now[0])
    writer(_run())
    assert _lines_on_disk(tmp_path) == [("run_start", None)]
    for step in range(1, 6):  # 23 ms steps: held
        now[0] += 0.023
        writer(Metrics(step=step, split="train", values={"loss": 1.0, "grad_norm": math.nan if step == 4 else 0.5}))
    assert _lines_on_disk(tmp_path) == [("run_start", None)]
    now[0] += 0.023
    writer(Alert(id="nonfinite@4", rule="nonfinite_values", severity="critical", step=4, message="NaN"))
    assert _lines_on_disk(tmp_path) == [("run_start", None), *[("metrics", s) for s in range(1, 6)], ("alert", 4)]
    assert math.isnan(read_events(tmp_path)[0][4].values["grad_norm"])  # NaN survives the batched encode
    now[0] += 0.023
    writer(Metrics(step=6, split="train", values={"loss": 1.0}))
    writer(Metrics(step=6, split="eval", values={"eval_loss": 1.1}))  # eval: at once, after the held step 6
    assert _lines_on_disk(tmp_path)[-2:] == [("metrics", 6), ("metrics", 6)]
    for step in range(7, 15):  # 8 x 23 ms < batch_s since the last write: held
        now[0] += 0.023
        writer(Metrics(step=step, split="train", values={"loss": 1.0}))
        assert _lines_on_disk(tmp_path)[-1] == ("metrics", 6)
    now[0] += 0.023  # the line that crosses batch_s goes out with the held ones
    writer(Metrics(step=15, split="train", values={"loss": 1.0}))
    assert [s for k, s in _lines_on_disk(tmp_path) if k == "metrics"][-10:] == [6, *range(7, 16)]
    for step in range(16, 16 + 3 * MAX_HELD):  # back-to-back lines (a replay, a burst): bounded batches
        writer(Metrics(step=step, split="train", values={"loss": 1.0}))
        assert step - max(s for k, s in _lines_on_disk(tmp_path) if k == "metrics") <= MAX_HELD
    writer.close()
    steps = [s for k, s in _lines_on_disk(tmp_path) if k == "metrics"]
    assert steps == [*range(1, 7), 6, *range(7, 16 + 3 * MAX_HELD)]


def test_live_writer_backstop_writes_held_lines_when_training_goes_quiet(tmp_path):
    """A hang or a long evaluation after a fast stretch: the held lines still reach the file within backstop_s."""
    writer = RunWriter(tmp_path, batch_s=60.0, backstop_s=0.05)
    writer(_run())
    writer(Metrics(step=1, split="train", values={"loss": 1.0}))
    assert _lines_on_disk(tmp_path) == [("run_start", None)]
    deadline = time.monotonic() + 10
    while len(_lines_on_disk(tmp_path)) < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert _lines_on_disk(tmp_path) == [("run_start", None), ("metrics", 1)]
    writer.close()
    writer._backstop.join(5)
    assert not writer._backstop.is_alive()


def test_a_writer_without_batch_s_writes_every_line_at_once(tmp_path):
    writer = RunWriter(tmp_path)
    writer(_run())
    for step in range(1, 4):
        writer(Metrics(step=step, split="train", values={"loss": 1.0}))
        assert _lines_on_disk(tmp_path)[-1] == ("metrics", step)
    assert writer._backstop is None
    writer.close()


def test_follower_never_misses_or_duplicates_across_partial_lines(tmp_path):
    path = tmp_path / "events.jsonl"
    follower = Follower(tmp_path)
    assert follower.poll() == []
    line = lambda s: json.dumps({"kind": "metrics", "step": s, "split": "train", "values": {"loss": 1.0}}) + "\n"  # noqa: E731
    path.write_text(line(1) + line(2)[:10])
    assert [e.step for e in follower.poll()] == [1]
    with open(path, "a") as f:
        f.write(line(2)[10:] + line(3))
    assert [e.step for e in follower.poll()] == [2, 3]
    assert follower.poll() == []


def test_console_prints_each_episode_once_in_the_seed_format(caplog):
    monitor = Monitor(evaluate=True)
    monitor.subscribe(ConsoleSink())
    caplog.set_level(logging.INFO, logger="ptt_nb")
    logging.getLogger("ptt_nb").propagate = True
    try:
        monitor.start(_run())
        for step in range(1, 8):
            monitor.log(step, {"loss": math.nan if 3 <= step <= 5 else 0.5, "grad_norm": 1.0})
    finally:
        logging.getLogger("ptt_nb").propagate = False
    texts = [r.getMessage() for r in caplog.records if r.name == "ptt_nb.alerts"]
    opened = [t for t in texts if t.startswith("[CRITICAL]")]
    assert len(opened) == 1
    lines = opened[0].splitlines()
    assert lines[0].startswith("[CRITICAL] Non-finite values at step 3")
    assert lines[1].startswith("Ref: Micikevicius et al. 2018")
    assert lines[2].startswith("[RECOMMENDED] ")
    assert sum(t.startswith("[RESOLVED]") for t in texts) == 1


def test_format_alert_names_severity_evidence_action_and_reference():
    alert = Alert(id="x@1", rule="x", severity="high", step=1, message="m", action="do", reference="Ref 2023")
    assert format_alert(alert).splitlines() == ["[HIGH] m (rule x, step 1)", "Ref: Ref 2023", "[RECOMMENDED] do"]


def test_non_numeric_log_values_are_kept_out_and_training_goes_on(tmp_path, caplog):
    from transformers import TrainerCallback

    from ptt_nb import DiagnosticsCallback
    from ptt_nb.tiny import make_trainer

    class AddsText(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            logs["note"] = "a string"
            logs["table"] = [1, 2]

    run_dir = tmp_path / "run"
    cb = DiagnosticsCallback(run_dir=run_dir, widget=False, console=False)
    trainer = make_trainer("sft", tmp_path, callbacks=[AddsText(), cb], max_steps=3)
    with caplog.at_level(logging.WARNING, logger="ptt_nb"):
        logging.getLogger("ptt_nb").propagate = True
        try:
            trainer.train()
        finally:
            logging.getLogger("ptt_nb").propagate = False
    warnings = {r.getMessage() for r in caplog.records if "non-numeric" in r.getMessage()}
    assert len(warnings) == 2 and any("'note' at step 1" in w for w in warnings)  # once per key, not per step
    assert events_of(run_dir)[-1]["reason"] == "finished"
    assert "note" not in cb.monitor.history and "loss" in cb.monitor.history


def test_a_failing_sink_is_detached_and_training_state_is_kept():
    monitor = Monitor(evaluate=False)

    def broken(event):
        raise OSError("disk full")

    monitor.subscribe(broken)
    monitor.start(_run())
    monitor.log(1, {"loss": 1.0})
    assert broken not in monitor.sinks and "disk full" in monitor.warnings[0]
    assert len(monitor.history.get("loss")) == 1


def test_heuristic_selection(tmp_path):
    monitor = Monitor(select=["nonfinite_values"])
    monitor.start(_run())
    assert list(monitor.engine.states) == ["nonfinite_values"]
    monitor = Monitor(exclude=["nonfinite_*"])
    monitor.start(_run())
    assert "nonfinite_values" not in monitor.engine.states


def test_report_written_at_run_end_when_asked(tmp_path):
    from ptt_nb import DiagnosticsCallback
    from ptt_nb.tiny import make_trainer

    cb = DiagnosticsCallback(run_dir=tmp_path / "run", widget=False, console=False, report=True)
    make_trainer("dpo", tmp_path, callbacks=[cb], max_steps=2).train()
    html = (tmp_path / "run" / "report.html").read_text()
    assert "DPOTrainer" in html and "<script" in html


def test_history_loses_nothing_when_another_thread_reads_it():
    """The widget's flush thread and the magics read the history while the training thread appends."""
    import threading

    from ptt_nb.monitor._history import MetricHistory

    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible to provoke the race
    try:
        for _ in range(3):
            history, done = MetricHistory(), threading.Event()

            def reader(h=history, d=done):
                while not d.is_set():
                    h.keys()
                    h.get("loss")

            thread = threading.Thread(target=reader)
            thread.start()
            for i in range(20000):
                history.add(i, "train", {"loss": float(i), "grad_norm": 1.0})
            done.set()
            thread.join()
            steps, values = history.get("loss").arrays()
            assert len(values) == 20000 and (values == steps).all()
    finally:
        sys.setswitchinterval(old)


def _deferring_monitor(tmp_path):
    """A Monitor set up as the callback sets it on a live run without auto-stop, on a clock the test moves."""
    now = [100.0]
    m = Monitor()
    m.defer_s = 0.2
    m._clock = lambda: now[0]
    writer = RunWriter(tmp_path / "run")
    m.subscribe(writer)
    m.start(RunStart(run_id="r", trainer="DPOTrainer", algorithm="dpo", max_steps=1000))
    return m, now, writer


def _dpo_values(step: int, loss: float | None = None) -> dict[str, float]:
    return {"loss": 0.69 - step * 1e-3 if loss is None else loss, "grad_norm": 1.0, "learning_rate": 1e-5,
            "rewards/margins": step * 1e-3, "rewards/accuracies": 0.6, "rewards/chosen": 0.01}


def test_deferred_rules_keep_every_step_and_order_and_are_at_most_defer_s_late(tmp_path):
    m, now, writer = _deferring_monitor(tmp_path)
    for step in range(1, 31):
        now[0] += 0.023  # a tiny CPU run's step: the rules run in batches of <= 0.2 s
        opened = m.log(step, _dpo_values(step, loss=math.nan if step == 12 else None))
        m.step_end(step)
        if step == 12:
            assert opened == [] and not m.alerts  # held back: not evaluated on this cold point
        # after a step boundary nothing waits longer than defer_s
        assert not m._deferred or now[0] - m._deferred_since < 0.2
    events, _problems = read_events(tmp_path / "run")
    nan_alerts = [(e.state, e.step, e.resolved_step) for e in events
                  if e.kind == "alert" and e.rule == "nonfinite_values"]
    assert nan_alerts == [("active", 12, None), ("resolved", 12, 13)]  # stamped with their own steps
    # every metric line is on disk at once, in step order, whatever the rules are doing
    steps = [e.step for e in events if e.kind == "metrics"]
    assert steps == list(range(1, 31))
    m.finish("finished")  # the end drains: history and rules have seen every point
    assert not m._deferred and m.history.get("loss").n == 30 and m.history.last_step == 30
    writer.close()


def test_points_far_apart_or_back_to_back_are_evaluated_at_once(tmp_path):
    m, now, writer = _deferring_monitor(tmp_path)
    now[0] += 1.0
    assert m.log(1, _dpo_values(1, loss=math.inf))  # slow steps (>= defer_s apart): the alert comes at once
    now[0] += 0.25
    m.log(2, _dpo_values(2))
    assert not m._deferred
    now[0] += 0.0001  # a replay or a burst: nothing evicted the caches, so nothing to gain by batching
    assert m.log(3, _dpo_values(3, loss=math.nan))
    writer.close()


def test_history_refuses_a_non_number_and_keeps_its_queue_aligned():
    from ptt_nb.monitor._history import MetricHistory

    h = MetricHistory()
    h.add(1, "train", {"a": 1.0, "b": 2.0})
    with pytest.raises(TypeError, match="step 2 must be numbers"):
        h.add(2, "train", {"a": 1.5, "b": "x"})  # 'a' was read before 'b' failed: it must not stay queued
    h.add(3, "train", {"a": 3.0, "b": 4.0})
    h.add(4, "train", {"a": 5.0, "b": 6.0})
    assert h.get("a").arrays()[1].tolist() == [1.0, 3.0, 5.0]
    assert h.get("b").arrays()[1].tolist() == [2.0, 4.0, 6.0]
    assert h.latest == {"a": 5.0, "b": 6.0}
