"""Every built-in catalog rule fires on a series reproducing its pathology and stays silent on a healthy one.

The series here are documented shapes (synthetic numbers with TRL's real key names, fed through
``Monitor.log`` exactly as the callback does). Pathologies provoked in real TRL runs, and the calibration on real
healthy runs of every trainer, are in ``test_rules_calibration.py``.
"""

from __future__ import annotations

import math
import random

import pytest

from ptt_nb.events import RunStart
from ptt_nb.monitor._monitor import Monitor
from ptt_nb.rules._builtin import default_rules
from ptt_nb.rules._catalog import LN2, catalog_rules
from ptt_nb.rules._engine import Context, Engine
from ptt_nb.rules._windows import PairWindow, SortedWindow, Trend, Window

N = 200


def lr_at(s: int, peak: float = 5e-7, warmup: int = 10, n: int = N) -> float:
    return peak * min(s / warmup, 1.0) * (1.0 - s / (n + 1))


def base(algorithm: str, s: int, rng: random.Random) -> dict[str, float]:
    """One healthy log point of the given trainer (TRL key names; values shaped like a run that learns)."""
    def noise(scale: float) -> float:
        return rng.gauss(0.0, scale)

    v: dict[str, float] = {"grad_norm": 0.5 + noise(0.05), "learning_rate": lr_at(s), "epoch": s / 400}
    if algorithm in ("dpo", "online_dpo", "kto", "orpo", "cpo"):
        margin = 0.02 * s * (1 + noise(0.1))
        chosen = 0.004 * s + noise(0.01)
        v.update({"loss": LN2 * math.exp(-s / 150) + noise(0.01), "rewards/margins": margin,
                  "rewards/chosen": chosen, "rewards/rejected": chosen - margin,
                  "rewards/accuracies": min(0.9, 0.5 + 0.004 * s) + noise(0.03),
                  "logps/chosen": -50 + noise(1), "logps/rejected": -55 - 0.05 * s + noise(1),
                  "logits/chosen": noise(0.1), "logits/rejected": noise(0.1)})
    if algorithm == "kto":
        del v["rewards/accuracies"]
        v["kl"] = 0.05 + 0.0005 * s + abs(noise(0.01))
    if algorithm == "orpo":
        v.update({"nll_loss": 2.0 * math.exp(-s / 300) + noise(0.01), "log_odds_chosen": 0.01 * s + noise(0.05),
                  "log_odds_ratio": -LN2 + 0.002 * s})
    if algorithm == "cpo":
        v["nll_loss"] = 2.0 * math.exp(-s / 300) + noise(0.01)
    if algorithm == "online_dpo":
        v.update({"objective/kl": 0.5 + 0.01 * s + noise(0.05), "objective/entropy": 30 + noise(0.5),
                  "objective/scores": 0.1 + 0.002 * s + noise(0.02), "val/contain_eos_token": 0.9 + noise(0.02)})
    if algorithm in ("grpo", "rloo"):
        v.update({"loss": noise(0.01), "reward": 0.2 + 0.002 * s + noise(0.03), "reward_std": 0.3 + noise(0.02),
                  "frac_reward_zero_std": max(0.0, 0.1 + noise(0.03)), "completions/mean_length": 100 + noise(3),
                  "completions/clipped_ratio": max(0.0, 0.05 + noise(0.01)), "entropy": 0.8 - 0.001 * s + noise(0.01),
                  "clip_ratio/region_mean": 0.0, "clip_ratio/high_mean": 0.0, "clip_ratio/low_mean": 0.0,
                  "kl": 0.001 + 0.0001 * s + abs(noise(0.0002)), "step_time": 1.0 + noise(0.01)})
    if algorithm == "ppo":
        v = {"objective/kl": 0.5 + 0.01 * s + noise(0.05), "objective/entropy": 30 + noise(0.5),
             "objective/scores": 0.1 + 0.002 * s + noise(0.02), "policy/approxkl_avg": 0.01 + noise(0.001),
             "policy/clipfrac_avg": 0.05 + noise(0.01), "loss/policy_avg": noise(0.01),
             "loss/value_avg": 0.5 * math.exp(-s / 100) + abs(noise(0.01)), "val/clipfrac_avg": 0.1 + noise(0.01),
             "policy/entropy_avg": 3.0 - 0.001 * s + noise(0.02), "val/ratio": 1.0 + noise(0.01),
             "val/ratio_var": 1e-4, "lr": lr_at(s), "episode": 2 * s, "epoch": s / 400}
    if algorithm in ("sft", "generic"):
        v.update({"loss": 2.0 * math.exp(-s / 200) + 0.5 + noise(0.02), "mean_token_accuracy": 0.3 + 0.001 * s,
                  "entropy": 2.0 + noise(0.05)})
    return v


