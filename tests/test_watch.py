"""Following a run folder that another process writes (ptt_nb.sources._follow): no event missed or read twice."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from ptt_nb._layout import EVENTS_FILE
from ptt_nb._layout import find_run_dir as resolve_run_dir
from ptt_nb.events import Metrics, RunEnd
from ptt_nb.sources._follow import Watcher
from ptt_nb.sources._reader import Follower, read_events

RECORDED = Path(__file__).parent / "data" / "recorded_run"
ROOT = Path(__file__).resolve().parents[1]


def _signature(events):
    """What must match exactly between writer and watcher: kind and step of every event, in order."""
    return [(e.kind, getattr(e, "step", None), getattr(e, "split", None)) for e in events]


def test_follower_consumes_a_half_written_line_only_once_complete(tmp_path):
    lines = (RECORDED / EVENTS_FILE).read_bytes().splitlines(keepends=True)
    path = tmp_path / EVENTS_FILE
    follower = Follower(tmp_path)
    assert follower.poll() == []  # no file yet
    with open(path, "ab") as f:
        f.write(lines[0] + lines[1][:17])  # run_start + the first 17 bytes of step 1
        f.flush()
        first = follower.poll()
        assert _signature(first) == [("run_start", None, None)]
        assert follower.poll() == []  # the half line stays unread
        f.write(lines[1][17:-1])  # all but its newline: still incomplete
        f.flush()
        assert follower.poll() == []
        f.write(b"\n")
        f.flush()
        second = follower.poll()
    assert _signature(second) == [("metrics", 1, "train")]
    assert second[0].values["loss"] == pytest.approx(0.693147)
    assert follower.poll() == []
    assert follower.problems == []


def test_follower_reports_a_malformed_line_with_its_number_and_goes_on(tmp_path):
    lines = (RECORDED / EVENTS_FILE).read_bytes().splitlines(keepends=True)
    (tmp_path / EVENTS_FILE).write_bytes(lines[0] + b'{"kind": "metrics", "step": \n' + lines[1])
    follower = Follower(tmp_path)
    assert _signature(follower.poll()) == [("run_start", None, None), ("metrics", 1, "train")]
    assert len(follower.problems) == 1 and ":2:" in follower.problems[0]


def test_resolve_run_dir_picks_the_newest_run_under_a_parent(tmp_path):
    assert resolve_run_dir(tmp_path / "missing") is None
    assert resolve_run_dir(tmp_path) is None
    old, new = tmp_path / "dpo-1", tmp_path / "dpo-2"
    for d in (old, new):
        d.mkdir()
        (d / EVENTS_FILE).write_text("")
    os.utime(old / EVENTS_FILE, (1, 1))
    os.utime(old, (1, 1))
    assert resolve_run_dir(tmp_path) == new
    assert resolve_run_dir(old) == old


CHUNK_WRITER = textwrap.dedent("""
    import random, sys, time
    src, dst = sys.argv[1], sys.argv[2]
    data = open(src, "rb").read()
    rng = random.Random(7)
    with open(dst, "ab", buffering=0) as f:
        i = 0
        while i < len(data):
            n = rng.randint(1, 700)  # chunks that cut lines anywhere, often mid-line
            f.write(data[i:i + n])
            i += n
            time.sleep(rng.choice((0, 0, 0.001, 0.004)))
""")


def test_watcher_follows_a_writer_that_cuts_lines_anywhere(tmp_path):
    """A separate process appends the recorded run in random byte chunks while the watcher polls fast."""
    expected, problems = read_events(RECORDED)
    assert not problems
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    watcher = Watcher(run_dir, interval=0.002)
    seen = []
    watcher.monitor.subscribe(seen.append)
    watcher.start()
    subprocess.run([sys.executable, "-c", CHUNK_WRITER, str(RECORDED / EVENTS_FILE), str(run_dir / EVENTS_FILE)],
                   check=True, timeout=60)
    assert watcher.wait_until_ended(10)
    watcher.stop()
    assert not watcher.running
    assert watcher.follower is not None and watcher.follower.problems == []
    assert _signature(seen) == _signature(expected)
    assert watcher.events == len(expected)
    steps = [e.step for e in seen if isinstance(e, Metrics)]
    assert steps == list(range(1, 24))
    # the watched monitor is the same as a replay of the finished file
    assert watcher.monitor.state == "crashed" and watcher.monitor.end_event.step == 24
    assert watcher.monitor.history.get("loss").n == 23


WRITER = textwrap.dedent("""
    import sys
    from ptt_nb import DiagnosticsCallback
    from ptt_nb.tiny import make_trainer
    workdir, run_dir, steps = sys.argv[1], sys.argv[2], int(sys.argv[3])
    cb = DiagnosticsCallback(run_dir=run_dir, console=False, widget=False)
    make_trainer("dpo", workdir, callbacks=[cb], max_steps=steps).train()
