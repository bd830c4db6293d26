"""The first SIGINT during ``trainer.train()`` is a graceful stop (real TRL DPO run, real signals): the run ends at
the next step boundary with ``user_stop``, the trainer saves, and the previous SIGINT handler is back. The second
SIGINT's hard ``KeyboardInterrupt`` is tested in test_failures.py (script and kernel)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

from ptt_nb import DiagnosticsCallback
from ptt_nb.sources._graceful_interrupt import GracefulInterrupt
from ptt_nb.tiny import make_trainer

from .conftest import events_of, postmortem_of

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "scripts"))
from inject import Injector  # noqa: E402


def test_first_sigint_stops_at_next_step_and_trainer_stays_usable(tmp_path: Path) -> None:
    seen: list[int] = []

    def previous(signum, frame):  # a user's own handler: chained on the second SIGINT, back after train()
        seen.append(signum)

    old = signal.signal(signal.SIGINT, previous)
    try:
        run_dir = tmp_path / "run"
        callback = DiagnosticsCallback(run_dir=run_dir, widget=False, console=False)
        trainer = make_trainer("dpo", tmp_path, callbacks=[callback, Injector("sigint_once", 3)], max_steps=50)
        trainer.train()  # returns normally
        assert signal.getsignal(signal.SIGINT) is previous and seen == []
        end = events_of(run_dir, "run_end")[-1]
        control = [e for e in events_of(run_dir, "control") if e["action"] == "stop"][-1]
        assert end["reason"] == "user_stop" and end["step"] == 4, end  # the signal came after step 3's boundary
        assert control["by"] == "interrupt" and postmortem_of(run_dir)["exit_reason"] == "user_stop"
        trainer.save_model(str(tmp_path / "saved"))
        assert (tmp_path / "saved" / "config.json").exists()
    finally:
        signal.signal(signal.SIGINT, old)


def test_second_sigint_chains_the_previous_handler() -> None:
    seen: list[int] = []
    old = signal.signal(signal.SIGINT, lambda s, f: seen.append(s))
    try:
        g = GracefulInterrupt()
        assert g.install()
        os.kill(os.getpid(), signal.SIGINT)
        assert g.consume() and not g.consume() and seen == []  # marked once, consumed once
        os.kill(os.getpid(), signal.SIGINT)
        assert seen == [signal.SIGINT] and not g.installed  # the second went to the previous handler
        g.restore()
        assert signal.getsignal(signal.SIGINT) is not g._handle
    finally:
        signal.signal(signal.SIGINT, old)


def test_not_installed_off_main_thread_or_when_ignored() -> None:
    out: list[bool] = []
    t = threading.Thread(target=lambda: out.append(GracefulInterrupt().install()))
    t.start()
    t.join()
    assert out == [False]
    old = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        assert not GracefulInterrupt().install() and signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, old)


def test_one_ctrl_c_in_a_script_ends_cleanly(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    proc = subprocess.run([sys.executable, str(REPO / "tests" / "scripts" / "train.py"), "--run-dir", str(run_dir),
                           "--mode", "sigint_once", "--k", "2"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "stopping at the next step boundary" in proc.stderr
    assert events_of(run_dir, "run_end")[-1]["reason"] == "user_stop"