def stream(algorithm: str, n: int = N, seed: int = 0, **over):
    """``n`` healthy points with some keys replaced: a value, a function (step, values) -> value, or None
    (drop the key). A key named with a ``__`` suffix is applied after the others."""
    rng = random.Random(seed)
    out = []
    for s in range(1, n + 1):
        v = base(algorithm, s, rng)
        for key, f in over.items():
            if f is None:
                v.pop(key, None)
            else:
                v[key] = f(s, v) if callable(f) else f
        out.append((s, v))
    return out


HEALTHY_CONFIG = {"learning_rate": 5e-7, "warmup_steps": 10, "max_grad_norm": 1.0, "lr_scheduler_type": "linear",
                  "n_params": 7e9, "beta": 0.1, "num_iterations": 1}


def run(algorithm: str, points, config: dict | None = None, max_steps: int = N, eval_points=()) -> Monitor:
    mon = Monitor()
    mon.start(RunStart(run_id="t", trainer="T", algorithm=algorithm, config={**HEALTHY_CONFIG, **(config or {})},
                       max_steps=max_steps))
    evals = dict(eval_points)
    for step, values in points:
        mon.log(step, dict(values))
        if step in evals:
            mon.log(step, dict(evals[step]), split="eval")
    return mon


def alerts(mon: Monitor, rule_id: str) -> list:
    return [a for a in mon.alerts if a.rule == rule_id]


def severities(mon: Monitor, rule_id: str) -> set[str]:
    return {a.severity for a in alerts(mon, rule_id)}


