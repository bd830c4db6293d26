"""``%ptt train`` in a real Jupyter kernel (nbclient): a tiny TRL DPO run trains in a background thread, the cell
returns at once, the dashboard is displayed, a second ``train`` is refused, a ``%%ptt`` rule reaches the live
engine, ``%ptt stop`` stops it, and a crash reaches the notebook with its postmortem."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

ROOT = Path(__file__).resolve().parents[1]

SETUP = """\
import json, sys, tempfile, time
sys.path.insert(0, {root!r})
from transformers import PrinterCallback, TrainerCallback
from ptt_nb.tiny import make_trainer
from ptt_nb import DiagnosticsCallback
from ptt_nb.notebook._magics import wait_job
from ptt_nb.notebook._session import SESSION
%load_ext ptt_nb
work = tempfile.mkdtemp()
trainer = make_trainer("dpo", work, max_steps=3000)  # no DiagnosticsCallback: %ptt train adds one
trainer.remove_callback(PrinterCallback)
"""

TRAIN = """\
t0 = time.perf_counter()
%ptt train trainer
train_cell_s = time.perf_counter() - t0
"""

RUNNING = """\
job = SESSION.job
step0 = SESSION.monitor.step
deadline = time.monotonic() + 90
while SESSION.monitor.step < 3 and time.monotonic() < deadline:  # the notebook is free while it trains
    time.sleep(0.05)
print(json.dumps({"cell_s": train_cell_s, "running": job.running, "step0": step0, "step1": SESSION.monitor.step,
                  "max_steps": SESSION.monitor.max_steps, "state": SESSION.monitor.state}))
"""

RULE = """\
%%ptt
- id: always_on
  when: "`rewards/margins` > -1000"
  severity: low
"""

STOP = """\
deadline = time.monotonic() + 60
while not any(a.rule == "always_on" for a in SESSION.monitor.alerts) and time.monotonic() < deadline:
    time.sleep(0.05)
rule_in_engine = "always_on" in SESSION.monitor.engine.states
%ptt stop
ended = wait_job(120)
m = SESSION.monitor
print(json.dumps({"ended": ended, "state": m.state, "step": m.step, "rule_in_engine": rule_in_engine,
                  "fired": [a.step for a in m.alerts if a.rule == "always_on"],
                  "run_dir": str(m.run_dir), "options_restored": [
                      (cb.widget_option, cb.console) for cb in trainer.callback_handler.callbacks
                      if isinstance(cb, DiagnosticsCallback)]}))
"""

CRASH = """\
class Crash(TrainerCallback):
    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == 3:
            raise RuntimeError("boom at step 3")

crasher = make_trainer("dpo", work, callbacks=[DiagnosticsCallback(), Crash()], max_steps=50)
crasher.remove_callback(PrinterCallback)
%ptt train crasher --no-show
wait_job(120)
print(json.dumps({"crasher_rules": sorted(SESSION.monitor.engine.states), "state": SESSION.monitor.state}))
"""


def _cell(source: str, *tags: str):
    cell = nbformat.v4.new_code_cell(source)
    if tags:
        cell.metadata["tags"] = list(tags)
    return cell


def _text(cell) -> str:
    parts = []
    for out in cell.outputs:
        if out.output_type == "stream":
            parts.append(out.text)
        elif out.output_type == "error":
            parts.append(f"ERROR {out.ename}: {out.evalue}")
        elif "data" in out:
            parts.append(out.data.get("text/plain", ""))
    return "".join(parts)


def _json_line(cell) -> dict:
    line = next(x for x in _text(cell).splitlines() if x.startswith("{"))
    return json.loads(line)


@pytest.mark.slow
def test_ptt_train_in_a_kernel(tmp_path):
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        _cell(SETUP.format(root=str(ROOT))),
        _cell(TRAIN),
        _cell(RUNNING),
        _cell("%ptt train trainer", "raises-exception"),
        _cell("%ptt status"),
        _cell(RULE),
        _cell(STOP),
        _cell("print('next cell')"),
        _cell(CRASH),
        _cell("%ptt status"),
    ]
    client = nbclient.NotebookClient(nb, timeout=240, kernel_name="python3", resources={"metadata": {"path": tmp_path}})
    client.execute()
    setup, train, running, refused, status, rule, stop, after, crash, status2 = nb.cells

    # the cell returned while training goes on, with the dashboard displayed from the notebook's thread
    out = _text(train)
    assert "training 'trainer' in the background (a DiagnosticsCallback was added to it)" in out
    assert any(o.get("data", {}).get("application/vnd.jupyter.widget-view+json") for o in train.outputs), train.outputs
    info = _json_line(running)
    assert info["running"] and info["state"] == "running", info
    assert info["cell_s"] < 20, info  # waited only for train begin, not for 3000 steps
    assert 3 <= info["step1"] < info["max_steps"] and info["step0"] < info["step1"], info

    # a second train while one runs is refused, shortly
    assert "is still training" in _text(refused) and "Traceback" not in _text(refused)
    assert [o.name for o in refused.outputs] == ["stderr"] and refused.outputs[0].text.startswith("UsageError: ")
    assert "running" in _text(status) and "background training: 'trainer' is running" in _text(status)

    # the %%ptt rule was backtested on the live history, then applied on the training thread
    assert "always_on: would have fired 1 time, first at step 1" in _text(rule)
    assert "added always_on to the current run from the next log point" in _text(rule)
    result = _json_line(stop)
    assert "stop requested at step" in _text(stop)
    assert result["ended"] and result["state"] == "stopped_by_user" and result["step"] < 3000, result
    assert result["rule_in_engine"] and len(result["fired"]) == 1, result
    assert Path(result["run_dir"], "events.jsonl").exists()
    assert result["options_restored"] == [[None, None]]  # a later plain trainer.train() shows its own widget

    # how the background run ended reaches the notebook once, at the next cell end
    ended = _text(stop) + _text(after)
    assert ended.count("'trainer' ended at step") == 1 and "stopped_by_user" in ended

    # a crash: short message with the postmortem path, then the traceback, without failing the cell
    text = _text(crash)
    assert "'crasher' crashed at step 3: RuntimeError: boom at step 3; postmortem: " in text, text
    pm_path = text.split("postmortem: ")[1].split()[0]
    pm = json.loads(Path(pm_path).read_text())
    assert pm["exit_reason"] == "exception" and "boom at step 3" in pm["traceback"]
    assert any(o.output_type == "error" and o.ename == "RuntimeError" for o in crash.outputs)
    later = _json_line(crash)
    assert later["state"] == "crashed" and "always_on" in later["crasher_rules"]  # session rules reach later runs
    assert "crashed: RuntimeError: boom at step 3" in _text(status2)
    assert "'crasher' crashed at step" not in _text(status2)  # reported once
