"""Tiny, offline TRL runs: a 2-layer Llama built from a config, a tokenizer trained in memory and small
synthetic datasets. Used by the demo, the notebooks, the tests and the benchmarks (no hub downloads).

Imports torch/transformers/trl lazily: importing ``ptt_nb`` must stay light.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

WORDS = ("the cat dog sat ran on a mat log big small red blue good bad yes no it is was and "
         "happy sad answer question one two three four five").split()
ALGORITHMS = ("sft", "dpo", "kto", "orpo", "cpo", "grpo", "rloo", "online_dpo", "reward")


def _sentence(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n))


def build_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.WordLevelTrainer(special_tokens=["<unk>", "<pad>", "<s>", "</s>"])
    tok.train_from_iterator([" ".join(WORDS)] * 4, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>", bos_token="<s>",
                                   eos_token="</s>")
    fast.chat_template = ("{% for m in messages %}{{ m['content'] }}{% if not loop.last %} {% endif %}{% endfor %}"
                          "{% if add_generation_prompt %} {% endif %}")
    return fast


def build_model(folder: str | os.PathLike[str], *, seed: int = 0, reward: bool = False, hidden: int = 32,
                layers: int = 2):
    """Save a tiny Llama (causal LM, or a 1-label sequence classifier for reward models) with its tokenizer.

    Returns the folder path: TRL re-loads reference models by ``config._name_or_path``, so they must exist on disk.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, LlamaConfig

    tokenizer = build_tokenizer()
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=hidden * 2,
                         num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=4,
                         max_position_embeddings=128, pad_token_id=tokenizer.pad_token_id,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         num_labels=1, tie_word_embeddings=False)
    cls = AutoModelForSequenceClassification if reward else AutoModelForCausalLM
    model = cls.from_config(config)
    folder = Path(folder)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


def preference_dataset(n: int = 64, seed: int = 0, *, swap: bool = False):
    """Prompts with a "good" chosen and a "bad" rejected answer: a signal a tiny model can learn."""
    from datasets import Dataset

    rng = random.Random(seed)
    rows = {"prompt": [], "chosen": [], "rejected": []}
    for _ in range(n):
        prompt = _sentence(rng, 4)
        good = " good " + _sentence(rng, 3) + " yes"
        bad = " bad " + _sentence(rng, 3) + " no"
        rows["prompt"].append(prompt)
        rows["chosen"].append(bad if swap else good)
        rows["rejected"].append(good if swap else bad)
    return Dataset.from_dict(rows)


def unpaired_dataset(n: int = 64, seed: int = 0):
    from datasets import Dataset

    rng = random.Random(seed)
    rows = {"prompt": [], "completion": [], "label": []}
    for i in range(n):
        desirable = i % 2 == 0
        rows["prompt"].append(_sentence(rng, 4))
        rows["completion"].append((" good " if desirable else " bad ") + _sentence(rng, 3))
        rows["label"].append(desirable)
    return Dataset.from_dict(rows)


def text_dataset(n: int = 64, seed: int = 0):
    from datasets import Dataset

    rng = random.Random(seed)
    return Dataset.from_dict({"text": ["the cat sat on the mat " + _sentence(rng, 6) for _ in range(n)]})


def prompt_dataset(n: int = 64, seed: int = 0):
    from datasets import Dataset

    rng = random.Random(seed)
    return Dataset.from_dict({"prompt": [_sentence(rng, 4) for _ in range(n)]})


def length_reward(completions: list[Any], **kwargs: Any) -> list[float]:
    """Rewards longer completions (a rule-based reward a tiny policy can move)."""
    return [float(len(str(c).split())) / 8.0 for c in completions]


def constant_reward(completions: list[Any], **kwargs: Any) -> list[float]:
    """The same reward for every completion: every GRPO group has zero variance (a provoked pathology)."""
    return [1.0 for _ in completions]


DEFAULTS: dict[str, dict[str, Any]] = {
    "sft": {"learning_rate": 1e-3, "max_length": 32},
    "dpo": {"learning_rate": 1e-4, "max_length": 32},
    "kto": {"learning_rate": 1e-4, "max_length": 32},
    "orpo": {"learning_rate": 1e-4, "max_length": 32},
    "cpo": {"learning_rate": 1e-4, "max_length": 32},
    "grpo": {"learning_rate": 1e-4, "num_generations": 4, "max_completion_length": 8,
             "per_device_train_batch_size": 4},
    "rloo": {"learning_rate": 1e-4, "num_generations": 4, "max_completion_length": 8,
             "per_device_train_batch_size": 4},
    "online_dpo": {"learning_rate": 1e-4, "max_new_tokens": 8},
    "reward": {"learning_rate": 1e-4, "max_length": 32},
}