# --------------------------------------------------------------------------------------------------------------
# (rule id, algorithm, config, overrides of the pathology, expected severities)
PATHOLOGIES = {
    "dpo_loss_at_ln2": ("dpo", {}, dict(loss=LN2, **{"rewards/margins": 0.0, "rewards/accuracies": 0.0,
                                                      "rewards/chosen": 0.0, "rewards/rejected": 0.0}), {"high"}),
    "pref_empty_completion": ("dpo", {}, {"logps/chosen": 0.0, "logps/rejected": 0.0}, {"critical"}),
    "pref_margin_inverted": ("dpo", {}, {"rewards/margins": lambda s, v: -0.01 * s,
                                         "rewards/accuracies": 0.3}, {"high"}),
    "dpo_likelihood_displacement": ("dpo", {}, {"rewards/chosen": lambda s, v: -0.001 * s}, {"medium"}),
    "pref_overfit": ("dpo", {}, {"rewards/accuracies": 1.0, "loss": lambda s, v: 0.05 * math.exp(-s / 100)},
                     {"medium"}),
    "kto_kl_degenerate": ("kto", {}, {"kl": 0.0}, {"medium"}),
    "orpo_odds_not_separating": ("orpo", {}, {"log_odds_chosen": lambda s, v: -0.1 + 0.01 * math.sin(s),
                                              "rewards/accuracies": 0.4}, {"high"}),
    "orpo_cpo_nll_diverging": ("orpo", {}, {"nll_loss": lambda s, v: 1.0 + (0.0 if s < 30 else 0.01 * (s - 30))},
                               {"medium"}),
    "simpo_margin_below_gamma": ("cpo", {"loss_type": "simpo", "simpo_gamma": 0.5},
                                 {"rewards/margins": lambda s, v: 0.1 + 0.0001 * s}, {"medium"}),
    "rl_kl_runaway": ("ppo", {}, {"objective/kl": 15.0}, {"high"}),
    "ppo_negative_kl": ("ppo", {}, {"objective/kl": -0.5}, {"high"}),
    "ppo_ratio_out_of_band": ("ppo", {}, {"val/ratio": lambda s, v: 3.0 if s > 100 else 1.0}, {"high"}),
    "ppo_approxkl_high": ("ppo", {}, {"policy/approxkl_avg": 0.05}, {"medium"}),
    "ppo_clipfrac_high": ("ppo", {}, {"policy/clipfrac_avg": 0.3}, {"medium"}),
    "ppo_value_instability": ("ppo", {}, {"loss/value_avg": lambda s, v: 0.1 * s, "val/clipfrac_avg": 0.6},
                              {"medium"}),
    "rl_reward_overopt": ("grpo", {"beta": 0.04}, {"reward": lambda s, v: 0.2 + 0.01 * s,
                                                   "kl": lambda s, v: 0.001 * s,
                                                   "completions/mean_length": lambda s, v: 50 + s}, {"medium"}),
    "rl_length_hacking": ("grpo", {}, {"completions/mean_length": lambda s, v: 50 + s,
                                       "reward": lambda s, v: 0.01 * (50 + s) + random.Random(s).gauss(0, 0.05)},
                          {"medium"}),
    "rl_truncation": ("grpo", {}, {"completions/clipped_ratio": 0.5}, {"medium"}),
    "rl_entropy_out_of_band": ("grpo", {}, {"entropy": lambda s, v: 0.8 if s < 10 else 0.1}, {"high"}),
    "grpo_zero_variance_groups": ("grpo", {}, {"frac_reward_zero_std": 0.7}, {"high"}),
    "grpo_length_bias": ("grpo", {"loss_type": "grpo", "scale_rewards": "group"},
                         {"completions/mean_length": lambda s, v: 50 + 0.5 * s + random.Random(s).gauss(0, 2),
                          "reward": lambda s, v: 0.5 + random.Random(-s).gauss(0, 0.02) - 0.0005 * s}, {"medium"}),
    "grpo_clip_ratio": ("grpo", {"num_iterations": 2}, {"clip_ratio/region_mean": 0.3}, {"medium"}),
    "grpo_rollout_mismatch": ("grpo", {}, {"sampling/importance_sampling_ratio/min": 0.3,
                                           "sampling/importance_sampling_ratio/max": 1.5,
                                           "sampling/sampling_logp_difference/mean": 0.01}, {"medium"}),
    "grpo_kl_unmonitored": ("grpo", {"beta": 0.0}, {"kl": None}, {"low"}),
    "loss_spike": ("sft", {}, {"loss": lambda s, v: v["loss"] * (4.0 if s == 120 else 1.0)}, {"medium"}),
    "grad_norm_spike": ("sft", {}, {"grad_norm": lambda s, v: v["grad_norm"] * (30.0 if s == 120 else 1.0)},
                        {"medium"}),
    "grad_norm_zero": ("sft", {}, {"grad_norm": lambda s, v: 0.0 if s > 100 else v["grad_norm"]}, {"critical"}),
    "grad_clip_saturation": ("sft", {}, {"grad_norm": lambda s, v: 2.0 + v["grad_norm"]}, {"medium"}),
    "lr_warmup_missing": ("sft", {"warmup_steps": 0}, {"learning_rate": lambda s, v: lr_at(s, warmup=1)}, {"low"}),
    "lr_schedule_anomaly": ("sft", {}, {"learning_rate": lambda s, v: 0.0 if s > 50 else v["learning_rate"]},
                            {"critical"}),
    "nonfinite_values": ("sft", {}, {"grad_norm": lambda s, v: math.nan if s == 80 else v["grad_norm"]},
                         {"critical"}),
}

@pytest.mark.parametrize("rule_id", sorted(PATHOLOGIES))
def test_rule_fires_on_its_pathology(rule_id: str) -> None:
    algorithm, config, over, expected = PATHOLOGIES[rule_id]
    mon = run(algorithm, stream(algorithm, **over), config)
    got = alerts(mon, rule_id)
    assert got, f"{rule_id} did not fire; alerts: {[(a.rule, a.step) for a in mon.alerts]}"
    assert severities(mon, rule_id) & expected, severities(mon, rule_id)
    first = got[0]
    assert first.message and first.action and first.reference
    assert first.evidence and all(isinstance(v, float) for v in first.evidence.values())


