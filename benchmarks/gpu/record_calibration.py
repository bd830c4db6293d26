"""Healthy calibration runs on a GPU: a ~250M-parameter Llama built from a config (random init, which is fine for
false-alarm calibration), bf16, the settings users run with (logging_steps 5-50, gradient accumulation 4-8,
cosine / linear / constant-with-warm-up schedules, 600-1,500 steps, a resumed run). The recordings land in
``tests/data/calibration/gpu_<arm>.jsonl``, which tests/test_rules_calibration_wide.py replays with every rule.

On the device machine (one H200; arms run side by side, one process each):

    source benchmarks/gpu/env.sh && python benchmarks/gpu/record_calibration.py --out $OUT sft_cosine dpo_linear ...

With no arm named it runs them all. ``--steps-scale 0.1`` shortens every arm for a smoke test.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "tests" / "data")]

# 24 x (4h^2 attention + 3 x h x 2h MLP) = 252M parameters; PTT_CAL_SIZE=32x2 for a CPU smoke test
HIDDEN, LAYERS = map(int, os.environ.get("PTT_CAL_SIZE", "1024x24").split("x"))
GPU = dict(use_cpu="PTT_CAL_SIZE" in os.environ, bf16=True, report_to=[], dataloader_num_workers=0)

# arm -> (algorithm, make_trainer kwargs); learning rates usual for a model of this size
ARMS: dict[str, tuple[str, dict]] = {
    "sft_cosine": ("sft", dict(max_steps=1200, logging_steps=10, gradient_accumulation_steps=4,
                               per_device_train_batch_size=8, learning_rate=2e-4, lr_scheduler_type="cosine",
                               warmup_steps=60, max_length=64, n_rows=6000)),
    "dpo_linear": ("dpo", dict(max_steps=1000, logging_steps=5, gradient_accumulation_steps=4,
                               per_device_train_batch_size=2, learning_rate=5e-6, lr_scheduler_type="linear",
                               warmup_steps=50, max_length=64, n_rows=6000)),
    "grpo_constant": ("grpo", dict(max_steps=600, logging_steps=10, gradient_accumulation_steps=4,
                                   per_device_train_batch_size=4, num_generations=4, max_completion_length=16,
                                   learning_rate=1e-6, lr_scheduler_type="constant_with_warmup", warmup_steps=30,
                                   n_rows=4000)),
    "kto_constant": ("kto", dict(max_steps=1000, logging_steps=50, gradient_accumulation_steps=4,
                                 per_device_train_batch_size=4, learning_rate=5e-6,
                                 lr_scheduler_type="constant_with_warmup", warmup_steps=75, max_length=64,
                                 n_rows=6000)),
    "sft_long": ("sft", dict(max_steps=1100, logging_steps=20, gradient_accumulation_steps=4,
                             per_device_train_batch_size=4, learning_rate=1e-4, lr_scheduler_type="linear",
                             warmup_steps=50, max_length=64, n_rows=6000)),
    "dpo_long": ("dpo", dict(max_steps=1000, logging_steps=10, gradient_accumulation_steps=4,
                             per_device_train_batch_size=2, learning_rate=3e-6, lr_scheduler_type="cosine",
                             warmup_steps=50, max_length=64, n_rows=6000)),
    "sft_resumed": ("sft", dict(max_steps=400, logging_steps=10, gradient_accumulation_steps=8,
                                per_device_train_batch_size=4, learning_rate=2e-4, lr_scheduler_type="cosine",
                                warmup_steps=30, max_length=64, n_rows=6000, save_strategy="steps",
                                save_steps=200)),
}


def _stop_at(step: int | None, deadline: float):
    from transformers import TrainerCallback

    class StopAt(TrainerCallback):
        """Ends the first half of the resumed arm right after its checkpoint, as a preempted job would; ends any
        arm at the wall-clock deadline, so that one slow arm cannot cost the whole call (the record then says
        how far it got)."""

        def on_step_end(self, args, state, control, **kwargs):
            if (step is not None and state.global_step >= step) or time.time() > deadline:
                control.should_training_stop = True
            return control

    return StopAt()


def record_arm(name: str, out: Path, scale: float) -> None:
    from record_rules_logs import recorded_lines, write_recording

    from ptt_nb import DiagnosticsCallback, tiny

    algorithm, kwargs = ARMS[name]
    kwargs = {**GPU, **kwargs, "max_steps": max(20, int(kwargs["max_steps"] * scale))}
    deadline = time.time() + float(os.environ.get("PTT_CAL_BUDGET_S", "1e9"))
    with tempfile.TemporaryDirectory() as tmp:
        tiny.build_model(Path(tmp) / "model", hidden=HIDDEN, layers=LAYERS)
        run_dir = Path(tmp) / "run"
        t0 = time.time()
        if name == "sft_resumed":
            half = kwargs["max_steps"] // 2
            kwargs["save_steps"] = half
            first = tiny.make_trainer(algorithm, tmp, callbacks=[DiagnosticsCallback(run_dir=run_dir, widget=False,
                                      console=False), _stop_at(half, deadline)], **kwargs)
            first.train()
            del first
            second = tiny.make_trainer(algorithm, tmp, callbacks=[DiagnosticsCallback(run_dir=run_dir, widget=False,
                                       console=False), _stop_at(None, deadline)], **kwargs)
            second.train(resume_from_checkpoint=True)
        else:
            trainer = tiny.make_trainer(algorithm, tmp, callbacks=[DiagnosticsCallback(
                run_dir=run_dir, widget=False, console=False), _stop_at(None, deadline)], **kwargs)
            trainer.train()
        lines = recorded_lines(run_dir / "events.jsonl")
        end = json.loads(lines[-1])
        meta = {"arm": name, "seconds": round(time.time() - t0, 1), "hidden": HIDDEN, "layers": LAYERS,
                "max_steps": kwargs["max_steps"], "end": end.get("kind"), "end_step": end.get("step")}
        import torch

        if torch.cuda.is_available():
            meta["device"] = torch.cuda.get_device_name(0)
            meta["max_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
        path = write_recording(out / f"gpu_{name}.jsonl", lines)
        print(json.dumps({**meta, "lines": len(lines), "bytes": path.stat().st_size}), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("arms", nargs="*", default=list(ARMS))
    ap.add_argument("--out", type=Path, default=ROOT / "tests" / "data" / "calibration")
    ap.add_argument("--steps-scale", type=float, default=1.0)
    ap.add_argument("--one", action="store_true", help="run the single named arm in this process")
    a = ap.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    if a.one:
        record_arm(a.arms[0], a.out, a.steps_scale)
        return
    logs = Path(tempfile.mkdtemp())
    procs = []
    for arm in a.arms:
        log = open(logs / f"{arm}.log", "w")
        cmd = [sys.executable, __file__, "--one", arm, "--out", str(a.out), "--steps-scale", str(a.steps_scale)]
        procs.append((arm, subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=os.environ.copy())))
    for arm, p in procs:
        code = p.wait()
        tail = (logs / f"{arm}.log").read_text().splitlines()[-(4 if code == 0 else 25):]
        print(f"== {arm} exit {code}", *tail, sep="\n", flush=True)


if __name__ == "__main__":
    main()
