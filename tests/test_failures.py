"""Injected failures, each checked from the files left on disk: exact last step and exit reason."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ptt_nb import DiagnosticsCallback, load_run
from ptt_nb.tiny import make_trainer

from .conftest import REPO, events_of, postmortem_of
from .scripts.inject import Injector

SCRIPT = REPO / "tests" / "scripts" / "train.py"


def _train_with(tmp_path: Path, mode: str, k: int, *, steps: int = 8, **options):
    run_dir = tmp_path / "run"
    callback = DiagnosticsCallback(run_dir=run_dir, widget=False, console=False, **options)
    injector = Injector(mode, k)
    trainer = make_trainer("dpo", tmp_path, callbacks=[callback, injector], max_steps=steps)
    injector.attach(trainer.model)
    return trainer, callback, run_dir


def _check_postmortem(run_dir: Path, reason: str, step: int) -> dict:
    pm = postmortem_of(run_dir)
    assert pm["exit_reason"] == reason
    assert pm["last_step"] == step
    assert pm["timestamp"].endswith("+00:00")
    assert pm["environment"]["versions"]["trl"]
    footer = events_of(run_dir)[-1]
    assert footer["kind"] == "run_end" and footer["reason"] == reason and footer["step"] == step
    return pm


def test_exception_at_step_k(tmp_path):
    trainer, _, run_dir = _train_with(tmp_path, "exception", 3)
    with pytest.raises(RuntimeError, match="injected failure"):
        trainer.train()
    pm = _check_postmortem(run_dir, "exception", 3)
    assert "injected failure in forward" in pm["traceback"]
    assert pm["final_metrics"]["loss"] > 0 and "rewards/margins" in pm["final_metrics"]
    assert [r["step"] for r in events_of(run_dir, "metrics")] == [1, 2, 3]


def test_keyboard_interrupt_in_process(tmp_path):
    trainer, _, run_dir = _train_with(tmp_path, "keyboard_interrupt", 2)
    with pytest.raises(KeyboardInterrupt):
        trainer.train()
    _check_postmortem(run_dir, "keyboard_interrupt", 2)


def test_ctrl_c_in_a_script(tmp_path):
    run_dir = tmp_path / "run"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--run-dir", str(run_dir), "--mode", "sigint", "--k", "4"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0 and "KeyboardInterrupt" in proc.stderr
    _check_postmortem(run_dir, "keyboard_interrupt", 4)


def _waiting_at_step(tmp_path: Path, run_dir: Path, k: int, *extra: str) -> subprocess.Popen:
    """A training subprocess that has completed step k and now waits for a signal from outside."""
    marker = tmp_path / "marker"
    proc = subprocess.Popen([sys.executable, str(SCRIPT), "--run-dir", str(run_dir), "--mode", "wait_for_signal",
                             "--k", str(k), "--marker", str(marker), "--steps", "50", *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while not marker.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.1)
    assert marker.exists(), proc.communicate()
    return proc


def test_sigterm_sent_to_a_training_subprocess(tmp_path):
    run_dir = tmp_path / "run"
    proc = _waiting_at_step(tmp_path, run_dir, 3)
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGTERM  # the default action still ran: the handler chained to it
    pm = _check_postmortem(run_dir, "sigterm", 3)
    assert "wait_for_signal" in pm["traceback"] or "sleep" in pm["traceback"]


def test_sigkill_of_a_hung_run_loses_no_metric_line(tmp_path):
    """No handler runs on SIGKILL (the OOM killer, a launcher's last resort). The live callback holds a fast
    run's routine lines for one write per 0.2 s; once training hangs, its backstop thread writes them, so a
    later SIGKILL finds every step up to the hang on disk, in order, each line complete."""
    run_dir = tmp_path / "run"
    proc = _waiting_at_step(tmp_path, run_dir, 6)  # steps 1-5 completed at CPU speed, then hangs in step 6
    deadline = time.time() + 10
    while time.time() < deadline:  # the backstop writes within ~2 s of the last write
        if [r["step"] for r in events_of(run_dir, "metrics")] == [1, 2, 3, 4, 5]:
            break
        time.sleep(0.1)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    data = (run_dir / "events.jsonl").read_bytes()
    assert data.endswith(b"\n")
    rows = events_of(run_dir)
    assert [r["step"] for r in rows if r["kind"] == "metrics"] == [1, 2, 3, 4, 5]
    assert rows[0]["kind"] == "run_start" and rows[-1]["kind"] != "run_end"
    assert not (run_dir / "postmortem.json").exists()


def test_sigterm_chains_to_the_users_handler_and_restores_it(tmp_path):
    run_dir = tmp_path / "run"
    proc = _waiting_at_step(tmp_path, run_dir, 2, "--own-sigterm-handler")
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
    assert "user handler ran" in out and proc.returncode == 3
    _check_postmortem(run_dir, "sigterm", 2)
    # and on a normal run the user's handler is back in place afterwards (asserted inside the script)
    ok = subprocess.run([sys.executable, str(SCRIPT), "--run-dir", str(tmp_path / "run2"), "--steps", "2",
                         "--own-sigterm-handler"], capture_output=True, text=True, timeout=300)
    assert ok.returncode == 0 and "finished" in ok.stdout, ok.stderr[-2000:]


def test_exception_when_callback_added_after_init(tmp_path):
    """trainer.add_callback(): on_init_end never reaches us, so the atexit fallback records the crash."""
    run_dir = tmp_path / "run"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--run-dir", str(run_dir), "--mode", "exception", "--k", "2",
                           "--add-callback-late"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1 and "injected failure" in proc.stderr
    _check_postmortem(run_dir, "exception", 2)


def test_nan_loss_is_critical_and_stops_when_asked(tmp_path):
    trainer, callback, run_dir = _train_with(tmp_path, "nan", 3, stop_on_critical=True)
    trainer.train()  # returns normally: the trainer honoured should_training_stop
    pm = _check_postmortem(run_dir, "nonfinite", 4)
    assert pm["stop"]["alert"]["rule"] == "nonfinite_values"
    alerts = [a for a in events_of(run_dir, "alert") if a["severity"] == "critical"]
    assert alerts[0]["rule"] == "nonfinite_values" and alerts[0]["step"] == 4
    # 0 extra steps: the last metrics row is the step the alert fired on
    assert max(r["step"] for r in events_of(run_dir, "metrics") if r["split"] == "train") == 4
    # NaN survives the round trip through strict JSON
    row = [r for r in events_of(run_dir, "metrics") if r["step"] == 4][0]
    assert row["values"]["grad_norm"] == "NaN"
    monitor = load_run(run_dir)
    assert monitor.history.get("grad_norm").last() != monitor.history.get("grad_norm").last()


def test_nan_without_auto_stop_keeps_training(tmp_path):
    trainer, callback, run_dir = _train_with(tmp_path, "nan", 3, steps=6)
    trainer.train()
    assert events_of(run_dir)[-1]["reason"] == "finished"
    critical = [a for a in events_of(run_dir, "alert") if a["state"] == "active" and a["severity"] == "critical"]
    assert critical and critical[0]["rule"] == "nonfinite_values" and critical[0]["step"] == 4
    assert not (run_dir / "postmortem.json").exists()


def test_critical_auto_stop_on_any_critical_rule(tmp_path):
    from ptt_nb.rules import Finding, Rule

    class MarginTooHigh(Rule):
        id = "test_margin_critical"
        severity = "critical"
        keys = ("rewards/margins",)
        reference = "test"

        def check(self, ctx):
            return Finding("margin reached step 5", {"step": ctx.step}) if ctx.step >= 5 else None

    trainer, callback, run_dir = _train_with(tmp_path, "none", 0, steps=12, stop_on_critical=True,
                                             custom_rules=[MarginTooHigh()])
    trainer.train()
    pm = _check_postmortem(run_dir, "auto_stop", 5)
    assert pm["stop"]["alert"]["rule"] == "test_margin_critical"
    assert max(r["step"] for r in events_of(run_dir, "metrics")) == 5
    controls = events_of(run_dir, "control")
    assert controls[0]["action"] == "stop" and controls[0]["by"] == "auto_stop"


def test_user_stop_from_another_thread(tmp_path):
    import threading

    trainer, callback, run_dir = _train_with(tmp_path, "none", 0, steps=400)
    from transformers import TrainerCallback

    class StopFromThreadAtStep(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 6:
                t = threading.Thread(target=callback.stop)
                t.start()
                t.join()

    trainer.add_callback(StopFromThreadAtStep())
    trainer.train()
    _check_postmortem(run_dir, "user_stop", 6)


def _training_notebook(tmp_path: Path, run_dir: Path, injector: str, *, max_steps: int):
    """Cells: build a tiny DPO trainer with the callback and an injector; train; check the kernel is alive."""
    import nbformat

    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_code_cell(
            f"import sys; sys.path.insert(0, {str(REPO)!r})\n"
            "import torch; torch.set_num_threads(1)\n"
            "from ptt_nb import DiagnosticsCallback\nfrom ptt_nb.tiny import make_trainer\n"
            "from tests.scripts.inject import Injector\n"
            f"cb = DiagnosticsCallback(run_dir={str(run_dir)!r}, widget=False)\n"
            f"inj = {injector}\n"
            f"trainer = make_trainer('dpo', {str(tmp_path / 'work')!r}, callbacks=[cb, inj], max_steps={max_steps})\n"
            "inj.attach(trainer.model)"),
        nbformat.v4.new_code_cell("trainer.train()"),
        nbformat.v4.new_code_cell("print('kernel alive', cb.monitor.state)"),
    ]
    return nb


def test_exception_in_a_notebook_cell(tmp_path):
    """A real kernel (nbclient): IPython never calls sys.excepthook for cell errors; the postmortem still lands."""
    from nbclient import NotebookClient

    run_dir = tmp_path / "run"
    nb = _training_notebook(tmp_path, run_dir, "Injector('exception', 3)", max_steps=8)
    NotebookClient(nb, timeout=300, kernel_name="python3", allow_errors=True).execute()
    assert nb.cells[1].outputs[-1]["ename"] == "RuntimeError"
    assert "kernel alive crashed" in nb.cells[2].outputs[0]["text"]
    pm = _check_postmortem(run_dir, "exception", 3)
    assert "injected failure" in pm["traceback"]


def test_kernel_interrupt_in_a_notebook(tmp_path):
    from nbclient import NotebookClient

    run_dir, marker = tmp_path / "run", tmp_path / "marker"
    nb = _training_notebook(tmp_path, run_dir, f"Injector('wait_for_signal', 3, {str(marker)!r})", max_steps=50)
    client = NotebookClient(nb, timeout=300, kernel_name="python3", allow_errors=True)
    with client.setup_kernel():
        client.execute_cell(nb.cells[0], 0)
        import threading

        def interrupt_when_ready():
            deadline = time.time() + 240
            while not marker.exists() and time.time() < deadline:
                time.sleep(0.1)
            import asyncio

            asyncio.run(client.km.interrupt_kernel())  # the kernel manager is async; signal mode sends SIGINT
            time.sleep(0.5)  # the first interrupt is ptt_nb's graceful stop; the second is the hard one tested here
            asyncio.run(client.km.interrupt_kernel())

        t = threading.Thread(target=interrupt_when_ready)
        t.start()
        client.execute_cell(nb.cells[1], 1)
        t.join()
        client.execute_cell(nb.cells[2], 2)
    errors = [o for o in nb.cells[1].outputs if o.get("output_type") == "error"]
    assert errors and errors[0]["ename"] == "KeyboardInterrupt", nb.cells[1].outputs
    assert "kernel alive crashed" in nb.cells[2].outputs[0]["text"]
    _check_postmortem(run_dir, "keyboard_interrupt", 3)


def test_resume_from_checkpoint_appends_to_the_same_run_folder(tmp_path):
    """Default run folder (under output_dir): a resumed run finds it and appends; nothing is truncated."""
    first = DiagnosticsCallback(widget=False, console=False)
    trainer = make_trainer("dpo", tmp_path, callbacks=[first], max_steps=4, save_strategy="steps", save_steps=2)
    trainer.train()
    run_dir = first.run_dir
    assert run_dir.parent == tmp_path / "out" / "ptt_nb" and run_dir.name.startswith("dpo-")
    before = (run_dir / "events.jsonl").read_bytes()

    second = DiagnosticsCallback(widget=False, console=False)
    trainer = make_trainer("dpo", tmp_path, callbacks=[second], max_steps=6, save_strategy="steps", save_steps=2)
    trainer.train(resume_from_checkpoint=True)
    assert second.run_dir == run_dir
    after = (run_dir / "events.jsonl").read_bytes()
    assert after.startswith(before)
    starts = events_of(run_dir, "run_start")
    assert [s["resumed_from_step"] for s in starts] == [None, 4]
    steps = [r["step"] for r in events_of(run_dir, "metrics") if r["split"] == "train"]
    assert steps == [1, 2, 3, 4, 5, 6]
    monitor = load_run(run_dir)
    assert monitor.state == "finished" and monitor.step == 6 and len(monitor.history.get("loss")) == 6