def nan_grad_norm_at(step: int) -> Any:
    """A callback that makes the grad_norm logged at ``step`` NaN, as a diverging run would log it.

    TRL hands every callback one shared logs dict: listed before DiagnosticsCallback, this one writes first."""
    from transformers import TrainerCallback

    class NaNGradNormAt(TrainerCallback):
        def on_log(self, args: Any, state: Any, control: Any, logs: dict | None = None, **kwargs: Any) -> None:
            if state.global_step == step and logs and "grad_norm" in logs:
                logs["grad_norm"] = float("nan")

    return NaNGradNormAt()


def make_trainer(algorithm: str, workdir: str | os.PathLike[str], *, callbacks: list[Any] | None = None,
                 max_steps: int = 8, seed: int = 0, n_rows: int = 64, reward_func: Callable | None = None,
                 dataset: Any = None, eval_dataset: Any = None, **config: Any):
    """A ready-to-train TRL trainer of the given algorithm on a tiny model, fully offline."""
    import trl

    if algorithm not in ALGORITHMS:
        raise ValueError(f"unknown algorithm {algorithm!r}; choose one of {', '.join(ALGORITHMS)}")
    workdir = Path(workdir)
    model_dir = workdir / ("reward_model" if algorithm == "reward" else "model")
    if not (model_dir / "config.json").exists():
        build_model(model_dir, seed=seed, reward=algorithm == "reward")
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    if algorithm == "reward":
        model = AutoModelForSequenceClassification.from_pretrained(model_dir)
    else:
        model = AutoModelForCausalLM.from_pretrained(model_dir)
    common = dict(output_dir=str(workdir / "out"), max_steps=max_steps, logging_steps=1, report_to=[],
                  per_device_train_batch_size=4, save_strategy="no", seed=seed, disable_tqdm=True,
                  use_cpu=True, dataloader_num_workers=0)
    common.update(DEFAULTS[algorithm])
    common.update(config)
    rewards = [reward_func or length_reward]
    extra = {"eval_dataset": eval_dataset} if eval_dataset is not None else {}
    if algorithm == "sft":
        args = trl.SFTConfig(**common)
        return trl.SFTTrainer(model=model, args=args, train_dataset=dataset or text_dataset(n_rows, seed),
                              processing_class=tokenizer, callbacks=callbacks, **extra)
    if algorithm == "dpo":
        args = trl.DPOConfig(**common)
        return trl.DPOTrainer(model=model, args=args, train_dataset=dataset or preference_dataset(n_rows, seed),
                              processing_class=tokenizer, callbacks=callbacks, **extra)
    if algorithm == "kto":
        args = trl.KTOConfig(**common)
        return trl.KTOTrainer(model=model, args=args, train_dataset=dataset or unpaired_dataset(n_rows, seed),
                              processing_class=tokenizer, callbacks=callbacks, **extra)
    if algorithm == "orpo":
        from trl.experimental.orpo import ORPOConfig, ORPOTrainer

        return ORPOTrainer(model=model, args=ORPOConfig(**common),
                           train_dataset=dataset or preference_dataset(n_rows, seed),
                           processing_class=tokenizer, callbacks=callbacks, **extra)
    if algorithm == "cpo":
        from trl.experimental.cpo import CPOConfig, CPOTrainer

        return CPOTrainer(model=model, args=CPOConfig(**common),
                          train_dataset=dataset or preference_dataset(n_rows, seed),
                          processing_class=tokenizer, callbacks=callbacks, **extra)
    if algorithm == "grpo":
        return trl.GRPOTrainer(model=model, reward_funcs=rewards, args=trl.GRPOConfig(**common),
                               train_dataset=dataset or prompt_dataset(n_rows, seed), processing_class=tokenizer,
                               callbacks=callbacks, **extra)
    if algorithm == "rloo":
        return trl.RLOOTrainer(model=model, reward_funcs=rewards, args=trl.RLOOConfig(**common),
                               train_dataset=dataset or prompt_dataset(n_rows, seed), processing_class=tokenizer,
                               callbacks=callbacks, **extra)
    if algorithm == "online_dpo":
        from trl.experimental.online_dpo import OnlineDPOConfig, OnlineDPOTrainer

        return OnlineDPOTrainer(model=model, reward_funcs=rewards, args=OnlineDPOConfig(**common),
                                train_dataset=dataset or prompt_dataset(n_rows, seed), processing_class=tokenizer,
                                callbacks=callbacks, **extra)
    args = trl.RewardConfig(**common)
    return trl.RewardTrainer(model=model, args=args, train_dataset=dataset or preference_dataset(n_rows, seed),
                             processing_class=tokenizer, callbacks=callbacks, **extra)
