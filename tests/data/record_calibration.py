"""Record the healthy "settings users actually use" runs that tests/test_rules_calibration_wide.py replays.

One file per run in ``tests/data/calibration/<name>.jsonl`` (``events.jsonl`` format, cleaned and rounded by
``record_rules_logs.recorded_lines``): logging every 5/10/50 steps, gradient accumulation 4/8/16, linear /
cosine / constant_with_warmup schedules with a warm-up, runs of 1,000-2,000 steps, and one run interrupted at a
checkpoint and resumed by a second trainer in the same output dir (both parts in one file, as the callback
writes them: the second part appends to the first part's run folder). Tiny 2-layer Llama on CPU, learning
rates inside the healthy ranges of the original recordings (``ptt_nb/rules/_catalog.py``). GRPO runs are
shorter where noted (generation costs ~2x a preference step on CPU).

    python tests/data/record_calibration.py [name ...]

GPU recordings go beside these as ``calibration/gpu_*.jsonl`` (same format; the test globs the folder).
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).parent
OUT = HERE / "calibration"
sys.path.insert(0, str(HERE))
from record_rules_logs import recorded_lines, write_recording  # noqa: E402 - a sibling script, not a package


def target_length_reward(completions: list[Any], **kwargs: Any) -> list[float]:
    """Highest at 8 words, below max_completion_length=16: ``tiny.length_reward`` (longer is always better)
    drives a 1,000-step policy into truncating every completion, which ``rl_truncation`` rightly calls broken."""
    return [-abs(len(str(c).split()) - 8) / 8.0 for c in completions]


# name -> (algorithm, make_trainer kwargs). Names say the settings; the test checks them against run_start.
RUNS: dict[str, tuple[str, dict[str, Any]]] = {
    "sft_ls5_ga4_linear_1000": ("sft", dict(
        seed=0, learning_rate=1e-3, max_steps=1000, n_rows=2000, logging_steps=5, gradient_accumulation_steps=4,
        lr_scheduler_type="linear", warmup_steps=50)),
    "sft_ls50_ga4_cosine_2000": ("sft", dict(
        seed=1, learning_rate=3e-4, max_steps=2000, n_rows=2000, logging_steps=50, gradient_accumulation_steps=4,
        lr_scheduler_type="cosine", warmup_steps=100)),
    "sft_ls10_ga16_constant_with_warmup_300": ("sft", dict(
        seed=2, learning_rate=1e-4, max_steps=300, n_rows=2000, logging_steps=10, gradient_accumulation_steps=16,
        lr_scheduler_type="constant_with_warmup", warmup_steps=30)),
    "dpo_ls10_ga8_cosine_1000": ("dpo", dict(
        seed=0, learning_rate=5e-5, max_steps=1000, n_rows=2000, logging_steps=10, gradient_accumulation_steps=8,
        lr_scheduler_type="cosine", warmup_steps=50)),
    "dpo_ls5_ga16_constant_with_warmup_300": ("dpo", dict(
        seed=1, learning_rate=1e-5, max_steps=300, n_rows=2000, logging_steps=5, gradient_accumulation_steps=16,
        lr_scheduler_type="constant_with_warmup", warmup_steps=30)),
    "kto_ls10_ga4_constant_with_warmup_1000": ("kto", dict(
        seed=0, learning_rate=2e-5, max_steps=1000, n_rows=2000, logging_steps=10, gradient_accumulation_steps=4,
        lr_scheduler_type="constant_with_warmup", warmup_steps=50)),
    "orpo_ls5_ga8_linear_1000": ("orpo", dict(
        seed=0, learning_rate=1e-4, max_steps=1000, n_rows=2000, logging_steps=5, gradient_accumulation_steps=8,
        lr_scheduler_type="linear", warmup_steps=50)),
    "grpo_ls10_ga4_cosine_1000": ("grpo", dict(
        seed=0, learning_rate=3e-5, max_steps=1000, n_rows=2000, logging_steps=10, gradient_accumulation_steps=4,
        lr_scheduler_type="cosine", warmup_steps=50, max_completion_length=16,
        reward_func=target_length_reward)),
    "grpo_ls5_ga8_linear_300": ("grpo", dict(
        seed=1, learning_rate=1e-4, max_steps=300, n_rows=2000, logging_steps=5, gradient_accumulation_steps=8,
        lr_scheduler_type="linear", warmup_steps=20, beta=0.04, max_completion_length=16,
        reward_func=target_length_reward)),
}
# interrupted at RESUME_AT (a checkpoint is saved there), then resumed by a fresh trainer to max_steps
RESUMED: dict[str, tuple[str, int, dict[str, Any]]] = {
    "sft_ls10_ga4_linear_resumed_1000": ("sft", 500, dict(
        seed=3, learning_rate=5e-4, max_steps=1000, n_rows=2000, logging_steps=10, gradient_accumulation_steps=4,
        lr_scheduler_type="linear", warmup_steps=50)),
}


def _stop_at(step: int) -> Any:
    """A callback that ends training after ``step`` (the interruption; the checkpoint at ``step`` is kept)."""
    from transformers import TrainerCallback

    class StopAt(TrainerCallback):
        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if state.global_step >= step:
                control.should_training_stop = True

    return StopAt()


def _write(name: str, lines: list[str], seconds: float) -> Path:
    print(f"{name}: {seconds:.0f}s", file=sys.stderr)
    return write_recording(OUT / f"{name}.jsonl", lines)


def record(name: str) -> Path:
    from ptt_nb import DiagnosticsCallback, tiny

    t0 = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        if name in RUNS:
            algorithm, kwargs = RUNS[name]
            cb = DiagnosticsCallback(run_dir=Path(tmp) / "run", widget=False, console=False)
            tiny.make_trainer(algorithm, tmp, callbacks=[cb], **kwargs).train()
            return _write(name, recorded_lines(Path(tmp) / "run" / "events.jsonl"), time.time() - t0)
        algorithm, at, kwargs = RESUMED[name]
        save = dict(save_strategy="steps", save_steps=at)
        # default run_dir (<output_dir>/ptt_nb/<algo>-<time>): the resumed callback finds and appends to it
        first = DiagnosticsCallback(widget=False, console=False)
        tiny.make_trainer(algorithm, tmp, callbacks=[_stop_at(at), first], **kwargs, **save).train()
        second = DiagnosticsCallback(widget=False, console=False)
        tiny.make_trainer(algorithm, tmp, callbacks=[second], **kwargs, **save).train(resume_from_checkpoint=True)
        assert first.run_dir == second.run_dir, (first.run_dir, second.run_dir)
        return _write(name, recorded_lines(second.run_dir / "events.jsonl"), time.time() - t0)


if __name__ == "__main__":
    import torch

    torch.set_num_threads(1)  # two recorders side by side on a 2-core machine
    for name in sys.argv[1:] or [*RUNS, *RESUMED]:
        record(name)
