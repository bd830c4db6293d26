#!/usr/bin/env python
"""Run a tiny, real TRL PPOTrainer on CPU with no hub access.

Needs the venv from tests/ppo/make_env.sh (TRL 1.12.0, the newest release that
still ships `trl.experimental.ppo`). Everything (tokenizer, policy, reference,
reward and value models, dataset) is built in memory from config.

    python tests/ppo/tiny_ppo.py [--steps 4] [--callback pkg.mod:factory ...]
                                 [--record-keys FILE] [--stop-at-step N]

--callback MODULE:FACTORY   import MODULE (PYTHONPATH) and call FACTORY() with no
                            arguments; the result (a TrainerCallback instance or
                            class) is passed to PPOTrainer(callbacks=[...]).
                            Repeatable.
--record-keys FILE          add a recorder callback that writes JSON lines to FILE:
                              {"kind": "meta", ...}   trainer / config class names
                              {"kind": "event", "event": "on_step_end", ...}
                              {"kind": "log", "global_step": n, "logs": {...}}
                            (logs is a copy of the dict passed to on_log)
--stop-at-step N            set control.should_training_stop=True in on_step_end
                            once global_step >= N (to test the stop contract).
"""

from __future__ import annotations

import argparse
import copy
import importlib
import inspect
import json
import os
import sys
import tempfile
import time


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=4, help="PPO updates (batches) to run")
    p.add_argument("--batch-size", type=int, default=2, help="per-device rollout batch size")
    p.add_argument("--response-length", type=int, default=8)
    p.add_argument("--num-ppo-epochs", type=int, default=2)
    p.add_argument("--callback", action="append", default=[], metavar="MODULE:FACTORY")
    p.add_argument("--record-keys", metavar="FILE", default=None)
    p.add_argument("--stop-at-step", type=int, default=None)
    p.add_argument("--output-dir", default=None, help="trainer output_dir (default: a temp dir)")
    p.add_argument("--logging-steps", type=float, default=1, help="PPOConfig.logging_steps (PPO ignores it)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    return p.parse_args(argv)


def load_factory(spec: str):
    if ":" not in spec:
        raise SystemExit(f"--callback must be MODULE:FACTORY, got {spec!r}")
    mod_name, attr = spec.split(":", 1)
    obj = importlib.import_module(mod_name)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


def build_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    corpus = [
        "the cat sat on the mat",
        "a dog ran in the park",
        "tell me a story about a cat",
        "what is the color of the sky",
        "the sky is blue and the grass is green",
        "write a short poem about the sea",
        "how are you today my friend",
        "one two three four five six seven eight nine ten",
    ]
    specials = ["<pad>", "<unk>", "<bos>", "<eos>"]
    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(corpus, trainers.WordLevelTrainer(special_tokens=specials, vocab_size=200))
    bos = tok.token_to_id("<bos>")
    tok.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", bos)])
    hf = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        unk_token="<unk>",
        bos_token="<bos>",
        eos_token="<eos>",
        padding_side="left",  # PPO queries are left padded
    )
    # PPO consumes pre-tokenized prompts, so no chat template is required; one is set
    # anyway so the tokenizer looks like a real chat model's.
    hf.chat_template = (
        "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}assistant:{% endif %}"
    )
    return hf


def build_models(tokenizer, seed: int):
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, LlamaConfig

    def cfg(**kw):
        return LlamaConfig(
            vocab_size=len(tokenizer),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=128,
            pad_token_id=tokenizer.pad_token_id,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            tie_word_embeddings=False,
            **kw,
        )

    torch.manual_seed(seed)
    policy = AutoModelForCausalLM.from_config(cfg())
    ref = AutoModelForCausalLM.from_config(cfg())
    ref.load_state_dict(policy.state_dict())  # reference = frozen copy of the initial policy
    torch.manual_seed(seed + 1)
    reward = AutoModelForSequenceClassification.from_config(cfg(num_labels=1))
    torch.manual_seed(seed + 2)
    value = AutoModelForSequenceClassification.from_config(cfg(num_labels=1))
    for m in (policy, ref):
        m.generation_config.pad_token_id = tokenizer.pad_token_id
        m.generation_config.eos_token_id = tokenizer.eos_token_id
        m.generation_config.bos_token_id = tokenizer.bos_token_id
    return policy, ref, reward, value


