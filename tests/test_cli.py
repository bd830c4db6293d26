"""The ``ptt-nb`` command line, run as a real subprocess: demo, report, summary, rules, watch and error paths."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.test_report import CRIT_STEP, assert_offline, make_synthetic_run

ENV = {**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "100"}
ENV.pop("PTT_NB_DEBUG", None)


def cli(*args: str, cwd: Path | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ptt_nb.cli", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=cwd, env=ENV)


def assert_one_line_error(proc: subprocess.CompletedProcess, fragment: str) -> None:
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    err = proc.stderr.strip()
    assert "Traceback" not in proc.stderr and len(err.splitlines()) == 1, proc.stderr
    assert err.startswith("ptt-nb: error:") and fragment in err, err


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> Path:
    return make_synthetic_run(tmp_path_factory.mktemp("cli") / "run")


def test_entry_point_is_installed() -> None:
    exe = shutil.which("ptt-nb", path=str(Path(sys.executable).parent))
    if exe is None:
        pytest.skip("the package is not installed in this environment (pip install -e .)")
    proc = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=60, env=ENV)
    assert proc.returncode == 0 and proc.stdout.startswith("ptt-nb ")


def test_demo_provoked_nan_prints_the_alert_and_stops(tmp_path: Path) -> None:
    t0 = time.perf_counter()
    proc = cli("demo", "--steps", "6", "--provoke", "nan", "--out", str(tmp_path / "demo"), timeout=240)
    elapsed = time.perf_counter() - t0
    assert proc.returncode == 0, proc.stderr[-3000:]
    both = proc.stdout + proc.stderr
    assert "[CRITICAL]" in both and "nonfinite_values" in both and "[RECOMMENDED]" in both
    match = re.search(r"^run folder: (\S+)", proc.stdout, re.M)
    assert match, proc.stdout
    run_dir = Path(match.group(1))
    assert (run_dir / "events.jsonl").exists() and (run_dir / "postmortem.json").exists()
    assert (run_dir / "report.html").exists()
    ends = [json.loads(x) for x in (run_dir / "events.jsonl").read_text().splitlines() if '"run_end"' in x]
    assert ends[-1]["reason"] == "nonfinite" and ends[-1]["step"] == 4  # NaN weights after step 3, stop at 4
    assert "{'loss'" not in proc.stdout  # the trainer's per-step dicts are not printed
    assert elapsed < 120, elapsed


def test_demo_rejects_an_unknown_algorithm(tmp_path: Path) -> None:
    assert_one_line_error(cli("demo", "--algorithm", "nope", "--out", str(tmp_path)), "unknown algorithm")


def test_report_default_and_custom_output(synthetic: Path, tmp_path: Path) -> None:
    proc = cli("report", str(synthetic))
    assert proc.returncode == 0, proc.stderr
    assert Path(proc.stdout.strip()) == synthetic / "report.html"
    custom = tmp_path / "sub" / "x.html"
    proc = cli("report", str(synthetic), "-o", str(custom))
    assert proc.returncode == 0 and custom.exists()
    text = custom.read_text(encoding="utf-8")
    assert_offline(text)
    assert "nonfinite_values" in text and "<h2>Postmortem</h2>" in text


def test_report_accepts_a_parent_folder(synthetic: Path, tmp_path: Path) -> None:
    proc = cli("report", str(synthetic.parent), "-o", str(tmp_path / "p.html"))
    assert proc.returncode == 0 and (tmp_path / "p.html").exists()


def test_summary(synthetic: Path) -> None:
    proc = cli("summary", str(synthetic))
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert out.splitlines()[0].startswith("DPO run synthetic-run · DPOTrainer · step 200/250 · ended: exception")
    assert "latest: loss=" in out and "rewards/margins=1" in out
    assert "alerts: critical 1 · high 0 · medium 1 · low 0" in out
    assert f"[CRITICAL] nonfinite_values (step {CRIT_STEP}, active)" in out
    assert "[MEDIUM] pref_margin_inverted (step 40→60, resolved)" in out
    assert "postmortem: exception at step 200" in out
    assert 'died in: File "model.py", line 99, in forward · RuntimeError: injected <boom>' in out
    assert len(out.splitlines()) <= 25  # one screen


def test_rules_lists_every_builtin_rule_generically() -> None:
    from ptt_nb.rules._builtin import default_rules

    proc = cli("rules")
    assert proc.returncode == 0, proc.stderr
    rules = default_rules()
    assert f"{len(rules)} built-in rules" in proc.stdout
    assert re.search(r"^nonfinite_values\s+critical\s+all", proc.stdout, re.M)
    for algorithm in ("grpo", "dpo"):
        proc = cli("rules", "--algorithm", algorithm, "--json")
        assert proc.returncode == 0, proc.stderr
        rows = json.loads(proc.stdout)
        expected = {r.id for r in rules if r.applies_to(algorithm)}
        assert {r["id"] for r in rows} == expected
        assert all(r["severity"] in ("critical", "high", "medium", "low") for r in rows)


@pytest.mark.parametrize("command", ["report", "summary", "watch"])
def test_missing_folder_is_a_one_line_error(command: str, tmp_path: Path) -> None:
    assert_one_line_error(cli(command, str(tmp_path / "nope")), "no such file or folder")


def test_not_a_run_folder_and_a_plain_file(tmp_path: Path) -> None:
    assert_one_line_error(cli("summary", str(tmp_path)), "not a ptt_nb run folder")
    (tmp_path / "notes.txt").write_text("hello")
    assert_one_line_error(cli("report", str(tmp_path / "notes.txt")), "is a file")


def test_truncated_events_file(synthetic: Path, tmp_path: Path) -> None:
    data = (synthetic / "events.jsonl").read_bytes()
    head = tmp_path / "head"
    head.mkdir()
    (head / "events.jsonl").write_bytes(data[:60])  # cut inside the run_start line: nothing usable
    assert_one_line_error(cli("summary", str(head)), "no run_start event")
    assert_one_line_error(cli("report", str(head)), "no run_start event")
    assert_one_line_error(cli("watch", str(head), "--once"), "no run_start event")
    # cut inside a later line: the complete lines are used and the cut is reported in one warning line
    tail = tmp_path / "tail"
    tail.mkdir()
    (tail / "events.jsonl").write_bytes(data[: data.index(b"\n", len(data) // 2) + 40])
    proc = cli("summary", str(tail))
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr and "last line is incomplete" in proc.stderr
    assert "ended" not in proc.stdout.splitlines()[0]  # the run_end line was lost with the cut


def test_watch_once_prints_the_state(synthetic: Path) -> None:
    proc = cli("watch", str(synthetic), "--once")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "watching DPO run synthetic-run · DPOTrainer" in out
    assert "[CRITICAL] nonfinite_values" in out and "run ended at step 200: exception" in out
    assert "postmortem: exception at step 200" in out


def test_watch_follows_a_run_another_process_writes(tmp_path: Path) -> None:
    src = make_synthetic_run(tmp_path / "src")
    lines = (src / "events.jsonl").read_bytes().splitlines(keepends=True)
    live = tmp_path / "live"
    live.mkdir()
    (live / "events.jsonl").write_bytes(lines[0])  # only the run header so far
    shutil.copy(src / "postmortem.json", live)  # the callback writes it just before the run_end event
    proc = subprocess.Popen([sys.executable, "-m", "ptt_nb.cli", "watch", str(live), "--interval", "0.05",
                             "--line-every", "0", "--idle-timeout", "60"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=ENV)
    try:
        first = proc.stdout.readline()  # blocks until watch has read the header
        assert first.startswith("watching DPO run synthetic-run"), first
        with open(live / "events.jsonl", "ab") as f:
            for i, line in enumerate(lines[1:]):
                if i == 25:  # a line arriving in two writes must be read once, whole
                    f.write(line[:17])
                    f.flush()
                    time.sleep(0.15)
                    f.write(line[17:])
                else:
                    f.write(line)
                f.flush()
                time.sleep(0.008)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    out = first + out
    assert proc.returncode == 0, err
    assert "Traceback" not in err and "malformed" not in out + err
    assert out.count("[CRITICAL] nonfinite_values") == 1 and "[RESOLVED] pref_margin_inverted" in out
    assert out.rstrip().splitlines()[-2].startswith("run ended at step 200: exception")
    assert out.index("[CRITICAL] nonfinite_values") < out.index("run ended at step 200")
    progress_steps = {int(m) for m in re.findall(r"\] (\d+)/250", out)}
    assert len([s for s in progress_steps if s < 200]) >= 2, progress_steps  # it followed the run as it grew
    assert "postmortem:" in out.rstrip().splitlines()[-1]


def test_watch_gives_up_when_the_writer_goes_silent(synthetic: Path, tmp_path: Path) -> None:
    live = tmp_path / "silent"
    live.mkdir()
    lines = (synthetic / "events.jsonl").read_bytes().splitlines(keepends=True)
    (live / "events.jsonl").write_bytes(b"".join(lines[:5]))
    proc = cli("watch", str(live), "--interval", "0.05", "--idle-timeout", "0.5", timeout=60)
    assert proc.returncode == 3 and "no new event" in proc.stdout


def test_watch_waits_for_a_run_that_starts_later(synthetic: Path, tmp_path: Path) -> None:
    root = tmp_path / "later"
    proc = subprocess.Popen([sys.executable, "-m", "ptt_nb.cli", "watch", str(root), "--wait", "--interval", "0.05",
                             "--idle-timeout", "60"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=ENV)
    try:
        assert proc.stdout.readline().startswith("waiting for a run in")
        time.sleep(0.3)
        shutil.copytree(synthetic, root / "run")  # the training process creates its run folder only now
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert "run ended at step 200: exception" in out


def test_watch_ctrl_c_exits_quietly(synthetic: Path, tmp_path: Path) -> None:
    live = tmp_path / "live"
    live.mkdir()
    (live / "events.jsonl").write_bytes((synthetic / "events.jsonl").read_bytes().splitlines(keepends=True)[0])
    proc = subprocess.Popen([sys.executable, "-m", "ptt_nb.cli", "watch", str(live), "--interval", "0.05"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    try:
        assert proc.stdout.readline().startswith("watching DPO run")
        proc.send_signal(signal.SIGINT)  # what Ctrl-C sends
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130 and "Traceback" not in err, err


def test_watch_view_progress_eta_and_terminal_redraw() -> None:
    """In-process: the progress line, the ETA from recorded event times, and in-place redraw on a terminal."""
    import io

    from ptt_nb.cli import WatchView
    from ptt_nb.events import Alert, Metrics, RunStart
    from ptt_nb.monitor._monitor import Monitor

    monitor = Monitor(evaluate=False)
    buf = io.StringIO()
    view = WatchView(monitor, buf, tty=True, width=120)
    events = [RunStart(run_id="r", trainer="DPOTrainer", algorithm="dpo", max_steps=100, t=1000.0)]
    events += [Metrics(step=s, split="train", values={"loss": 0.7 - s / 100}, t=1000.0 + 2 * s) for s in range(1, 26)]
    events.append(Alert(id="a@20", rule="some_rule", severity="high", step=20, message="look", action="do this"))
    for event in events:
        monitor.apply(event)
        view.on_event(event)
    assert view.eta_s() == pytest.approx(75 * 2.0)  # 2 s per step, 75 steps to go
    line = view.progress_line()
    assert line.startswith("[#####...............] 25/100  25% ETA 2:30") and "loss=0.45" in line
    view.tick()
    view.println("next")
    text = buf.getvalue()
    assert "[HIGH] some_rule (step 20, active): look\n    → do this\n" in text
    assert "\r\x1b[K[#####" in text and text.endswith("\r\x1b[Knext\n")  # the progress line is cleared first


def test_report_without_bokeh_is_a_one_line_error(synthetic: Path, tmp_path: Path) -> None:
    # bokeh is installed here; a shadowing package that fails to import stands in for a missing one
    fake = tmp_path / "shadow" / "bokeh"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError(\"No module named 'bokeh'\")\n")
    env = {**ENV, "PYTHONPATH": os.pathsep.join(filter(None, [str(fake.parent), ENV.get("PYTHONPATH")]))}
    proc = subprocess.run([sys.executable, "-m", "ptt_nb.cli", "report", str(synthetic)], capture_output=True,
                          text=True, timeout=60, env=env)
    assert_one_line_error(proc, "pip install 'ptt-nb[report]'")


def test_summary_collapses_a_flapping_rule() -> None:
    from ptt_nb.events import Alert
    from ptt_nb.sinks._text_summary import alert_lines

    alerts = [Alert(id=f"f@{i}", rule="flappy", severity="medium", step=i, message="m") for i in range(50)]
    alerts.insert(10, Alert(id="x@10", rule="other_rule", severity="high", step=10, message="x"))
    lines = alert_lines(alerts)
    assert [ln.split()[1] for ln in lines[:-1]] == ["flappy", "flappy", "flappy", "other_rule"]
    assert lines[-1] == "… 47 more episodes: flappy ×47 (all are in the HTML report)"


def test_readme_rule_table_is_generated_from_the_code():
    """The README's catalog table must be exactly `ptt-nb rules --markdown` (regenerate it, don't hand-edit)."""
    import contextlib
    import io

    from ptt_nb.cli import main as cli_main

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    block = re.search(r"<!-- rules-table:start -->\n(.*?)\n<!-- rules-table:end -->", readme, re.S).group(1)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        cli_main(["rules", "--markdown"])
    assert block.strip() == out.getvalue().strip()
