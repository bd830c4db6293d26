"""The run-health rules (issue 15: ``rules/_catalog_run_health.py``) on real TRL runs.

Each rule fires on a real tiny run whose pathology was provoked through a real mechanism (recorded by
``tests/data/record_run_health.py`` into ``tests/data/run_health/``) and stays silent on every healthy recorded
run (``tests/data/healthy_*.jsonl``). The only synthetic stream is async GRPO's ``perf/weight_sync_s`` (it needs
a vLLM server). One live run checks the NaN filter's fingerprint end to end through the callback.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest

from ptt_nb.events import RunStart
from ptt_nb.monitor._monitor import Monitor
from ptt_nb.rules._catalog_run_health import run_health_rules
from tests.test_rules_calibration import ALGORITHMS, DATA, recorded_runs, replay

NEW_IDS = {r.id for r in run_health_rules()}


def runs(name: str) -> list[list]:
    return recorded_runs(f"run_health/{name}")


def opened(mon: Monitor, rule_id: str) -> list:
    """The episodes of a rule (the alert list keeps one entry per episode, resolved or not)."""
    return [a for a in mon.alerts if a.rule == rule_id]


def test_recordings_are_small() -> None:
    files = list((DATA / "run_health").glob("*.jsonl"))
    assert len(files) >= 6
    for p in files:
        assert p.stat().st_size < 100_000, p


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_silent_on_healthy_real_runs(algorithm: str) -> None:
    for run in recorded_runs(f"healthy_{algorithm}"):
        mon = replay(run)
        assert NEW_IDS <= set(mon.engine.states) | _not_for(algorithm)
        bad = [(a.rule, a.step, a.message) for a in mon.alerts if a.rule in NEW_IDS]
        assert not bad, bad


def _not_for(algorithm: str) -> set[str]:
    return {r.id for r in run_health_rules() if not r.applies_to(algorithm)}


# ---- 1. train/eval divergence --------------------------------------------------------------------------------

def _evals(run: list) -> list[tuple[int, float]]:
    return [(e.step, e.values["eval_loss"]) for e in run[1:] if e.split == "eval"]


def test_divergence_on_real_overfit_sft() -> None:
    (run,) = runs("overfit_sft")
    evals = _evals(run)
    best = min(range(len(evals)), key=lambda i: evals[i][1])
    assert 2 < best < len(evals) - 3  # the recording: eval loss falls, bottoms out, then rises
    mon = replay(run)
    (alert,) = opened(mon, "train_eval_divergence")
    # three worse evaluations in a row after the best one: opened at the third
    assert alert.step == evals[best + 3][0]
    ev = alert.evidence
    assert [ev[f"eval_step_{i}"] for i in range(4)] == [s for s, _ in evals[best:best + 4]]
    assert [ev[f"eval_loss_{i}"] for i in range(4)] == [x for _, x in evals[best:best + 4]]
    assert "overfitting" in alert.message


def test_divergence_silent_while_eval_improves() -> None:
    (run,) = runs("overfit_sft")
    evals = _evals(run)
    best_step = min(evals, key=lambda e: e[1])[0]
    # the same run cut two evaluations after its best one: two rises are not a trend
    cut = [run[0], *(e for e in run[1:] if e.step <= best_step + 10)]
    assert not opened(replay(cut), "train_eval_divergence")


def test_divergence_reads_eval_reward_for_grpo() -> None:
    """GRPO's loss is not a signal: the rule compares eval_reward with reward (higher is better)."""
    mon = Monitor()
    mon.start(RunStart(run_id="t", trainer="GRPOTrainer", algorithm="grpo", config={}, max_steps=100))
    for step in range(1, 101):
        mon.log(step, {"loss": 0.0, "reward": 0.1 + 0.01 * step, "entropy": 1.0})
        if step % 10 == 0:
            eval_reward = 0.5 + 0.01 * step if step <= 50 else 1.0 - 0.02 * (step - 50)
            mon.log(step, {"eval_reward": eval_reward, "eval_loss": 0.0}, split="eval")
    (alert,) = opened(mon, "train_eval_divergence")
    assert alert.step == 80 and alert.evidence["eval_reward_3"] == pytest.approx(0.4)


# ---- 2. slow steps -------------------------------------------------------------------------------------------

def test_step_slowdown_on_real_slow_reward_grpo() -> None:
    (run,) = runs("slow_reward_grpo")
    times = [e.values["step_time"] for e in run[1:] if "step_time" in e.values]
    assert times[-1] > 3 * sorted(times[2:12])[5]  # the recording: the reward function slowed every step
    mon = replay(run)
    (alert,) = opened(mon, "step_slowdown")
    assert alert.evidence["ratio"] >= 3.0 and "step_time" in alert.message
    assert "straggler_rank" not in {a.rule for a in mon.alerts}


def test_step_slowdown_weight_sync_growth() -> None:
    """Async GRPO's perf/weight_sync_s (synthetic: recording it needs a vLLM server)."""
    mon = Monitor()
    mon.start(RunStart(run_id="t", trainer="AsyncGRPOTrainer", algorithm="grpo", config={}, max_steps=60))
    for step in range(1, 61):
        sync = 2.0 + 0.01 * (step % 3) if step < 30 else 2.0 + 0.5 * (step - 30)
        mon.log(step, {"perf/step_s": 10.0 + 0.1 * (step % 2), "perf/weight_sync_s": sync})
    (alert,) = opened(mon, "step_slowdown")
    assert "perf/weight_sync_s" in alert.message and alert.evidence["baseline"] == pytest.approx(2.0, abs=0.03)


