"""Algorithm profiles: which trainer is running, what its metrics mean, which panels to draw.

Detection walks the MRO of the trainer class and of its config class, so user subclasses and TRL's moves
between ``trl`` and ``trl.experimental`` (or renames such as PPOv2Trainer) resolve to the same profile.
Panel specs are plain JSON dicts so the widget (BokehJS) and the static report (Python Bokeh) draw the
same thing without sharing code.
"""

from __future__ import annotations

import fnmatch
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

LN2 = math.log(2.0)


@dataclass(frozen=True)
class Profile:
    """``honours_stop``: False for trainers whose loop ignores ``control.should_training_stop`` (PPO in TRL
    ≤1.12, measured): stopping them needs an exception at the step boundary."""

    name: str
    display: str
    class_names: tuple[str, ...]
    panels: tuple[dict[str, Any], ...]
    loss_is_signal: bool = True
    honours_stop: bool = True
    derived: tuple[tuple[str, str, Callable[[dict[str, float]], float | None]], ...] = field(default=())

    def panel_keys(self) -> list[str]:
        return [s["key"] for p in self.panels for s in p["series"]]


def series(key: str, label: str | None = None) -> dict[str, Any]:
    return {"key": key, "label": label or key}


def panel(pid: str, title: str, keys: list[Any], *, refs: list[tuple[float, str]] = (), log: bool = False,
          y_label: str = "") -> dict[str, Any]:
    """A panel spec. ``keys`` hold TRL key names or glob patterns such as ``rewards/*/mean``."""
    return {
        "id": pid,
        "title": title,
        "series": [k if isinstance(k, dict) else series(k) for k in keys],
        "refs": [{"y": y, "label": label} for y, label in refs],
        "y_scale": "log" if log else "linear",
        "y_label": y_label,
        "group": "core",
    }


def _exp_of(key: str) -> Callable[[dict[str, float]], float | None]:
    def compute(values: dict[str, float]) -> float | None:
        loss = values.get(key)
        if loss is None or not math.isfinite(loss) or loss > 50:
            return None
        return math.exp(loss)

    return compute


def _diff(a: str, b: str) -> Callable[[dict[str, float]], float | None]:
    def compute(values: dict[str, float]) -> float | None:
        if a in values and b in values:
            return values[a] - values[b]
        return None

    return compute


OPTIM = panel("optim_grad_norm", "Gradient norm", ["grad_norm"], log=True)
LR = panel("optim_lr", "Learning rate", ["learning_rate", "lr"])

PREF_PANELS = (
    panel("pref_accuracy", "Win rate (rewards/accuracies)", [series("rewards/accuracies", "win rate")],
          refs=[(0.5, "chance")]),
    panel("pref_margin", "Reward margin", [series("rewards/margins", "margin")], refs=[(0.0, "zero margin")]),
    panel("pref_rewards", "Implicit rewards", [series("rewards/chosen", "chosen"),
                                               series("rewards/rejected", "rejected")], refs=[(0.0, "")]),
    panel("pref_logps", "Log-probs", [series("logps/chosen", "chosen"), series("logps/rejected", "rejected")]),
)

RL_PANELS = (
    panel("rl_reward", "Reward (group mean)", ["reward", "rewards/*/mean"]),
    panel("rl_reward_std", "Reward std", ["reward_std", "rewards/*/std"]),
    panel("rl_zero_std", "Zero-std groups", [series("frac_reward_zero_std", "fraction of groups")],
          refs=[(0.5, "")]),
    panel("rl_lengths", "Completion length", ["completions/mean_length", "completions/min_length",
                                              "completions/max_length", "completions/mean_terminated_length"]),
    panel("rl_truncation", "Truncated completions", [series("completions/clipped_ratio", "clipped ratio")]),
    panel("rl_kl", "KL to reference", ["kl"]),
    panel("rl_entropy", "Entropy", ["entropy"]),
    panel("rl_clip", "Clip ratios", ["clip_ratio/region_mean", "clip_ratio/low_mean", "clip_ratio/high_mean"]),
    panel("rl_advantage", "Advantages", ["*advantage*"]),
    panel("rl_loss", "Loss (≈β·KL, not a learning signal)", ["loss"]),
    panel("rl_step_time", "Step time (s)", ["step_time", "perf/step_s", "perf/weight_sync_s"]),
    panel("rl_tools", "Tool calls", [series("tools/call_frequency", "calls per completion"),
                                     series("tools/failure_frequency", "failed fraction")]),
)