@pytest.mark.parametrize("rule_id", sorted(PATHOLOGIES))
def test_rule_silent_on_healthy_series(rule_id: str) -> None:
    algorithm, config, _over, _expected = PATHOLOGIES[rule_id]
    if rule_id == "grpo_kl_unmonitored":
        config = {}  # the healthy GRPO stream logs kl (beta > 0)
    mon = run(algorithm, stream(algorithm), {k: v for k, v in config.items() if k != "warmup_steps"})
    assert not alerts(mon, rule_id), [(a.rule, a.severity, a.step, a.message) for a in alerts(mon, rule_id)]


@pytest.mark.parametrize("algorithm", ["sft", "dpo", "kto", "orpo", "cpo", "online_dpo", "grpo", "rloo", "ppo"])
def test_healthy_streams_raise_nothing(algorithm: str) -> None:
    mon = run(algorithm, stream(algorithm))
    assert not mon.alerts, [(a.rule, a.severity, a.step, a.message) for a in mon.alerts]


# ---- escalations and variants -------------------------------------------------------------------------------

def test_dpo_loss_at_ln2_critical_with_zero_lr_and_not_before_step_50() -> None:
    over = dict(loss=LN2, learning_rate=0.0, **{"rewards/margins": 0.0, "rewards/accuracies": 0.0})
    mon = run("dpo", stream("dpo", n=100, **over), max_steps=100)
    got = alerts(mon, "dpo_loss_at_ln2")
    assert got[0].severity == "critical" and got[0].step == 50
    assert got[0].evidence["learning_rate"] == 0.0


def test_dpo_loss_at_ln2_silent_on_a_slow_but_separating_run() -> None:
    # the calibration case: lr=1e-5 on the tiny model, step 50: loss 0.6903, margin 0.0056, accuracy 1.0
    over = {"loss": lambda s, v: LN2 - 0.00006 * s, "rewards/margins": lambda s, v: 0.0001 * s,
            "rewards/accuracies": 1.0}
    mon = run("dpo", stream("dpo", n=60, **over), max_steps=60)
    assert not alerts(mon, "dpo_loss_at_ln2")


def test_dpo_loss_at_ln2_skips_other_loss_types() -> None:
    over = dict(loss=LN2, **{"rewards/margins": 0.0, "rewards/accuracies": 0.0})
    assert not alerts(run("dpo", stream("dpo", **over), {"loss_type": "ipo"}), "dpo_loss_at_ln2")


def test_likelihood_displacement_high_below_minus_5_nats() -> None:
    mon = run("dpo", stream("dpo", **{"rewards/chosen": lambda s, v: -0.01 * s}))
    assert "high" in severities(mon, "dpo_likelihood_displacement")


def test_pref_overfit_train_eval_gap() -> None:
    evals = [(s, {"eval_rewards/accuracies": 0.6, "eval_loss": 0.5}) for s in (100, 150)]
    over = {"rewards/accuracies": lambda s, v: 0.97, "epoch": lambda s, v: 1 + s / 400}
    mon = run("dpo", stream("dpo", **over), eval_points=evals)
    got = alerts(mon, "pref_overfit")
    assert got and got[0].step == 100 and got[0].evidence["gap"] == pytest.approx(0.37)


def test_margin_inverted_ignores_the_initial_tie() -> None:
    # rewards tie at 0 before the policy moves: accuracy 0 and margin exactly 0 is not an inversion
    mon = run("dpo", stream("dpo", **{"rewards/margins": 0.0, "rewards/accuracies": 0.0}))
    assert not alerts(mon, "pref_margin_inverted")


def test_kto_margin_inverted_without_accuracies() -> None:
    mon = run("kto", stream("kto", **{"rewards/margins": lambda s, v: -0.05}))
    assert severities(mon, "pref_margin_inverted") == {"high"}


def test_rl_kl_runaway_b_kl_triples_with_flat_reward_grpo() -> None:
    over = {"kl": lambda s, v: 0.01 * math.exp(s / 40), "reward": lambda s, v: 0.5 + random.Random(s).gauss(0, 0.01)}
    mon = run("grpo", stream("grpo", **over))
    assert severities(mon, "rl_kl_runaway") == {"high"}
    over["reward"] = lambda s, v: 0.2 + 0.01 * s  # the same KL rise while the reward climbs is not a runaway
    assert not alerts(run("grpo", stream("grpo", **over)), "rl_kl_runaway")