# ---- 3. entropy ----------------------------------------------------------------------------------------------

def test_entropy_collapse_on_real_repeated_data_sft() -> None:
    (run,) = runs("repeat_sft")
    mon = replay(run)
    (alert,) = opened(mon, "entropy_collapse")
    ent = [(e.step, e.values["entropy"]) for e in run[1:] if "entropy" in e.values]
    below = [s for s, h in ent if h < 0.1]
    assert alert.step == below[4]  # five logs in a row under the floor
    assert alert.evidence["entropy"] < 0.1


def test_entropy_collapse_silent_on_overfit_sft_whose_entropy_stays_high() -> None:
    (run,) = runs("overfit_sft")
    assert min(e.values["entropy"] for e in run[1:] if "entropy" in e.values) > 0.5
    assert not opened(replay(run), "entropy_collapse")


def test_rl_low_initial_entropy_on_real_cold_grpo() -> None:
    (run,) = runs("cold_grpo")
    assert run[0].config["temperature"] == 0.7  # a usual temperature: the checkpoint itself is near-deterministic
    mon = replay(run)
    (alert,) = opened(mon, "rl_low_initial_entropy")
    assert alert.step == 3 and alert.evidence["entropy_start"] < 0.1
    # rl_entropy_out_of_band compares entropy with its own (already low) start: it cannot tell at step 3
    assert all(a.step > alert.step for a in opened(mon, "rl_entropy_out_of_band"))


# ---- 4. the NaN filter's fingerprint ------------------------------------------------------------------------

def test_nan_filter_fingerprint_on_real_poisoned_sft() -> None:
    filtered, unfiltered = runs("nan_filter_sft")
    losses = {e.step: e.values["loss"] for e in filtered[1:] if e.split == "train"}
    assert [s for s, x in losses.items() if x == 0.0] == [12, 25]  # the filter logged each NaN as 0.0
    mon = replay(filtered)
    alerts = opened(mon, "nan_filter_masked_loss")
    assert [a.step for a in alerts] == [12, 25] and all(a.state == "resolved" for a in alerts)
    assert all(math.isfinite(a.evidence["grad_norm"]) for a in alerts) and alerts[0].severity == "medium"
    assert "logging_nan_inf_filter=False" in alerts[0].action
    # with the filter off the NaN is logged as NaN (and, transformers never clearing it, every loss after it)
    mon = replay(unfiltered)
    assert not opened(mon, "nan_filter_masked_loss") and opened(mon, "nonfinite_values")


def test_nan_filter_fingerprint_live(tmp_path: Path) -> None:
    pytest.importorskip("trl")
    sys.path.insert(0, str(DATA))
    import record_run_health as rec

    from ptt_nb import DiagnosticsCallback

    cb = DiagnosticsCallback(run_dir=tmp_path / "run", widget=False, console=False)
    rec._sft(str(tmp_path), cb, cls=rec.poisoned_sft_class(frozenset({6})), max_steps=9).train()
    (alert,) = opened(cb.monitor, "nan_filter_masked_loss")
    assert alert.step == 6 and alert.evidence["nonzero_losses_before"] == 5


# ---- 5. MoE auxiliary loss -----------------------------------------------------------------------------------

def test_moe_aux_loss_rising_on_real_mixtral_with_a_mis_signed_coefficient() -> None:
    healthy, collapsing = runs("moe_sft")
    assert healthy[0].config.get("n_params") and "aux_loss" in healthy[1].values
    assert not opened(replay(healthy), "moe_aux_loss_rising")
    (alert,) = opened(replay(collapsing), "moe_aux_loss_rising")
    assert alert.evidence["aux_loss_mean_w10"] >= 1.25 * alert.evidence["baseline"]


def test_moe_aux_loss_nonfinite_is_high() -> None:
    mon = Monitor()
    mon.start(RunStart(run_id="t", trainer="SFTTrainer", algorithm="sft", config={}, max_steps=10))
    for step in range(1, 8):
        mon.log(step, {"loss": 2.0, "aux_loss": 2.0 if step < 5 else math.nan})
    (alert,) = opened(mon, "moe_aux_loss_rising")
    assert alert.severity == "high" and alert.step == 7  # three non-finite logs


def test_run_start_records_the_nan_filter_setting_and_the_rule_trusts_it(tmp_path: Path) -> None:
    """The callback records logging_nan_inf_filter; a run that turned it off logs no fingerprint to read."""
    pytest.importorskip("trl")
    from ptt_nb import DiagnosticsCallback, tiny

    cb = DiagnosticsCallback(run_dir=tmp_path / "run", widget=False, console=False)
    tiny.make_trainer("sft", tmp_path, callbacks=[cb], max_steps=2, logging_nan_inf_filter=False).train()
    assert cb.monitor.run.config["logging_nan_inf_filter"] is False
    mon = replay([cb.monitor.run] + [e for e in runs("nan_filter_sft")[0][1:]])  # the filtered run's zeros
    assert not opened(mon, "nan_filter_masked_loss")
