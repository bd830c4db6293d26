"""What each observer a user would pick costs inside a real TRL run: ptt_nb's DiagnosticsCallback next to
transformers' ProgressCallback (tqdm), TensorBoardCallback, trackio (report_to="trackio", local SQLite), W&B
offline (WANDB_MODE=offline) and MLflow (a local file store), on the same tiny DPO and GRPO runs.

How it measures. One process; every arm is the same ``ptt_nb.tiny.make_trainer`` run (a 2-layer Llama built
from config, offline) with one observer. After the trainer is built, every ``on_*`` event method of every
callback in ``trainer.callback_handler.callbacks`` is replaced on the instance by a timing wrapper (wall:
perf_counter_ns, CPU: this thread's thread_time_ns, around the original). The handler calls
``getattr(callback, event)``, so it calls the wrapper, and the callback stays the same object (isinstance checks
hold). The time is split into setup (``on_train_begin``: wandb.init, trackio.init, mlflow.start_run and its
params, the SummaryWriter, ptt_nb's run folder), the per-step hooks (every other event, summed over the run and
divided by its steps) and teardown (``on_train_end``; for W&B also ``wandb.finish()``, called after train()
because WandbCallback leaves the run open, and counted in that arm's wall). A do-nothing callback (no overrides)
is timed the same way in every arm; its per-step time, the wrappers' own cost, is subtracted. ``on_init_end``
runs inside the Trainer constructor, before the wrappers exist, and is not timed (ptt_nb finds its trainer
there). Ratios: the arm's train() (+ wandb.finish) over the mean of the two bare runs that open and close
the same rotation, as wall time and as CPU time of this process (all threads) plus its children (wandb-core),
median over rotations. The observer arms are rotated (rotation r starts at the r-th) so load from the shared
machine's other processes falls on every arm alike; a warm-up rotation of ``--warmup-steps`` first pays each
library's import and first start (the wandb-core service, ...) and is not counted (its walls are printed as
"cold s"). The hook times are what the training loop waits for per step and carry over to a real model
(on a loaded machine the wall figure also holds preemption: read the CPU one); the ratios are for these tiny
CPU steps (tens of ms) and shrink as the step grows.

Arms. bare: ``report_to=[]``, ``disable_tqdm=True`` and transformers' PrinterCallback removed, so only
DefaultFlowCallback (it drives logging and stopping; every arm has it) and the do-nothing probe remain. Every
other arm is bare plus one observer: tqdm (ProgressCallback, disable_tqdm=False), tensorboard (report_to; it
flushes its event file on every log), trackio (TRACKIO_DIR in the temp dir, no space_id: local only), wandb
(WANDB_MODE=offline, every WANDB_*_DIR in the temp dir), mlflow (MLFLOW_TRACKING_URI=file:<temp>/mlruns, with
MLFLOW_ALLOW_FILE_STORE since mlflow 3.18 refuses a file store otherwise, telemetry off) and ptt_nb
(DiagnosticsCallback(widget=False, console=True): capture, every built-in rule, the run-folder writer). An arm
whose library is not installed, or that fails in its warm-up, is skipped with a printed line. Python's
stdout/stderr go to /dev/null while training (tqdm's bar and log lines are formatted and written; a
terminal's drawing is not in this process). Every file any arm writes lies in one temporary directory (also
TMPDIR and the working directory while it runs), removed at the end; no arm opens a network connection (checked
under strace -f: only unix sockets to wandb-core inside the temp dir, wandb's netlink interface listing, and
urllib3's import-time bind to ::1). torch uses one thread (``--threads``): on the 2-core machine the other core
takes the observers' background threads and processes (TensorBoard's writer thread, wandb-core, trackio's
writer, ptt_nb's batched writer), whose cost shows in the ratios, not in the hook times.

Install and run (constraints.txt pins pillow 12.3, which trackio 0.43 asks for: pillow<13):

    pip install -c constraints.txt -e '.[trl,peers]'
    python benchmarks/peers.py [--steps 50] [--reps 4] [--algos dpo,grpo] [--arms tqdm,...] [--threads 1] [--detail]
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import importlib.util
import os
import statistics
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

warnings.filterwarnings("ignore")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

SETUP_EVENTS = ("on_train_begin",)
TEARDOWN_EVENTS = ("on_train_end",)


@dataclass
class Arm:
    name: str
    module: str | None  # the library the arm needs (None: always there)
    config: dict[str, Any] = field(default_factory=dict)  # make_trainer / TrainingArguments overrides
    ptt_nb: bool = False


ARMS = [
    Arm("bare", None),
    Arm("tqdm", "tqdm", {"disable_tqdm": False}),
    Arm("tensorboard", "tensorboard", {"report_to": ["tensorboard"]}),
    Arm("trackio", "trackio", {"report_to": ["trackio"]}),
    Arm("wandb", "wandb", {"report_to": ["wandb"]}),
    Arm("mlflow", "mlflow", {"report_to": ["mlflow"]}),
    Arm("ptt_nb", None, ptt_nb=True),
]


def offline_env(tmp: Path) -> None:
    """Point every library at the temp dir and keep them off the network; set before any of them is imported
    (trackio reads TRACKIO_DIR at import)."""
    env = {
        "TRL_EXPERIMENTAL_SILENCE": "1", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error", "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
        "TRACKIO_DIR": str(tmp / "trackio"), "TRACKIO_PROJECT": "ptt-peers",
        "WANDB_MODE": "offline", "WANDB_SILENT": "true", "WANDB_DIR": str(tmp / "wandb"),
        "WANDB_CACHE_DIR": str(tmp / "wandb_cache"), "WANDB_CONFIG_DIR": str(tmp / "wandb_config"),
        "WANDB_DATA_DIR": str(tmp / "wandb_data"), "WANDB_ARTIFACT_DIR": str(tmp / "wandb_artifacts"),
        "WANDB_PROJECT": "ptt-peers", "WANDB_DISABLE_GIT": "true", "WANDB_DISABLE_CODE": "true",
        "MLFLOW_TRACKING_URI": (tmp / "mlruns").as_uri(), "MLFLOW_EXPERIMENT_NAME": "ptt-peers",
        "MLFLOW_ALLOW_FILE_STORE": "true",  # mlflow 3.18 refuses a file store without it (maintenance mode)
        # mlflow's telemetry thread would fetch https://config.mlflow-telemetry.io (seen under an audit hook)
        "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true", "WANDB_ERROR_REPORTING": "false",
        "TMPDIR": str(tmp),  # wandb's service socket folder, and any library's scratch files
    }
    for key in ("TRACKIO_SPACE_ID", "TRACKIO_SERVER_URL", "TRACKIO_BUCKET_ID", "TRACKIO_WEBHOOK_URL",
                "WANDB_API_KEY", "WANDB_BASE_URL"):
        os.environ.pop(key, None)
    os.environ.update(env)
    tempfile.tempdir = str(tmp)
    (tmp / "wandb").mkdir(exist_ok=True)


def time_hooks(callback: Any, events: list[str]) -> dict[str, list[int]]:
    """Replace ``callback``'s event methods by wrappers adding their wall and this thread's CPU time (ns) to the
    returned dict (event -> [wall, cpu])."""
    spent: dict[str, list[int]] = {}
    wall, cpu = time.perf_counter_ns, time.thread_time_ns
    for name in events:
        original = getattr(callback, name, None)
        if original is None:
            continue
        spent[name] = [0, 0]

        def wrapper(*a, _original=original, _acc=spent[name], **k):
            t0, c0 = wall(), cpu()
            try:
                return _original(*a, **k)
            finally:
                c1, t1 = cpu(), wall()
                _acc[0] += t1 - t0
                _acc[1] += c1 - c0

        setattr(callback, name, wrapper)
    return spent


def _cpu_s() -> float:
    """CPU seconds of this process (all threads) and of its live children (wandb-core runs as one)."""
    total = time.process_time()
    try:
        import psutil

        for child in psutil.Process().children(recursive=True):
            with contextlib.suppress(psutil.Error):
                times = child.cpu_times()
                total += times.user + times.system
    except ImportError:
        pass
    return total


@dataclass
class Result:
    wall: float  # train() (+ wandb.finish) seconds
    cpu: float  # CPU seconds of the process and its children meanwhile
    init: float  # trainer construction seconds (not in the ratio)
    steps: int
    setup_ns: int = 0  # wall in on_train_begin
    step_ns: int = 0  # wall in every per-step event
    step_cpu_ns: int = 0  # the same, thread CPU time
    teardown_ns: int = 0  # wall in on_train_end (+ wandb.finish)
    probe_ns: int = 0  # the do-nothing callback's per-step events: the wrappers' own cost
    probe_cpu_ns: int = 0
    events_cpu_ns: dict[str, int] = field(default_factory=dict)  # per-step event -> thread CPU ns, summed


def run_arm(arm: Arm, algorithm: str, steps: int, tmp: Path, tag: str) -> Result:
    from transformers import PrinterCallback, TrainerCallback

    from ptt_nb import DiagnosticsCallback
    from ptt_nb.tiny import make_trainer

    work = tmp / algorithm
    probe = TrainerCallback()  # no overrides: what the timing wrappers cost
    callbacks: list[Any] = [probe]
    if arm.ptt_nb:
        callbacks.append(DiagnosticsCallback(run_dir=tmp / "ptt_runs" / tag, widget=False, console=True))
    config = {"report_to": [], "disable_tqdm": True, "run_name": tag, "project": "ptt-peers",
              "output_dir": str(work / "out" / tag), **arm.config}
    devnull = open(os.devnull, "w")
    finish_ns = 0
    try:
        with contextlib.redirect_stdout(devnull), contextlib.redirect_stderr(devnull):
            t0 = time.perf_counter()
            trainer = make_trainer(algorithm, work, callbacks=callbacks, max_steps=steps, **config)
            init = time.perf_counter() - t0
            handler = trainer.callback_handler
            if arm.name != "tqdm":
                handler.remove_callback(PrinterCallback)
            events = [n for n in dir(TrainerCallback) if n.startswith("on_") and n != "on_init_end"]
            spent = {id(cb): time_hooks(cb, events) for cb in handler.callbacks}
            observers = [cb for cb in handler.callbacks
                         if cb is not probe and type(cb).__name__ != "DefaultFlowCallback"]
            gc.collect()
            c0, t0 = _cpu_s(), time.perf_counter()
            trainer.train()
            if arm.name == "wandb":
                import wandb

                f0 = time.perf_counter_ns()
                wandb.finish()
                finish_ns = time.perf_counter_ns() - f0
            wall, cpu = time.perf_counter() - t0, _cpu_s() - c0
    finally:
        devnull.close()
    res = Result(wall=wall, cpu=cpu, init=init, steps=trainer.state.global_step, teardown_ns=finish_ns)
    for cb in observers:
        for name, (ns, cpu_ns) in spent[id(cb)].items():
            if name in SETUP_EVENTS:
                res.setup_ns += ns
            elif name in TEARDOWN_EVENTS:
                res.teardown_ns += ns
            else:
                res.step_ns += ns
                res.step_cpu_ns += cpu_ns
                res.events_cpu_ns[name] = res.events_cpu_ns.get(name, 0) + cpu_ns
    for name, (ns, cpu_ns) in spent[id(probe)].items():
        if name not in SETUP_EVENTS + TEARDOWN_EVENTS:
            res.probe_ns += ns
            res.probe_cpu_ns += cpu_ns
    del trainer
    gc.collect()
    return res


def available(arms: list[Arm]) -> list[Arm]:
    keep = []
    for arm in arms:
        if arm.module is not None and importlib.util.find_spec(arm.module) is None:
            print(f"skipped {arm.name}: {arm.module} is not installed (pip install -c constraints.txt -e '.[peers]')")
            continue
        keep.append(arm)
    return keep


def summarise(algorithm: str, arms: list[Arm], results: dict[str, list[Result]], cold: dict[str, float],
              detail: bool = False) -> None:
    bare = results["bare"]
    bare_ms = statistics.median(r.wall / r.steps for r in bare) * 1e3
    print(f"\n{algorithm.upper()}: {bare[0].steps} steps x {len(bare)} rotations; bare run {bare_ms:.1f} ms/step "
          f"wall (median). µs/step: time inside the observer's per-step hooks, net of the timing wrappers (median of "
          f"the rotations); setup/teardown: on_train_begin / on_train_end (+ wandb.finish), ms per run; ratios: "
          f"train() vs the mean of the rotation's opening and closing bare runs, median "
          f"[min-max]; CPU: this process and its children")
    print(f"{'observer':<12} {'wall µs/step':>12} {'CPU µs/step':>11} {'setup ms':>9} {'teardown ms':>11} "
          f"{'wall ratio':>22} {'CPU ratio':>22} {'cold s':>7} {'init s':>7}")

    def med(values) -> float:
        return statistics.median(list(values))

    for arm in arms:
        rs = results[arm.name]
        net = med(max(0.0, (r.step_ns - r.probe_ns) / r.steps / 1e3) for r in rs)
        net_cpu = med(max(0.0, (r.step_cpu_ns - r.probe_cpu_ns) / r.steps / 1e3) for r in rs)
        if arm.name == "bare":
            net = net_cpu = 0.0
        walls = [r.wall / b.wall for r, b in zip(rs, bare, strict=True)]
        cpus = [r.cpu / b.cpu for r, b in zip(rs, bare, strict=True)]
        print(f"{arm.name:<12} {net:>12.1f} {net_cpu:>11.1f} {med(r.setup_ns / 1e6 for r in rs):>9.1f} "
              f"{med(r.teardown_ns / 1e6 for r in rs):>11.1f} "
              f"{med(walls):>8.3f} [{min(walls):.3f}-{max(walls):.3f}] {med(cpus):>8.3f} [{min(cpus):.3f}-"
              f"{max(cpus):.3f}] {cold.get(arm.name, float('nan')):>7.2f} {med(r.init for r in rs):>7.2f}")
    if detail:
        print("per-event CPU µs/step (gross, the wrapper's share included), events above 1 µs:")
        for arm in arms[1:]:
            rs = results[arm.name]
            names = sorted({n for r in rs for n in r.events_cpu_ns})
            per = {n: med(r.events_cpu_ns.get(n, 0) / r.steps / 1e3 for r in rs) for n in names}
            print(f"  {arm.name:<12} " + ", ".join(f"{n} {v:.1f}" for n, v in sorted(per.items(), key=lambda kv: -kv[1])
                                                 if v >= 1.0))
    probe = med(r.probe_ns / r.steps / 1e3 for rs in results.values() for r in rs)
    print(f"(timing wrappers: {probe:.1f} µs/step per callback, timed on a do-nothing callback and subtracted; "
          f"cold s: wall of the arm's first run in this process, the short warm-up)")


def measure(algorithm: str, arms: list[Arm], a: argparse.Namespace, tmp: Path) -> None:
    """Warm-up rotation (not counted), then ``a.reps`` rotations of ``a.steps`` steps per arm."""
    cold = {}
    for arm in list(arms):  # warm-up: imports, first service start; not counted
        try:
            cold[arm.name] = run_arm(arm, algorithm, a.warmup_steps, tmp, f"{algorithm}-{arm.name}-cold").wall
        except Exception as exc:  # a library that cannot run here: say so, measure the others
            if arm.name == "bare":
                raise
            print(f"skipped {arm.name} for {algorithm}: {type(exc).__name__}: {str(exc)[:200]}")
            arms.remove(arm)
    results: dict[str, list[Result]] = {arm.name: [] for arm in arms}
    bare, others = arms[0], arms[1:]
    for rep in range(a.reps):  # bare opens and closes each rotation: the ratio's yardstick is their mean
        order = others[rep % len(others):] + others[:rep % len(others)] if others else []
        first = run_arm(bare, algorithm, a.steps, tmp, f"{algorithm}-bare-{rep}a")
        for arm in order:
            results[arm.name].append(run_arm(arm, algorithm, a.steps, tmp, f"{algorithm}-{arm.name}-{rep}"))
        last = run_arm(bare, algorithm, a.steps, tmp, f"{algorithm}-bare-{rep}b")
        results["bare"].append(Result(wall=(first.wall + last.wall) / 2, cpu=(first.cpu + last.cpu) / 2,
                                      init=(first.init + last.init) / 2, steps=first.steps))
    summarise(algorithm, arms, results, cold, a.detail)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--reps", type=int, default=4)
    p.add_argument("--warmup-steps", type=int, default=3)
    p.add_argument("--algos", default="dpo,grpo")
    p.add_argument("--arms", default=",".join(a.name for a in ARMS))
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--detail", action="store_true", help="also print each observer's CPU time per event")
    a = p.parse_args()
    wanted = a.arms.split(",")
    unknown = set(wanted) - {arm.name for arm in ARMS}
    if unknown:
        p.error(f"unknown arms {sorted(unknown)}")
    here = os.getcwd()
    with tempfile.TemporaryDirectory(prefix="ptt_peers_") as tmp_name:
        tmp = Path(tmp_name)
        offline_env(tmp)
        os.chdir(tmp)  # a library that ignores its *_DIR variable still writes into the temp dir
        try:
            import torch

            torch.set_num_threads(a.threads)
            arms = available([arm for arm in ARMS if arm.name in wanted or arm.name == "bare"])
            print(f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}; torch {torch.__version__}"
                  f" threads {a.threads}; files under {tmp}")
            print("versions: " + ", ".join(_versions(arms)))
            for algorithm in a.algos.split(","):
                measure(algorithm, list(arms), a, tmp)
        finally:
            os.chdir(here)


def _versions(arms: list[Arm]) -> list[str]:
    from importlib.metadata import PackageNotFoundError, version

    out = []
    for dist in ("trl", "transformers", "tqdm", "tensorboard", "trackio", "wandb", "mlflow-skinny", "mlflow"):
        try:
            out.append(f"{dist} {version(dist)}")
        except PackageNotFoundError:
            pass
    return out


if __name__ == "__main__":
    main()
