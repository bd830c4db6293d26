"""Multi-process runs on CPU with gloo: real tiny TRL DPO runs under torchrun, accelerate launch and
accelerate.notebook_launcher, with faults injected on one rank (tests/dist_scripts/dpo_ranks.py).

The launches are real (no mocks): each run costs 15-35 s on two cores, so the runs are few and short, with
``rank_stats_every=2``. The rule unit tests at the end use hand-made RankStats and cost nothing.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from ptt_nb.events import RankStats, RunStart
from ptt_nb.monitor._monitor import Monitor
from ptt_nb.sinks._writer import RunWriter
from ptt_nb.sources._reader import load_run
from tests.conftest import REPO, events_of

torch = pytest.importorskip("torch")
dist = pytest.importorskip("torch.distributed")
pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="no gloo backend")

SCRIPT = REPO / "tests" / "dist_scripts" / "dpo_ranks.py"
RANK_RULES = {"straggler_rank", "memory_imbalance", "memory_growth_oom", "rank_desync", "rank_failure"}


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=str(REPO), TRL_EXPERIMENTAL_SILENCE="1", HF_HUB_OFFLINE="1",
               HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false", TRANSFORMERS_VERBOSITY="error")
    env.pop("PTT_NB_MEMORY_LIMIT_MB", None)
    env.update(extra)
    return env


def _torchrun(n: int) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(n), "--master_port", str(_port())]


def _accelerate(n: int) -> list[str]:
    # accelerate 1.15 on a CPU-only host: `--cpu --num_processes N` starts ONE process (its simple launcher only
    # goes multi-process through mpirun); `--multi_gpu` uses torch's elastic launcher, and the script's
    # TrainingArguments(use_cpu=True) then makes accelerate pick MULTI_CPU with gloo.
    return [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(n),
            "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
            "--main_process_port", str(_port())]


def _run(launcher: list[str], workdir: Path, run_dir: Path, *args: str, env: dict[str, str] | None = None,
         timeout: int = 150, check: bool = True) -> subprocess.CompletedProcess:
    cmd = [*launcher, str(SCRIPT), "--workdir", str(workdir), "--run-dir", str(run_dir), *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env or _env(), cwd=REPO)
    if check and proc.returncode != 0:
        pytest.fail(f"{' '.join(cmd)} exited {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return proc


def _alerts(run_dir: Path, rule: str | None = None, state: str = "active") -> list[dict]:
    return [a for a in events_of(run_dir, "alert") if (rule is None or a["rule"] == rule) and a["state"] == state]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """One tiny model on disk for every run (built once, before any rank starts: ranks must not race on it)."""
    from ptt_nb import tiny

    root = tmp_path_factory.mktemp("dist")
    tiny.build_model(root / "model")
    return root


@pytest.fixture(scope="module")
def straggler_run(workdir) -> Path:
    """4 ranks under torchrun; rank 2 sleeps 300 ms inside its forward pass (in the first decoder layer). (300, not
    150: with 4 ranks on 2 shared cores a fast rank's compute was once measured at 100 ms under load, against 199
    ms for rank 2, and the 2x check below failed.)"""
    run_dir = workdir / "straggler"
    _run(_torchrun(4), workdir, run_dir, "--steps", "12", "--every", "2", "--slow-rank", "2", "--slow-ms", "300")
    return run_dir


def test_straggler_is_named_by_compute_time_under_torchrun_4_ranks(straggler_run):
    stats = events_of(straggler_run, "rank_stats")
    assert [s["step"] for s in stats] == [2, 4, 6, 8, 10, 12]
    assert all(s["world_size"] == 4 and len(s["per_rank"]["compute_ms"]) == 4 for s in stats)
    last = stats[-1]["per_rank"]
    # step time is equalised by the all-reduce; compute time is not, and the fast ranks wait for rank 2
    assert max(last["step_ms"]) / min(last["step_ms"]) < 1.2
    assert last["compute_ms"][2] > 2 * max(c for r, c in enumerate(last["compute_ms"]) if r != 2)
    assert last["wait_ms"][2] < min(w for r, w in enumerate(last["wait_ms"]) if r != 2)
    alerts = _alerts(straggler_run, "straggler_rank")
    assert alerts, "no straggler alert"
    first = alerts[0]
    assert first["evidence"]["rank"] == 2 and first["step"] <= 10  # within 5 intervals of 2 steps
    assert "Rank 2 is a straggler" in first["message"] and "median of the other ranks" in first["message"]
    assert all(a["evidence"]["rank"] == 2 for a in alerts)
    assert not _alerts(straggler_run, "rank_desync")


def test_replay_reevaluates_rank_rules(straggler_run):
    """The rules work on a run folder: re-running them on the recorded rank stats finds the same straggler."""
    monitor = load_run(straggler_run, evaluate=True)
    found = [a for a in monitor.alerts if a.rule == "straggler_rank" and a.state == "active"]
    assert found and found[0].evidence["rank"] == 2
    assert found[0].step == _alerts(straggler_run, "straggler_rank")[0]["step"]


def test_healthy_accelerate_run_flags_nothing_and_a_rank0_stop_stops_every_rank(workdir):
    """2 ranks under accelerate launch, nothing injected: no distributed alert. A user stop that only rank 0 sees
    (the widget's button) is agreed at the next gather (step 16), so both ranks stop there instead of rank 1
    hanging in the next all-reduce. (every=4 here: on two shared cores a rank descheduled for a second or two is
    a real, if transient, straggler; 3 intervals of 4 steps keep that apart from an injected one.)"""
    run_dir = workdir / "healthy"
    # a hang still fails (a rank left in an all-reduce errors out after --timeout); 90 s / 300 s, not 30 / 150, so a
    # loaded machine (model load + first gather slowed several-fold) cannot trip the process-group timeout instead
    proc = _run(_accelerate(2), workdir, run_dir, "--steps", "24", "--every", "4", "--stop-step", "13",
                "--timeout", "90", timeout=300)
    assert proc.returncode == 0
    stats = events_of(run_dir, "rank_stats")
    assert stats and all(s["world_size"] == 2 for s in stats)
    names = set(stats[-1]["per_rank"])
    assert {"compute_ms", "wait_ms", "data_ms", "step_ms", "mem_peak_mb", "mem_allocated_mb", "tokens_per_s"} <= names
    assert "mem_reserved_mb" not in names  # CPU: no CUDA caching allocator
    flagged = [a for a in events_of(run_dir, "alert") if a["rule"] in RANK_RULES]
    assert not flagged, [a["message"] for a in flagged]
    end = events_of(run_dir, "run_end")[-1]
    assert end["reason"] == "user_stop" and end["step"] == 16
    assert [s["step"] for s in stats] == [4, 8, 12, 16]


def test_memory_growth_on_one_rank_raises_memory_rules(workdir):
    """Rank 1 keeps 40 MB more every step: it becomes the heaviest rank and is projected to hit its limit."""
    run_dir = workdir / "memory"
    _run(_torchrun(2), workdir, run_dir, "--steps", "16", "--every", "2", "--grow-rank", "1", "--grow-mb", "40",
         env=_env(PTT_NB_MEMORY_LIMIT_MB="1000"))
    growth = _alerts(run_dir, "memory_growth_oom")
    assert growth and growth[0]["evidence"]["rank"] == 1
    assert 30 <= growth[0]["evidence"]["mb_per_step"] <= 50
    assert growth[0]["evidence"]["oom_step"] <= 16 and "runs out at about step" in growth[0]["message"]
    imbalance = _alerts(run_dir, "memory_imbalance")
    assert imbalance and imbalance[0]["evidence"]["rank_max"] == 1 and imbalance[0]["evidence"]["ratio"] > 1.3
    assert not _alerts(run_dir, "memory_growth_oom")[1:], "one episode, not one alert per interval"


def test_killed_rank_leaves_a_postmortem_naming_it(workdir):
    """Rank 1 is SIGKILLed in its forward pass at step 5: rank 0's folder says rank 1 failed."""
    run_dir = workdir / "killed"
    proc = _run(_torchrun(2), workdir, run_dir, "--steps", "12", "--every", "2", "--kill-rank", "1",
                "--kill-step", "5", "--timeout", "20", check=False, timeout=120)
    assert proc.returncode != 0
    assert (run_dir / "postmortem.json").exists(), f"no postmortem\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    pm = json.loads((run_dir / "postmortem.json").read_text())
    assert pm["exit_reason"] == "rank_failure", pm["exit_reason"]
    assert pm["distributed"]["failed_ranks"] == [1]
    assert "rank 1" in pm["detail"]
    failure = _alerts(run_dir, "rank_failure")
    assert failure and failure[0]["severity"] == "critical"


def test_sigterm_during_the_failure_write_up_waits_for_the_postmortem(workdir):
    """torchrun SIGTERMs rank 0 as soon as it reaps a dead peer; when that lands while rank 0 is writing the failure
    up, the postmortem must still be written, and the process must still end by the SIGTERM."""
    run_dir = workdir / "sigterm-mid-finish"
    proc = subprocess.run([sys.executable, str(REPO / "tests" / "dist_scripts" / "sigterm_mid_finish.py"),
                           str(workdir), str(run_dir)], capture_output=True, text=True, timeout=150, env=_env(),
                          cwd=REPO)
    assert proc.returncode == -signal.SIGTERM, (proc.returncode, proc.stdout[-2000:], proc.stderr[-4000:])
    assert (run_dir / "postmortem.json").exists(), proc.stderr[-4000:]
    pm = json.loads((run_dir / "postmortem.json").read_text())
    assert pm["exit_reason"] == "exception" and "Connection closed by peer" in pm["detail"]
    assert events_of(run_dir, "run_end")[-1]["reason"] == "exception"


def test_notebook_launcher_children_are_followed_by_the_parent(workdir):
    """notebook_launcher forks the ranks; the parent (a notebook kernel) follows child rank 0's run folder."""
    run_dir = workdir / "notebook"
    proc = subprocess.run([sys.executable, str(REPO / "tests" / "dist_scripts" / "notebook_launch.py"),
                           str(workdir), str(run_dir), str(_port())],
                          capture_output=True, text=True, timeout=150, env=_env(), cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-4000:]
    seen = json.loads(proc.stdout.strip().splitlines()[-1])
    assert seen["ended"] and seen["state"] == "finished" and seen["step"] == 6
    assert seen["rank_stats"] == [[2, 2], [4, 2], [6, 2]]
    assert "loss" in seen["metric_steps"]


# -- rules on hand-made intervals --------------------------------------------------------------------------------
def _monitor(tmp_path: Path | None = None, max_steps: int = 100) -> Monitor:
    m = Monitor()
    if tmp_path is not None:
        m.subscribe(RunWriter(tmp_path))
    m.start(RunStart(run_id="t", trainer="DPOTrainer", algorithm="dpo", world_size=4, max_steps=max_steps))
    return m


def _stats(step: int, compute: list[float], **extra: list[float]) -> RankStats:
    per_rank = {"compute_ms": compute, "step": [float(step)] * len(compute), **extra}
    return RankStats(step=step, world_size=len(compute), per_rank=per_rank)


def _active(m: Monitor, rule: str):
    return [a for a in m.alerts if a.rule == rule and a.state == "active"]


def test_straggler_needs_consecutive_intervals_and_escalates_when_persistent():
    m = _monitor()
    m.add_rank_stats(_stats(2, [10, 10, 30, 10]))      # one slow interval: not yet
    m.add_rank_stats(_stats(4, [10, 10, 10, 10]))
    m.add_rank_stats(_stats(6, [10, 10, 30, 10]))
    m.add_rank_stats(_stats(8, [10, 10, 30, 10]))
    assert not _active(m, "straggler_rank")
    m.add_rank_stats(_stats(10, [10, 10, 30, 10]))     # third consecutive interval, 5 steps
    first = _active(m, "straggler_rank")
    assert len(first) == 1 and first[0].evidence["rank"] == 2 and first[0].severity == "medium"
    assert "transient so far" in first[0].message and "3.00x" in first[0].message
    for step in range(12, 32, 2):
        m.add_rank_stats(_stats(step, [10, 10, 30, 10]))
    persistent = [a for a in _active(m, "straggler_rank") if a.severity == "high"]
    assert persistent and "persistent" in persistent[0].message
    for step in (32, 34, 36):
        m.add_rank_stats(_stats(step, [10, 10, 10, 10]))
    assert [a for a in m.alerts if a.rule == "straggler_rank" and a.state == "resolved"]


def test_equal_step_times_and_noise_do_not_make_a_straggler():
    m = _monitor()
    for step, noise in zip(range(2, 40, 2), [0, 1, 2, 3] * 10, strict=False):
        compute = [20.0, 20.0, 20.0, 20.0]
        compute[noise] = 27.0  # 1.35x on a different rank each interval (CPU contention)
        m.add_rank_stats(_stats(step, compute, step_ms=[100.0] * 4))
    assert not _active(m, "straggler_rank")


def test_memory_rules_on_cuda_like_intervals():
    m = _monitor(max_steps=200)
    limit = [40000.0] * 4
    for i, step in enumerate(range(10, 90, 10)):
        peak = [20000.0, 20000.0, 20000.0 + 2000 * i, 20000.0]  # rank 2 grows 200 MB per step
        m.add_rank_stats(_stats(step, [10.0] * 4, mem_peak_mb=peak, mem_limit_mb=limit))
    growth = _active(m, "memory_growth_oom")
    assert growth and growth[0].evidence["rank"] == 2
    assert growth[0].evidence["mb_per_step"] == pytest.approx(200, rel=0.01)
    assert growth[0].evidence["oom_step"] == pytest.approx(110, abs=1)  # 20000 + 200 * (s - 10) = 40000
    assert _active(m, "memory_imbalance")[0].evidence["rank_max"] == 2


def test_memory_growth_beyond_the_last_step_is_not_an_oom_alert():
    m = _monitor(max_steps=100)
    for i, step in enumerate(range(10, 90, 10)):
        peak = [20000.0, 20000.0 + 10 * i * 10, 20000.0, 20000.0]  # 10 MB/step: the limit is ~6000 steps away
        m.add_rank_stats(_stats(step, [10.0] * 4, mem_peak_mb=peak, mem_limit_mb=[80000.0] * 4))
    assert not _active(m, "memory_growth_oom")
    assert not _active(m, "memory_imbalance")


def test_rank_desync_names_the_ranks_and_replays(tmp_path):
    m = _monitor(tmp_path)
    m.add_rank_stats(RankStats(step=10, world_size=4, per_rank={"step": [10, 10, 10, 10], "compute_ms": [1] * 4}))
    assert not _active(m, "rank_desync")
    m.add_rank_stats(RankStats(step=20, world_size=4, per_rank={"step": [20, 20, 120, 20], "compute_ms": [1] * 4}))
    alert = _active(m, "rank_desync")[0]
    assert "step 20: ranks 0-1, 3" in alert.message and "step 120: rank 2" in alert.message
    replay = load_run(tmp_path, evaluate=True)
    assert [a.message for a in replay.alerts if a.rule == "rank_desync" and a.state == "active"] == [alert.message]
    recorded = load_run(tmp_path)  # evaluate=False: the recorded alert as it was
    assert any(a.rule == "rank_desync" for a in recorded.alerts)


def test_single_process_runs_leave_rank_rules_dormant():
    m = _monitor()
    m.log(1, {"loss": 0.69, "grad_norm": 1.0, "learning_rate": 1e-4})
    assert {"straggler_rank", "memory_imbalance", "memory_growth_oom", "rank_desync"} <= set(m.engine.dormant())


@pytest.mark.parametrize(("folder", "slow", "by_step"), [("h200x4_straggler", 1, 40), ("h100x2_straggler", 1, 60)])
def test_recorded_nccl_runs_replay_to_the_same_findings(folder, slow, by_step):
    """Run folders recorded on GPUs (benchmarks/gpu/): the rules re-run on them name the slow and the growing rank."""
    monitor = load_run(REPO / "benchmarks" / "gpu" / folder, evaluate=True)
    active = {a.rule: a for a in reversed(monitor.alerts)}  # each rule's first episode (maybe resolved since)
    assert active["straggler_rank"].evidence["rank"] == slow and active["straggler_rank"].step <= by_step
    assert active["memory_growth_oom"].evidence["rank"] == 0
    assert active["memory_imbalance"].evidence["rank_max"] == 0
    stats = monitor.rank_stats[-1].per_rank
    assert max(stats["step_ms"]) / min(stats["step_ms"]) < 1.01  # NCCL equalises step time ...
    assert stats["compute_ms"][slow] > 1.3 * max(c for r, c in enumerate(stats["compute_ms"]) if r != slow)


@pytest.fixture
def single_rank_group(tmp_path):
    """A real 1-rank gloo process group in this process (the collector's own logic, no launcher)."""
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


class _Args:
    per_device_train_batch_size = 4
    gradient_accumulation_steps = 1
    use_cpu = True
    device = None


class _Callback:
    """What the collector reads from DiagnosticsCallback: monitor, trainer (none: no model hooks), state."""

    def __init__(self, monitor: Monitor) -> None:
        self.monitor, self.trainer, self._state, self.run_dir, self._finished = monitor, None, None, None, False


def test_collector_gathers_on_schedule_and_survives_a_local_failure(single_rank_group, monkeypatch):
    from ptt_nb.sources._ranks import RankStatsCollector

    monitor = _monitor()
    collector = RankStatsCollector(_Callback(monitor), _Args(), every=3, watchdog=False)
    for step in range(1, 7):
        collector.step_begin(step - 1)
        collector.pre_optimizer_step()
        collector.step_end(step)
    assert [s.step for s in monitor.rank_stats] == [3, 6]
    assert monitor.rank_stats[-1].per_rank["mem_allocated_mb"][0] > 0  # CPU: RSS
    monkeypatch.setattr(collector, "_memory", lambda: 1 / 0)  # a local bug must not make this rank skip the gather
    for step in range(7, 10):
        collector.step_begin(step - 1)
        collector.step_end(step)
    last = monitor.rank_stats[-1]
    assert last.step == 9 and last.per_rank["step"] == [9.0] and "mem_allocated_mb" not in last.per_rank
    collector.pause()
    collector.step_end(12)  # paused: no gather
    collector.resume()
    for step in range(13, 16):
        collector.step_begin(step - 1)
        collector.step_end(step)
    assert [s.step for s in monitor.rank_stats][-1] == 15  # re-aligned to a multiple of every
    collector.close()
