"""Cost of DiagnosticsCallback per training step, and its share of a tiny CPU DPO run's wall time.

1. Records the real logs of a tiny TRL DPO run (the same run is the share measurement: every callback method
   is timed from the inside, so the share is the callback's own time over the run's wall time).
2. Replays those logs through a fresh callback many times (on_step_begin + on_step_end + on_log: capture,
   history, every built-in rule, the run-folder write) and prints mean / p50 / p99 / max per step, plus the
   mean of each 1,000-step block to show there are no periodic spikes.

Floors (issue 2): mean ≤ 20 µs, p99 ≤ 200 µs per step, share ≤ 0.5 %. Figures are printed, not asserted.
Usage: python benchmarks/overhead.py [--steps 20000] [--train-steps 200]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

warnings.filterwarnings("ignore")
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def timed_callback(run_dir: Path):
    """A DiagnosticsCallback whose event methods accumulate their own wall time."""
    from ptt_nb import DiagnosticsCallback

    cb = DiagnosticsCallback(run_dir=run_dir, widget=False, console=False)
    cb.spent = 0.0
    for name in ("on_step_begin", "on_step_end", "on_log", "on_train_begin", "on_train_end", "on_init_end"):
        original = getattr(cb, name)

        def wrapper(*a, _original=original, **k):
            t0 = time.perf_counter()
            try:
                return _original(*a, **k)
            finally:
                cb.spent += time.perf_counter() - t0

        setattr(cb, name, wrapper)
    return cb


def record_and_measure_share(train_steps: int, workdir: Path) -> tuple[list[dict], float, float, float]:
    import torch
    from transformers import TrainerCallback

    from ptt_nb.tiny import make_trainer

    torch.set_num_threads(1)

    class Recorder(TrainerCallback):
        def __init__(self):
            self.logs = []

        def on_log(self, args, state, control, logs=None, **kwargs):
            self.logs.append(dict(logs))

    recorder = Recorder()
    cb = timed_callback(workdir / "share_run")
    trainer = make_trainer("dpo", workdir, callbacks=[cb, recorder], max_steps=train_steps)
    t0 = time.perf_counter()
    trainer.train()
    wall = time.perf_counter() - t0
    train_logs = [log for log in recorder.logs if "train_runtime" not in log]
    return train_logs, wall, cb.spent, cb.spent / wall


def replay(logs: list[dict], steps: int, workdir: Path) -> list[float]:
    from transformers import TrainerControl, TrainerState
    from trl import DPOConfig

    from ptt_nb import DiagnosticsCallback

    args = DPOConfig(output_dir=str(workdir / "out"), report_to=[], max_steps=steps, learning_rate=1e-4,
                     use_cpu=True, bf16=False)
    state, control = TrainerState(), TrainerControl()
    state.max_steps = steps
    cb = DiagnosticsCallback(run_dir=workdir / "replay_run", widget=False, console=False)
    cb.on_train_begin(args, state, control)
    assert cb.monitor.profile.name == "dpo"
    durations = []
    perf = time.perf_counter_ns
    n = len(logs)
    for step in range(1, steps + 1):
        log = dict(logs[(step - 1) % n])
        t0 = perf()
        cb.on_step_begin(args, state, control)
        state.global_step = step
        cb.on_step_end(args, state, control)
        cb.on_log(args, state, control, logs=log)
        durations.append((perf() - t0) / 1000.0)
    cb.on_train_end(args, state, control)
    return durations


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=20000)
    p.add_argument("--train-steps", type=int, default=200)
    a = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        logs, wall, spent, share = record_and_measure_share(a.train_steps, tmp)
        d = replay(logs, a.steps, tmp)
        d_sorted = sorted(d)
        p99 = d_sorted[int(0.99 * len(d)) - 1]
        blocks = [statistics.fmean(d[i:i + 1000]) for i in range(0, len(d), 1000)]
        print(f"recorded {len(logs)} real DPO log points ({len(logs[0])} keys each)")
        print(f"replay: {len(d)} steps through on_step_begin+on_step_end+on_log (all rules, run folder)")
        print(f"  mean {statistics.fmean(d):.1f} µs  p50 {d_sorted[len(d) // 2]:.1f} µs  p99 {p99:.1f} µs  "
              f"max {d_sorted[-1]:.1f} µs   [floors: mean ≤ 20 µs, p99 ≤ 200 µs]")
        print(f"  per-1000-step block means (µs): min {min(blocks):.1f}  max {max(blocks):.1f} "
              f"(flat = incremental rules)")
        print(f"tiny DPO run: {a.train_steps} steps in {wall:.2f} s wall ({wall / a.train_steps * 1e3:.1f} ms/step); "
              f"callback's own time {spent * 1e3:.1f} ms = {share * 100:.3f} % of wall   [floor ≤ 0.5 %]")


if __name__ == "__main__":
    main()