def test_rl_truncation_critical_and_online_dpo_eos() -> None:
    mon = run("grpo", stream("grpo", **{"completions/clipped_ratio": 0.95}))
    assert "critical" in severities(mon, "rl_truncation")
    mon = run("online_dpo", stream("online_dpo", **{"val/contain_eos_token": 0.2}))
    assert severities(mon, "rl_truncation") == {"medium"}


def test_rl_entropy_blow_up() -> None:
    over = {"entropy": lambda s, v: 0.8 + 0.02 * s, "reward": lambda s, v: 1.0 - 0.002 * s}
    mon = run("grpo", stream("grpo", **over))
    assert any("incoherent" in a.message for a in alerts(mon, "rl_entropy_out_of_band"))


def test_rl_entropy_ppo_policy_entropy() -> None:
    mon = run("ppo", stream("ppo", **{"policy/entropy_avg": lambda s, v: 3.0 if s < 10 else 0.5}))
    assert severities(mon, "rl_entropy_out_of_band") == {"high"}


def test_zero_variance_critical_when_grad_is_zero() -> None:
    mon = run("rloo", stream("rloo", frac_reward_zero_std=1.0, grad_norm=0.0))
    assert "critical" in severities(mon, "grpo_zero_variance_groups")


def test_grpo_length_bias_only_for_loss_type_grpo() -> None:
    over = PATHOLOGIES["grpo_length_bias"][2]
    assert not alerts(run("grpo", stream("grpo", **over), {"loss_type": "dapo"}), "grpo_length_bias")


def test_grpo_clip_ratio_skipped_when_on_policy() -> None:
    mon = run("grpo", stream("grpo", **{"clip_ratio/region_mean": 0.3}), {"num_iterations": 1})
    assert not alerts(mon, "grpo_clip_ratio")


def test_grpo_kl_unmonitored_fires_once() -> None:
    mon = run("grpo", stream("grpo", kl=None), {"beta": 0.0})
    got = alerts(mon, "grpo_kl_unmonitored")
    assert len(got) == 1 and got[0].state == "active" and got[0].step == 3
    assert "grpo_kl_unmonitored" not in mon.engine.dormant()
    assert "rl_kl_runaway" in mon.engine.dormant()  # no kl key: the KL rules stay dormant


def test_grpo_loss_is_never_alerted() -> None:
    """grpo_loss_not_a_signal: a GRPO/RLOO loss jumping 0 -> 5 and drifting up raises nothing about the loss."""
    over = {"loss": lambda s, v: 5.0 if s == 120 else 0.01 * s}
    for algorithm in ("grpo", "rloo"):
        mon = run(algorithm, stream(algorithm, **over))
        assert "grpo_loss_not_a_signal" in mon.engine.states and "loss_spike" not in mon.engine.states
        assert not [a for a in mon.alerts if "loss" in a.evidence or a.rule == "loss_spike"], mon.alerts
    mon = run("sft", stream("sft", **over))  # the same shape on SFT is a loss spike
    assert alerts(mon, "loss_spike") and "grpo_loss_not_a_signal" not in mon.engine.states


def test_loss_spike_not_recovering_is_high_and_eval_spike() -> None:
    mon = run("sft", stream("sft", loss=lambda s, v: v["loss"] * (4.0 if s >= 120 else 1.0)))
    assert "high" in severities(mon, "loss_spike")
    evals = [(s, {"eval_loss": (5.0 if s == 190 else 1.0) + 0.001 * (s % 7)}) for s in range(10, 200, 10)]
    mon = run("dpo", stream("dpo"), eval_points=evals)
    assert [a.step for a in alerts(mon, "loss_spike")] == [190]


def test_grad_spike_followed_by_loss_spike_is_high() -> None:
    over = {"grad_norm": lambda s, v: v["grad_norm"] * (30.0 if s == 120 else 1.0),
            "loss": lambda s, v: v["loss"] * (4.0 if s == 123 else 1.0)}
    mon = run("sft", stream("sft", **over))
    assert "high" in severities(mon, "grad_norm_spike")