""")


def _follow(cmd: list[str], watcher: Watcher, env: dict[str, str]) -> list[int]:
    """Run the writer to its end while the watcher follows; returns the steps the watcher had meanwhile (proof that
    it really follows live rather than reading the file once at the end)."""
    proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    live_steps = []
    while proc.poll() is None:
        live_steps.append(watcher.monitor.step)
        time.sleep(0.05)
    out = proc.stdout.read().decode(errors="replace")
    assert proc.returncode == 0, out[-3000:]
    assert watcher.wait_until_ended(10), watcher.describe()
    watcher.stop()
    return live_steps


@pytest.mark.slow
def test_watcher_follows_a_real_training_process(tmp_path):
    """A plain ``python`` process trains a tiny DPO with DiagnosticsCallback(run_dir=...); we watch the parent
    folder from before the run folder exists and must see every step exactly once, as the file has them."""
    steps = 40  # ~1 s of training: the live callback writes routine lines in batches of <= 0.2 s
    runs = tmp_path / "runs"
    watcher = Watcher(runs, interval=0.1)
    seen = []
    watcher.monitor.subscribe(seen.append)
    watcher.start()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    t0 = time.monotonic()
    live_steps = _follow([sys.executable, "-c", WRITER, str(tmp_path / "work"), str(runs / "dpo-1"), str(steps)],
                         watcher, env)
    expected, problems = read_events(runs / "dpo-1")
    assert not problems
    assert watcher.run_dir == runs / "dpo-1"
    assert _signature(seen) == _signature(expected)
    train_steps = [e.step for e in seen if isinstance(e, Metrics) and e.split == "train"]
    assert train_steps == list(range(1, steps + 1))
    assert isinstance(seen[-1], RunEnd) and seen[-1].reason == "finished"
    assert any(0 < s < steps for s in live_steps), "the watcher saw no intermediate step while the run was going"
    assert watcher.monitor.state == "finished"
    assert time.monotonic() - t0 < 120
    # the recorded lines are what the watcher applied (values included)
    loss_file = [e.values["loss"] for e in expected if isinstance(e, Metrics) and e.split == "train"]
    assert watcher.monitor.history.get("loss").values[:steps].tolist() == loss_file


def test_watcher_follows_a_torchrun_job_with_two_cpu_ranks(tmp_path):
    """The `accelerate launch`/torchrun case of `%ptt watch`: 2 gloo ranks train, rank 0 writes the folder, and the
    watcher (as a notebook kernel would) sees every event exactly once, live."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    from ptt_nb import tiny

    tiny.build_model(tmp_path / "work" / "model")  # once, before the ranks start (they must not race on it)
    steps, run_dir = 10, tmp_path / "run"
    watcher = Watcher(run_dir, interval=0.1)
    seen = []
    watcher.monitor.subscribe(seen.append)
    watcher.start()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "TRL_EXPERIMENTAL_SILENCE": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port),
           str(ROOT / "tests" / "dist_scripts" / "dpo_ranks.py"), "--workdir", str(tmp_path / "work"),
           "--run-dir", str(run_dir), "--steps", str(steps), "--every", "2", "--timeout", "90"]
    live_steps = _follow(cmd, watcher, env)
    expected, problems = read_events(run_dir)
    assert not problems
    assert _signature(seen) == _signature(expected)
    assert [e.step for e in seen if isinstance(e, Metrics) and e.split == "train"] == list(range(1, steps + 1))
    assert watcher.monitor.run.world_size == 2 and watcher.monitor.rank_stats, "rank stats reached the watcher"
    assert any(0 < s < steps for s in live_steps), "the watcher saw no intermediate step while the job ran"
