"""Record the real TRL runs that ``tests/test_rules_rl_signals.py`` replays (``tests/data/rl_signals/<name>.jsonl``).

Each pathology is provoked through a real mechanism on the tiny offline models of ``ptt_nb.tiny`` (TRL 1.16,
CPU; 4 completions per step, one log per step):

- ``multi_reward_grpo``: healthy GRPO with two reward functions (``length_reward`` and a sparse ``good_reward``);
  the second run is RLOO with the same pair.
- ``constant_reward_grpo``: GRPO whose second reward function returns a constant (a configuration bug).
- ``saturated_reward_grpo``: GRPO at a high learning rate with ``length_reward``, a capped length reward
  (``min(1, words/4)``) and ``good_reward``: the policy learns to stop emitting EOS early, the capped reward
  pins at its max 1.0 while ``good_reward`` still varies.
- ``dead_reward_grpo``: the same run with ``brief_bonus`` (1.0 for at most four words) in place of the capped
  reward: it varies early, then dies at its floor 0 as completions lengthen.
- ``short_reward_grpo`` / ``short_reward_rloo``: a reward of minus the completion length at a high learning rate:
  completions shrink to a fraction of their start, then to EOS alone (empty).
- ``short_reward_online_dpo``: the same reward in Online DPO: the policy collapses onto one near-certain (empty)
  completion, both samples of a pair identical.
- ``tools_grpo``: GRPO with ``tools=[lookup]`` (a chat template with tool calling, TRL's bundled Qwen2.5 template,
  on a byte-level tokenizer with one token for the tool-call text; the policy's trainable lm_head bias starts
  favouring that token, standing in for tool-use SFT). Run 1 healthy (the tool answers), run 2 the tool always
  raises, run 3 the reward penalises every tool call (the policy learns to stop calling it).
- ``flaky_tool_grpo``: the healthy tool run with a lookup service that degrades as it is used (call n fails
  with probability min(0.35, n/150)): the failure rate rises from ~0.05 to ~0.35.

The event files are written as ``record_rules_logs.recorded_lines`` writes the healthy ones (alerts dropped,
no wall times, 5 significant digits).

    python tests/data/record_rl_signals.py [name ...]
"""

from __future__ import annotations

import random
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).parent
OUT = HERE / "rl_signals"
sys.path.insert(0, str(HERE))

from record_rules_logs import recorded_lines, write_recording  # noqa: E402 - the healthy recordings' writer, reused

TOOL_CALL = '<tool_call>\n{"name": "lookup", "arguments": {}}\n</tool_call>'


# ---- reward functions (module level: TRL names the logged keys after them) -------------------------------------

def good_reward(completions: list[Any], **kwargs: Any) -> list[float]:
    """Counts the word "good": sparse, so its std is 0 at some logs of a healthy run."""
    return [float(str(c).split().count("good")) for c in completions]


def capped_length(completions: list[Any], **kwargs: Any) -> list[float]:
    """Length reward capped at 1.0 (four words): saturates once the policy stops ending early."""
    return [min(1.0, len(str(c).split()) / 4.0) for c in completions]


def brief_bonus(completions: list[Any], **kwargs: Any) -> list[float]:
    """1.0 for a completion of at most four words: dies at its floor 0 once the policy writes long answers."""
    return [1.0 if len(str(c).split()) <= 4 else 0.0 for c in completions]


def short_reward(completions: list[Any], **kwargs: Any) -> list[float]:
    """Minus the completion length: pays for brevity, so completions collapse to EOS alone."""
    return [-float(len(str(c).split())) / 8.0 for c in completions]


def no_tool_reward(completions: list[Any], **kwargs: Any) -> list[float]:
    """Minus one per tool call the completion makes (the policy learns to stop calling the tool)."""
    return [-float(sum(len(m.get("tool_calls") or ()) for m in c if isinstance(m, dict))) for c in completions]


def lookup() -> str:
    """Look the answer up."""
    return "yes"


def broken_lookup() -> str:
    """Look the answer up."""
    raise RuntimeError("lookup service unavailable")


def degrading_lookup_tool(ramp: int = 150, worst: float = 0.35) -> Callable[[], str]:
    """A lookup service that degrades as it is used (a flaky backend under load): call ``n`` fails with
    probability ``min(worst, n / ramp)`` (seeded per call, so the recording is reproducible)."""
    calls = [0]

    def lookup() -> str:
        """Look the answer up."""
        n = calls[0]
        calls[0] += 1
        if random.Random(n).random() < min(worst, n / ramp):
            raise TimeoutError("lookup service timed out")
        return "yes"

    return lookup


# ---- trainers -------------------------------------------------------------------------------------------------

def _callback(tmp: str):
    from ptt_nb import DiagnosticsCallback

    return DiagnosticsCallback(run_dir=Path(tmp) / "run", widget=False, console=False)


def _common(algorithm: str, tmp: str, seed: int, config: dict[str, Any]) -> dict[str, Any]:
    from ptt_nb import tiny

    common = dict(output_dir=str(Path(tmp) / "out"), logging_steps=1, report_to=[], save_strategy="no", seed=seed,
                  disable_tqdm=True, use_cpu=True, dataloader_num_workers=0, per_device_train_batch_size=4)
    common.update(tiny.DEFAULTS[algorithm])
    common.update(config)
    return common


