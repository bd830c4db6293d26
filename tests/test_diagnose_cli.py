"""``ptt-nb diagnose PATH…`` on runs recorded by other tools (tests/data/imports/, written by the real libraries):
the alert table, ``--json``, ``--report``, and the exit status a CI job gates on (0 clean, 1 critical, 2 unreadable).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from ptt_nb.cli import main

DATA = Path(__file__).parent / "data" / "imports"
RECORDED = Path(__file__).parent / "data" / "recorded_run"


def test_healthy_imported_run_exits_0(capsys):
    code = main(["diagnose", str(DATA / "healthy" / "out")])
    out = capsys.readouterr().out
    assert code == 0
    assert "trainer_state · dpo" in out and "most advanced of 2" in out and "told from the log keys" in out
    assert "no alert" in out and "0 of 1 runs with a critical alert (exit 0)" in out


def test_nan_run_from_tensorboard_prints_the_episode_and_exits_1(capsys):
    pytest.importorskip("tensorboard")
    code = main(["diagnose", str(DATA / "nan" / "tensorboard")])
    out = capsys.readouterr().out
    assert code == 1
    rows = [line.split() for line in out.splitlines()]
    assert ["2", "critical", "nonfinite_values", "grad_norm=NaN"] in rows  # first step, severity, rule, evidence
    assert "→ " in out and "ref: Micikevicius et al. 2018" in out  # action and reference
    assert "told from the config's 'f_divergence_type' field" in out  # the TB "args" text is the config
    assert "1 of 1 runs with a critical alert (exit 1)" in out


def test_json_covers_every_run_of_a_trackio_project(capsys):
    code = main(["diagnose", "--json", str(DATA / "trackio_project.db")])
    data = json.loads(capsys.readouterr().out)
    assert code == 1 and data["exit_status"] == 1
    by_run = {r["run_id"]: r for r in data["runs"]}
    assert set(by_run) == {"healthy", "nan"}
    assert not by_run["healthy"]["critical"]
    first = by_run["nan"]["alerts"][0]
    assert (first["rule"], first["severity"], first["first_step"]) == ("nonfinite_values", "critical", 2)
    assert first["evidence"] == {"grad_norm": "NaN"} and first["action"] and first["reference"]
    assert by_run["nan"]["format"] == "trackio" and by_run["nan"]["algorithm"] == "dpo"
    code = main(["diagnose", "--json", "--run", "healthy", str(DATA / "trackio_project.db")])
    assert code == 0 and [r["run_id"] for r in json.loads(capsys.readouterr().out)["runs"]] == ["healthy"]


def test_report_and_several_paths(tmp_path, capsys):
    pytest.importorskip("bokeh")
    out = tmp_path / "diag.html"
    code = main(["diagnose", str(DATA / "healthy" / "out"), str(DATA / "nan" / "out"), "--report", str(out)])
    text = capsys.readouterr().out
    assert code == 1 and "1 of 2 runs with a critical alert (exit 1)" in text
    reports = sorted(tmp_path.glob("diag-*.html"))
    assert [p.name.split("-")[1] for p in reports] == ["1", "2"]
    assert "nonfinite_values" in reports[1].read_text() and "nonfinite_values" not in reports[0].read_text()


def test_unreadable_path_exits_2_naming_it_and_the_formats(tmp_path, capsys):
    junk = tmp_path / "notes.txt"
    junk.write_text("hello")
    code = main(["diagnose", str(junk), str(DATA / "healthy" / "out")])
    captured = capsys.readouterr()
    assert code == 2  # unreadable wins over clean: the others are still diagnosed
    assert str(junk) in captured.err and "trainer_state, tensorboard, trackio, wandb, table" in captured.err
    assert "healthy/out" in captured.out


def test_ptt_nb_run_folder_is_re_evaluated(capsys):
    code = main(["diagnose", "--json", str(RECORDED)])
    data = json.loads(capsys.readouterr().out)
    assert data["runs"][0]["format"] == "ptt_nb" and code in (0, 1)
    assert code == (1 if data["runs"][0]["critical"] else 0)


def test_the_installed_command_exit_status():
    """The console script as CI runs it: a real process, its exit status."""
    exe = Path(sys.executable).with_name("ptt-nb")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "ptt_nb.cli"]
    done = subprocess.run([*cmd, "diagnose", str(DATA / "nan" / "out")], capture_output=True, text=True, timeout=120)
    assert done.returncode == 1, done.stderr
    assert "nonfinite_values" in done.stdout
