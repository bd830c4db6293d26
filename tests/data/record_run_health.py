"""Record the real TRL runs that ``tests/test_rules_run_health.py`` replays (``tests/data/run_health/<name>.jsonl``).

Each pathology is provoked through a real mechanism on the tiny offline models of ``ptt_nb.tiny``:

- ``overfit_sft``: SFT on 8 rows at a high learning rate, evaluated on 32 other rows (eval loss rises while
  the train loss falls; the memorised rows also drive the train entropy toward 0).
- ``repeat_sft``: SFT on 8 copies of one sentence at a high constant learning rate (duplicated data): the
  token entropy collapses toward 0.
- ``slow_reward_grpo``: GRPO whose reward function sleeps longer at every call (a reward server getting
  slower: 0.012 s x calls²): TRL's ``step_time`` covers ``training_step``, generation and rewards included.
- ``nan_filter_sft``: SFT whose reported loss is NaN at two steps while the gradients stay finite; run 1 with
  transformers' default ``logging_nan_inf_filter=True`` (the NaN is logged as 0.0), run 2 with it off.
- ``cold_grpo``: GRPO (temperature 0.7) from an over-trained SFT checkpoint that always answers "yes": the
  policy is near-deterministic from step 1. (Temperature 0.05 on the tiny random model was tried first: its
  logged entropy stayed ~2 nats; so did a 60-step SFT checkpoint at temperature 1.)
- ``moe_sft``: SFT of a tiny Mixtral (4 experts, top-2) with the router's load-balancing loss logged as
  ``aux_loss``; run 1 healthy (coefficient 0.02), run 2 with a mis-signed coefficient (-0.5) that rewards
  routing collapse.

The event files are written as ``record_rules_logs.recorded_lines`` writes the healthy ones (alerts dropped,
no wall times, 5 significant digits).

    python tests/data/record_run_health.py [name ...]
"""

from __future__ import annotations

import math
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).parent
OUT = HERE / "run_health"
sys.path.insert(0, str(HERE))

from record_rules_logs import recorded_lines, write_recording  # noqa: E402 - the healthy recordings' writer, reused


def _callback(tmp: str):
    from ptt_nb import DiagnosticsCallback

    return DiagnosticsCallback(run_dir=Path(tmp) / "run", widget=False, console=False)