def test_lr_schedule_constant_with_decaying_scheduler_is_low() -> None:
    mon = run("sft", stream("sft", learning_rate=1e-5), {"lr_scheduler_type": "cosine", "warmup_steps": 0})
    assert severities(mon, "lr_schedule_anomaly") == {"low"}
    assert not alerts(run("sft", stream("sft", learning_rate=1e-5), {"lr_scheduler_type": "constant"}),
                      "lr_schedule_anomaly")


def test_sft_memorization_at_epoch_boundary() -> None:
    def loss(s, v):
        return 1.0 if s < 100 else 0.5
    over = {"epoch": lambda s, v: s / 100, "loss": loss}
    evals = [(s, {"eval_loss": 1.0 if s < 100 else 1.2}) for s in range(20, 200, 20)]
    mon = run("sft", stream("sft", **over), eval_points=evals)
    assert "medium" in severities(mon, "sft_memorization")
    mon = run("sft", stream("sft", epoch=lambda s, v: s / 100, mean_token_accuracy=0.99))
    assert severities(mon, "sft_memorization") == {"low"}


# ---- config-time rules --------------------------------------------------------------------------------------

def test_pref_hparams_out_of_range_scales_with_model_size_and_peft() -> None:
    pts = stream("dpo", n=5)
    assert severities(run("dpo", pts, {"learning_rate": 5e-5}), "pref_hparams_out_of_range") == {"medium"}
    assert severities(run("dpo", pts, {"learning_rate": 5e-5, "n_params": 2e6}), "pref_hparams_out_of_range") \
        == {"low"}
    assert not alerts(run("dpo", pts, {"learning_rate": 5e-5, "peft": True}), "pref_hparams_out_of_range")
    assert severities(run("dpo", pts, {"beta": 1.0}), "pref_hparams_out_of_range") == {"medium"}
    mon = run("cpo", pts, {"learning_rate": 5e-6, "loss_type": "simpo"})
    assert "simpo" in alerts(mon, "pref_hparams_out_of_range")[0].message
    assert not alerts(run("dpo", pts), "pref_hparams_out_of_range")
    assert not alerts(run("sft", pts, {"learning_rate": 1e-3}), "pref_hparams_out_of_range")


def test_kto_weight_imbalance() -> None:
    pts = stream("kto", n=5)
    counts = {"n_desirable": 100, "n_undesirable": 400}
    assert severities(run("kto", pts, counts), "kto_weight_imbalance") == {"medium"}
    assert not alerts(run("kto", pts, {**counts, "desirable_weight": 4.0}), "kto_weight_imbalance")
    assert severities(run("kto", pts, {"desirable_weight": 2.0}), "kto_weight_imbalance") == {"low"}
    assert not alerts(run("kto", pts), "kto_weight_imbalance")


def test_simpo_rule_needs_simpo_loss() -> None:
    over = PATHOLOGIES["simpo_margin_below_gamma"][2]
    assert not alerts(run("cpo", stream("cpo", **over), {"loss_type": "sigmoid"}), "simpo_margin_below_gamma")


# ---- catalog contract ---------------------------------------------------------------------------------------

CATALOG_IDS = {
    "dpo_loss_at_ln2", "pref_empty_completion", "pref_margin_inverted", "dpo_likelihood_displacement",
    "pref_overfit", "pref_hparams_out_of_range", "kto_weight_imbalance", "kto_kl_degenerate",
    "orpo_odds_not_separating", "orpo_cpo_nll_diverging", "simpo_margin_below_gamma", "rl_kl_runaway",
    "ppo_negative_kl", "ppo_ratio_out_of_band", "ppo_approxkl_high", "ppo_clipfrac_high", "ppo_value_instability",
    "rl_reward_overopt", "rl_length_hacking", "rl_truncation", "rl_entropy_out_of_band", "grpo_zero_variance_groups",
    "grpo_loss_not_a_signal", "grpo_length_bias", "grpo_clip_ratio", "grpo_rollout_mismatch", "grpo_kl_unmonitored",
    "loss_spike", "grad_norm_spike", "grad_norm_zero", "grad_clip_saturation", "lr_warmup_missing",
    "lr_schedule_anomaly", "sft_memorization", "nonfinite_values",
}
CATALOG_IDS |= {"train_eval_divergence", "step_slowdown", "entropy_collapse", "rl_low_initial_entropy",
                "nan_filter_masked_loss", "moe_aux_loss_rising"}  # issue 15: rules/_catalog_run_health.py
