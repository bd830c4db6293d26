"""PPO: a real PPOTrainer from TRL 1.12.0 (the newest release that ships it), in its own venv.

The venv comes from tests/ppo/make_env.sh (``make test`` builds it; PTT_PPO_PYTHON points at its python).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from ptt_nb import load_run

from .conftest import REPO, events_of

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def ppo_python() -> str:
    python = os.environ.get("PTT_PPO_PYTHON")
    if not python:
        venv = REPO / ".venv-ppo"
        subprocess.run(["bash", str(REPO / "tests/ppo/make_env.sh"), str(venv)], check=True)
        python = str(venv / "bin" / "python")
    assert Path(python).exists(), f"PPO venv python missing: {python}"
    return python


def _run_ppo(python: str, run_dir: Path, *extra: str, env: dict | None = None) -> subprocess.CompletedProcess:
    environ = {**os.environ, "PYTHONPATH": str(REPO), "PTT_RUN_DIR": str(run_dir), "TRL_EXPERIMENTAL_SILENCE": "1",
               **(env or {})}
    return subprocess.run([python, str(REPO / "tests/ppo/tiny_ppo.py"), "--callback", "tests.ppo.ptt_factory:make",
                           *extra], capture_output=True, text=True, timeout=600, env=environ, cwd=REPO)


def test_ppo_detected_and_mapped(ppo_python, tmp_path):
    run_dir = tmp_path / "run"
    proc = _run_ppo(ppo_python, run_dir, "--steps", "4")
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = events_of(run_dir)
    assert rows[0]["algorithm"] == "ppo" and rows[0]["trainer"] == "PPOTrainer"
    assert rows[0]["versions"]["trl"] == "1.12.0"
    assert rows[-1]["kind"] == "run_end" and rows[-1]["reason"] == "finished" and rows[-1]["step"] == 4
    monitor = load_run(run_dir)
    panels = {p["id"]: p for p in monitor.panels()}
    for pid in ("ppo_losses", "ppo_scores", "ppo_kl", "ppo_entropy", "ppo_clipfrac", "ppo_ratio", "optim_lr"):
        assert pid in panels, (pid, sorted(panels))
        for series in panels[pid]["series"]:
            assert len(monitor.history.get(series["key"])) == 4
    assert {s["key"] for s in panels["ppo_losses"]["series"]} == {"loss/policy_avg", "loss/value_avg"}
    assert {s["key"] for s in panels["optim_lr"]["series"]} == {"lr"}  # PPO logs `lr`, not learning_rate


def test_ppo_stop_is_enforced_even_though_ppo_ignores_should_training_stop(ppo_python, tmp_path):
    """PPO's loop never reads control.should_training_stop (measured): the callback raises at the boundary."""
    run_dir = tmp_path / "run"
    code = (
        "import sys, runpy\n"
        "from ptt_nb.rules import Finding, Rule\n"
        "import tests.ppo.ptt_factory as f\n"
        "class Critical(Rule):\n"
        "    id='test_ppo_critical'; severity='critical'; keys=('objective/kl',)\n"
        "    def check(self, ctx):\n"
        "        return Finding('step 2 reached') if ctx.step >= 2 else None\n"
        "orig = f.make\n"
        "def make():\n"
        "    cb = orig(); cb.custom_rules.append(Critical()); return cb\n"
        "f.make = make\n"
        "sys.argv = ['tiny_ppo.py', '--steps', '6', '--callback', 'tests.ppo.ptt_factory:make']\n"
        "runpy.run_path('tests/ppo/tiny_ppo.py', run_name='__main__')\n"
    )
    environ = {**os.environ, "PYTHONPATH": str(REPO), "PTT_RUN_DIR": str(run_dir), "PTT_STOP_ON_CRITICAL": "1",
               "TRL_EXPERIMENTAL_SILENCE": "1"}
    proc = subprocess.run([ppo_python, "-c", code], capture_output=True, text=True, timeout=600, env=environ,
                          cwd=REPO)
    assert proc.returncode != 0 and "TrainingStopped" in proc.stderr, proc.stderr[-3000:]
    rows = events_of(run_dir)
    assert rows[-1]["kind"] == "run_end" and rows[-1]["reason"] == "auto_stop" and rows[-1]["step"] == 2
    assert max(r["step"] for r in rows if r["kind"] == "metrics") == 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q"]))