PROFILES: tuple[Profile, ...] = (
    Profile("sft", "SFT", ("SFTTrainer", "SFTConfig"), (
        panel("sft_loss", "Loss", ["loss"]),
        panel("sft_ppl", "Perplexity (exp loss, derived)", ["perplexity"], log=True),
        panel("sft_acc", "Token accuracy", ["mean_token_accuracy"]),
        panel("sft_entropy", "Entropy", ["entropy"]),
        panel("sft_aux_loss", "MoE load-balancing loss", ["aux_loss"]),
        OPTIM, LR,
    ), derived=(("perplexity", "exp(loss)", _exp_of("loss")),)),
    Profile("dpo", "DPO", ("DPOTrainer", "DPOConfig"), (
        panel("dpo_loss", "Loss", ["loss"], refs=[(LN2, "ln 2 (π = π_ref)")]),
        *PREF_PANELS, OPTIM, LR,
    )),
    Profile("kto", "KTO", ("KTOTrainer", "KTOConfig"), (
        panel("kto_loss", "Loss", ["loss"]),
        panel("kto_kl", "KL reference point z₀", ["kl"]),
        panel("kto_rewards", "Rewards (desirable / undesirable)",
              [series("rewards/chosen", "desirable"), series("rewards/rejected", "undesirable")], refs=[(0.0, "")]),
        panel("kto_logps", "Log-probs (desirable / undesirable)",
              [series("logps/chosen", "desirable"), series("logps/rejected", "undesirable")]),
        panel("pref_margin", "Reward margin", [series("rewards/margins", "margin")], refs=[(0.0, "zero margin")]),
        OPTIM, LR,
    )),
    Profile("orpo", "ORPO", ("ORPOTrainer", "ORPOConfig"), (
        panel("orpo_loss", "Loss: total, SFT (NLL), odds-ratio",
              [series("loss", "total"), series("nll_loss", "SFT (NLL)"), series("orpo_or_loss", "odds-ratio")]),
        panel("orpo_log_odds", "Log odds ratio", [series("log_odds_chosen", "log odds (chosen vs rejected)"),
                                                   series("log_odds_ratio", "log σ(log odds)")],
              refs=[(0.0, ""), (-LN2, "−ln 2")]),
        *PREF_PANELS, OPTIM, LR,
    ), derived=(("orpo_or_loss", "loss − nll_loss", _diff("loss", "nll_loss")),)),
    Profile("cpo", "CPO", ("CPOTrainer", "CPOConfig"), (
        panel("cpo_loss", "Loss: total, NLL", [series("loss", "total"), series("nll_loss", "NLL (BC term)")]),
        *PREF_PANELS, OPTIM, LR,
    )),
    Profile("online_dpo", "Online DPO", ("OnlineDPOTrainer", "OnlineDPOConfig"), (
        panel("odpo_loss", "Loss", ["loss"], refs=[(LN2, "ln 2")]),
        panel("odpo_scores", "Reward-model scores", ["objective/scores", "objective/rlhf_reward",
                                                     "objective/scores_margin"]),
        panel("odpo_kl", "KL to reference", ["objective/kl"]),
        panel("odpo_entropy", "Entropy", ["objective/entropy"]),
        panel("odpo_eos", "Completions with EOS", ["val/contain_eos_token"]),
        *PREF_PANELS, OPTIM, LR,
    )),
    Profile("grpo", "GRPO", ("GRPOTrainer", "GRPOConfig"), (*RL_PANELS, OPTIM, LR), loss_is_signal=False),
    Profile("rloo", "RLOO", ("RLOOTrainer", "RLOOConfig"), (*RL_PANELS, OPTIM, LR), loss_is_signal=False),
    Profile("ppo", "PPO", ("PPOTrainer", "PPOConfig", "PPOv2Trainer", "PPOv2Config"), (
        panel("ppo_losses", "Policy and value loss", [series("loss/policy_avg", "policy loss"),
                                                      series("loss/value_avg", "value loss")]),
        panel("ppo_scores", "Scores / RLHF reward", ["objective/scores", "objective/rlhf_reward",
                                                     "objective/non_score_reward"]),
        panel("ppo_kl", "KL", [series("objective/kl", "KL to reference"), series("policy/approxkl_avg", "approx KL")]),
        panel("ppo_entropy", "Entropy", ["objective/entropy", "policy/entropy_avg"]),
        panel("ppo_clipfrac", "Clip fraction", [series("policy/clipfrac_avg", "policy"),
                                                series("val/clipfrac_avg", "value")], refs=[(0.2, "ε")]),
        panel("ppo_ratio", "Probability ratio", ["val/ratio", "val/ratio_var"], refs=[(1.0, "")]),
        panel("ppo_eos", "EOS tokens", ["val/num_eos_tokens"]),
        OPTIM, LR,
    ), honours_stop=False),
    Profile("reward", "Reward model", ("RewardTrainer", "RewardConfig"), (
        panel("rm_loss", "Loss", ["loss"], refs=[(LN2, "ln 2")]),
        panel("rm_accuracy", "Accuracy", ["accuracy"], refs=[(0.5, "chance")]),
        panel("rm_margin", "Margin", ["margin"], refs=[(0.0, "")]),
        panel("rm_rewards", "Rewards", ["min_reward", "mean_reward", "max_reward"]),
        OPTIM, LR,
    )),
)