CATALOG_IDS |= {"rl_reward_func_flat", "rl_empty_completions", "rl_length_collapse", "odpo_degenerate_completions",
                "rl_tool_failures", "rl_tool_calls_collapse"}  # issue 15: rules/_catalog_rl_signals.py
PROFILE_NAMES = {"sft", "dpo", "kto", "orpo", "cpo", "online_dpo", "grpo", "rloo", "ppo", "reward", "generic"}


def test_catalog_contract() -> None:
    from ptt_nb.monitor._profiles import GENERIC, PROFILES

    panel_ids = {p["id"] for prof in (*PROFILES, GENERIC) for p in prof.panels}
    rules = catalog_rules()
    assert {r.id for r in rules} == CATALOG_IDS
    assert not set(map(id, rules)) & set(map(id, catalog_rules()))  # fresh instances every call
    for r in rules:
        assert r.severity in ("critical", "high", "medium", "low"), r.id
        assert r.title and r.action and r.reference, r.id
        assert r.algorithms is None or r.algorithms <= PROFILE_NAMES, r.id
        assert set(r.panels) <= panel_ids, (r.id, set(r.panels) - panel_ids)
        if r.url:
            assert r.url.startswith("https://"), r.id
        if r.url and "arxiv.org/abs/" in r.url:  # the link names a paper the reference cites
            assert "arXiv:" + r.url.rsplit("/", 1)[1] in r.reference, r.id
    by_id = {r.id: r for r in rules}
    assert by_id["dpo_loss_at_ln2"].url == "https://arxiv.org/abs/2305.18290"
    assert "§4.2" not in by_id["dpo_loss_at_ln2"].reference  # the predecessor's invented section
    default_ids = {r.id for r in default_rules()}
    assert CATALOG_IDS <= default_ids


def test_rule_that_raises_is_disabled_not_fatal() -> None:
    class Broken(catalog_rules()[0].__class__):
        def check(self, ctx):
            raise ZeroDivisionError("boom")

    mon = run("dpo", [])
    mon.engine.add(Broken())
    out = mon.log(1, {"loss": 0.5, "rewards/margins": 0.1})
    assert any(a.rule == "rule_error" for a in out)
    assert mon.engine.states["dpo_loss_at_ln2"].disabled
    mon.log(2, {"loss": 0.5, "rewards/margins": 0.1})  # no second error, no exception


def test_engine_warmup_cooldown_and_once() -> None:
    from ptt_nb.monitor._history import MetricHistory
    from ptt_nb.rules._engine import Finding, Rule

    class Always(Rule):
        id = "always"
        keys = ("x",)
        warmup_steps = 5
        warmup_frac = 0.1
        cooldown = 3

        def check(self, ctx):
            return Finding("x") if ctx.values["x"] > 0 else None

    ctx = Context(history=MetricHistory(), max_steps=100)
    eng = Engine([Always()], ctx)
    opened = [s for s in range(1, 20) if any(a.state == "active" for a in eng.evaluate(s, "train", {"x": 1.0}))]
    assert opened == [10]  # warm-up: step >= 5 and >= 10% of 100
    eng.evaluate(20, "train", {"x": 0.0})  # resolves at 20
    opened = [s for s in range(21, 30) if any(a.state == "active" for a in eng.evaluate(s, "train", {"x": 1.0}))]
    assert opened == [23]  # cooldown of 3 steps

    class Once(Always):
        id = "once"
        warmup_steps = 0
        warmup_frac = 0.0
        once = True

    eng = Engine([Once()], Context(history=MetricHistory()))
    assert eng.evaluate(1, "train", {"x": 1.0})
    assert not eng.evaluate(2, "train", {"x": 0.0})  # never checked again: the episode stays open
    assert eng.states["once"].active is not None


