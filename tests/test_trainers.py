"""Every supported TRL trainer, for a few real steps on a tiny model, with the callback attached."""

from __future__ import annotations

import math

import pytest
from transformers import TrainerCallback

from ptt_nb import DiagnosticsCallback
from ptt_nb.tiny import make_trainer

from .conftest import events_of

# Panels each profile must fill from the real logs of its trainer (TRL 1.16, measured keys).
EXPECTED_PANELS = {
    "sft": {"sft_loss", "sft_ppl", "sft_acc", "optim_grad_norm", "optim_lr"},
    "dpo": {"dpo_loss", "pref_accuracy", "pref_margin", "pref_rewards", "pref_logps", "optim_grad_norm"},
    "kto": {"kto_loss", "kto_kl", "kto_rewards", "kto_logps", "optim_grad_norm"},
    "orpo": {"orpo_loss", "orpo_log_odds", "pref_accuracy", "pref_margin", "pref_logps"},
    "cpo": {"cpo_loss", "pref_accuracy", "pref_margin", "pref_logps"},
    "grpo": {"rl_reward", "rl_reward_std", "rl_zero_std", "rl_lengths", "rl_truncation", "rl_entropy", "rl_clip"},
    "rloo": {"rl_reward", "rl_reward_std", "rl_zero_std", "rl_lengths", "rl_kl", "rl_entropy", "rl_clip"},
    "online_dpo": {"odpo_loss", "odpo_scores", "odpo_kl", "pref_accuracy", "pref_margin", "pref_logps"},
    "reward": {"rm_loss", "rm_accuracy", "rm_margin", "rm_rewards"},
}
TRAINER_CLASS = {"sft": "SFTTrainer", "dpo": "DPOTrainer", "kto": "KTOTrainer", "orpo": "ORPOTrainer",
                 "cpo": "CPOTrainer", "grpo": "GRPOTrainer", "rloo": "RLOOTrainer",
                 "online_dpo": "OnlineDPOTrainer", "reward": "RewardTrainer"}
# Wall-clock values differ between any two runs, with or without the callback.
TIMING_KEYS = {"train_runtime", "train_samples_per_second", "train_steps_per_second", "step_time"}
STEPS = 3


class Recorder(TrainerCallback):
    def __init__(self) -> None:
        self.logs: list[dict] = []

    def on_log(self, args, state, control, logs=None, **kwargs):
        self.logs.append({k: v for k, v in logs.items() if k not in TIMING_KEYS})


def _same(a: list[dict], b: list[dict]) -> bool:
    if len(a) != len(b):
        return False
    for x, y in zip(a, b, strict=True):
        if x.keys() != y.keys():
            return False
        for k in x:
            vx, vy = x[k], y[k]
            if isinstance(vx, float) and math.isnan(vx) and isinstance(vy, float) and math.isnan(vy):
                continue
            if vx != vy:
                return False
    return True


@pytest.mark.parametrize("algorithm", sorted(EXPECTED_PANELS))
def test_trainer_detected_mapped_and_recorded(algorithm, tmp_path):
    baseline = Recorder()
    make_trainer(algorithm, tmp_path / "a", callbacks=[baseline], max_steps=STEPS).train()

    run_dir = tmp_path / "run"
    callback = DiagnosticsCallback(run_dir=run_dir, widget=False, console=False)
    observed = Recorder()  # after ours: sees the logs dict as our callback left it
    trainer = make_trainer(algorithm, tmp_path / "b", callbacks=[callback, observed], max_steps=STEPS)
    trainer.train()
    monitor = callback.monitor

    # detection from the live trainer and its config class
    assert monitor.profile.name == algorithm
    assert monitor.run.trainer == TRAINER_CLASS[algorithm]

    # the profile's panels filled from real logs
    panels = {p["id"]: p for p in monitor.panels()}
    missing = EXPECTED_PANELS[algorithm] - set(panels)
    assert not missing, f"{algorithm}: panels without data: {missing}"
    for pid in EXPECTED_PANELS[algorithm]:
        for series in panels[pid]["series"]:
            s = monitor.history.get(series["key"], series["split"])
            assert s is not None and len(s) == STEPS, (pid, series)

    # nothing numeric is dropped: every logged key is in a panel or in the "other" group
    shown = {s["key"] for p in panels.values() for s in p["series"]}
    logged = set(observed.logs[0])
    assert logged - shown <= {"epoch", "num_tokens", "step_time"}, logged - shown

    # a complete events.jsonl: header, one metrics row per step, the summary, the footer
    rows = events_of(run_dir)
    assert rows[0]["kind"] == "run_start" and rows[0]["algorithm"] == algorithm and rows[0]["v"] == 1
    assert rows[0]["versions"]["trl"] and rows[0]["config"]["config_class"].endswith("Config")
    train_rows = [r for r in rows if r["kind"] == "metrics" and r["split"] == "train"]
    assert [r["step"] for r in train_rows] == list(range(1, STEPS + 1))
    assert [r for r in rows if r["kind"] == "metrics" and r["split"] == "summary"]
    assert rows[-1] == {**rows[-1], "kind": "run_end", "reason": "finished", "step": STEPS}
    assert not (run_dir / "postmortem.json").exists()

    # training with the callback logs exactly what it logs without it
    assert _same(baseline.logs, observed.logs), (baseline.logs, observed.logs)


def test_eval_and_summary_logs_are_told_apart(tmp_path):
    from ptt_nb.tiny import preference_dataset

    callback = DiagnosticsCallback(run_dir=tmp_path / "run", widget=False, console=False)
    trainer = make_trainer("dpo", tmp_path, callbacks=[callback], max_steps=4, eval_strategy="steps", eval_steps=2,
                           per_device_eval_batch_size=4, eval_dataset=preference_dataset(8, seed=1))
    trainer.train()
    rows = events_of(tmp_path / "run", "metrics")
    splits = [(r["split"], r["step"]) for r in rows]
    assert ("eval", 2) in splits and ("eval", 4) in splits
    assert splits[-1] == ("summary", 4)
    eval_row = next(r for r in rows if r["split"] == "eval")
    assert "eval_loss" in eval_row["values"] and "loss" not in eval_row["values"]
    panels = {p["id"]: p for p in callback.monitor.panels()}
    assert {"key": "eval_loss", "label": "loss (eval)", "split": "eval"} in panels["dpo_loss"]["series"]
    assert "train_runtime" in callback.monitor.history.summary
    assert len(callback.monitor.history.get("loss")) == 4  # eval points never leak into the train series
