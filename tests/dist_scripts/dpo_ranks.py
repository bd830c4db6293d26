"""A tiny TRL DPO run under torchrun / accelerate launch, with optional faults injected on one rank.

Used by tests/test_distributed.py and benchmarks (CPU/gloo here; the same script runs on GPUs with --cuda).
Faults: --slow-rank/--slow-ms sleeps in that rank's forward pass (a straggler); --grow-rank/--grow-mb keeps
allocating on that rank every step (a leak); --kill-rank/--kill-step SIGKILLs that rank in its forward pass.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from pathlib import Path

os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--workdir", required=True)
    p.add_argument("--run-dir", required=True)
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--every", type=int, default=None)
    p.add_argument("--no-stats", action="store_true", help="rank_stats_every=0 (overhead baseline)")
    p.add_argument("--slow-rank", type=int, default=-1)
    p.add_argument("--slow-ms", type=float, default=0.0)
    p.add_argument("--grow-rank", type=int, default=-1)
    p.add_argument("--grow-mb", type=float, default=0.0)
    p.add_argument("--grow-cuda", action="store_true", help="grow GPU memory instead of host memory")
    p.add_argument("--kill-rank", type=int, default=-1)
    p.add_argument("--kill-step", type=int, default=-1)
    p.add_argument("--stop-step", type=int, default=-1, help="rank 0 asks for a user stop at this step")
    p.add_argument("--n-rows", type=int, default=256)
    p.add_argument("--timeout", type=int, default=60, help="process-group timeout (TrainingArguments.ddp_timeout)")
    p.add_argument("--cuda", action="store_true")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--hidden", type=int, default=32)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--max-length", type=int, default=32)
    p.add_argument("--dump-logs", default=None, help="folder for per-rank on_log dicts (rank spread check)")
    a = p.parse_args()

    import torch
    from transformers import TrainerCallback

    from ptt_nb import DiagnosticsCallback, tiny

    torch.set_num_threads(1)
    rank = int(os.environ.get("RANK", "0"))
    workdir = Path(a.workdir)
    if not (workdir / "model" / "config.json").exists():
        raise SystemExit(f"build the model first: {workdir / 'model'}")

    grown: list = []
    state = {"step": 0}

    class Faults(TrainerCallback):
        def on_train_begin(self, args, st, control, model=None, **kw):
            if model is None:
                return
            if rank == a.slow_rank:  # inside the forward pass: in the first decoder layer, like a slow kernel
                layers = getattr(getattr(model, "model", model), "layers", None)
                (layers[0] if layers is not None else model).register_forward_pre_hook(self._slow)
            if rank == a.kill_rank:
                model.register_forward_pre_hook(self._kill)

        def _slow(self, module, inputs):
            if a.slow_ms > 0:
                time.sleep(a.slow_ms / 1e3)

        def _kill(self, module, inputs):
            if state["step"] >= a.kill_step:
                os.kill(os.getpid(), signal.SIGKILL)

        def on_step_begin(self, args, st, control, **kw):
            state["step"] = st.global_step

        def on_step_end(self, args, st, control, **kw):
            if rank == 0 and st.global_step == a.stop_step:
                cb.stop()  # what the widget's stop button does: only rank 0 sees it
            if rank == a.grow_rank and a.grow_mb > 0:
                n = int(a.grow_mb * 2**20)
                if a.grow_cuda:
                    grown.append(torch.ones(n // 4, dtype=torch.float32, device="cuda"))
                else:
                    grown.append(bytearray(b"\x01") * n)  # filled: the pages are resident

        def on_log(self, args, st, control, logs=None, **kw):
            if a.dump_logs and logs:
                with open(Path(a.dump_logs) / f"logs-rank{rank}.jsonl", "a") as f:
                    f.write(json.dumps({"step": st.global_step, **{k: v for k, v in logs.items()
                                                                  if isinstance(v, (int, float))}}) + "\n")

    cb = DiagnosticsCallback(run_dir=a.run_dir, rank_stats_every=0 if a.no_stats else a.every, console=False,
                             widget=False)
    extra = {}
    if a.cuda:
        extra = {"use_cpu": False, "bf16": True}
    trainer = tiny.make_trainer("dpo", workdir, callbacks=[cb, Faults()], max_steps=a.steps, n_rows=a.n_rows,
                                ddp_timeout=a.timeout, per_device_train_batch_size=a.batch,
                                max_length=a.max_length, **extra)
    t0 = time.perf_counter()
    trainer.train()
    wall = time.perf_counter() - t0
    if rank == 0:
        print(json.dumps({"wall_s": wall, "steps": a.steps, "stats": not a.no_stats}), flush=True)
    # Tear down as PyTorch asks, then leave without interpreter finalization. Left to finalization, gloo's C++
    # threads were destroyed while joinable ("terminate called without an active exception", SIGABRT on one
    # rank): once with no teardown at all, and once in ~600 CI launches even after destroy_process_group (the
    # trainer's DDP reducer still holds the group). Everything this script writes is closed by now.
    if torch.distributed.is_initialized():
        torch.distributed.barrier()  # no rank tears down while another is still in a collective
        torch.distributed.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
