"""Time to read and diagnose a long run recorded by another tool (issue 14: a 100k-step run < 5 s per format).

Synthetic 100k-step runs are written by the real writers: ``trainer_state.json`` by transformers'
``TrainerState.save_to_json``, TensorBoard events by transformers' ``TensorBoardCallback`` (torch's
``SummaryWriter``; the run's ``DPOConfig`` as the ``args`` text, one ``add_scalar`` per key and a flush per log),
a JSONL and a CSV of the log dicts. The values are the real DPO logs of tests/data/healthy_dpo.jsonl played
forward then backward (benchmarks/engine.py's ``pingpong``), with an eval row every 1,000 steps and the final
``train_runtime`` row, so the rules see a plausible run. Each file is then read and diagnosed by the path
``ptt-nb diagnose`` takes: ``load`` is the format's reader (file → log dicts), ``diagnose`` the replay through the
Monitor and every rule plus the alert table, ``total`` both. Events/s counts the scalars (one per key and log).
Wall and this process's CPU time are printed, each beside the floor (on the shared 2-core machine wall time
includes preemption by other processes; CPU time is this code's own cost).

    python benchmarks/imports.py [--steps 100000] [--repeat 2] [--dir /tmp/ptt_imports]   # --dir keeps the files
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path
from types import SimpleNamespace

warnings.filterwarnings("ignore")
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from engine import pingpong, recorded  # noqa: E402 - the engine benchmark's recorded DPO logs and replay order

FLOOR_S = 5.0
EVAL_EVERY = 1000


def log_rows(steps: int) -> list[dict]:
    """The log dicts a Trainer would log (``log_history`` rows: the values plus ``step``)."""
    _, logs = recorded("healthy_dpo")
    rows = []
    for i in range(steps):
        step = i + 1
        row = dict(pingpong(logs, i))
        row["epoch"] = round(step / steps * 3, 4)
        rows.append({**row, "step": step})
        if step % EVAL_EVERY == 0:
            rows.append({"eval_loss": row["loss"] + 0.01, "eval_rewards/margins": row["rewards/margins"],
                         "eval_runtime": 1.5, "eval_samples_per_second": 40.0, "epoch": row["epoch"], "step": step})
    rows.append({"train_runtime": steps * 0.2, "train_samples_per_second": 20.0, "train_steps_per_second": 5.0,
                 "total_flos": 1e12, "train_loss": 0.5, "epoch": 3.0, "step": steps})
    return rows


def write_trainer_state(rows: list[dict], out: Path, steps: int) -> Path:
    from transformers import TrainerState

    out.mkdir(parents=True, exist_ok=True)
    TrainerState(log_history=rows, global_step=steps, max_steps=steps).save_to_json(str(out / "trainer_state.json"))
    return out


def write_tensorboard(rows: list[dict], out: Path, steps: int) -> Path:
    """Through transformers' TensorBoardCallback, as ``report_to="tensorboard"`` does."""
    from torch.utils.tensorboard import SummaryWriter
    from transformers.integrations import TensorBoardCallback
    from trl import DPOConfig

    args = DPOConfig(output_dir=str(out.parent / "dpo_out"), max_steps=steps, logging_steps=1, report_to=[],
                     bf16=False, use_cpu=True)
    cb = TensorBoardCallback(SummaryWriter(log_dir=str(out)))
    state = SimpleNamespace(is_world_process_zero=True, is_hyper_param_search=False, global_step=0)
    cb.on_train_begin(args, state, None)
    for row in rows:
        state.global_step = row["step"]
        cb.on_log(args, state, None, logs={k: v for k, v in row.items() if k != "step"})
    cb.on_train_end(args, state, None)
    return out


def write_jsonl(rows: list[dict], out: Path) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return out


def write_csv(rows: list[dict], out: Path) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    cols = list(dict.fromkeys(k for r in rows for k in r))
    with out.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        w.writerows(rows)
    return out


def files(root: Path, steps: int) -> dict[str, Path]:
    """Each format's file, written once per --dir (a marker file records the step count)."""
    marker = root / f"written-{steps}"
    paths = {"trainer_state": root / "trainer_state", "tensorboard": root / "tensorboard",
             "jsonl": root / "logs.jsonl", "csv": root / "logs.csv"}
    if marker.exists():
        return paths
    rows = log_rows(steps)
    for name, write in (("trainer_state", lambda: write_trainer_state(rows, paths["trainer_state"], steps)),
                        ("tensorboard", lambda: write_tensorboard(rows, paths["tensorboard"], steps)),
                        ("jsonl", lambda: write_jsonl(rows, paths["jsonl"])),
                        ("csv", lambda: write_csv(rows, paths["csv"]))):
        t = time.perf_counter()
        write()
        print(f"  wrote {name:<13} in {time.perf_counter() - t:5.1f} s", flush=True)
    marker.touch()
    return paths


def measure(path: Path) -> dict[str, float]:
    """One read + diagnose, as ``ptt-nb diagnose`` does it (load_run: reader then replay; then the table)."""
    from ptt_nb._diagnose import print_table, run_record
    from ptt_nb.sources import _import

    clock, cpu = time.perf_counter, time.process_time
    c0, t0 = cpu(), clock()
    run = _import.read(path)
    c1, t1 = cpu(), clock()
    monitor = _import.to_monitor(run)
    print_table(run_record(str(path), monitor), io.StringIO())
    c2, t2 = cpu(), clock()
    scalars = sum(len(logs) for _, logs, _ in run.logs)
    return {"load": t1 - t0, "diagnose": t2 - t1, "total": t2 - t0, "cpu_load": c1 - c0, "cpu_diagnose": c2 - c1,
            "cpu": c2 - c0, "scalars": scalars, "logs": len(run.logs), "alerts": len(monitor.alerts)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=100_000)
    ap.add_argument("--repeat", type=int, default=2, help="best of N per format")
    ap.add_argument("--dir", help="where the files are written (kept and reused); default a temporary folder")
    a = ap.parse_args()
    tmp = None if a.dir else tempfile.TemporaryDirectory()
    root = Path(a.dir or tmp.name)
    print(f"{a.steps:,}-step runs in {root} (load average {os.getloadavg()[0]:.1f}, {os.cpu_count()} cores)")
    paths = files(root, a.steps)
    measure(paths["jsonl"])  # imports and first-call costs out of the figures
    print(f"\n{'':<14}{'--------- wall s ---------':>27}{'':>9}{'---- cpu s (this process) ----':>31}")
    print(f"{'format':<14}{'load':>7}{'diagnose':>10}{'total':>8}{'floor':>10}{'load':>8}{'diagnose':>10}"
          f"{'total':>8}{'floor':>10}{'scalars/s':>12}{'log dicts':>11}{'alerts':>8}")
    for name, path in paths.items():
        best = min((measure(path) for _ in range(a.repeat)), key=lambda r: r["total"])
        wall_ok, cpu_ok = ("ok" if best[k] < FLOOR_S else "OVER" for k in ("total", "cpu"))
        print(f"{name:<14}{best['load']:>7.2f}{best['diagnose']:>10.2f}{best['total']:>8.2f}"
              f"{f'<{FLOOR_S:.0f} {wall_ok}':>10}{best['cpu_load']:>8.2f}{best['cpu_diagnose']:>10.2f}"
              f"{best['cpu']:>8.2f}{f'<{FLOOR_S:.0f} {cpu_ok}':>10}{best['scalars'] / best['total']:>12,.0f}"
              f"{best['logs']:>11,}{best['alerts']:>8}", flush=True)
    print(f"load average now {os.getloadavg()[0]:.1f}; scalars/s = scalars over wall total")
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
