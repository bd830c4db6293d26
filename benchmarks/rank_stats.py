"""Overhead of per-rank stats (hooks + CUDA events or timers + one packed all-gather per interval).

One launch, one training run: the stats are switched on and off in alternating blocks of steps (at the same step
on every rank), so machine drift affects both arms alike; the result is the ratio of the median step time with
stats to the median without, plus the gather's own cost per step.

    python benchmarks/rank_stats.py                      # 2 ranks, gloo on CPU, tiny DPO, default interval
    python benchmarks/rank_stats.py --cuda --hidden 1024 --layers 8 --launcher accelerate   # NCCL on 2 GPUs
"""

from __future__ import annotations

import argparse
import json
import math
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def worker(a: argparse.Namespace) -> None:
    import torch
    from transformers import TrainerCallback

    from ptt_nb import DiagnosticsCallback, tiny

    torch.set_num_threads(1)
    rank = int(os.environ.get("RANK", "0"))
    cb = DiagnosticsCallback(run_dir=a.run_dir, rank_stats_every=a.every, console=False, widget=False)
    times: dict[str, list[float]] = {"on": [], "off": []}
    blocks: dict[int, list[float]] = {}  # block index -> step times (even blocks: on, odd: off)
    mark: dict[str, float | None] = {"t": None}

    class Toggle(TrainerCallback):
        """Blocks of ``block`` steps, on/off alternating after ``warmup`` steps; records each step's wall time."""

        def arm(self, step: int) -> str | None:
            if step < a.warmup:
                return None
            return "on" if ((step - a.warmup) // a.block) % 2 == 0 else "off"

        def on_step_begin(self, args, state, control, **kw):
            step = state.global_step
            now = time.perf_counter()
            prev = mark["t"]
            arm = self.arm(step - 1) if step > 0 else None
            # a step's time: from its on_step_begin to the next one (data loading, logging and gathers included),
            # counted in the arm that step ran under; the first step of each block is dropped (switch cost)
            if prev is not None and arm is not None and self.arm(step - 2) == arm:
                times[arm].append(now - prev)
                blocks.setdefault((step - 1 - a.warmup) // a.block, []).append(now - prev)
            mark["t"] = now
            collector = cb._rank_stats
            if collector is not None:
                want = self.arm(step) != "off"
                if want and not collector.enabled:
                    collector.resume()
                elif not want and collector.enabled:
                    collector.pause()

    # callbacks run in order: the toggle must flip the collector before the DiagnosticsCallback's step hook
    extra = {"use_cpu": False, "bf16": True} if a.cuda else {}
    workdir = Path(a.workdir)
    rows = a.steps * a.batch * int(os.environ.get("WORLD_SIZE", "1")) + 64
    trainer = tiny.make_trainer("dpo", workdir, callbacks=[Toggle(), cb], max_steps=a.steps, n_rows=rows,
                                per_device_train_batch_size=a.batch, ddp_timeout=120, **extra)
    trainer.train()
    if rank == 0:
        from ptt_nb.sources._reader import read_events

        events, _ = read_events(a.run_dir)
        stats = [e for e in events if e.kind == "rank_stats"]
        gathers = [min(x for x in s.per_rank.get("gather_ms", []) if x is not None)
                   for s in stats if any(x is not None for x in s.per_rank.get("gather_ms", []))]
        every = cb._rank_stats.every if cb._rank_stats is not None else None
        on, off = statistics.median(times["on"]), statistics.median(times["off"])
        # adjacent (on, off) block pairs: load that drifts over seconds hits both arms of a pair alike
        pairs = sorted(statistics.mean(blocks[b]) / statistics.mean(blocks[b + 1])
                       for b in blocks if b % 2 == 0 and b + 1 in blocks and blocks[b] and blocks[b + 1])
        q = statistics.quantiles(pairs, n=4) if len(pairs) >= 4 else [math.nan] * 3
        print("RESULT " + json.dumps({
            "world_size": int(os.environ.get("WORLD_SIZE", "1")),
            "device": torch.cuda.get_device_name() if a.cuda else "cpu (gloo)",
            "every": every,
            "steps_on": len(times["on"]), "steps_off": len(times["off"]),
            "median_step_ms_with_stats": on * 1e3, "median_step_ms_without": off * 1e3,
            "ratio_with_vs_without": on / off,
            "pair_ratio_median": statistics.median(pairs) if pairs else None,
            "pair_ratio_iqr": [q[0], q[2]], "pairs": len(pairs),
            "load_average": os.getloadavg()[0],
            "gather_ms_median_min_over_ranks": statistics.median(gathers) if gathers else None,
            "gather_cost_per_step_pct": (100 * statistics.median(gathers) / every / (off * 1e3)
                                         if gathers and every else None),
            "intervals": len(stats),
        }), flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--nproc", type=int, default=2)
    p.add_argument("--launcher", choices=("torchrun", "accelerate"), default="torchrun")
    p.add_argument("--steps", type=int, default=250)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--block", type=int, default=10, help="steps per on/off block (a multiple of the interval)")
    p.add_argument("--every", type=int, default=None, help="gather interval (default: ptt_nb's adaptive default)")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--hidden", type=int, default=32)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--cuda", action="store_true")
    p.add_argument("--workdir", default=None)
    p.add_argument("--run-dir", default=None)
    a = p.parse_args()
    if a.worker:
        worker(a)
        return
    tmp = Path(a.workdir or tempfile.mkdtemp(prefix="ptt_rank_stats_"))
    if not (tmp / "model" / "config.json").exists():
        from ptt_nb import tiny

        tiny.build_model(tmp / "model", hidden=a.hidden, layers=a.layers)
    run_dir = a.run_dir or str(tmp / "run")
    if a.launcher == "torchrun":
        launch = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(a.nproc),
                  "--master_port", str(_port())]
    else:
        launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes",
                  str(a.nproc), "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                  "--main_process_port", str(_port())]
    args = [str(Path(__file__).resolve()), "--worker", "--workdir", str(tmp), "--run-dir", run_dir,
            "--steps", str(a.steps), "--warmup", str(a.warmup), "--block", str(a.block), "--batch", str(a.batch)]
    if a.every is not None:
        args += ["--every", str(a.every)]
    if a.cuda:
        args.append("--cuda")
    path = os.pathsep.join(x for x in (str(REPO), os.environ.get("PYTHONPATH", "")) if x)
    env = {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1", "TRL_EXPERIMENTAL_SILENCE": "1",
           "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "TRANSFORMERS_VERBOSITY": "error"}
    proc = subprocess.run([*launch, *args], capture_output=True, text=True, env=env, cwd=REPO)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        sys.stderr.write(proc.stdout[-3000:] + proc.stderr[-5000:])
        raise SystemExit(proc.returncode or 1)
    result = json.loads(lines[-1][len("RESULT "):])
    result["run_dir"] = run_dir
    print(json.dumps(result, indent=2))
    lo, hi = result["pair_ratio_iqr"]
    print(f"per-step overhead of rank stats: {100 * (result['pair_ratio_median'] - 1):+.2f}% (median of "
          f"{result['pairs']} on/off block pairs, IQR {100 * (lo - 1):+.1f}%..{100 * (hi - 1):+.1f}%; medians of "
          f"all steps: {100 * (result['ratio_with_vs_without'] - 1):+.2f}%); the gather alone: "
          f"{result['gather_cost_per_step_pct']:.3f}% of a step at every={result['every']}; "
          f"load average {result['load_average']:.1f}")


if __name__ == "__main__":
    main()