def _sft(tmp: str, cb: Any, *, model: Any = None, cls: Any = None, train: Any = None, eval_dataset: Any = None,
         **config: Any):
    """An SFTTrainer like ``tiny.make_trainer('sft')`` but with a given model or trainer class."""
    import trl
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ptt_nb import tiny

    folder = Path(tmp) / "model"
    if not (folder / "config.json").exists():
        tiny.build_model(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = model if model is not None else AutoModelForCausalLM.from_pretrained(folder)
    common = dict(output_dir=str(Path(tmp) / "out"), logging_steps=1, report_to=[], per_device_train_batch_size=4,
                  save_strategy="no", seed=0, disable_tqdm=True, use_cpu=True, dataloader_num_workers=0,
                  max_length=32, learning_rate=1e-3)
    common.update(config)
    extra = {"eval_dataset": eval_dataset} if eval_dataset is not None else {}
    return (cls or trl.SFTTrainer)(model=model, args=trl.SFTConfig(**common),
                                   train_dataset=train if train is not None else tiny.text_dataset(64, 0),
                                   processing_class=tokenizer, callbacks=[cb] if cb is not None else [], **extra)


def overfit_sft(tmp: str, cb: Any):
    from ptt_nb import tiny

    return _sft(tmp, cb, train=tiny.text_dataset(8, seed=0), eval_dataset=tiny.text_dataset(32, seed=1),
                learning_rate=3e-3, max_steps=120, eval_strategy="steps", eval_steps=5, warmup_steps=0)


def repeat_sft(tmp: str, cb: Any):
    """Duplicated data: 8 copies of one sentence, a high constant learning rate."""
    from datasets import Dataset

    rows = Dataset.from_dict({"text": ["the cat sat on the mat and the dog ran on the log"] * 8})
    return _sft(tmp, cb, train=rows, learning_rate=1e-2, lr_scheduler_type="constant", max_steps=60)


def slow_reward(coef: float = 0.012) -> Callable[..., list[float]]:
    """``tiny.length_reward`` that sleeps ``coef * calls**2`` seconds: a reward server whose latency grows with
    its backlog (linear growth from step 1 is partly absorbed by a baseline of the run's own early steps)."""
    from ptt_nb import tiny

    calls = [0]

    def reward(completions: list[Any], **kwargs: Any) -> list[float]:
        calls[0] += 1
        time.sleep(coef * calls[0] ** 2)
        return tiny.length_reward(completions)

    return reward


def slow_reward_grpo(tmp: str, cb: Any):
    from ptt_nb import tiny

    return tiny.make_trainer("grpo", tmp, callbacks=[cb], max_steps=30, reward_func=slow_reward())


def cold_grpo(tmp: str, cb: Any):
    """GRPO from an over-trained SFT checkpoint: SFT (unmonitored) on "<4 random words> answer yes x 8" at a high
    constant learning rate, saved over the base model that ``tiny.make_trainer`` then loads for GRPO on the same
    prompts, sampled at temperature 0.7."""
    from datasets import Dataset

    from ptt_nb import tiny

    prompts = [p + " answer" for p in tiny.prompt_dataset(64)["prompt"]]
    rows = Dataset.from_dict({"text": [p + " yes" * 8 for p in prompts]})
    sft = _sft(tmp, None, train=rows, learning_rate=1e-2, lr_scheduler_type="constant", max_steps=120)
    sft.train()
    sft.save_model(str(Path(tmp) / "model"))
    return tiny.make_trainer("grpo", tmp, callbacks=[cb], max_steps=20, temperature=0.7,
                             dataset=Dataset.from_dict({"prompt": prompts}))


def poisoned_sft_class(nan_steps: frozenset[int]):
    """An SFTTrainer whose *reported* loss is NaN at the given optimizer steps; the backward pass already ran, so
    the gradients (and the update) are the real, finite ones: the case the NaN filter hides."""
    import torch
    import trl

    class PoisonedSFT(trl.SFTTrainer):
        def training_step(self, *args: Any, **kwargs: Any):
            loss = super().training_step(*args, **kwargs)
            if self.state.global_step + 1 in nan_steps:
                return loss * torch.tensor(math.nan)
            return loss

    return PoisonedSFT


NAN_STEPS = frozenset({12, 25})


def nan_filter_sft(tmp: str, cb: Any, *, nan_filter: bool = True, logging_steps: int = 1):
    return _sft(tmp, cb, cls=poisoned_sft_class(NAN_STEPS), max_steps=40, logging_nan_inf_filter=nan_filter,
                logging_steps=logging_steps)


def tiny_mixtral(seed: int = 0):
    """A 2-layer Mixtral (4 experts, top-2) from config, with the tiny tokenizer's vocabulary."""
    import torch
    from transformers import AutoModelForCausalLM, MixtralConfig

    from ptt_nb import tiny

    tok = tiny.build_tokenizer()
    torch.manual_seed(seed)
    config = MixtralConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=128,
                           num_local_experts=4, num_experts_per_tok=2, output_router_logits=True,
                           pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                           eos_token_id=tok.eos_token_id, tie_word_embeddings=False)
    return AutoModelForCausalLM.from_config(config)


def moe_sft(tmp: str, cb: Any, *, coef: float = 0.02, learning_rate: float = 1e-3):
    return _sft(tmp, cb, model=tiny_mixtral(), max_steps=50, router_aux_loss_coef=coef, learning_rate=learning_rate)


def _healthy_moe(tmp: str, cb: Any):
    return moe_sft(tmp, cb)


def _collapsing_moe(tmp: str, cb: Any):
    return moe_sft(tmp, cb, coef=-0.5, learning_rate=3e-3)


def _nan_filter_off(tmp: str, cb: Any):
    return nan_filter_sft(tmp, cb, nan_filter=False)


RECORDINGS: dict[str, list[Callable[[str, Any], Any]]] = {
    "overfit_sft": [overfit_sft],
    "repeat_sft": [repeat_sft],
    "slow_reward_grpo": [slow_reward_grpo],
    "nan_filter_sft": [nan_filter_sft, _nan_filter_off],
    "cold_grpo": [cold_grpo],
    "moe_sft": [_healthy_moe, _collapsing_moe],
}


def record(name: str) -> Path:
    lines: list[str] = []
    for make in RECORDINGS[name]:
        with tempfile.TemporaryDirectory() as tmp:
            cb = _callback(tmp)
            t0 = time.time()
            make(tmp, cb).train()
            print(f"{name}: {make.__name__} {time.time() - t0:.1f}s", file=sys.stderr)
            lines.extend(recorded_lines(Path(tmp) / "run" / "events.jsonl"))
    return write_recording(OUT / f"{name}.jsonl", lines)


if __name__ == "__main__":
    for name in sys.argv[1:] or list(RECORDINGS):
        record(name)