GENERIC = Profile("generic", "Trainer", ("Trainer", "TrainingArguments"), (
    panel("loss", "Loss", ["loss"]), OPTIM, LR,
))

_BY_NAME = {p.name: p for p in (*PROFILES, GENERIC)}


def get_profile(name: str) -> Profile:
    return _BY_NAME.get(name, GENERIC)


def _normalise(class_name: str) -> str:
    return re.sub(r"(v\d+)?(Trainer|Config|Arguments)$", "", class_name).lower().replace("_", "")


_NORMALISED = {_normalise(n): p for p in PROFILES for n in p.class_names}


def detect(*class_mros: list[str]) -> Profile:
    """The profile for the first class name (most specific first) that a profile claims.

    Each argument is a class MRO as a list of names (trainer class first, then config class). Exact names win;
    otherwise names are compared without their Trainer/Config suffix, so ``PPOv2Trainer`` still maps to PPO.
    """
    for mro in class_mros:
        for name in mro:
            for profile in PROFILES:
                if name in profile.class_names:
                    return profile
    for mro in class_mros:
        for name in mro:
            profile = _NORMALISED.get(_normalise(name))
            if profile is not None:
                return profile
    return GENERIC


def mro_names(cls: type) -> list[str]:
    return [c.__name__ for c in cls.__mro__ if c is not object]


def match_key(pattern: str, key: str) -> bool:
    return pattern == key or ("*" in pattern and fnmatch.fnmatchcase(key, pattern))


# Keys every trainer logs that carry no diagnostic value of their own; kept in history, shown under "other".
def log_split(values: dict[str, Any]) -> str:
    """Which kind of Trainer log dict this is: ``"summary"`` (the final one, with ``train_runtime``), ``"eval"``
    (``evaluate()`` prefixes every key with its ``metric_key_prefix``, ``eval`` or ``test``, and adds ``epoch``
    last) or ``"train"``. Two key checks: this runs on every log point."""
    if "train_runtime" in values:
        return "summary"
    if "eval_runtime" in values or str(next(iter(values), "")).startswith(("eval_", "test_")):
        return "eval"
    return "train"


BOOKKEEPING_KEYS = frozenset({"epoch", "num_tokens", "step_time", "episode", "eps"})


# Training-step log keys of each TRL 1.16 trainer, as measured (shared/reference/trl-log-keys.md).
_TRL_COMMON = ("loss", "grad_norm", "learning_rate", "epoch")
_TRL_PREF = ("rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins", "logps/chosen",
             "logps/rejected", "logits/chosen", "logits/rejected")
_TRL_RL = ("num_tokens", "completions/mean_length", "completions/min_length", "completions/max_length",
           "completions/clipped_ratio", "completions/mean_terminated_length", "completions/min_terminated_length",
           "completions/max_terminated_length", "rewards/*/mean", "rewards/*/std", "reward", "reward_std",
           "frac_reward_zero_std", "kl", "entropy", "clip_ratio/low_mean", "clip_ratio/high_mean",
           "clip_ratio/region_mean", "clip_ratio/low_min", "clip_ratio/high_max", "step_time")
TRL_KEYS: dict[str, tuple[str, ...]] = {
    "generic": _TRL_COMMON,
    "sft": (*_TRL_COMMON, "entropy", "mean_token_accuracy", "num_tokens"),
    "dpo": (*_TRL_COMMON, *_TRL_PREF, "entropy", "num_tokens", "mean_token_accuracy"),
    "kto": (*_TRL_COMMON, *_TRL_PREF, "kl", "entropy", "num_tokens"),
    "grpo": (*_TRL_COMMON, *_TRL_RL),
    "rloo": (*_TRL_COMMON, *_TRL_RL),
    "reward": (*_TRL_COMMON, "num_tokens", "min_reward", "mean_reward", "max_reward", "accuracy", "margin"),
    "orpo": (*_TRL_COMMON, *_TRL_PREF, "nll_loss", "log_odds_ratio", "log_odds_chosen"),
    "cpo": (*_TRL_COMMON, *_TRL_PREF, "nll_loss"),
    "online_dpo": (*_TRL_COMMON, *_TRL_PREF, "objective/kl", "objective/entropy", "objective/non_score_reward",
                   "val/contain_eos_token", "beta", "objective/rlhf_reward", "objective/scores_margin",
                   "objective/scores"),
    "ppo": (*_TRL_COMMON, "loss/policy_avg", "loss/value_avg", "objective/kl", "objective/entropy",
            "objective/non_score_reward", "objective/rlhf_reward", "objective/scores", "policy/approxkl_avg",
            "policy/clipfrac_avg", "policy/entropy_avg", "val/clipfrac_avg", "val/ratio", "val/ratio_var",
            "val/num_eos_tokens", "lr", "episode"),
}