def test_engine_formats_deferred_finding_text_once_per_episode() -> None:
    from ptt_nb.monitor._history import MetricHistory
    from ptt_nb.rules._engine import Finding, Rule

    calls = []

    class Deferred(Rule):
        id = "deferred"
        keys = ("x",)

        def check(self, ctx):
            x = ctx.values["x"]
            if x <= 0:
                return None
            return Finding(lambda: calls.append(x) or f"x is {x}", lambda: {"x": x})

    class BrokenText(Deferred):
        id = "broken_text"

        def check(self, ctx):
            return Finding(lambda: 1 / 0)

    eng = Engine([Deferred(), BrokenText()], Context(history=MetricHistory()))
    alerts = [a for s in range(1, 51) for a in eng.evaluate(s, "train", {"x": float(s)})]
    opened = [a for a in alerts if a.rule == "deferred"]
    assert [(a.step, a.message, a.evidence) for a in opened] == [(1, "x is 1.0", {"x": 1.0})]
    assert calls == [1.0]  # 49 more holding checks, no text built
    errors = [a for a in alerts if a.rule == "rule_error"]
    assert len(errors) == 1 and "broken_text" in errors[0].message and "ZeroDivisionError" in errors[0].message
    assert eng.states["broken_text"].disabled and eng.states["broken_text"].active is None
    eng.evaluate(51, "train", {"x": 0.0})
    assert eng.states["deferred"].active is None  # resolved as usual


# ---- window statistics --------------------------------------------------------------------------------------

def test_windows_match_numpy() -> None:
    np = pytest.importorskip("numpy")
    rng = random.Random(1)
    xs = [rng.gauss(0, 1) + 0.05 * i for i in range(237)]
    ys = [rng.random() for _ in xs]
    t, w, p, sw = Trend(20), Window(20), PairWindow(20), SortedWindow(21)
    for x, y in zip(xs, ys, strict=True):
        t.push(x)
        w.push(x)
        p.push(x, y)
        sw.push(x)
    last, yy, idx = np.array(xs[-20:]), np.array(ys[-20:]), np.arange(20)
    fit = np.polyfit(idx, last, 1)
    res = last - np.polyval(fit, idx)
    se = math.sqrt(res @ res / 18 / ((idx - idx.mean()) @ (idx - idx.mean())))
    assert t.slope == pytest.approx(fit[0]) and t.tstat == pytest.approx(fit[0] / se)
    assert w.mean == pytest.approx(last.mean()) and t.mean == pytest.approx(last.mean())
    assert p.corr == pytest.approx(np.corrcoef(last, yy)[0, 1])
    l21 = np.array(xs[-21:])
    assert sw.median == pytest.approx(np.median(l21))
    assert sw.mad() == pytest.approx(np.median(np.abs(l21 - np.median(l21))))


@pytest.mark.parametrize("shape", ["noise", "trend", "heavy_tails", "steps"])
def test_spike_prefilter_misses_nothing_the_exact_test_finds(shape: str) -> None:
    """The cheap running bound only decides when to compute the exact median/MAD: the spikes found must be exactly
    those a brute-force robust z over the previous 50 points finds."""
    np = pytest.importorskip("numpy")
    from ptt_nb.rules._catalog_optimisation import _SpikeDetector

    rng = random.Random(7)
    xs = []
    for i in range(3000):
        base_ = {"noise": 1.0, "trend": 3.0 - i / 1000, "heavy_tails": 1.0, "steps": 1.0 + (i // 500)}[shape]
        if shape == "heavy_tails":  # Cauchy noise
            e = 0.05 * math.tan(math.pi * (rng.random() - 0.5))
        else:
            e = rng.gauss(0, 0.05)
        x = base_ + e
        if rng.random() < 0.01:
            x += rng.choice([0.2, 0.4, 1.0, 3.0])
        xs.append(x)
    det = _SpikeDetector()
    found = [i for i, x in enumerate(xs) if det.push(x) is not None]
    expected = []
    for i in range(20, len(xs)):
        w = np.array(xs[max(0, i - 50):i])
        med = np.median(w)
        scale = max(1.4826 * np.median(np.abs(w - med)), 0.02 * abs(med), 1e-12)
        if (xs[i] - med) / scale > 6:
            expected.append(i)
    assert expected and found == expected