def rl_trainer(algorithm: str, tmp: str, cb: Any, funcs: list[Callable], *, seed: int = 0, **config: Any):
    """A GRPO/RLOO/Online DPO trainer like ``tiny.make_trainer`` but with several reward functions."""
    import trl
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ptt_nb import tiny

    folder = Path(tmp) / "model"
    tiny.build_model(folder, seed=seed)
    kw = dict(model=AutoModelForCausalLM.from_pretrained(folder), reward_funcs=funcs,
              train_dataset=tiny.prompt_dataset(64, seed), processing_class=AutoTokenizer.from_pretrained(folder),
              callbacks=[cb])
    common = _common(algorithm, tmp, seed, config)
    if algorithm == "grpo":
        return trl.GRPOTrainer(args=trl.GRPOConfig(**common), **kw)
    if algorithm == "rloo":
        return trl.RLOOTrainer(args=trl.RLOOConfig(**common), **kw)
    from trl.experimental.online_dpo import OnlineDPOConfig, OnlineDPOTrainer

    return OnlineDPOTrainer(args=OnlineDPOConfig(**common), **kw)


def tool_tokenizer():
    """A byte-level BPE tokenizer (lossless decoding, which tool-call parsing needs) with TRL's bundled Qwen2.5
    chat template (tool calling; TRL knows its response format) and one token for the whole tool-call text."""
    import trl
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from ptt_nb import tiny

    template = (Path(trl.__file__).parent / "chat_templates" / "qwen2_5.jinja").read_text()
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=1000, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([template, " ".join(tiny.WORDS)] * 4, trainer=trainer)
    tok.add_tokens([AddedToken(TOOL_CALL, normalized=False)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<|endoftext|>", eos_token="<|im_end|>",
                                   additional_special_tokens=["<|im_start|>"])
    fast.chat_template = template
    return fast


def tool_trainer(tmp: str, cb: Any, tool: Callable, funcs: list[Callable], *, call_bias: float = 4.0,
                 seed: int = 0, **config: Any):
    """GRPO with ``tools=[tool]`` on a tiny Llama whose trainable lm_head bias starts at ``call_bias`` for the
    tool-call token (so the untrained policy calls the tool in a good share of its completions)."""
    import torch
    import trl
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, LlamaConfig

    from ptt_nb import tiny

    tokenizer = tool_tokenizer()
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=512,
                      pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                      tie_word_embeddings=False)
    model = AutoModelForCausalLM.from_config(cfg)
    bias = torch.zeros(len(tokenizer))
    bias[tokenizer.convert_tokens_to_ids(TOOL_CALL)] = call_bias
    model.lm_head.bias = torch.nn.Parameter(bias)
    rng = random.Random(seed)
    prompts = [[{"role": "user", "content": tiny._sentence(rng, 4)}] for _ in range(64)]
    common = _common("grpo", tmp, seed, {"max_completion_length": 16, "max_tool_calling_iterations": 1, **config})
    return trl.GRPOTrainer(model=model, reward_funcs=funcs, args=trl.GRPOConfig(**common),
                           train_dataset=Dataset.from_dict({"prompt": prompts}), processing_class=tokenizer,
                           tools=[tool], callbacks=[cb])


# name -> list of (builder, kwargs); a builder is called as builder(tmp, callback, **kwargs)
def _rl(algorithm: str, funcs: list[Callable], **config: Any):
    return lambda tmp, cb: rl_trainer(algorithm, tmp, cb, funcs, **config)


def _tools(tool: Callable, funcs: list[Callable], **config: Any):
    return lambda tmp, cb: tool_trainer(tmp, cb, tool, funcs, **config)


def recordings() -> dict[str, list[Callable]]:
    from ptt_nb import tiny

    length = tiny.length_reward
    return {
        "multi_reward_grpo": [_rl("grpo", [length, good_reward], max_steps=30, learning_rate=1e-4,
                                  max_completion_length=16),
                              _rl("rloo", [length, good_reward], seed=1, max_steps=25, learning_rate=1e-4,
                                  max_completion_length=16)],
        "constant_reward_grpo": [_rl("grpo", [length, tiny.constant_reward], max_steps=12, learning_rate=1e-4,
                                     max_completion_length=16)],
        "saturated_reward_grpo": [_rl("grpo", [length, capped_length, good_reward], max_steps=30,
                                      learning_rate=1e-2, max_completion_length=16)],
        "dead_reward_grpo": [_rl("grpo", [length, brief_bonus, good_reward], max_steps=30, learning_rate=1e-2,
                                 max_completion_length=16)],
        "short_reward_grpo": [_rl("grpo", [short_reward], max_steps=30, learning_rate=3e-2,
                                  max_completion_length=16)],
        "short_reward_rloo": [_rl("rloo", [short_reward], max_steps=30, learning_rate=3e-2,
                                  max_completion_length=16)],
        "short_reward_online_dpo": [_rl("online_dpo", [short_reward], max_steps=25, learning_rate=3e-2)],
        "flaky_tool_grpo": [lambda tmp, cb: tool_trainer(tmp, cb, degrading_lookup_tool(), [length], max_steps=25,
                                                         learning_rate=1e-4)],
        "tools_grpo": [_tools(lookup, [length], max_steps=15, learning_rate=1e-4),
                       _tools(broken_lookup, [length], max_steps=15, learning_rate=1e-4),
                       _tools(lookup, [no_tool_reward], max_steps=30, learning_rate=2e-2)],
    }


def record(name: str) -> Path:
    lines: list[str] = []
    for build in recordings()[name]:
        with tempfile.TemporaryDirectory() as tmp:
            cb = _callback(tmp)
            t0 = time.time()
            build(tmp, cb).train()
            print(f"{name}: {time.time() - t0:.1f}s", file=sys.stderr)
            lines.extend(recorded_lines(Path(tmp) / "run" / "events.jsonl"))
    return write_recording(OUT / f"{name}.jsonl", lines)


if __name__ == "__main__":
    for name in sys.argv[1:] or list(recordings()):
        record(name)