def build_dataset(tokenizer, n: int):
    from datasets import Dataset

    prompts = [
        "tell me a story about a cat",
        "what is the color of the sky",
        "write a short poem about the sea",
        "how are you today",
        "the dog ran in the park",
        "one two three four",
    ]
    prompts = (prompts * (n // len(prompts) + 1))[:n]
    ds = Dataset.from_dict({"prompt": prompts})
    # PPOTrainer wants pre-tokenized prompts: an `input_ids` column only.
    return ds.map(lambda ex: {"input_ids": tokenizer(ex["prompt"])["input_ids"]}, remove_columns=["prompt"])


def make_recorder(path: str, stop_at_step: int | None, trainer_holder: dict):
    from transformers import Trainer, TrainerCallback

    fh = open(path, "w", encoding="utf-8")

    def write(obj):
        fh.write(json.dumps(obj, default=repr) + "\n")
        fh.flush()

    def find_trainer_on_stack():
        for frame_info in inspect.stack()[2:]:
            self_obj = frame_info.frame.f_locals.get("self")
            if isinstance(self_obj, Trainer):
                return type(self_obj).__name__
        return None

    class RecordKeysCallback(TrainerCallback):
        def _event(self, name, state, **kw):
            write({"kind": "event", "event": name, "global_step": state.global_step,
                   "kwargs": sorted(k for k in kw)})

        def on_init_end(self, args, state, control, **kw):
            self._event("on_init_end", state, **kw)

        def on_train_begin(self, args, state, control, **kw):
            write({
                "kind": "meta",
                "trainer_class": trainer_holder.get("class"),
                "trainer_class_on_stack": find_trainer_on_stack(),
                "args_class": args.__class__.__name__,
                "args_mro": [c.__name__ for c in type(args).__mro__],
                "callback_kwargs": sorted(kw),
                "callback_model_class": type(kw.get("model")).__name__,
                "callback_dataloaders_none": {k: kw.get(k) is None for k in ("train_dataloader", "eval_dataloader")},
                "state_class": type(state).__name__,
                "max_steps": state.max_steps,
                "logging_steps": getattr(args, "logging_steps", None),
            })
            self._event("on_train_begin", state, **kw)

        def on_epoch_begin(self, args, state, control, **kw):
            self._event("on_epoch_begin", state, **kw)

        def on_step_begin(self, args, state, control, **kw):
            self._event("on_step_begin", state, **kw)

        def on_pre_optimizer_step(self, args, state, control, **kw):
            self._event("on_pre_optimizer_step", state, **kw)

        def on_optimizer_step(self, args, state, control, **kw):
            self._event("on_optimizer_step", state, **kw)

        def on_substep_end(self, args, state, control, **kw):
            self._event("on_substep_end", state, **kw)

        def on_step_end(self, args, state, control, **kw):
            self._event("on_step_end", state, **kw)
            if stop_at_step is not None and state.global_step >= stop_at_step:
                control.should_training_stop = True
                write({"kind": "stop_requested", "global_step": state.global_step})

        def on_log(self, args, state, control, logs=None, **kw):
            write({
                "kind": "log",
                "global_step": state.global_step,
                "kwargs": sorted(kw),
                "logs": copy.deepcopy(dict(logs)) if logs is not None else None,
                "types": {k: type(v).__name__ for k, v in (logs or {}).items()},
            })

        def on_evaluate(self, args, state, control, **kw):
            self._event("on_evaluate", state, **kw)

        def on_save(self, args, state, control, **kw):
            self._event("on_save", state, **kw)

        def on_epoch_end(self, args, state, control, **kw):
            self._event("on_epoch_end", state, **kw)

        def on_train_end(self, args, state, control, **kw):
            self._event("on_train_end", state, **kw)

    return RecordKeysCallback(), fh


def main(argv=None):
    a = parse_args(argv)
    t0 = time.time()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import torch

    torch.set_num_threads(a.threads)
    import transformers
    import trl

    try:
        from trl.experimental.ppo import PPOConfig, PPOTrainer
    except ImportError:  # older TRL exported it at top level
        from trl import PPOConfig, PPOTrainer

    tokenizer = build_tokenizer()
    policy, ref, reward, value = build_models(tokenizer, a.seed)
    n_prompts = max(a.batch_size * a.steps, 6)
    train_ds = build_dataset(tokenizer, n_prompts)

    callbacks = []
    for spec in a.callback:
        cb = load_factory(spec)()
        callbacks.append(cb)
    trainer_holder: dict = {}
    rec_fh = None
    if a.record_keys:
        rec, rec_fh = make_recorder(a.record_keys, a.stop_at_step, trainer_holder)
        callbacks.append(rec)
    elif a.stop_at_step is not None:
        from transformers import TrainerCallback

        class _Stop(TrainerCallback):
            def on_step_end(self, args, state, control, **kw):
                if state.global_step >= a.stop_at_step:
                    control.should_training_stop = True

        callbacks.append(_Stop())

    out_dir = a.output_dir or tempfile.mkdtemp(prefix="tiny_ppo_")
    config = PPOConfig(
        output_dir=out_dir,
        per_device_train_batch_size=a.batch_size,
        gradient_accumulation_steps=1,
        num_mini_batches=1,
        local_rollout_forward_batch_size=a.batch_size,
        total_episodes=a.batch_size * a.steps,
        num_ppo_epochs=a.num_ppo_epochs,
        response_length=a.response_length,
        stop_token="eos",
        num_sample_generations=0,  # no eval-set sampling (there is no eval set)
        learning_rate=1e-4,
        logging_steps=a.logging_steps,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        bf16=False,
        fp16=False,
        seed=a.seed,
        dataloader_num_workers=0,
    )
    trainer = PPOTrainer(
        args=config,
        processing_class=tokenizer,
        model=policy,
        ref_model=ref,
        reward_model=reward,
        value_model=value,
        train_dataset=train_ds,
        callbacks=callbacks,
    )
    trainer_holder["class"] = type(trainer).__name__
    t1 = time.time()
    trainer.train()
    t2 = time.time()
    if rec_fh is not None:
        rec_fh.write(json.dumps({
            "kind": "end",
            "global_step": trainer.state.global_step,
            "max_steps": trainer.state.max_steps,
            "versions": {"trl": trl.__version__, "transformers": transformers.__version__,
                         "torch": torch.__version__},
        }) + "\n")
        rec_fh.close()
    print(f"tiny_ppo: trl {trl.__version__} transformers {transformers.__version__} torch {torch.__version__}; "
          f"steps {trainer.state.global_step}/{trainer.state.max_steps}; setup {t1 - t0:.1f}s train {t2 - t1:.1f}s",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
